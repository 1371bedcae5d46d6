"""The command-line reference: rendering from the parsers, and docs/cli.md kept current."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

import pytest

from mapper_sdk import clidoc

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HINT = "docs/cli.md is stale: regenerate it with `python -m mapper_sdk.clidoc`"


@functools.cache
def _fresh() -> str:
    return clidoc.render()


# ---- docs/cli.md ------------------------------------------------------------------
def test_reference_is_up_to_date() -> None:
    assert REFERENCE.is_file(), HINT
    result = clidoc.check(REFERENCE, _fresh())
    assert result.ok, f"{HINT}\n{result.diff}"


def test_reference_documents_every_command_and_option() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    root = clidoc.collect(only=clidoc.documented_commands())
    names = [c.name for c in root.walk()]
    for expected in ("mapperkit run", "mapperkit twin serve", "mapperkit sim modbus"):
        assert expected in names
    for command in root.walk():
        assert f'<a id="{command.anchor}"></a>' in text, command.name
        for action in command.parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in text, f"{command.name} {option}"


def test_output_depends_on_neither_terminal_nor_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "30")
    monkeypatch.setenv("MAPPERKIT_BROKER", "mqtt://elsewhere:1")
    monkeypatch.setenv("MAPPERKIT_PROTOCOL", "opcua")
    assert clidoc.render() == _fresh()
    # The stand-in environment is gone again.
    assert os.environ["MAPPERKIT_BROKER"] == "mqtt://elsewhere:1"
    assert "MAPPERKIT_BROKER" in os.environ


# ---- rendering ------------------------------------------------------------------------
def _sample() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mapperkit", description="The sample tool.")
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        aliases=["s"],
        help="serve things",
        description="Serve ``things`` through :class:`~pkg.Thing` to <clients>.",
    )
    serve.add_argument("path", help="where they are")
    serve.add_argument("extra", nargs="*", metavar="K=V", help="extra settings")
    serve.add_argument("--mode", choices=["a", "b"], default="a", help="how (default %(default)s)")
    serve.add_argument("--port", type=int, required=True, help="a port")
    serve.add_argument(
        "--url", default=os.environ.get("MAPPERKIT_CLIDOC_URL", "mqtt://x:1"), help="URL"
    )
    serve.add_argument("--user", default=os.environ.get("MAPPERKIT_CLIDOC_USER"))
    serve.add_argument("--secret", help=argparse.SUPPRESS)
    serve.add_argument("--glob", metavar="NAME[:rw|ro]", help="a | b")
    serve.add_argument("--file", "-f", nargs="+", metavar="FILE", help="files")
    group = serve.add_argument_group("Network", "How it is reached.")
    group.add_argument("--host", default="", help="the host")
    either = serve.add_mutually_exclusive_group()
    either.add_argument("--fast", action="store_true", help="fast")
    either.add_argument("--slow", action="store_true", help="slow")
    raw = sub.add_parser(
        "raw",
        help="keeps its lines",
        description="Lines:\n\n* one\n* two",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See the guide.",
    )
    raw.add_argument("--n", type=int, default=3)
    sim = sub.add_parser("sim", help="simulators")
    sims = sim.add_subparsers(dest="simulator", metavar="PROTOCOL")
    widget = sims.add_parser("widget", help="the widget", add_help=False)
    widget.set_defaults(pass_through=True)
    return root


DELEGATES: dict[tuple[str, ...], str] = {("sim",): "tests.docs.fake_delegate"}


def _sections(text: str) -> dict[str, str]:
    parts = text.split('<a id="')
    return {part.split('"', 1)[0]: part for part in parts[1:]}


def test_rendering_of_a_sample_tree() -> None:
    text = clidoc.render(clidoc.collect(_sample, delegates=DELEGATES))
    sections = _sections(text)
    assert list(sections) == [
        "mapperkit",
        "mapperkit-serve",
        "mapperkit-raw",
        "mapperkit-sim",
        "mapperkit-sim-widget",
    ]
    serve = sections["mapperkit-serve"]
    # Summary, description with reST turned into Markdown and HTML escaped.
    assert "## `mapperkit serve`\n\nServe things.\n" in serve
    assert "Serve `things` through `pkg.Thing` to &lt;clients&gt;." in serve
    # Usage, wrapped at a fixed width, with the mutually exclusive group.
    assert "usage: mapperkit serve [-h] [--mode {a,b}] --port PORT" in serve
    assert "[--fast | --slow]" in serve
    assert "path [K=V ...]" in serve
    assert "--secret" not in serve
    for line in serve.split("```text\n", 1)[1].split("```", 1)[0].splitlines():
        assert len(line) <= clidoc.USAGE_WIDTH
    rows = {line.split(" | ")[0]: line for line in serve.splitlines() if line.startswith("| `")}
    assert rows["| `path`"] == "| `path` | **required** | where they are |"
    assert rows["| `[K=V ...]`"] == "| `[K=V ...]` |  | extra settings |"
    assert rows["| `--mode {a,b}`"] == "| `--mode {a,b}` | `a` | how (default a) |"
    assert rows["| `--port PORT`"] == "| `--port PORT` | **required** | a port |"
    # Defaults from the environment name their variable.
    assert (
        rows["| `--url URL`"]
        == "| `--url URL` | `$MAPPERKIT_CLIDOC_URL`, else `mqtt://x:1` | URL |"
    )
    assert rows["| `--user USER`"] == "| `--user USER` | `$MAPPERKIT_CLIDOC_USER` |  |"
    # Pipes are escaped in table cells, aliases listed, empty strings shown.
    assert rows["| `--glob NAME[:rw\\|ro]`"].endswith("|  | a \\| b |")
    assert rows["| `--file FILE [FILE ...]`, `-f`"].endswith("|  | files |")
    assert '| `--host HOST` | `""` | the host |' in serve
    assert "**Network**\n\nHow it is reached.\n" in serve
    assert "**Arguments**" in serve and "**Options**" in serve
    # A raw description keeps its lines; the epilog follows the options.
    raw = sections["mapperkit-raw"]
    assert "Lines:\n\n* one\n* two\n" in raw
    assert raw.rstrip().endswith("See the guide.")
    assert "| `--n N` | `3` |  |" in raw
    # The root lists its commands, once each (the alias is not a command).
    root = sections["mapperkit"]
    assert "| [`serve`](#mapperkit-serve) | serve things |" in root
    assert "[`s`]" not in root


def test_pass_through_commands_render_their_own_parser() -> None:
    text = clidoc.render(clidoc.collect(_sample, delegates=DELEGATES))
    widget = _sections(text)["mapperkit-sim-widget"]
    assert "### `mapperkit sim widget`\n\nThe widget.\n\nServe a simulated widget." in widget
    assert "usage: mapperkit sim widget [-h] [--port PORT]" in widget
    assert "| `--port PORT` | `5020` | TCP port (default 5020) |" in widget


def test_an_unknown_delegate_is_a_precise_error() -> None:
    with pytest.raises(clidoc.ClidocError, match=r"mapperkit sim widget.*DELEGATES"):
        clidoc.collect(_sample, delegates={})
    with pytest.raises(clidoc.ClidocError, match="cannot document `mapperkit sim widget`"):
        clidoc.collect(_sample, delegates={("sim",): "tests.docs.no_such_module"})


def test_only_keeps_the_named_top_level_commands() -> None:
    root = clidoc.collect(_sample, delegates=DELEGATES, only={"raw"})
    assert [c.name for c in root.walk()] == ["mapperkit", "mapperkit raw"]


def test_the_real_environment_is_restored_even_when_building_fails() -> None:
    real = os.environ

    def broken() -> argparse.ArgumentParser:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        clidoc.collect(broken)
    assert os.environ is real


# ---- the command ----------------------------------------------------------------------
def test_command_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.md"
    assert clidoc.main(["--check", "--output", str(path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert clidoc.main(["--output", str(path)]) == 0
    assert path.read_text(encoding="utf-8") == _fresh()
    assert clidoc.main(["--check", "--output", str(path)]) == 0
    assert "is up to date" in capsys.readouterr().out
    path.write_text(path.read_text(encoding="utf-8") + "hand edit\n", encoding="utf-8")
    assert clidoc.main(["--check", "--output", str(path)]) == 1
    captured = capsys.readouterr()
    assert "-hand edit" in captured.out
    assert "is stale" in captured.err


def test_command_prints_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert clidoc.main(["--output", "-"]) == 0
    assert capsys.readouterr().out == _fresh()
