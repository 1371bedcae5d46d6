"""Generate the configuration reference (``docs/configuration.md``) from the models.

The reference is rendered from the same pydantic classes that validate device
files, so it cannot drift from them: the KubeEdge DeviceModel and Device
documents, the native form, ``reportStrategy`` and ``pushMethod`` from
:mod:`mapper_sdk.model`, and every installed driver's ``protocol_config`` and
``visitor_config`` classes (found through :class:`~mapper_sdk.registry.Registry`).
Each class becomes a table of key, type, default and description; the
description comes from ``Field(description=...)``, else from the attribute's
docstring, else from the ``Attributes:`` section of the class docstring.

The protocol sections depend on the drivers installed when the file is
generated; the file's header lists them, and ``--check`` renders exactly those
again::

    python -m mapper_sdk.docgen                     # write docs/configuration.md
    python -m mapper_sdk.docgen --check             # exit 1 with a diff when stale
    python -m mapper_sdk.docgen --protocol modbus   # only some protocols
"""

from __future__ import annotations

import argparse
import ast
import difflib
import enum
import functools
import inspect
import itertools
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import model
from .driver import Driver
from .registry import Registry

__all__ = [
    "DEFAULT_OUTPUT",
    "CheckResult",
    "Section",
    "check",
    "load_drivers",
    "main",
    "protocols_in",
    "render",
    "render_sections",
    "split_sections",
]

DEFAULT_OUTPUT = Path("docs/configuration.md")
GENERATOR = "python -m mapper_sdk.docgen"
_PROTOCOLS_RE = re.compile(r"^<!-- protocols: (.*) -->$", re.MULTILINE)
_SECTION_RE = re.compile(r"^<!-- section: (.+) -->$", re.MULTILINE)

DriverClass = type[Driver[Any, Any]]

# Schema fields typed as raw mappings because a driver (or a later step)
# validates them: the reference points at the classes that do.
_CONNECTION = "mapping: the protocol's [connection keys](#protocols)"
_VISITOR = "mapping: the protocol's [visitor keys](#protocols)"
_RAW_FIELDS: dict[tuple[type[BaseModel], str], str] = {
    (model.DeviceModelSpecDoc, "protocolConfigData"): _CONNECTION,
    (model.ProtocolDoc, "configData"): _CONNECTION,
    (model.NativeDeviceDoc, "connection"): _CONNECTION,
    (model.VisitorConfigData, "configData"): _VISITOR,
    (model.NativePropertyDoc, "visitor"): _VISITOR,
}
_TYPED_AS: dict[str, type[BaseModel]] = {"reportStrategy": model.ReportStrategyDoc}

_SCALARS: dict[Any, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    bytes: "bytes",
    Any: "any",
    type(None): "null",
}


# --------------------------------------------------------------------------- docstrings
_SECTION_HEADERS = re.compile(
    r"^(Attributes|Args|Arguments|Fields|Raises|Returns|Yields|Example|Examples|Note|Notes)"
    r":\s*$"
)


def _rst_to_markdown(text: str) -> str:
    text = re.sub(r":[a-z]+:`~?(?:[\w.]+\.)?([^`<>]+?)`", r"`\1`", text)
    return text.replace("``", "`")


def _docstring_parts(cls: type) -> tuple[str, dict[str, str]]:
    """A class docstring's introduction (Markdown) and its ``Attributes:`` entries."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    intro: list[str] = []
    attrs: dict[str, str] = {}
    i = 0
    while i < len(lines) and not _SECTION_HEADERS.match(lines[i]):
        intro.append(lines[i])
        i += 1
    while i < len(lines):
        header = _SECTION_HEADERS.match(lines[i])
        i += 1
        if header is None:
            continue
        indent: int | None = None
        current: str | None = None
        while i < len(lines):
            line = lines[i]
            if not line.strip():
                i += 1
                continue
            width = len(line) - len(line.lstrip())
            if width == 0:
                break
            if indent is None:
                indent = width
            entry = re.match(r"^(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line.strip())
            if width == indent and entry is not None:
                current = entry.group(1)
                if header.group(1) in ("Attributes", "Fields"):
                    attrs[current] = entry.group(2)
            elif current is not None and current in attrs:
                attrs[current] += " " + line.strip()
            i += 1
    return _markdown_blocks(intro), {k: _rst_to_markdown(v) for k, v in attrs.items()}


def _markdown_blocks(lines: list[str]) -> str:
    """Docstring prose to Markdown: RST literals, and ``::`` blocks as fenced code."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::"):
            head = line.rstrip()[:-2].rstrip()
            out.append(_rst_to_markdown(head + ":" if head else ""))
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                block.append(lines[i])
                i += 1
            code = textwrap.dedent("\n".join(block)).strip("\n")
            out.extend(["", "```yaml", code, "```", ""])
            continue
        out.append(_rst_to_markdown(line))
        i += 1
    return "\n".join(out).strip()


