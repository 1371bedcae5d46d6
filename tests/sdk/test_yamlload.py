"""The fast device-file loader gives exactly what PyYAML's safe loader gives."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from mapper_sdk.yamlload import load_all

# The loader the fast one builds on: libyaml's when PyYAML has it.
BASE: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def reference(text: str) -> list[Any]:
    return list(yaml.load_all(text, Loader=BASE))


DOCUMENTS = [
    "a: 1\nb: [x, 'y', 2.5, true, null, ~, on, off, yes, 0x1F, 0o17, 1_000, .inf]\n",
    "---\nname: one\n---\nname: two\n---\n",
    "",
    "# only a comment\n",
    "x: &anchor {k: v, n: [1, 2]}\ny: *anchor\n",
    "base: &b {a: 1, b: 2}\nderived:\n  <<: *b\n  b: 3\n",
    "s: !!set {a, b}\no: !!omap [{a: 1}, {b: 2}]\n",
    "when: 2001-12-14t21:59:43.10-05:00\nday: 2002-12-14\n",
    "data: !!binary aGVsbG8=\n",
    "1: one\n2.5: two\nnull: three\ntrue: four\n",
    "quoted: '123'\nplain: 123\nfolded: >\n  a\n  b\nliteral: |\n  a\n  b\n",
    "deep: {a: {b: {c: {d: [[[1]]]}}}}\n",
    "explicit: !!str 42\nint: !!int '7'\nfloat: !!float '1'\n",
]


@pytest.mark.parametrize("text", DOCUMENTS)
def test_same_as_safe_load(text: str) -> None:
    assert load_all(text) == reference(text) == list(yaml.safe_load_all(text))


def test_shared_alias_is_one_object() -> None:
    (doc,) = load_all("x: &a [1]\ny: *a\n")
    assert doc["x"] is doc["y"]


def test_recursive_alias_is_built_as_pyyaml_builds_it() -> None:
    (doc,) = load_all("a: &r [1, *r]\n")
    assert doc["a"][1] is doc["a"]


@pytest.mark.parametrize(
    "text",
    [
        "a: [1, 2\n",
        "a: b: c\n",
        "x: *missing\n",
        "a: !!python/object:os.system x\n",
        "{[1]: 2}: x\n",
        "? [a, b]\n: list-key\n",
    ],
)
def test_errors_are_pyyamls(text: str) -> None:
    def error(fn: Any) -> str:
        with pytest.raises(yaml.YAMLError) as info:
            fn(text)
        return str(info.value)

    assert error(load_all) == error(reference)
