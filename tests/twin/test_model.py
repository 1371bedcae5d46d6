"""Random request sequences against a simple in-memory model of the twin's rules.

The machine drives :class:`~twin.service.TwinCore` and the SQLite store exactly
as the service does (prepare a batch, commit it, hand out the replies), with
valid and invalid updates, duplicate event ids, stale and current versions,
state updates and restarts from the store; after every step the twins, the
versions and the replies must agree with the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from mapper_sdk.model import load_files
from twin.document import Options
from twin.service import Incoming, TwinCore
from twin.store import Store

from .conftest import DEVICES

DEVICE = "default/thermostat-1"
TOPIC = f"$hw/events/device/{DEVICE}/"
SPECS = load_files([DEVICES]).devices

INVALID = object()
# Wire texts per type and what the model says they are (INVALID: not of the type).
TEXTS: dict[str, dict[str, Any]] = {
    "float": {
        "21.5": 21.5,
        "5": 5.0,
        "5.0": 5.0,
        "30": 30.0,
        "31": 31.0,
        "-50": -50.0,
        "1e1": 10.0,
        "abc": INVALID,
        "NaN": INVALID,
        "": INVALID,
    },
    "int": {
        "7": 7,
        "+7": 7,
        "0": 0,
        "100": 100,
        "101": 101,
        "-3": -3,
        "1.5": INVALID,
        "x": INVALID,
    },
    "string": {"eco": "eco", "": "", "away": "away", "a\nb": INVALID, "x" * 513: INVALID},
}
PROPS = {  # name: (type, writable, minimum, maximum)
    "setpoint": ("float", True, 5.0, 30.0),
    "temperature": ("float", False, -40.0, 85.0),
    "count": ("int", True, 0, 100),
    "mode": ("string", True, None, None),
}


@dataclass
class ModelTwin:
    expected: tuple[str, Any] | None = None
    actual: tuple[str, Any] | None = None
    ev: int = 0
    av: int = 0
    ack: tuple[int, str] | None = None


@dataclass
class Model:
    version: int = 0
    state: str = "unknown"
    twins: dict[str, ModelTwin] = field(default_factory=dict)
    remembered: dict[str, bytes] = field(default_factory=dict)

    def has_delta(self) -> bool:
        return any(
            t.expected is not None and (t.actual is None or t.actual[1] != t.expected[1])
            for t in self.twins.values()
        )


def texts_of(ptype: str) -> st.SearchStrategy[str]:
    """Mostly valid texts (with typed-equal spellings), sometimes invalid ones."""
    valid = sorted(t for t, v in TEXTS[ptype].items() if v is not INVALID)
    invalid = sorted(t for t, v in TEXTS[ptype].items() if v is INVALID)
    return st.sampled_from(valid * 4 + invalid)


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    twin: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(sorted(PROPS)), max_size=3, unique=True)):
        ptype = PROPS[name][0]
        wire: dict[str, Any] = {}
        kinds = ["actual", "actual", "ack", "clear"] + (["expected"] * 3 if PROPS[name][1] else [])
        parts = draw(st.sets(st.sampled_from(kinds), min_size=1, max_size=2))
        if "expected" in parts:
            wire["expected"] = {"value": draw(texts_of(ptype))}
        elif "clear" in parts:
            wire["expected"] = None
        if "actual" in parts:
            wire["actual"] = {"value": draw(texts_of(ptype))}
        if "ack" in parts:
            wire["ack"] = {
                "expected_version": draw(st.integers(0, 3)),
                "status": draw(st.sampled_from(["applied", "rejected", "failed"])),
            }
        twin[name] = wire
    return twin


class TwinMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="twin-model-"))
        self.store: Store | None = None
        self.core: TwinCore | None = None
        self.model = Model()
        self.counter = 0

    def open(self) -> None:
        self.store = Store.open(self.dir / "twin.db")
        self.core = TwinCore(self.store, Options(), "edge-0")
        self.core.load(SPECS)

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def send(self, suffix: str, payload: bytes) -> list[tuple[str, dict[str, Any], bytes]]:
        return self.send_many(suffix, [payload])

    def send_many(
        self, suffix: str, payloads: list[bytes]
    ) -> list[tuple[str, dict[str, Any], bytes]]:
        assert self.core is not None and self.store is not None
        batch = self.core.prepare([Incoming(TOPIC + suffix, p) for p in payloads])
        if batch.writes:
            self.store.write(batch.writes)
        out = self.core.finish(batch)
        return [(o.topic[len(TOPIC) :], json.loads(o.payload), o.payload) for o in out]

    @initialize()
    def start(self) -> None:
        self.open()
        self.model.twins = {name: ModelTwin() for name in PROPS} | {
            n: ModelTwin() for n in ("heating", "blob", "ratio")
        }
        self.model.twins["setpoint"] = ModelTwin(expected=("21.5", 21.5), ev=1)

    # ---- the rules ---------------------------------------------------------
    @rule(
        requests=st.lists(
            st.tuples(
                entries(),
                st.sampled_from(["fresh"] * 4 + [None, "a", "b"]),
                st.sampled_from(["none"] * 3 + ["current", "stale"]),
            ),
            min_size=1,
            max_size=6,
        )
    )
    def updates(self, requests: list[tuple[dict[str, Any], str | None, str]]) -> None:
        """Several updates arriving together: one batch, one transaction."""
        model = self.model
        bodies: list[dict[str, Any]] = []
        predictions: list[tuple[int | str, str | None, int, bool, bool]] = []
        for twin, eid, version in requests:
            if eid == "fresh":
                self.counter += 1
                eid = f"fresh-{self.counter}"
            body: dict[str, Any] = {"twin": twin}
            if eid is not None:
                body["event_id"] = eid
            if version == "current":
                body["version"] = model.version
            elif version == "stale":
                body["version"] = model.version + 1
            bodies.append(body)
            if eid and eid in model.remembered:
                predictions.append(("duplicate", eid, model.version, False, False))
                continue
            code, changed = self.apply_to_model(body)
            if code == 200 and eid:
                model.remembered[eid] = b""  # the bytes are known once published
            predictions.append((code, eid, model.version, changed, model.has_delta()))
        out = self.send_many("twin/update", [json.dumps(b).encode() for b in bodies])
        replies: list[list[tuple[str, Any, bytes]]] = []
        for item in out:
            if item[0] == "twin/update/result":
                replies.append([])
            replies[-1].append(item)
        assert len(replies) == len(bodies)
        for (want, key, want_version, changed, delta), reply in zip(
            predictions, replies, strict=True
        ):
            topics = [t for t, _, _ in reply]
            result, raw = reply[0][1], reply[0][2]
            if want == "duplicate":
                assert key is not None
                assert topics == ["twin/update/result"]
                assert raw == model.remembered[key]
                continue
            assert result.get("code", 200) == want, (result, want)
            assert result["version"] == want_version
            if want != 200:
                assert topics == ["twin/update/result"]
                continue
            if key:
                model.remembered[key] = raw
            assert bool(result["twin"]) == changed, (result, changed)
            expect = ["twin/update/result"]
            if changed:
                expect.append("twin/update/document")
                if delta:
                    expect.append("twin/update/delta")
            assert topics == expect, (topics, result)

    def apply_to_model(self, body: dict[str, Any]) -> tuple[int, bool]:
        """The rules, written plainly: returns (code, changed) and updates the model."""
        model = self.model
        new = {n: ModelTwin(**vars(t)) for n, t in model.twins.items()}
        changed = False
        for name, wire in body["twin"].items():
            ptype, writable, lo, hi = PROPS[name]
            t = new[name]
            if "expected" in wire:
                if wire["expected"] is None:
                    if t.expected is not None:
                        t.expected, t.ev, changed = None, t.ev + 1, True
                else:
                    text = wire["expected"]["value"]
                    value = TEXTS[ptype][text]
                    if value is INVALID or not writable:
                        return 400, False
                    if lo is not None and not lo <= value <= hi:
                        return 400, False
                    if t.expected is None or t.expected[1] != value:
                        t.expected, t.ev, changed = (text, value), t.ev + 1, True
            if "actual" in wire:
                text = wire["actual"]["value"]
                value = TEXTS[ptype][text]
                if value is INVALID:
                    return 400, False
                if t.actual is None or t.actual[1] != value:
                    t.actual, t.av, changed = (text, value), t.av + 1, True
            if "ack" in wire:
                ack = (wire["ack"]["expected_version"], wire["ack"]["status"])
                if ack != t.ack:
                    t.ack, changed = ack, True
        if "version" in body and body["version"] != model.version:
            return 409, False
        model.twins = new
        if changed:
            model.version += 1
        return 200, changed

    @rule(state=st.sampled_from(["online", "OFFLINE", "ok", "unknown", "sleeping"]))
    def state(self, state: str) -> None:
        out = self.send("state/update", json.dumps({"state": state}).encode())
        ((topic, body, _),) = out
        assert topic == "state/update/result"
        if state == "sleeping":
            assert body["code"] == 400
        else:
            assert body["device"]["state"] == state.lower()
            self.model.state = state.lower()

    @rule()
    def garbage(self) -> None:
        out = self.send("twin/update", b"\x00not json")
        assert [(t, b["code"]) for t, b, _ in out] == [("twin/update/result", 400)]

    @precondition(lambda self: self.store is not None)
    @rule()
    def restart(self) -> None:
        assert self.store is not None
        self.store.close()
        self.open()

    # ---- the invariant -----------------------------------------------------------
    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.core is None:
            return
        ((topic, got, _),) = self.send("twin/get", b'{"event_id": "inv"}')
        assert topic == "twin/get/result"
        model = self.model
        assert got["version"] == model.version and got["state"] == model.state
        for name, t in model.twins.items():
            wire = got["twin"][name]
            exp = wire.get("expected")
            assert (exp["value"] if exp else None) == (t.expected[0] if t.expected else None)
            act = wire.get("actual")
            assert (act["value"] if act else None) == (t.actual[0] if t.actual else None)
            assert wire["expected_version"] == {"cloud": 0, "edge": t.ev}
            assert wire["actual_version"] == {"cloud": 0, "edge": t.av}
            ack = wire.get("ack")
            assert ((ack["expected_version"], ack["status"]) if ack else None) == t.ack


TwinMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_twin_rules = TwinMachine.TestCase
