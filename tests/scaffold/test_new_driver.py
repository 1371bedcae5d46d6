"""``mapperkit new-driver``: names, CLI errors, and the generated package installed
into a temporary virtualenv, where its own tests must pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import pytest

from mapper_sdk.cli import main
from mapper_sdk.registry import Registry
from mapper_sdk.scaffold import ScaffoldError, generate, names_for

NAME = "acme_line"
RUFF = Path(sys.executable).with_name("ruff")


def _env() -> dict[str, str]:
    """The environment of child processes: no index, nothing from the outer path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(*args: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# ---- names ------------------------------------------------------------------------
def test_names_derived_from_the_protocol() -> None:
    names = names_for("acme_bus2")
    assert names.protocol == "acme_bus2"
    assert names.slug == "acme-bus2"
    assert names.package == "mapperkit_acme_bus2"
    assert names.distribution == "mapperkit-acme-bus2"
    assert names.classname == "AcmeBus2"


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("AcmeBus", "'acmebus'"),
        ("acme-bus", "'acme_bus'"),
        ("2wire", None),
        ("acme__bus", "'acme_bus'"),
        ("_acme", "'acme'"),
        ("acme_", "'acme'"),
        ("a" * 25, None),
        ("", None),
    ],
)
def test_bad_names_are_refused_with_a_hint(bad: str, hint: str | None) -> None:
    with pytest.raises(ScaffoldError, match="invalid protocol name") as info:
        names_for(bad)
    if hint is not None:
        assert f"for example {hint}" in str(info.value)


def test_every_template_is_a_tmpl_file() -> None:
    # Files without the suffix would be skipped silently (and not packaged).
    root = files("mapper_sdk.scaffold").joinpath("templates")
    found = [p for p in Path(str(root)).rglob("*") if p.is_file()]
    assert found
    assert [p for p in found if p.suffix != ".tmpl"] == []


# ---- the command ------------------------------------------------------------------
def test_cli_refuses_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["new-driver", "Acme-Bus", "--dir", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "invalid protocol name 'Acme-Bus'" in err
    assert "for example 'acme_bus'" in err
    assert not (tmp_path / "x").exists()


def test_cli_refuses_a_non_empty_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["new-driver", NAME, "--dir", str(tmp_path)]) == 1
    assert f"{tmp_path} is not empty" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_cli_refuses_a_file_as_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "file"
    target.write_text("mine")
    assert main(["new-driver", NAME, "--dir", str(target)]) == 1
    assert "is not a directory" in capsys.readouterr().err
    assert target.read_text() == "mine"


def test_cli_refuses_an_installed_protocol(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = sorted(Registry().infos(), key=lambda i: i.protocol)
    if not installed:
        pytest.skip("no driver is installed in this environment to collide with")
    protocol = installed[0].protocol
    assert main(["new-driver", protocol, "--dir", str(tmp_path / "x")]) == 1
    assert f"protocol {protocol!r} is already provided by" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_default_directory_and_empty_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["new-driver", "acme_bus"]) == 0
    assert (tmp_path / "mapperkit-acme-bus" / "src" / "mapperkit_acme_bus" / "driver.py").is_file()
    assert "pip install -e mapperkit-acme-bus" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["new-driver", "acme_bus", "--dir", str(empty)]) == 0
    assert (empty / "pyproject.toml").is_file()


def test_long_names_still_pass_ruff(tmp_path: Path) -> None:
    target = generate("x" * 12 + "_" + "y" * 11, tmp_path / "long")
    _run(RUFF, "check", "--isolated", "--no-cache", ".", cwd=target)


# ---- the generated package, installed -------------------------------------------------
@dataclass
class Installed:
    root: Path
    python: Path


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The package generated for NAME, installed (editable) into a fresh virtualenv
    that sees the project's own site-packages through a ``.pth`` file, so nothing
    is downloaded."""
    base = tmp_path_factory.mktemp("scaffold")
    root = generate(NAME, base / "pkg")
    venv = base / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib.strip(), "_mapperkit_project.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    pip: list[str | Path] = ["--no-deps", "--no-build-isolation", "--no-index", "-q", "-e", root]
    if tuple(int(p) for p in version("pip").split(".")[:2]) >= (22, 3):
        _run(sys.executable, "-m", "pip", "--python", python, "install", *pip)
    else:  # older pip: run the project's pip inside the new interpreter
        _run(python, "-m", "pip", "install", *pip)
    yield Installed(root, python)
    shutil.rmtree(base, ignore_errors=True)


def test_generated_package_passes_ruff(installed: Installed) -> None:
    _run(RUFF, "check", "--isolated", "--no-cache", ".", cwd=installed.root)
    _run(RUFF, "format", "--isolated", "--no-cache", "--check", ".", cwd=installed.root)


def test_installed_driver_is_listed(installed: Installed) -> None:
    out = _run(installed.python, "-m", "mapper_sdk.cli", "drivers", "--json")
    entries = {e["protocol"]: e for e in json.loads(out)}
    mine = entries[NAME]
    assert mine["ok"], mine
    assert mine["distribution"] == "mapperkit-acme-line"
    assert mine["target"] == "mapperkit_acme_line:AcmeLineDriver"
    assert sorted(mine["capabilities"]) == ["subscribe", "write"]
    # The project's own environment is untouched.
    assert NAME not in {i.protocol for i in Registry().infos()}


def test_generated_tests_pass(installed: Installed) -> None:
    out = _run(
        installed.python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        installed.root / "tests",
        cwd=installed.root,
    )
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary, out
    assert "failed" not in summary and "error" not in summary and "skipped" not in summary, out
