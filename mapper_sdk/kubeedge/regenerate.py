"""Regenerate the DMI Python stubs in ``v1beta1/`` from ``proto/api.proto``.

Run it after changing the proto (grpcio-tools is a development dependency)::

    python -m mapper_sdk.kubeedge.regenerate          # rewrite the stubs
    python -m mapper_sdk.kubeedge.regenerate --check  # exit 1 if they are stale

The proto is compiled as ``mapper_sdk/kubeedge/v1beta1/api.proto`` so the
generated gRPC module imports its messages by their package path and the file
name registered in protobuf's descriptor pool cannot clash with another
library's ``api.proto``. Each generated file gets a header that keeps the
linters and the type checker out of it, and is formatted with ruff when ruff
is installed. ``--check`` compares the message and service definitions (the
serialized descriptor), not the text, so a newer grpcio-tools that words the
code differently is not reported as a change.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["HEADER", "PROTO_NAME", "compile_descriptor", "generate", "main"]

PROTO_NAME = "mapper_sdk/kubeedge/v1beta1/api.proto"
"""The name the proto is compiled under (and registered as in the descriptor pool)."""

HEADER = (
    "# ruff: noqa\n"
    "# mypy: ignore-errors\n"
    "# Generated from mapper_sdk/kubeedge/proto/api.proto by\n"
    "# `python -m mapper_sdk.kubeedge.regenerate`. Do not edit.\n"
)

_PACKAGE = Path(__file__).resolve().parent
_OUTPUTS = ("api_pb2.py", "api_pb2.pyi", "api_pb2_grpc.py")


def _protoc(args: list[str]) -> None:
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit(
            "grpcio-tools is not installed: pip install -e '.[dev]' (or pip install grpcio-tools)"
        ) from None
    include = str(resources.files("grpc_tools") / "_proto")
    code = protoc.main(["grpc_tools.protoc", f"-I{include}", *args])
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def _stage(tmp: Path, proto: Path) -> Path:
    staged = tmp / "src" / PROTO_NAME
    staged.parent.mkdir(parents=True)
    shutil.copyfile(proto, staged)
    return tmp / "src"


def compile_descriptor(proto: Path | None = None) -> bytes:
    """The serialized ``FileDescriptorProto`` that ``proto`` compiles to."""
    from google.protobuf import descriptor_pb2

    proto = proto or _PACKAGE / "proto" / "api.proto"
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        src = _stage(tmp, proto)
        out = tmp / "descriptor.pb"
        _protoc([f"-I{src}", f"--descriptor_set_out={out}", str(src / PROTO_NAME)])
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (fd,) = files.file
    return _normalized(fd)


def _normalized(fd: Any) -> bytes:
    """``fd`` serialized without the JSON names that only a descriptor set carries."""
    stack = list(fd.message_type)
    while stack:
        message = stack.pop()
        for fld in message.field:
            fld.ClearField("json_name")
        stack.extend(message.nested_type)
    return bytes(fd.SerializeToString(deterministic=True))


def generate(out_dir: Path | None = None, proto: Path | None = None) -> list[Path]:
    """Write ``api_pb2.py``, ``api_pb2.pyi`` and ``api_pb2_grpc.py`` into ``out_dir``."""
    out_dir = out_dir or _PACKAGE / "v1beta1"
    proto = proto or _PACKAGE / "proto" / "api.proto"
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        src = _stage(tmp, proto)
        gen = tmp / "gen"
        gen.mkdir()
        _protoc(
            [
                f"-I{src}",
                f"--python_out={gen}",
                f"--pyi_out={gen}",
                f"--grpc_python_out={gen}",
                str(src / PROTO_NAME),
            ]
        )
        produced = gen / Path(PROTO_NAME).parent
        out_dir.mkdir(parents=True, exist_ok=True)
        for filename in _OUTPUTS:
            text = (produced / filename).read_text(encoding="utf-8")
            target = out_dir / filename
            target.write_text(HEADER + text, encoding="utf-8")
            written.append(target)
    _format(written)
    return written


def _format(paths: list[Path]) -> None:
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        return
    subprocess.run([ruff, "format", "--quiet", *map(str, paths)], check=False)


def _committed_descriptor() -> bytes:
    from google.protobuf import descriptor_pb2

    from .v1beta1 import api_pb2

    fd = descriptor_pb2.FileDescriptorProto()
    fd.ParseFromString(api_pb2.DESCRIPTOR.serialized_pb)
    return _normalized(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mapper_sdk.kubeedge.regenerate")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the committed stubs are stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        if compile_descriptor() != _committed_descriptor():
            print("the stubs in mapper_sdk/kubeedge/v1beta1 are stale: regenerate them")
            return 1
        print("the stubs in mapper_sdk/kubeedge/v1beta1 match proto/api.proto")
        return 0
    for path in generate():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
