"""Generate the command-line reference (``docs/cli.md``) from the argparse parsers.

The page is rendered from :func:`mapper_sdk.cli.build_parser`, the parser that
parses ``mapperkit``'s command line, so it cannot drift from it: every command
and subcommand with its one-line summary, description, usage, arguments and
options. Commands that hand their arguments to a parser of their own
(``mapperkit sim <protocol>``, marked ``pass_through``) are rendered from that
parser, built the way the command builds it (:data:`DELEGATES`).

The output does not depend on the terminal or the environment: usage lines are
wrapped here at a fixed width (argparse would follow ``$COLUMNS``), and the
parsers are built with every ``MAPPERKIT_*`` variable unset, so a default read
from the environment shows as its fallback and the variable that overrides it
(found by building the parsers a second time with each such variable answering
its own name)::

    python -m mapper_sdk.clidoc                 # write docs/cli.md
    python -m mapper_sdk.clidoc --check         # exit 1 with a diff when stale
    python -m mapper_sdk.clidoc --output -      # print it
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import re
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "DEFAULT_OUTPUT",
    "DELEGATES",
    "CheckResult",
    "Command",
    "check",
    "collect",
    "documented_commands",
    "main",
    "render",
]

DEFAULT_OUTPUT = Path("docs/cli.md")
GENERATOR = "python -m mapper_sdk.clidoc"
DISTRIBUTION = "mapperkit"
ENV_PREFIX = "MAPPERKIT_"
USAGE_WIDTH = 88

DELEGATES: Mapping[tuple[str, ...], str] = {("sim",): "simulators.{name}.cli"}
"""Where the real parser of a ``pass_through`` subcommand comes from.