@functools.lru_cache(maxsize=64)
def _module_tree(module_name: str) -> ast.Module | None:
    module = sys.modules.get(module_name)
    if module is None:
        return None
    try:
        return ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):
        return None


def _class_node(cls: type) -> ast.ClassDef | None:
    tree = _module_tree(cls.__module__)
    body: list[ast.stmt] = tree.body if tree is not None else []
    node: ast.ClassDef | None = None
    for part in cls.__qualname__.split("."):
        node = next((n for n in body if isinstance(n, ast.ClassDef) and n.name == part), None)
        if node is None:
            return None
        body = node.body
    return node


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """Docstrings written under class attributes (``x: int = 1`` then ``\"\"\"...\"\"\"``)."""
    node = _class_node(cls)
    if node is None:
        return {}
    docs: dict[str, str] = {}
    body = node.body
    for stmt, following in itertools.pairwise(body):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name = stmt.target.id
        elif (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
        ):
            name = stmt.targets[0].id
        else:
            continue
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[name] = " ".join(inspect.cleandoc(following.value.value).split())
    return {k: _rst_to_markdown(v) for k, v in docs.items()}


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True, slots=True)
class _Entry:
    cls: type[BaseModel]
    title: str
    anchor: str
    where: str = ""


@dataclass
class _Page:
    """Classes to render, with the anchors they are linked by."""

    anchors: dict[type[BaseModel], tuple[str, str]] = field(default_factory=dict)
    queue: list[_Entry] = field(default_factory=list)
    prefix: str = ""

    def add(self, entry: _Entry) -> None:
        """Give ``entry.cls`` its anchor and link text, unless it has them already."""
        self.anchors.setdefault(entry.cls, (entry.anchor, entry.title.replace("`", "")))

    def link(self, cls: type[BaseModel]) -> str:
        """A Markdown link to ``cls``'s table; a class seen first here is queued."""
        if cls not in self.anchors:
            entry = _Entry(cls, f"`{cls.__name__}`", f"{self.prefix}{cls.__name__.lower()}")
            self.add(entry)
            self.queue.append(entry)
        anchor, label = self.anchors[cls]
        return f"[{label}](#{anchor})"


