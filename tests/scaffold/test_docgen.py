"""The configuration reference: rendering from models, and docs/configuration.md kept current."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from mapper_sdk import docgen
from mapper_sdk.driver import Driver, Reading
from mapper_sdk.model import PropertySpec
from mapper_sdk.registry import Registry

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
TEXT = REFERENCE.read_text(encoding="utf-8") if REFERENCE.is_file() else ""
PROTOCOLS = docgen.protocols_in(TEXT) or []
HINT = "docs/configuration.md is stale: regenerate it with `python -m mapper_sdk.docgen`"


# ---- docs/configuration.md ----------------------------------------------------------
def test_reference_exists_with_a_protocols_header() -> None:
    assert REFERENCE.is_file(), HINT
    assert docgen.protocols_in(TEXT) is not None, "the header lists no protocols"


def test_core_section_is_up_to_date() -> None:
    on_disk = docgen.split_sections(TEXT).get("core")
    fresh = docgen.render_sections({})[0]
    assert fresh.key == "core"
    assert on_disk == fresh.text.strip(), HINT


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_protocol_section_is_up_to_date(protocol: str) -> None:
    drivers, dists, missing = docgen.load_drivers([protocol])
    if missing:
        pytest.skip(
            f"the {protocol} driver cannot be loaded here ({missing[protocol]}), so its "
            "section of docs/configuration.md is not checked"
        )
    on_disk = docgen.split_sections(TEXT).get(f"protocol {protocol}")
    fresh = docgen.render_sections(drivers, dists)[1]
    assert on_disk == fresh.text.strip(), HINT


def test_whole_file_is_up_to_date() -> None:
    result = docgen.check(REFERENCE)
    if result.missing:
        pytest.skip(f"drivers not loadable here: {result.missing}; sections are checked apart")
    assert result.ok, f"{HINT}\n{result.diff}"


# ---- rendering --------------------------------------------------------------------
class Speed(enum.StrEnum):
    SLOW = "slow"
    """Gently."""
    FAST = "fast"
    """At once."""


class Step(BaseModel):
    """One step."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(default=1, ge=1, le=9, description="how far")