Keyed by the parent command's path; the value names a module (``{name}`` is the
subcommand) whose ``register(subparsers)`` adds the subcommand's parser, as
``mapperkit sim`` does when it runs one.
"""

Build = Callable[[], argparse.ArgumentParser]


class ClidocError(ConfigError):
    """A parser cannot be rendered (a delegate module is missing or broken)."""


# --------------------------------------------------------------------------- environment
class _Environment(MutableMapping[str, str]):
    """Stands in for ``os.environ`` while parsers are built.

    Other variables pass through. ``MAPPERKIT_*`` variables are recorded when
    looked up and are either unset or, with ``marked``, answer ``$NAME``, which
    shows which option default comes from which variable.
    """

    def __init__(self, base: Mapping[str, str], *, marked: bool) -> None:
        self._data = {k: v for k, v in base.items() if not k.startswith(ENV_PREFIX)}
        self.marked = marked
        self.seen: set[str] = set()

    def __getitem__(self, key: str) -> str:
        if key.startswith(ENV_PREFIX):
            self.seen.add(key)
            if self.marked:
                return f"${key}"
            raise KeyError(key)
        return self._data[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and key.startswith(ENV_PREFIX):
            self.seen.add(key)
            return self.marked
        return key in self._data


@contextlib.contextmanager
def _environment(*, marked: bool) -> Iterator[_Environment]:
    real = os.environ
    fake = _Environment(real, marked=marked)
    # os.getenv reads the module global too, so both see the stand-in.
    setattr(os, "environ", fake)  # noqa: B010 - a typed assignment would not type-check
    try:
        yield fake
    finally:
        setattr(os, "environ", real)  # noqa: B010


# --------------------------------------------------------------------------- the tree
@dataclass(slots=True)
class Command:
    """One parser of the tree, with what its parent says about it.

    Attributes:
        path: the words after ``mapperkit`` (``("twin", "serve")``; ``()`` for the root).
        parser: its parser (the delegate's parser for a pass-through command).
        summary: the one-line help its parent lists it with.
        children: its subcommands, in the order they were added.
        env: option dest to the variable its default comes from.
    """

    path: tuple[str, ...]
    parser: argparse.ArgumentParser
    summary: str | None = None
    children: list[Command] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return " ".join(("mapperkit", *self.path))

    @property
    def anchor(self) -> str:
        return "-".join(("mapperkit", *self.path))

    def walk(self) -> Iterator[Command]:
        """This command, then its descendants depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _delegate(path: tuple[str, ...], delegates: Mapping[tuple[str, ...], str]) -> Any:
    """The real parser of a pass-through command, built as its parent builds it."""
    parent, name = path[:-1], path[-1]
    pattern = delegates.get(parent)
    if pattern is None:
        raise ClidocError(
            f"`mapperkit {' '.join(path)}` hands its arguments to a parser of its own and "
            "clidoc does not know where it comes from (add it to DELEGATES)"
        )
    module_name = pattern.format(name=name)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ClidocError(f"cannot document `mapperkit {' '.join(path)}`: {exc}") from exc
    real = argparse.ArgumentParser(prog=" ".join(("mapperkit", *parent)))
    module.register(real.add_subparsers(dest="command"))
    sub = _subparsers(real)
    if sub is None or name not in sub.choices:
        raise ClidocError(f"{module_name}.register did not add a parser named {name!r}")
    return sub.choices[name]


def _tree(
    parser: argparse.ArgumentParser,
    path: tuple[str, ...],
    summary: str | None,
    delegates: Mapping[tuple[str, ...], str],
    only: Collection[str] | None,
) -> Command:
    node = Command(path, parser, summary)
    sub = _subparsers(parser)
    if sub is None:
        return node
    helps = {a.dest: a.help for a in sub._choices_actions}
    seen: set[int] = set()
    for name, child in sub.choices.items():
        if id(child) in seen:  # an alias
            continue
        seen.add(id(child))
        if not path and only is not None and name not in only:
            continue
        child_path = (*path, name)
        if child.get_default("pass_through"):
            child = _delegate(child_path, delegates)
        node.children.append(_tree(child, child_path, helps.get(name), delegates, None))
    return node


def documented_commands(distribution: str = DISTRIBUTION) -> set[str]:
    """Names of the ``mapperkit.commands`` entry points ``distribution`` provides."""
    names: set[str] = set()
    for ep in entry_points(group="mapperkit.commands"):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.name == distribution:
            names.add(ep.name)
    return names


def collect(
    build: Build | None = None,
    *,
    delegates: Mapping[tuple[str, ...], str] = DELEGATES,
    only: Collection[str] | None = None,
) -> Command:
    """Build the parsers (twice, see the module docstring) and return the command tree.

    Args:
        build: returns the root parser; default :func:`mapper_sdk.cli.build_parser`.
        delegates: where pass-through commands' parsers come from.
        only: top-level commands to keep (default: all).
    """
    if build is None:
        from .cli import build_parser

        build = build_parser
    with _environment(marked=False):
        root = _tree(build(), (), None, delegates, only)
    with _environment(marked=True):
        marked = _tree(build(), (), None, delegates, only)
    for plain, probe in zip(root.walk(), marked.walk(), strict=True):
        for action, twin in zip(plain.parser._actions, probe.parser._actions, strict=True):
            default = twin.default
            if (
                isinstance(default, str)
                and default.startswith("$" + ENV_PREFIX)
                and default != action.default
            ):
                plain.env[action.dest] = default[1:]
    return root


# --------------------------------------------------------------------------- formatting
_RST_LITERAL = re.compile(r"``(.+?)``")
_RST_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?([^`]+)`")
_CODE_SPAN = re.compile(r"(`[^`]*`)")


def _markdown(text: str, *, table: bool = False) -> str:
    """Help text as Markdown: reST literals and roles become code spans; ``<``,
    ``>`` outside code spans are escaped (so ``<protocol>`` is not taken for
    HTML), and in a table cell every ``|`` too."""
    text = _RST_ROLE.sub(r"`\1`", _RST_LITERAL.sub(r"`\1`", text))
    parts = _CODE_SPAN.split(text)
    for i, part in enumerate(parts):
        if not part.startswith("`"):
            parts[i] = part.replace("<", "&lt;").replace(">", "&gt;")
    out = "".join(parts)
    return out.replace("|", "\\|") if table else out


def _code(text: str, *, table: bool = False) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if "`" in text else ""
    out = f"{fence}{pad}{text}{pad}{fence}"
    return out.replace("|", "\\|") if table else out


def _paragraphs(parser: argparse.ArgumentParser, text: str) -> str:
    """A description or epilog as argparse would show it, in Markdown."""
    formatter = parser.formatter_class
    if isinstance(formatter, type) and issubclass(formatter, argparse.RawDescriptionHelpFormatter):
        lines = [line.rstrip() for line in text.strip("\n").splitlines()]
        return _markdown("\n".join(lines))
    return _markdown(" ".join(text.split()))


def _metavar(action: argparse.Action, default: str) -> tuple[str, ...]:
    if action.metavar is not None:
        if isinstance(action.metavar, tuple):
            return action.metavar
        return (action.metavar,)
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return ("{" + ",".join(str(c) for c in action.choices) + "}",)
    return (default,)


def _args(action: argparse.Action) -> str:
    """What follows an option (or stands for a positional), as in argparse's usage."""
    if action.nargs == 0:
        return ""
    default = action.dest.upper() if action.option_strings else action.dest
    names = _metavar(action, default)

    def name(i: int) -> str:
        return names[i] if i < len(names) else names[-1]

    nargs = action.nargs
    if nargs is None:
        return name(0)
    if nargs == argparse.OPTIONAL:
        return f"[{name(0)}]"
    if nargs == argparse.ZERO_OR_MORE:
        return f"[{name(0)} ...]"
    if nargs == argparse.ONE_OR_MORE:
        return f"{name(0)} [{name(1)} ...]"
    if nargs == argparse.REMAINDER:
        return "..."
    if nargs == argparse.PARSER:
        return f"{name(0)} ..."
    if isinstance(nargs, int):
        return " ".join(name(i) for i in range(nargs))
    return name(0)


def _invocation(action: argparse.Action, option: str | None = None) -> str:
    args = _args(action)
    if not action.option_strings:
        return args
    head = option or action.option_strings[0]
    return f"{head} {args}" if args else head


def _usage(parser: argparse.ArgumentParser) -> str:
    """The usage line, wrapped at :data:`USAGE_WIDTH` between items."""
    if parser.usage is not None:
        return "usage: " + parser.usage.replace("%(prog)s", parser.prog)
    groups = {
        id(action): group
        for group in parser._mutually_exclusive_groups
        for action in group._group_actions
    }
    done: set[int] = set()
    optionals = [a for a in parser._actions if a.option_strings]
    positionals = [a for a in parser._actions if not a.option_strings]
    items: list[str] = []
    for action in (*optionals, *positionals):
        if action.help == argparse.SUPPRESS or id(action) in done:
            continue
        group = groups.get(id(action))
        if group is not None:
            members = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
            done.update(id(a) for a in members)
            inner = " | ".join(_invocation(a) for a in members)
            items.append(f"({inner})" if group.required else f"[{inner}]")
            continue
        text = _invocation(action)
        if action.option_strings and not action.required:
            text = f"[{text}]"
        items.append(text)
    head = f"usage: {parser.prog}"
    indent = " " * (len(head) + 1)
    lines = [head]
    for item in items:
        if lines[-1] != head and len(lines[-1]) + 1 + len(item) > USAGE_WIDTH:
            lines.append(indent + item)
        else:
            lines[-1] = f"{lines[-1]} {item}"
    return "\n".join(lines)


def _help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's ``%(...)s`` expanded, as ``--help`` shows it."""
    text = action.help or ""
    if not text:
        return ""
    params: dict[str, Any] = dict(vars(action), prog=prog)
    for key, value in list(params.items()):
        if value is argparse.SUPPRESS:
            del params[key]
        elif isinstance(value, list | tuple) and key == "choices":
            params[key] = ", ".join(str(v) for v in value)
    text = text % params
    return " ".join(text.split())


def _default(command: Command, action: argparse.Action) -> str:
    # argparse marks a '*' positional required although it accepts nothing.
    if action.required and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
        return "**required**"
    variable = command.env.get(action.dest)
    if action.nargs == 0:  # flags: store_true, store_const, count, ...
        return _code(f"${variable}") if variable else ""
    value = action.default
    shown = ""
    if value is not None and value is not argparse.SUPPRESS:
        if isinstance(value, list | tuple):
            shown = _code(" ".join(str(v) for v in value), table=True) if value else ""
        else:
            shown = _code(str(value), table=True) if str(value) else '`""`'
    if variable:
        return f"{_code('$' + variable)}, else {shown}" if shown else _code("$" + variable)
    return shown


def _rows(command: Command, actions: Sequence[argparse.Action]) -> list[str]:
    rows: list[str] = []
    for action in actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        cell = _code(_invocation(action), table=True)
        for alias in action.option_strings[1:]:
            cell += ", " + _code(alias, table=True)
        help_text = _markdown(_help(action, command.parser.prog), table=True)
        rows.append(f"| {cell} | {_default(command, action)} | {help_text} |")
    return rows


def _group_title(title: str | None) -> str:
    if title in ("positional arguments",):
        return "Arguments"
    if title in ("options", "optional arguments"):
        return "Options"
    return title or "Options"


def _section(command: Command) -> list[str]:
    level = "#" * min(1 + max(len(command.path), 1), 6)
    parser = command.parser
    out = [f'<a id="{command.anchor}"></a>', "", f"{level} `{command.name}`", ""]
    summary = command.summary.strip() if command.summary else ""
    if summary:
        out += [_markdown(summary[0].upper() + summary[1:]).rstrip(".") + ".", ""]
    if parser.description:
        out += [_paragraphs(parser, parser.description), ""]
    out += ["```text", _usage(parser), "```", ""]
    if command.children:
        out += ["| command | what it does |", "|---|---|"]
        for child in command.children:
            link = f"[`{child.path[-1]}`](#{child.anchor})"
            out.append(f"| {link} | {_markdown(child.summary or '', table=True)} |")
        out.append("")
    for group in parser._action_groups:
        rows = _rows(command, group._group_actions)
        if not rows:
            continue
        title = _group_title(group.title)
        out += [f"**{title}**", ""]
        if group.description:
            out += [_markdown(" ".join(group.description.split())), ""]
        head = "argument" if title == "Arguments" else "option"
        out += [f"| {head} | default | description |", "|---|---|---|", *rows, ""]
    if parser.epilog:
        out += [_paragraphs(parser, parser.epilog), ""]
    return out


_INTRO = (
    "Every `mapperkit` command with its arguments and options, rendered from the argparse "
    "parsers that read the command line, so this page and `mapperkit COMMAND --help` cannot "
    "disagree. A default written as `$VARIABLE, else X` comes from that environment variable "
    "when it is set. Every command exits with 0 on success, 1 when it fails at run time "
    "(a device, a broker or the twin refused or did not answer) and 2 for a configuration "
    "error or bad arguments. The [quick start](quickstart.md) shows the commands at work, and "
    "[concepts](concepts.md) explains the words."
)


def render(root: Command | None = None) -> str:
    """The whole page for a command tree (default: :func:`collect` of ``mapperkit``'s
    own commands)."""
    if root is None:
        root = collect(only=documented_commands())
    commands = list(root.walk())
    out = [
        "# Command-line reference",
        "",
        f"<!-- Generated by `{GENERATOR}` from the argparse parsers; do not edit by hand. -->",
        "",
        _INTRO,
        "",
        "Commands:",
        "",
    ]
    for command in commands[1:]:
        indent = "  " * (len(command.path) - 1)
        summary = f": {_markdown(command.summary)}" if command.summary else ""
        out.append(f"{indent}- [`{command.name}`](#{command.anchor}){summary}")
    out.append("")
    for command in commands:
        out += _section(command)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- check
@dataclass(frozen=True, slots=True)
class CheckResult:
    """What :func:`check` found: an empty ``diff`` when the file is up to date."""

    diff: str

    @property
    def ok(self) -> bool:
        return not self.diff


def check(path: Path, fresh: str | None = None) -> CheckResult:
    """Compare ``path`` with a fresh rendering (or with ``fresh``)."""
    current = path.read_text(encoding="utf-8")
    fresh = render() if fresh is None else fresh
    if current == fresh:
        return CheckResult("")
    diff = "".join(
        difflib.unified_diff(
            current.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            f"{path} (on disk)",
            f"{path} (from the parsers)",
        )
    )
    return CheckResult(diff)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mapper_sdk.clidoc [--check] [--output FILE]``."""
    parser = argparse.ArgumentParser(
        prog=GENERATOR,
        description="Write the command-line reference from mapperkit's argparse parsers.",
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
        help="do not write; exit 1 with a diff when the file differs from the parsers",
    )
    args = parser.parse_args(argv)
    try:
        text = render()
    except ClidocError as exc:
        print(f"{GENERATOR}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if str(args.output) == "-":
            parser.error("--check needs a file, not '-'")
        if not args.output.is_file():
            print(f"{args.output} does not exist; generate it with `{GENERATOR}`", file=sys.stderr)
            return 1
        result = check(args.output, text)
        if not result.ok:
            sys.stdout.write(result.diff)
            print(f"{args.output} is stale; regenerate it with `{GENERATOR}`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    if str(args.output) == "-":
        sys.stdout.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