def _escape(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _constraints(info: FieldInfo) -> list[str]:
    out: list[str] = []
    for meta in info.metadata:
        for attr, fmt in (
            ("gt", "> {}"),
            ("ge", "≥ {}"),
            ("lt", "< {}"),
            ("le", "≤ {}"),
            ("multiple_of", "multiple of {}"),
            ("min_length", "length ≥ {}"),
            ("max_length", "length ≤ {}"),
            ("pattern", "matching `{}`"),
        ):
            value = getattr(meta, attr, None)
            if value is not None:
                out.append(fmt.format(_number(value) if attr != "pattern" else value))
    return out


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type_name(ann: Any, page: _Page) -> str:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        return _type_name(args[0], page)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a, page) for a in args if a is not type(None)]
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        # typing caches equal Literals (compared as sets), so get_args may return the
        # order of another module's Literal imported first: sort to stay reproducible.
        values = ", ".join(f"`{_yaml(v)}`" for v in sorted(args, key=str))
        return values if len(args) == 1 else f"one of {values}"
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return "one of " + ", ".join(f"`{_yaml(m.value)}`" for m in ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return page.link(ann)
    if origin in (list, tuple, set, frozenset, Sequence) or (
        isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str
    ):
        items = [a for a in args if a is not Ellipsis]
        inner = _type_name(items[0], page) if len(items) == 1 else "any"
        return f"list of {inner}"
    if origin in (dict, Mapping) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        if len(args) == 2 and args[1] is not Any:
            return f"mapping of {_type_name(args[0], page)} to {_type_name(args[1], page)}"
        return "mapping"
    if ann in (dict, Mapping):
        return "mapping"
    if ann in (list, tuple):
        return "list"
    if ann in _SCALARS:
        return _SCALARS[ann]
    return str(getattr(ann, "__name__", ann))


def _yaml(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return value if value.strip() == value and value else repr(value)
    if isinstance(value, list | tuple) and not value:
        return "[]"
    if isinstance(value, dict) and not value:
        return "{}"
    return repr(value)


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        try:
            value = info.get_default(call_default_factory=True, validated_data={})
        except Exception:  # noqa: BLE001 - a factory that needs real data
            return "computed"
        return f"`{_escape(_yaml(value))}`"
    if info.default is PydanticUndefined:
        return "**required**"
    if info.default is None:
        return ""
    return f"`{_escape(_yaml(info.default))}`"


def _enum_notes(ann: Any) -> list[tuple[type[enum.Enum], dict[str, str]]]:
    found: list[tuple[type[enum.Enum], dict[str, str]]] = []
    stack = [ann]
    while stack:
        current = stack.pop()
        if isinstance(current, type) and issubclass(current, enum.Enum):
            docs = _attribute_docstrings(current)
            by_value = {
                str(member.value): docs[member.name] for member in current if member.name in docs
            }
            if by_value:
                found.append((current, by_value))
        stack.extend(typing.get_args(current))
    return found


def _render_class(entry: _Entry, page: _Page) -> str:
    cls = entry.cls
    intro, attributes = _docstring_parts(cls)
    attr_docs = _attribute_docstrings(cls)
    lines = [f'<a id="{entry.anchor}"></a>', "", f"### {entry.title}", ""]
    if entry.where:
        lines += [entry.where, ""]
    if intro:
        lines += [intro, ""]
    if cls.model_config.get("extra") == "forbid":
        lines += ["Unknown keys are rejected.", ""]
    lines += ["| key | type | default | description |", "|---|---|---|---|"]
    notes: list[str] = []
    for name, info in cls.model_fields.items():
        key = info.validation_alias if isinstance(info.validation_alias, str) else None
        key = key or info.alias or name
        raw = _RAW_FIELDS.get((cls, name))
        typed_as = _TYPED_AS.get(name)
        if raw is not None:
            type_text = raw
        elif typed_as is not None and typed_as is not cls:
            type_text = page.link(typed_as)
        else:
            type_text = _type_name(info.annotation, page)
            extra = _constraints(info)
            if extra:
                type_text += ", " + ", ".join(extra)
        description = info.description or attr_docs.get(name) or attributes.get(name) or ""
        lines.append(
            f"| `{key}` | {_escape(type_text)} | {_default(info)} | {_escape(description)} |"
        )
        for enum_cls, values in _enum_notes(info.annotation):
            items = "\n".join(f"- `{v}`: {_escape(text)}" for v, text in values.items())
            notes.append(f"`{key}` ({enum_cls.__name__}):\n\n{items}")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines)


def _render_entries(entries: Sequence[_Entry], page: _Page) -> str:
    for entry in entries:
        page.add(entry)
    blocks = [_render_class(e, page) for e in entries]
    # Classes reached only through a field (nested models) follow, in order of discovery.
    while page.queue:
        entry = page.queue.pop(0)
        blocks.append(_render_class(entry, page))
    return "\n\n".join(blocks)


def _core_entries() -> list[tuple[str, str, list[_Entry]]]:
    m = model
    return [
        (
            "KubeEdge DeviceModel",
            "A `devices.kubeedge.io/v1beta1` DeviceModel: the properties (name, type, access "
            "mode, range) that every device of the model has, and defaults for their visitors "
            "and for the protocol's connection.",
            [
                _Entry(m.DeviceModelDoc, "DeviceModel", "devicemodel"),
                _Entry(m.K8sMetadata, "`metadata`", "metadata", "Of a DeviceModel or a Device."),
                _Entry(m.DeviceModelSpecDoc, "DeviceModel `spec`", "devicemodel-spec"),
                _Entry(m.ModelPropertyDoc, "DeviceModel `spec.properties[]`", "model-property"),
                _Entry(
                    m.VisitorConfigData,
                    "`visitors`",
                    "visitors",
                    "A property's visitor, in a DeviceModel or a Device.",
                ),
            ],
        ),
        (
            "KubeEdge Device",
            "A `devices.kubeedge.io/v1beta1` Device: an instance of a DeviceModel with its "
            "connection and per-property settings. Model and device are merged: the device's "
            "`configData` keys override the model's key by key.",
            [
                _Entry(m.DeviceDoc, "Device", "device"),
                _Entry(m.DeviceSpecDoc, "Device `spec`", "device-spec"),
                _Entry(m.DeviceModelRef, "`spec.deviceModelRef`", "devicemodelref"),
                _Entry(m.ProtocolDoc, "`spec.protocol`", "device-protocol"),
                _Entry(m.DevicePropertyDoc, "Device `spec.properties[]`", "device-property"),
                _Entry(m.DesiredDoc, "`desired`", "desired"),
                _Entry(m.MethodDoc, "`spec.methods[]`", "methods"),
                _Entry(m.StateReportDoc, "`stateReport`", "statereport"),
            ],
        ),
        (
            "Native form",
            "Mapperkit's compact form: one document with a `devices:` list, each device "
            "holding its model's properties, their visitors and its connection in one place.",
            [
                _Entry(m.NativeFileDoc, "Native file", "native-file"),
                _Entry(m.NativeDeviceDoc, "Native `devices[]`", "native-device"),
                _Entry(m.NativePropertyDoc, "Native `devices[].properties[]`", "native-property"),
            ],
        ),
        (
            "Reporting",
            "How and where a property's values are reported, in both forms.",
            [
                _Entry(m.ReportStrategyDoc, "`reportStrategy`", "reportstrategy"),
                _Entry(m.PushMethod, "`pushMethod`", "pushmethod"),
            ],
        ),
    ]


@dataclass(frozen=True, slots=True)
class Section:
    """One part of the reference: ``core`` or ``protocol <name>``."""

    key: str
    text: str


def _core_section() -> Section:
    page = _Page()
    groups = _core_entries()
    for _, _, entries in groups:  # every group links to the others
        for entry in entries:
            page.add(entry)
    parts: list[str] = []
    for heading, intro, entries in groups:
        parts += [f"## {heading}", intro, _render_entries(entries, page)]
    return Section("core", "\n\n".join(parts))


def _protocol_section(protocol: str, driver: DriverClass, distribution: str | None) -> Section:
    page = _Page(prefix=f"{protocol}-")
    caps = ", ".join(sorted(c.value for c in driver.capabilities)) or "none"
    where = f"`{driver.__module__}:{driver.__qualname__}`"
    if distribution:
        where += f" from the `{distribution}` distribution"
    head = [
        f'<a id="protocol-{protocol}"></a>',
        "",
        f"## Protocol `{protocol}`",
        "",
        f"Driver {where}; capabilities: {caps}.",
    ]
    entries = [
        _Entry(
            driver.protocol_config,
            f"`{protocol}` connection",
            f"{protocol}-connection",
            "`spec.protocol.configData` of a Device (merged over the model's "
            "`protocolConfigData`), or `connection` in the native form.",
        ),
        _Entry(
            driver.visitor_config,
            f"`{protocol}` visitor",
            f"{protocol}-visitor",
            "`visitors.configData` of a property (the device's keys over the model's), or "
            "`visitor` in the native form.",
        ),
    ]
    body = _render_entries(entries, page)
    return Section(f"protocol {protocol}", "\n".join(head) + "\n\n" + body)


def render_sections(
    drivers: Mapping[str, DriverClass], distributions: Mapping[str, str | None] | None = None
) -> list[Section]:
    """The reference's sections: the core schema, then one per protocol, sorted."""
    dists = distributions or {}
    return [_core_section()] + [
        _protocol_section(protocol, drivers[protocol], dists.get(protocol))
        for protocol in sorted(drivers)
    ]


def render(
    drivers: Mapping[str, DriverClass], distributions: Mapping[str, str | None] | None = None
) -> str:
    """The whole reference as Markdown, for ``drivers`` (protocol name to class)."""
    names = sorted(drivers)
    listed = ", ".join(f"[`{p}`](#protocol-{p})" for p in names) or "none"
    header = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{GENERATOR}` from the pydantic models; do not edit by hand. -->",
        f"<!-- protocols: {' '.join(names)} -->",
        "",
        "Every key a device file may hold, generated from the pydantic classes that validate "
        "the files, so this page and the validation cannot disagree. Keys are case-sensitive; "
        "times are in milliseconds unless a key says otherwise; a blank default means the key "
        "is optional and unset.",
        "",
        f"The protocol sections come from the drivers installed when the page was generated: "
        f"{listed}. A driver installed later (a plugin) documents its own keys the same way: "
        f"run `{GENERATOR} --output FILE` where it is installed.",
        "",
        '<a id="protocols"></a>',
        "",
        "Contents: [DeviceModel](#devicemodel), [Device](#device), "
        "[native form](#native-file), [reportStrategy](#reportstrategy), "
        "[pushMethod](#pushmethod)" + "".join(f", [{p}](#protocol-{p})" for p in names) + ".",
    ]
    parts = ["\n".join(header)]
    parts += [
        f"<!-- section: {section.key} -->\n\n{section.text}"
        for section in render_sections(drivers, distributions)
    ]
    return "\n\n".join(parts).rstrip() + "\n"


# --------------------------------------------------------------------------- checking
def protocols_in(text: str) -> list[str] | None:
    """The protocols a generated file's header lists; ``None`` when it has no header."""
    match = _PROTOCOLS_RE.search(text)
    if match is None:
        return None
    return match.group(1).split()


def split_sections(text: str) -> dict[str, str]:
    """A generated file's sections by key (``core``, ``protocol modbus`` ...)."""
    marks = list(_SECTION_RE.finditer(text))
    out: dict[str, str] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        out[mark.group(1)] = text[mark.end() : end].strip()
    return out


def load_drivers(
    protocols: Iterable[str] | None = None, registry: Registry | None = None
) -> tuple[dict[str, DriverClass], dict[str, str | None], dict[str, str]]:
    """Load drivers: ``(drivers, distributions, unavailable)``.

    Args:
        protocols: the protocols wanted; ``None`` for every installed driver.
        registry: where to look (default: the installed entry points).

    Returns:
        the driver classes and their distributions by protocol, and for each
        wanted protocol that cannot be loaded, the reason.
    """
    reg = registry if registry is not None else Registry()
    infos = {i.protocol: i for i in reg.infos()}
    wanted = list(protocols) if protocols is not None else list(infos)
    drivers: dict[str, DriverClass] = {}
    dists: dict[str, str | None] = {}
    missing: dict[str, str] = {}
    for protocol in wanted:
        info = infos.get(protocol)
        if info is None:
            missing[protocol] = "no driver with this name is installed"
        elif info.driver is None:
            missing[protocol] = info.error or "the driver cannot be loaded"
        else:
            drivers[protocol] = info.driver
            dists[protocol] = info.distribution
    return drivers, dists, missing


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What :func:`check` found."""

    protocols: list[str]
    missing: dict[str, str]
    diff: str

    @property
    def ok(self) -> bool:
        return not self.missing and not self.diff


def check(path: Path, registry: Registry | None = None) -> CheckResult:
    """Compare ``path`` with a fresh rendering for exactly the protocols its header lists.

    A protocol whose driver cannot be loaded here is reported in ``missing``
    (and nothing is compared); otherwise ``diff`` is empty when the file is
    up to date.
    """
    current = path.read_text(encoding="utf-8")
    protocols = protocols_in(current)
    if protocols is None:
        return CheckResult([], {}, f"{path} has no '<!-- protocols: ... -->' header")
    drivers, dists, missing = load_drivers(protocols, registry)
    if missing:
        return CheckResult(protocols, missing, "")
    fresh = render(drivers, dists)
    if fresh == current:
        return CheckResult(protocols, {}, "")
    diff = "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            f"{path} (on disk)",
            f"{path} (from the models)",
        )
    )
    return CheckResult(protocols, {}, diff)


# --------------------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mapper_sdk.docgen [--check] [--output FILE] [--protocol P ...]``."""
    parser = argparse.ArgumentParser(
        prog=GENERATOR,
        description="Write the configuration reference from the pydantic models and the "
        "installed drivers' config classes.",
    )
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"the Markdown file ('-' for stdout; default {DEFAULT_OUTPUT})",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 with a diff when the file differs from the models "
        "(for the protocols its header lists), 2 when one of them is not installed",
    )
    parser.add_argument(
        "--protocol",
        action="append",
        metavar="NAME",
        help="document only this protocol (repeatable; default: every installed driver)",
    )
    args = parser.parse_args(argv)
    if args.check:
        if str(args.output) == "-":
            parser.error("--check needs a file, not '-'")
        if not args.output.is_file():
            print(f"{args.output} does not exist; generate it first", file=sys.stderr)
            return 1
        result = check(args.output)
        if result.missing:
            for protocol, reason in result.missing.items():
                print(
                    f"cannot check: {args.output} documents protocol {protocol!r}, whose "
                    f"driver is not loadable here: {reason}",
                    file=sys.stderr,
                )
            return 2
        if result.diff:
            sys.stdout.write(result.diff)
            print(f"{args.output} is stale; regenerate it with `{GENERATOR}`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date ({', '.join(result.protocols) or 'no protocols'})")
        return 0
    drivers, dists, missing = load_drivers(args.protocol)
    for protocol, reason in missing.items():
        print(f"protocol {protocol!r} is left out: {reason}", file=sys.stderr)
    if args.protocol and missing:
        return 2
    text = render(drivers, dists)
    if str(args.output) == "-":
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output} ({', '.join(sorted(drivers)) or 'no protocols'})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