class SampleConnection(BaseModel):
    """How to reach a sample device.

    Attributes:
        host: where it listens,
            on two lines.
        mode: how it is driven.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    mode: Literal["a", "b"] = "a"
    speed: Speed = Speed.SLOW
    """How fast it goes."""
    table: str = Field(default="x|y", alias="register", pattern=r"^\w+$")
    steps: tuple[Step, ...] = ()
    extra: dict[str, bytes] | None = None


class SampleVisitor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    point: str = Field(min_length=1, description="the point")
    tags: list[str] = Field(default_factory=list)


class SampleDriver(Driver[SampleConnection, SampleVisitor]):
    protocol = "sample"
    protocol_config = SampleConnection
    visitor_config = SampleVisitor

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def read(self, properties: Sequence[PropertySpec[Any]]) -> dict[str, Reading]:
        return {}


def _sample_section() -> str:
    return docgen.render_sections({"sample": SampleDriver}, {"sample": "sample-dist"})[1].text


def test_protocol_section_renders_every_source_of_text() -> None:
    text = _sample_section()
    assert "## Protocol `sample`" in text
    assert "from the `sample-dist` distribution; capabilities: write." in text
    assert "How to reach a sample device." in text
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| `")}
    # Google-style Attributes, continued lines joined; required fields.
    host = "| `host` | string | **required** | where it listens, on two lines. |"
    assert rows["| `host`"] == host
    assert "one of `a`, `b` | `a` | how it is driven." in rows["| `mode`"]
    # An attribute docstring; an enum's member docstrings listed below the table.
    assert "one of `slow`, `fast` | `slow` | How fast it goes." in rows["| `speed`"]
    assert "- `slow`: Gently." in text
    assert "- `fast`: At once." in text
    # The YAML key is the alias; constraints; a '|' escaped inside the table.
    assert rows["| `register`"].startswith("| `register` | string, matching `^\\w+$` | `x\\|y` |")
    # Nested models are linked and rendered after the top-level ones.
    assert "list of [Step](#sample-step) | `[]`" in rows["| `steps`"]
    assert '<a id="sample-step"></a>' in text
    assert "| `size` | integer, ≥ 1, ≤ 9 | `1` | how far |" in text
    assert "mapping of string to bytes" in rows["| `extra`"]
    assert "| `point` | string, length ≥ 1 | **required** | the point |" in text
    assert "| `tags` | list of string | `[]` |  |" in text
    assert text.index("`sample` visitor") < text.index("### `Step`")


def test_whole_page_lists_its_protocols_and_splits_into_sections() -> None:
    page = docgen.render({"sample": SampleDriver}, {"sample": "sample-dist"})
    assert docgen.protocols_in(page) == ["sample"]
    sections = docgen.split_sections(page)
    assert list(sections) == ["core", "protocol sample"]
    assert sections["protocol sample"] == _sample_section().strip()
    assert docgen.protocols_in(docgen.render({})) == []


def test_core_section_documents_the_schema() -> None:
    core = docgen.render_sections({})[0].text
    for heading in (
        "### DeviceModel",
        "### Device `spec`",
        "### Native `devices[].properties[]`",
        "### `reportStrategy`",
        "### `pushMethod`",
    ):
        assert heading in core
    # Raw mappings point at the protocol sections; reportStrategy at its table.
    assert "| `configData` | mapping: the protocol's [connection keys](#protocols) |" in core
    assert "| `reportStrategy` | [reportStrategy](#reportstrategy) |" in core
    assert "- `on-change`: A value that differs from the last one reported" in core


# ---- check and the command ----------------------------------------------------------
def test_check_compares_exactly_the_listed_protocols(tmp_path: Path) -> None:
    registry = Registry({"sample": SampleDriver})
    path = tmp_path / "configuration.md"
    path.write_text(docgen.render({"sample": SampleDriver}), encoding="utf-8")
    assert docgen.check(path, registry).ok
    path.write_text(path.read_text().replace("where it listens", "where it hides"))
    result = docgen.check(path, registry)
    assert not result.ok
    assert "-| `host` | string | **required** | where it hides, on two lines. |" in result.diff
    missing = docgen.check(path, Registry({}))
    assert missing.missing == {"sample": "no driver with this name is installed"}


def test_command_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "configuration.md"
    assert docgen.main(["--check", "--output", str(path)]) == 1
    assert "does not exist" in capsys.readouterr().err
    path.write_text(docgen.render({}), encoding="utf-8")
    assert docgen.main(["--check", "--output", str(path)]) == 0
    assert "is up to date" in capsys.readouterr().out
    path.write_text(path.read_text() + "hand edit\n")
    assert docgen.main(["--check", "--output", str(path)]) == 1
    captured = capsys.readouterr()
    assert "+hand edit" not in captured.out and "-hand edit" in captured.out
    assert "is stale" in captured.err
    path.write_text(docgen.render({}).replace("<!-- protocols:  -->", "<!-- protocols: nosuch -->"))
    assert docgen.main(["--check", "--output", str(path)]) == 2
    assert "protocol 'nosuch', whose driver is not loadable here" in capsys.readouterr().err


def test_command_writes_only_the_asked_protocols(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "out.md"
    assert docgen.main(["--output", str(path), "--protocol", "nosuch"]) == 2
    assert "protocol 'nosuch' is left out" in capsys.readouterr().err
    infos = [i for i in Registry().infos() if i.ok]
    if not infos:
        pytest.skip("no driver installed here to document")
    protocol = infos[0].protocol
    assert docgen.main(["--output", str(path), "--protocol", protocol]) == 0
    assert docgen.protocols_in(path.read_text()) == [protocol]
