"""Fail with an installation hint when KubeEdge mode's libraries are missing."""

from __future__ import annotations

from importlib.util import find_spec

from ..errors import ConfigError

__all__: list[str] = []


def _absent(name: str) -> bool:
    try:
        return find_spec(name) is None
    except ModuleNotFoundError:
        return True


_missing = [name for name in ("grpc", "google.protobuf") if _absent(name)]
if _missing:
    raise ConfigError(
        f"KubeEdge mode needs {' and '.join(_missing)}: pip install 'mapperkit[kubeedge]'"
    )
