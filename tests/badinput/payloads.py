"""Hypothesis strategies of bad requests for every twin topic, each with the reply it must get.

Every strategy starts from a valid request of its topic (one that would change
the twin if it were accepted, so a bad request taken for a good one shows up as
a change) and breaks it one way:

=================  ==========================================================
class              what is sent
=================  ==========================================================
random-bytes       arbitrary bytes or text that do not decode to a JSON object
invalid-utf8       the valid request with an invalid UTF-8 sequence in a string
deep               a field replaced by arrays or objects nested up to 30,000 deep
huge               the valid request padded past the payload limit
wrong-type         one field replaced by a JSON value of another type
boundary           a number field set to -1, +-2^63, 2^64, 1e308, -0.0, 0.5,
                   NaN/Infinity; a value text at the edge of its type or range
long-string        an event_id, property name, value or state far too long
unknown-field      a field the protocol does not define, at any level
unknown-device     (device topics) a device the twin does not serve
=================  ==========================================================
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from mapper_sdk import topics

__all__ = [
    "DEVICE",
    "KINDS",
    "MAX_PAYLOAD",
    "NODE",
    "Bad",
    "bad_requests",
    "is_object",
]

DEVICE: Final = "default/thermostat-1"
NODE: Final = "edge-1"
GHOST_NS: Final = "no-such-namespace"
MAX_PAYLOAD: Final = 64 * 1024
KINDS: Final = ("update", "get", "state", "membership", "query")

_DEVICE_TOPIC = f"$hw/events/device/{DEVICE}"
_TOPICS: Final = {
    "update": (f"{_DEVICE_TOPIC}/twin/update", f"{_DEVICE_TOPIC}/twin/update/result"),
    "get": (f"{_DEVICE_TOPIC}/twin/get", f"{_DEVICE_TOPIC}/twin/get/result"),
    "state": (f"{_DEVICE_TOPIC}/state/update", f"{_DEVICE_TOPIC}/state/update/result"),
    "membership": (topics.membership_get(NODE), topics.membership_get_result(NODE)),
    "query": (topics.QUERY, topics.QUERY_RESULT),
}
_SUFFIX: Final = {"update": "twin/update", "get": "twin/get", "state": "state/update"}

# Valid requests. Accepted, the update would change three twins and the state
# update the device's state, so a bad request taken for a good one is seen.
_VALID: Final[dict[str, dict[str, Any]]] = {
    "update": {
        "event_id": "fuzz-update",
        "timestamp": 1,
        "version": 0,
        "twin": {
            "setpoint": {"expected": {"value": "22"}, "metadata": {"type": "float"}},
            "temperature": {"actual": {"value": "20.5", "metadata": {"timestamp": 1}}},
            "heating": {
                "actual": {"value": "true"},
                "ack": {"expected_version": 1, "status": "applied", "reason": "ok"},
            },
        },
    },
    "get": {"event_id": "fuzz-get", "timestamp": 1},
    "state": {"event_id": "fuzz-state", "timestamp": 1, "state": "online"},
    "membership": {"event_id": "fuzz-membership", "timestamp": 1},
    "query": {
        "event_id": "fuzz-query",
        "where": "reported.temperature > 1 OR state = 'unknown'",
        "select": ["id", "reported.temperature"],
        "order_by": "id DESC",
        "limit": 5,
        "cursor": None,
    },
}

Path = tuple[str | int, ...]
# JSON types a field accepts ("count": a non-negative int64). A wrong-type value
# is drawn from every other type.
_FIELDS: Final[dict[str, dict[Path, frozenset[str]]]] = {
    "update": {
        ("event_id",): frozenset({"str", "null"}),
        ("timestamp",): frozenset({"count", "null"}),
        ("version",): frozenset({"count", "null"}),
        ("twin",): frozenset({"dict"}),
        ("twin", "setpoint"): frozenset({"dict"}),
        ("twin", "setpoint", "expected"): frozenset({"dict", "null"}),
        ("twin", "setpoint", "expected", "value"): frozenset({"str"}),
        ("twin", "setpoint", "metadata"): frozenset({"dict", "null"}),
        ("twin", "setpoint", "metadata", "type"): frozenset({"str", "null"}),
        ("twin", "temperature", "actual"): frozenset({"dict", "null"}),
        ("twin", "temperature", "actual", "value"): frozenset({"str"}),
        ("twin", "temperature", "actual", "metadata"): frozenset({"dict", "null"}),
        ("twin", "temperature", "actual", "metadata", "timestamp"): frozenset({"count", "null"}),
        ("twin", "heating", "ack"): frozenset({"dict", "null"}),
        ("twin", "heating", "ack", "expected_version"): frozenset({"count"}),
        ("twin", "heating", "ack", "status"): frozenset({"str"}),
        ("twin", "heating", "ack", "reason"): frozenset({"str", "null"}),
    },
    "get": {
        ("event_id",): frozenset({"str", "null"}),
        ("timestamp",): frozenset({"count", "null"}),
    },
    "state": {
        ("event_id",): frozenset({"str", "null"}),
        ("timestamp",): frozenset({"count", "null"}),
        ("state",): frozenset({"str"}),
    },
    "membership": {
        ("event_id",): frozenset({"str", "null"}),
        ("timestamp",): frozenset({"count", "null"}),
    },
    "query": {
        ("event_id",): frozenset({"str", "null"}),
        ("where",): frozenset({"str", "null"}),
        ("select",): frozenset({"list", "null"}),
        ("select", 0): frozenset({"str"}),
        ("order_by",): frozenset({"str", "null"}),
        ("limit",): frozenset({"count", "null"}),
        ("cursor",): frozenset({"str", "null"}),
    },
}
# Where an unknown field can go: objects whose keys the protocol defines.
_OBJECTS: Final[dict[str, tuple[Path, ...]]] = {
    "update": (
        (),
        ("twin", "setpoint"),
        ("twin", "setpoint", "expected"),
        ("twin", "setpoint", "metadata"),
        ("twin", "temperature", "actual"),
        ("twin", "temperature", "actual", "metadata"),
        ("twin", "heating", "ack"),
    ),
    "get": ((),),
    "state": ((),),
    "membership": ((),),
    "query": ((),),
}
_KNOWN_KEYS: Final = frozenset(
    {
        "event_id",
        "timestamp",
        "version",
        "twin",
        "expected",
        "actual",
        "optional",
        "metadata",
        "expected_version",
        "actual_version",
        "ack",
        "value",
        "type",
        "status",
        "reason",
        "state",
        "where",
        "select",
        "group_by",
        "order_by",
        "limit",
        "cursor",
        "reply_to",
    }
)

_JSON_VALUES: Final[dict[str, SearchStrategy[Any]]] = {
    "null": st.none(),
    "bool": st.booleans(),
    "int": st.integers(min_value=-(2**70), max_value=2**70),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "str": st.text(max_size=20),
    "list": st.lists(st.integers(), max_size=3),
    "dict": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
}

# Numbers no count field accepts: negative, beyond int64, fractions, floats.
_BAD_COUNTS: Final[tuple[Any, ...]] = (
    -1,
    -(2**63),
    -(2**63) - 1,
    2**63,
    2**64,
    10**30,
    1e308,
    -1e308,
    -0.0,
    0.5,
    5e-324,
    math.nan,
    math.inf,
    -math.inf,
)
# Value texts outside their type or range, per property of the thermostat model.
_BAD_TEXTS: Final[dict[tuple[str, str], tuple[str, ...]]] = {
    ("setpoint", "expected"): (  # FLOAT, 5..30
        "1e308",
        "-0.0",
        "0",
        "4.999999",
        "30.000001",
        "1e-400",
        "NaN",
        "Infinity",
        "-Infinity",
        "1e309",
        "9223372036854775807",
        "0x10",
        " 22",
    ),
    ("count", "expected"): (  # INT, 0..100
        "9223372036854775808",
        "-9223372036854775809",
        "101",
        "-1",
        "1e2",
        "1.0",
        "0x10",
        "-0.0",
    ),
    ("ratio", "actual"): ("NaN", "Infinity", "-Infinity", "1e309", "-1e309", "", "1,5"),
    ("heating", "actual"): ("True", "1", "yes", "", "TRUE"),
    ("blob", "expected"): ("YQ", "abc", "====", "Y Q=="),
}
_INVALID_UTF8: Final = (
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc3\x28",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf8\x88\x80\x80\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
)
_NAME_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.,:/@#"
_DEVICE_CHARS: Final = "abcdefghijklmnopqrstuvwxyz0123456789-_."


@dataclass(frozen=True)
class Bad:
    """A bad request and what the twin must answer.

    Attributes:
        kind: ``update``, ``get``, ``state``, ``membership`` or ``query``.
        label: the class of bad input (see the module docstring).
        topic: where it is published.
        result: where the answer must come.
        payload: the bytes sent.
        code: the code the answer must carry.
        reason: a regular expression the answer's reason must match.
        event_id: the ``event_id`` the answer must carry; for nesting deep enough to
            stop the JSON decoder none can be read, so ``None`` accepts ``""`` or
            the request's.
    """

    kind: str
    label: str
    topic: str
    result: str
    payload: bytes
    code: int
    reason: str
    event_id: str | None = ""

    def check(self, topic: str, payload: bytes) -> None:
        """Assert that ``payload`` published on ``topic`` is the answer this request must get."""
        assert topic == self.result, (topic, self)
        body = json.loads(payload)
        assert body.get("code") == self.code, body
        allowed = ("", f"fuzz-{self.kind}") if self.event_id is None else (self.event_id,)
        assert body["event_id"] in allowed, body
        reason = body["reason"]
        assert isinstance(reason, str), body
        assert re.search(self.reason, reason), (self.reason, reason)
        # Precise means short too: a reason quotes the field, never a whole value.
        assert len(reason) < 1000, reason

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        shown = self.payload if len(self.payload) <= 300 else self.payload[:300] + b"..."
        return (
            f"Bad({self.kind}/{self.label}, code={self.code}, reason={self.reason!r}, "
            f"topic={self.topic!r}, payload={shown!r} ({len(self.payload)} bytes))"
        )


def is_object(payload: bytes) -> bool:
    """True when ``payload`` is UTF-8 JSON holding an object (it might be a valid request)."""
    try:
        return isinstance(json.loads(payload.decode("utf-8")), dict)
    except (ValueError, RecursionError):
        return False


def _encode(body: Any) -> bytes:
    # allow_nan: NaN and Infinity are written as the literals a careless client sends.
    return json.dumps(body, allow_nan=True).encode("utf-8")


def _set(body: dict[str, Any], path: Path, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(body)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _make(
    kind: str, label: str, payload: bytes, code: int, reason: str, eid: str | None = ""
) -> Bad:
    topic, result = _TOPICS[kind]
    return Bad(kind, label, topic, result, payload, code, reason, eid)


def _last_key(path: Path) -> str:
    return next(str(k) for k in reversed(path) if isinstance(k, str))


def _wrong_value(allowed: frozenset[str]) -> SearchStrategy[Any]:
    wanted = {"int"} if "count" in allowed else set()
    return st.one_of([s for t, s in _JSON_VALUES.items() if t not in allowed and t not in wanted])


# --------------------------------------------------------------------------- classes
def _random_bytes(kind: str) -> SearchStrategy[Bad]:
    raw = st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: st.lists(inner, max_size=4),
            max_leaves=10,
        ).map(_encode),
    )
    return raw.filter(lambda b: not is_object(b)).map(
        lambda b: _make(
            kind,
            "random-bytes",
            b,
            400,
            r"payload (is not UTF-8|is not JSON|must be a JSON object|is nested too deeply)",
        )
    )


@st.composite
def _invalid_utf8(draw: st.DrawFn, kind: str) -> Bad:
    text = _encode(_VALID[kind])
    marker = b'"fuzz-'
    at = text.index(marker) + len(marker)
    bad = draw(st.sampled_from(_INVALID_UTF8))
    return _make(kind, "invalid-utf8", text[:at] + bad + text[at:], 400, r"payload is not UTF-8")


@st.composite
def _deep(draw: st.DrawFn, kind: str) -> Bad:
    path = draw(st.sampled_from([p for p in _FIELDS[kind] if len(p) == 1]))
    as_list = draw(st.booleans())
    depth = draw(st.integers(min_value=2, max_value=30_000 if as_list else 10_000))
    nested = "[" * depth + "]" * depth if as_list else '{"a":' * depth + "1" + "}" * depth
    text = _encode(_set(_VALID[kind], path, "__DEEP__")).replace(b'"__DEEP__"', nested.encode())
    return _make(kind, "deep", text, 400, ".", None)


@st.composite
def _huge(draw: st.DrawFn, kind: str) -> Bad:
    size = draw(st.integers(min_value=MAX_PAYLOAD + 1, max_value=3 * MAX_PAYLOAD))
    body = dict(_VALID[kind])
    base = len(_encode({**body, "pad": ""}))
    body["pad"] = "x" * max(0, size - base)
    payload = _encode(body)
    return _make(
        kind, "huge", payload, 413, r"larger than the limit of 65536 bytes", body["event_id"]
    )


@st.composite
def _wrong_type(draw: st.DrawFn, kind: str) -> Bad:
    path, allowed = draw(st.sampled_from(sorted(_FIELDS[kind].items(), key=str)))
    value = draw(_wrong_value(allowed))
    body = _set(_VALID[kind], path, value)
    return _make(kind, "wrong-type", _encode(body), 400, _last_key(path), _event_id(body))


@st.composite
def _boundary(draw: st.DrawFn, kind: str) -> Bad:
    counts = [p for p, allowed in _FIELDS[kind].items() if "count" in allowed]
    texts = list(_BAD_TEXTS) if kind == "update" else []
    choice = draw(st.sampled_from([("count", p) for p in counts] + [("text", t) for t in texts]))
    if choice[0] == "count":
        path: Path = choice[1]
        number = draw(st.sampled_from(_BAD_COUNTS))
        if path == ("limit",) and isinstance(number, int) and number > 0:
            number = -number  # a large limit is clamped, not refused
        body = _set(_VALID[kind], path, number)
        if isinstance(number, float) and not math.isfinite(number):
            # Not JSON at all: nothing, not even the event_id, is read from it.
            reason = r"payload is not JSON: -?(NaN|Infinity) is not a JSON value"
            return _make(kind, "boundary", _encode(body), 400, reason, "")
        return _make(kind, "boundary", _encode(body), 400, _last_key(path), _event_id(body))
    prop, side = str(choice[1][0]), str(choice[1][1])
    text = draw(st.sampled_from(_BAD_TEXTS[(prop, side)]))
    body = _set(_VALID[kind], ("twin", prop), {side: {"value": text}})
    return _make(
        kind, "boundary", _encode(body), 400, rf"twin\.{prop}\.{side}\.value", "fuzz-update"
    )


@st.composite
def _long_string(draw: st.DrawFn, kind: str) -> Bad:
    n = draw(st.integers(min_value=1, max_value=20_000))
    body = copy.deepcopy(_VALID[kind])
    options = ["event_id"]
    if kind == "update":
        options += ["name", "value"]
    if kind == "state":
        options.append("state")
    what = draw(st.sampled_from(options))
    if what == "event_id":
        body["event_id"] = draw(st.text(min_size=1, max_size=8)) * (257 + n)
        body["event_id"] = body["event_id"][: 257 + n]
        reason, eid = r"event_id is longer than 256 characters", ""
    elif what == "name":
        name = draw(st.text(alphabet=_NAME_CHARS, min_size=1, max_size=4)) * (129 + n)
        body["twin"][name[: 129 + n]] = {"actual": {"value": "1"}}
        reason, eid = r"is not a property name", body["event_id"]
    elif what == "value":
        body["twin"]["mode"] = {"expected": {"value": "y" * (513 + n)}}
        reason, eid = r"twin\.mode\.expected\.value: string of \d+ characters", body["event_id"]
    else:
        body["state"] = "online" * (1 + n)
        reason, eid = r"state must be one of", body["event_id"]
    payload = _encode(body)
    if len(payload) > MAX_PAYLOAD:
        return _make(kind, "long-string", payload, 413, r"larger than the limit", eid)
    return _make(kind, "long-string", payload, 400, reason, eid)


@st.composite
def _unknown_field(draw: st.DrawFn, kind: str) -> Bad:
    where = draw(st.sampled_from(_OBJECTS[kind]))
    key = draw(st.text(min_size=1, max_size=40).filter(lambda k: k not in _KNOWN_KEYS))
    value = draw(st.one_of(list(_JSON_VALUES.values())))
    body = copy.deepcopy(_VALID[kind])
    node: Any = body
    for part in where:
        node = node[part]
    node[key] = value
    return _make(kind, "unknown-field", _encode(body), 400, r"unknown field", _event_id(body))


@st.composite
def _unknown_device(draw: st.DrawFn, kind: str) -> Bad:
    name = draw(st.text(alphabet=_DEVICE_CHARS, min_size=1, max_size=30))
    base = f"$hw/events/device/{GHOST_NS}/{name}/{_SUFFIX[kind]}"
    body = _VALID[kind]
    return Bad(
        kind,
        "unknown-device",
        base,
        f"{base}/result",
        _encode(body),
        404,
        rf"unknown device {GHOST_NS}/",
        str(body["event_id"]),
    )


def _event_id(body: dict[str, Any]) -> str:
    eid = body.get("event_id")
    return eid if isinstance(eid, str) and len(eid) <= 256 else ""


def bad_requests(kind: str, *, ghosts: bool = True) -> SearchStrategy[Bad]:
    """Every class of bad request for ``kind``; ``ghosts`` adds unknown devices."""
    classes: list[SearchStrategy[Bad]] = [
        _random_bytes(kind),
        _invalid_utf8(kind),
        _deep(kind),
        _huge(kind),
        _wrong_type(kind),
        _boundary(kind),
        _long_string(kind),
        _unknown_field(kind),
    ]
    if ghosts and kind in _SUFFIX:
        classes.append(_unknown_device(kind))
    # One class first, then an example of it: every class gets its share.
    return st.sampled_from(classes).flatmap(lambda strategy: strategy)
