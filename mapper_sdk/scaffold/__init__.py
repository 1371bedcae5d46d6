"""``mapperkit new-driver``: generate a driver plugin package to start from.

The generated package is a separate, installable project: a driver for a small
line-based TCP protocol that works end to end, its pydantic config classes, an
asyncio simulator of a device speaking it, an example KubeEdge Device YAML, and
tests that run the SDK's conformance kit against the simulator. It registers the
driver in the ``mapper_sdk.drivers`` entry-point group, so after
``pip install -e`` the driver is found by ``mapperkit run`` like the built-in
ones. ``docs/writing-a-mapper.md`` walks through it.

The templates are files under ``templates/`` (every one ends in ``.tmpl``) and
are rendered with :class:`string.Template`; a directory called ``__package__``
becomes the package's import name.
"""

from __future__ import annotations

import argparse
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import PackageNotFoundError, entry_points, version
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from ..cli import Subparsers
from ..errors import MapperError

__all__ = ["Names", "ScaffoldError", "command", "generate", "names_for", "render"]

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
MAX_NAME = 24
DRIVER_GROUP = "mapper_sdk.drivers"
TEMPLATE_SUFFIX = ".tmpl"
PACKAGE_DIR = "__package__"
# Files whose rendered name differs from the template's (a dot-file would not be
# picked up as package data).
RENAMED = {"gitignore": ".gitignore"}


class ScaffoldError(MapperError):
    """The package cannot be generated: a bad name or a target that is in use."""


@dataclass(frozen=True, slots=True)
class Names:
    """Every name the generated package derives from the protocol name.

    Attributes:
        protocol: the protocol name used in Device YAML (``protocolName``) and
            as the entry-point name (``my_proto``).
        slug: the protocol with ``-`` for ``_``, for distribution and object
            names (``my-proto``).
        package: the import package (``mapperkit_my_proto``).
        distribution: the distribution name on PyPI (``mapperkit-my-proto``).
        classname: the class-name prefix (``MyProto``, as in ``MyProtoDriver``).
    """

    protocol: str
    slug: str
    package: str
    distribution: str
    classname: str


def names_for(protocol: str) -> Names:
    """Validate a protocol name and derive the package's names from it.

    Raises:
        ScaffoldError: when the name is not lowercase ``snake_case`` starting
            with a letter, or is longer than 24 characters (which keeps every
            generated line short enough for the default ruff rules).
    """
    if not NAME_RE.match(protocol) or len(protocol) > MAX_NAME:
        hint = re.sub(r"[^a-z0-9]+", "_", protocol.lower()).strip("_")
        suggestion = (
            f" (for example {hint!r})"
            if NAME_RE.match(hint) and len(hint) <= MAX_NAME and hint != protocol
            else ""
        )
        raise ScaffoldError(
            f"invalid protocol name {protocol!r}: use lowercase letters, digits and single "
            f"underscores, starting with a letter, at most {MAX_NAME} characters{suggestion}"
        )
    slug = protocol.replace("_", "-")
    return Names(
        protocol=protocol,
        slug=slug,
        package=f"mapperkit_{protocol}",
        distribution=f"mapperkit-{slug}",
        classname="".join(part.capitalize() for part in protocol.split("_")),
    )


def _requirement() -> str:
    try:
        return f"mapperkit>={version('mapperkit')}"
    except PackageNotFoundError:
        return "mapperkit"


def _templates() -> Traversable:
    return resources.files(__name__).joinpath("templates")


def _walk(node: Traversable, prefix: PurePosixPath) -> Iterator[tuple[PurePosixPath, Traversable]]:
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.is_dir():
            yield from _walk(child, prefix / child.name)
        elif child.name.endswith(TEMPLATE_SUFFIX):
            yield prefix / child.name, child


def render(names: Names) -> dict[PurePosixPath, str]:
    """Render every template for ``names``: relative path to file text.

    Raises:
        ScaffoldError: when a template names a placeholder that does not exist
            (a broken installation rather than a user error).
    """
    mapping = {
        "protocol": names.protocol,
        "slug": names.slug,
        "package": names.package,
        "distribution": names.distribution,
        "classname": names.classname,
        "requirement": _requirement(),
    }
    files: dict[PurePosixPath, str] = {}
    for rel, node in _walk(_templates(), PurePosixPath()):
        parts = [names.package if p == PACKAGE_DIR else p for p in rel.parts]
        leaf = parts[-1][: -len(TEMPLATE_SUFFIX)]
        parts[-1] = RENAMED.get(leaf, leaf)
        try:
            text = string.Template(node.read_text(encoding="utf-8")).substitute(mapping)
        except (KeyError, ValueError) as exc:
            raise ScaffoldError(f"template {rel} cannot be rendered: {exc!r}") from exc
        files[PurePosixPath(*parts)] = text
    if not files:
        raise ScaffoldError("no templates found: the mapperkit installation is incomplete")
    return files


def _check_unregistered(protocol: str) -> None:
    for ep in entry_points(group=DRIVER_GROUP):
        if ep.name == protocol:
            owner = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
            raise ScaffoldError(
                f"protocol {protocol!r} is already provided by {owner} ({ep.value}); "
                "two drivers cannot share a protocol name, choose another"
            )


def generate(protocol: str, directory: str | Path | None = None) -> Path:
    """Write a new driver package for ``protocol`` and return its directory.

    Args:
        protocol: the protocol name (lowercase ``snake_case``).
        directory: where to create the package; ``./mapperkit-<slug>`` by
            default. It must not exist, or be an empty directory.

    Raises:
        ScaffoldError: for an invalid or already installed protocol name, or a
            target that exists and is not an empty directory.
    """
    names = names_for(protocol)
    _check_unregistered(protocol)
    target = Path(directory) if directory is not None else Path.cwd() / names.distribution
    if target.exists():
        if not target.is_dir():
            raise ScaffoldError(f"{target} exists and is not a directory")
        if any(target.iterdir()):
            raise ScaffoldError(
                f"{target} is not empty; give an empty or new directory with --dir "
                "(nothing was written)"
            )
    # Render everything first, so a failure leaves nothing half-written.
    files = render(names)
    for rel, text in files.items():
        path = target.joinpath(*rel.parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return target


# --------------------------------------------------------------------------- command
def command(sub: Subparsers) -> None:
    """Add ``mapperkit new-driver`` to the ``mapperkit`` command."""
    p = sub.add_parser(
        "new-driver",
        help="generate a driver plugin package to start a new protocol from",
        description="Generate an installable package with a working driver for a small "
        "line-based TCP protocol, its simulator, an example Device YAML and conformance "
        "tests. Edit it into your own protocol; docs/writing-a-mapper.md walks through it.",
    )
    p.add_argument(
        "name",
        help="the protocol name used in Device YAML: lowercase letters, digits and "
        "underscores, starting with a letter (e.g. acme_bus)",
    )
    p.add_argument(
        "--dir",
        default=None,
        metavar="DIR",
        help="where to create the package (default: ./mapperkit-NAME); it must not exist "
        "or be empty",
    )
    p.set_defaults(func=_new_driver)


def _new_driver(args: argparse.Namespace) -> int:
    names = names_for(args.name)
    generate(args.name, args.dir)
    shown = str(args.dir) if args.dir is not None else names.distribution
    print(
        f"created {shown}: distribution {names.distribution}, package {names.package}, "
        f"driver {names.classname}Driver for protocol {names.protocol!r}\n"
        "\n"
        "next:\n"
        f"  pip install -e {shown}\n"
        f"  python -m pytest {shown}/tests\n"
        f"  python -m {names.package}.simulator --port 7878\n"
        f"  mapperkit run --config {shown}/examples/device.yaml"
    )
    return 0
