"""The twin document: per-property desired and reported values, versions, metadata.

Pure data and rules, no I/O. A :class:`DeviceTwin` holds one device's twins
(:class:`Twin`), its document ``version``, its state and the model rules its
values are checked against. :func:`plan_update` validates an update request
against a device without touching it (all or nothing) and :func:`apply_plan`
applies what it planned. The wire shapes (KubeEdge's ``MsgTwin`` with
``expected``/``actual``/``optional``/``metadata``/``expected_version``/
``actual_version``, plus Mapperkit's ``ack`` and ``last_seen``) are built here
too, so the service, the store and the queries share one definition.

Values are kept twice: the text as it arrived (what the wire shows) and the
typed value parsed by the model's type (what comparisons use, so ``"23"``
equals ``"23.0"`` for a float).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mapper_sdk.codec import check_range, parse_text, values_equal
from mapper_sdk.errors import ConfigError
from mapper_sdk.model import DeviceSpec, PropertyType, Value

__all__ = [
    "ACK_STATUSES",
    "DEFAULT_MAX_DEVICES",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_MAX_PROPERTIES",
    "DEFAULT_MAX_RESULT_BYTES",
    "DEFAULT_RATE_BURST",
    "DEFAULT_RATE_LIMIT",
    "ONLINE_STATES",
    "STATES",
    "Ack",
    "Applied",
    "DeviceTwin",
    "Options",
    "Rule",
    "Side",
    "StoredRowError",
    "Twin",
    "TwinError",
    "UpdatePlan",
    "apply_plan",
    "check_read",
    "decode_request",
    "device_from_spec",
    "device_row",
    "dumps",
    "error_message",
    "event_id_of",
    "now_ms",
    "plan_state",
    "plan_update",
    "rfc3339",
    "shown",
    "sniff_event_id",
]

STATES: Final = ("online", "offline", "ok", "unknown", "unhealthy")
ONLINE_STATES: Final = frozenset({"online", "ok"})
ACK_STATUSES: Final = ("applied", "rejected", "failed")
PROPERTY_NAME_RE: Final = re.compile(r"^[A-Za-z0-9\-_.,:/@#]{1,128}$")
STRICT_VALUE_RE: Final = re.compile(r"^[a-zA-Z0-9\-_.,:/@#]{1,512}$")
MAX_REASON: Final = 1024
INT64_MAX: Final = 2**63 - 1
MAX_EVENT_ID: Final = 256
SNIFF_LIMIT: Final = 1024 * 1024
"""An oversized payload is parsed for its ``event_id`` only up to this size."""

_REQUEST_KEYS: Final = frozenset({"event_id", "timestamp", "version", "twin"})
_STATE_KEYS: Final = frozenset({"event_id", "timestamp", "state"})
_READ_KEYS: Final = frozenset({"event_id", "timestamp"})
_TWIN_KEYS: Final = frozenset(
    {"expected", "actual", "optional", "metadata", "expected_version", "actual_version", "ack"}
)
_TWIN_ALLOWED: Final = ", ".join(sorted(_TWIN_KEYS))
_SIDE_KEYS: Final = frozenset({"value", "metadata"})
_ACK_KEYS: Final = frozenset({"expected_version", "status", "reason"})
_VERSION_KEYS: Final = frozenset({"cloud", "edge"})


def now_ms() -> int:
    """Milliseconds since the epoch (KubeEdge's unit)."""
    return time.time_ns() // 1_000_000


def rfc3339(ms: int) -> str:
    """``2024-11-25T16:00:00Z`` for a time in milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms // 1000))


class StoredRowError(Exception):
    """A stored twin row that cannot be decoded (the store is damaged)."""


class TwinError(Exception):
    """A rejected request: ``code`` is 400, 404, 409, 413, 429 or 500, ``reason`` says why."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


DEFAULT_MAX_PAYLOAD: Final = 64 * 1024
DEFAULT_MAX_PROPERTIES: Final = 1000
DEFAULT_MAX_DEVICES: Final = 50_000
DEFAULT_RATE_LIMIT: Final = 100.0
DEFAULT_RATE_BURST: Final = 10_000
DEFAULT_MAX_RESULT_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Options:
    """Service-wide processing options and the limits that protect the node.

    Attributes:
        kubeedge_strict: enforce KubeEdge's value character set
            ``^[a-zA-Z0-9-_.,:/@#]{1,512}$`` on every value.
        allow_dynamic_twins: an update may create optional twins for property
            names the Device does not declare (KubeEdge's behaviour).
        max_payload: requests larger than this many bytes get 413.
        max_properties: most twins of one device. A Device declaring more is a
            configuration error; an update that would create dynamic twins
            beyond it gets 413.
        max_devices: most devices one service serves. Device files defining
            more are a configuration error (a reload keeps the devices it had).
        rate_limit: requests per second each device may make on average
            (``twin/update``, ``twin/get`` and ``state/update`` together); a
            request beyond it gets 429 and changes nothing. ``0`` turns the
            limit off.
        rate_burst: requests a device may make at once above ``rate_limit``
            (the size of its token bucket, full at start).
        max_result_bytes: most bytes in one query answer; a page that would be
            larger ends early with a cursor for the rest.

    Raises:
        ConfigError: a limit that is not a positive number.
    """

    kubeedge_strict: bool = False
    allow_dynamic_twins: bool = False
    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_properties: int = DEFAULT_MAX_PROPERTIES
    max_devices: int = DEFAULT_MAX_DEVICES
    rate_limit: float = DEFAULT_RATE_LIMIT
    rate_burst: int = DEFAULT_RATE_BURST
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    def __post_init__(self) -> None:
        for name in (
            "max_payload",
            "max_properties",
            "max_devices",
            "rate_burst",
            "max_result_bytes",
        ):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        rate = self.rate_limit
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate < math.inf:
            raise ConfigError(f"rate_limit must be a finite number of at least 0, got {rate!r}")


@dataclass(frozen=True, slots=True)
class Rule:
    """What the DeviceModel says about one declared property."""

    type: PropertyType
    writable: bool = True
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True)
class Side:
    """One side (expected or actual) of a twin: the wire text and its typed value."""

    text: str
    value: Value
    timestamp: int
    """When the twin service accepted this value (ms)."""
    source_timestamp: int | None = None
    """The client's ``metadata.timestamp`` (for reported values: when the device read it)."""

    def wire(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"timestamp": self.timestamp}
        if self.source_timestamp is not None:
            meta["source_timestamp"] = self.source_timestamp
        return {"value": self.text, "metadata": meta}

    @property
    def query_value(self) -> str | int | float | bool:
        """The value as queries compare it (bytes as their base64 text)."""
        value = self.value
        return self.text if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Ack:
    """The mapper's outcome for a desired value it tried to write (ext)."""

    expected_version: int
    status: str
    reason: str
    timestamp: int

    def wire(self) -> dict[str, Any]:
        return {
            "expected_version": self.expected_version,
            "status": self.status,
            "reason": self.reason,
            "timestamp": self.timestamp,
        }

    def same_as(self, other: Ack | None) -> bool:
        return (
            other is not None
            and other.expected_version == self.expected_version
            and other.status == self.status
            and other.reason == self.reason
        )


@dataclass(frozen=True, slots=True)
class Twin:
    """One property's twin. Immutable: a change makes a new instance.

    ``expected_version`` and ``actual_version`` are KubeEdge's per-side
    ``(cloud, edge)`` counters; a local change of a side bumps its ``edge``.
    """

    name: str
    type: PropertyType
    optional: bool = False
    expected: Side | None = None
    actual: Side | None = None
    expected_version: tuple[int, int] = (0, 0)
    actual_version: tuple[int, int] = (0, 0)
    ack: Ack | None = None

    @property
    def is_empty(self) -> bool:
        """No value on either side and no ack: the twin was never set."""
        return self.expected is None and self.actual is None and self.ack is None

    @property
    def has_delta(self) -> bool:
        """True when a desired value exists and differs from the reported one."""
        exp = self.expected
        if exp is None:
            return False
        act = self.actual
        return act is None or not values_equal(exp.value, act.value, self.type)

    def wire(self, last_seen: int | None = None, *, versions: bool = True) -> dict[str, Any]:
        """The twin as get results, documents and deltas show it."""
        out: dict[str, Any] = {}
        if self.expected is not None:
            out["expected"] = self.expected.wire()
        if self.actual is not None:
            out["actual"] = self.actual.wire()
        out["optional"] = self.optional
        out["metadata"] = {"type": self.type.value}
        if versions:
            out["expected_version"] = {
                "cloud": self.expected_version[0],
                "edge": self.expected_version[1],
            }
            out["actual_version"] = {
                "cloud": self.actual_version[0],
                "edge": self.actual_version[1],
            }
        if self.ack is not None:
            out["ack"] = self.ack.wire()
        if last_seen is not None:
            out["last_seen"] = last_seen
        return out

    def but(self, **changes: Any) -> Twin:
        """A copy with ``changes`` (faster than :func:`dataclasses.replace` on the hot path)."""
        new = object.__new__(Twin)
        for name in Twin.__slots__:
            object.__setattr__(new, name, changes.get(name, getattr(self, name)))
        return new

    # ---- storage form: compact lists, decoded at load --------------------------
    def row(self, last_seen: int | None) -> list[Any]:
        def side(s: Side | None) -> list[Any] | None:
            return None if s is None else [s.text, s.timestamp, s.source_timestamp]

        ack = self.ack
        return [
            self.type.value,
            self.optional,
            side(self.expected),
            side(self.actual),
            list(self.expected_version),
            list(self.actual_version),
            None if ack is None else [ack.expected_version, ack.status, ack.reason, ack.timestamp],
            last_seen,
        ]


@dataclass(slots=True, eq=False)
class DeviceTwin:
    """One device's twin document and identity, the unit the service serialises on."""

    namespace: str
    name: str
    model: str
    node: str | None
    rules: Mapping[str, Rule]
    twins: dict[str, Twin] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    """``last_seen`` (ext) per twin: when a report last named it, changed or not."""
    version: int = 0
    state: str = "unknown"
    last_online: str = ""
    id: str = field(init=False, default="")
    """``namespace/name``."""
    tokens: float = field(init=False, default=math.inf, repr=False)
    """The device's request budget (a token bucket; infinite until first used, then
    clamped to the burst)."""
    tokens_at: float = field(init=False, default=0.0, repr=False)
    """When ``tokens`` was last refilled (monotonic seconds)."""
    throttled: int = field(init=False, default=0, repr=False)
    """Requests refused with 429 since the device last had a request accepted."""

    def __post_init__(self) -> None:
        self.id = f"{self.namespace}/{self.name}"

    @property
    def has_delta(self) -> bool:
        return any(t.has_delta for t in self.twins.values())

    def snapshot(self) -> tuple[Any, ...]:
        """Everything a request can change, for :meth:`restore` after a failed commit."""
        return (
            dict(self.twins),
            dict(self.seen),
            self.version,
            self.state,
            self.last_online,
        )

    def restore(self, snap: tuple[Any, ...]) -> None:
        twins, seen, self.version, self.state, self.last_online = snap
        self.twins = twins
        self.seen = seen

    # ---- wire ----------------------------------------------------------------
    def twins_wire(self) -> dict[str, Any]:
        seen = self.seen
        return {n: t.wire(seen.get(n)) for n, t in self.twins.items()}

    def delta_map(self) -> dict[str, str]:
        return {
            n: t.expected.text
            for n, t in self.twins.items()
            if t.expected is not None and t.has_delta
        }

    def delta_message(self, event_id: str, ts: int) -> dict[str, Any] | None:
        """The delta message, or ``None`` when every desired value is reported."""
        delta = self.delta_map()
        if not delta:
            return None
        seen = self.seen
        return {
            "event_id": event_id,
            "timestamp": ts,
            "version": self.version,
            "twin": {n: t.wire(seen.get(n)) for n, t in self.twins.items() if t.expected},
            "delta": delta,
        }

    def get_message(self, event_id: str, ts: int) -> dict[str, Any]:
        return {
            "event_id": event_id,
            "timestamp": ts,
            "version": self.version,
            "state": self.state,
            "twin": self.twins_wire(),
        }

    def membership_entry(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "description": "",
            "state": self.state,
            "last_online": self.last_online,
            "attributes": {},
            "twin": self.twins_wire(),
        }

    def summary(self) -> dict[str, Any]:
        """A query item without ``select``."""
        return {
            "id": self.id,
            "namespace": self.namespace,
            "name": self.name,
            "model": self.model,
            "node": self.node,
            "state": self.state,
            "last_online": self.last_online,
            "version": self.version,
            "twin": self.twins_wire(),
        }

    # ---- storage ---------------------------------------------------------------
    def encode_twins(self) -> str:
        seen = self.seen
        return _ENCODER.encode({n: t.row(seen.get(n)) for n, t in self.twins.items()})


# --------------------------------------------------------------------------- building
def _rules_of(spec: DeviceSpec[Any, Any]) -> dict[str, Rule]:
    return {
        p.name: Rule(type=p.type, writable=p.writable, minimum=p.minimum, maximum=p.maximum)
        for p in spec.properties
    }


def _check_seed(
    spec: DeviceSpec[Any, Any], name: str, text: str, rule: Rule, opts: Options
) -> Value:
    where = f"device {spec.id} property {name}: desired value {text!r}"
    if not rule.writable:
        raise ValueError(f"{where} is set on a ReadOnly property")
    if opts.kubeedge_strict and not STRICT_VALUE_RE.match(text):
        raise ValueError(f"{where} is outside KubeEdge's value character set")
    try:
        value = parse_text(text, rule.type)
        check_range(value, rule.minimum, rule.maximum)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return value


def _decode_side(raw: Any, ptype: PropertyType) -> Side | None:
    if raw is None:
        return None
    text, ts, src = raw
    try:
        value = parse_text(text, ptype)
    except ValueError:
        return None  # the model's type changed since the value was stored
    return Side(text, value, ts, src)


def _restore(
    dev: DeviceTwin, rules: Mapping[str, Rule], stored: tuple[int, str, str, str], notes: list[str]
) -> None:
    """Fill ``dev`` from its stored row; ``notes`` gets one line per dropped value."""
    dev.version, dev.state, dev.last_online, text = stored
    for name, row in json.loads(text).items():
        type_name, optional, exp, act, ev, av, ack, last_seen = row
        rule = rules.get(name)
        if rule is None and not optional:
            notes.append(f"twin {name} is no longer declared by the device; dropped")
            continue
        ptype = rule.type if rule is not None else PropertyType(type_name)
        twin = Twin(
            name=name,
            type=ptype,
            optional=rule is None,
            expected=_decode_side(exp, ptype),
            actual=_decode_side(act, ptype),
            expected_version=(int(ev[0]), int(ev[1])),
            actual_version=(int(av[0]), int(av[1])),
            ack=None if ack is None else Ack(ack[0], ack[1], ack[2], ack[3]),
        )
        if (twin.expected is None) != (exp is None) or (twin.actual is None) != (act is None):
            notes.append(f"twin {name}: a stored value is not a valid {ptype.value}; dropped")
        elif ptype.value != type_name or twin.optional != optional:
            notes.append(f"twin {name}: now a {ptype.value} twin")
        dev.twins[name] = twin
        if last_seen is not None:
            dev.seen[name] = last_seen


def device_from_spec(
    spec: DeviceSpec[Any, Any],
    opts: Options,
    *,
    default_node: str | None = None,
    stored: tuple[int, str, str, str] | None = None,
    now: int | None = None,
) -> tuple[DeviceTwin, bool, list[str]]:
    """Build a device's twin from its spec and, when there is one, its stored row.

    The store wins for every twin it holds; a declared property the store does
    not know yet becomes a new twin, seeded from ``spec.properties[].desired``.
    A stored value that no longer parses as the model's type is dropped, and a
    stored non-optional twin the Device no longer declares is dropped.

    Args:
        spec: the device as loaded from the files.
        opts: processing options (strict values apply to seeds too).
        default_node: node for a device without ``spec.nodeName``.
        stored: ``(version, state, last_online, twins_json)`` from the store.
        now: the time stamped on seeded values.

    Returns:
        ``(device, changed, notes)``: ``changed`` is true when the result differs
        from the stored row (it must be written back); ``notes`` describe dropped
        values for the log.

    Raises:
        ValueError: a desired seed that breaks the model's rules.
    """
    rules = _rules_of(spec)
    dev = DeviceTwin(
        namespace=spec.namespace,
        name=spec.name,
        model=spec.model,
        node=spec.node_name or default_node,
        rules=rules,
    )
    notes: list[str] = []
    changed = stored is None
    ts = now_ms() if now is None else now
    seeds: dict[str, Value] = {}
    for prop in spec.properties:
        if prop.desired is not None:
            seeds[prop.name] = _check_seed(spec, prop.name, prop.desired, rules[prop.name], opts)
    if stored is not None:
        try:
            _restore(dev, rules, stored, notes)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise StoredRowError(
                f"the stored twin of {spec.id} cannot be read ({type(exc).__name__}: {exc})"
            ) from None
        changed = changed or bool(notes)
    for prop in spec.properties:
        if prop.name in dev.twins:
            continue
        changed = True
        seed = seeds.get(prop.name)
        if seed is None or prop.desired is None:
            dev.twins[prop.name] = Twin(prop.name, prop.type)
        else:
            dev.twins[prop.name] = Twin(
                prop.name,
                prop.type,
                expected=Side(prop.desired, seed, ts),
                expected_version=(0, 1),
            )
    return dev, changed, notes


def device_row(dev: DeviceTwin) -> tuple[int, str, str, str]:
    """What the store keeps for a device: ``(version, state, last_online, twins_json)``."""
    return (dev.version, dev.state, dev.last_online, dev.encode_twins())


# --------------------------------------------------------------------------- requests
class _NotStrictJson(ValueError):
    """Raised by the decoder's hooks: a duplicate key, or NaN/Infinity (not JSON)."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _NotStrictJson(f"payload is not valid: duplicate key {shown(key)}")
            seen.add(key)
    return out


def _no_constants(name: str) -> Any:
    # Python's json module reads NaN, Infinity and -Infinity; RFC 8259 has no such values.
    raise _NotStrictJson(f"payload is not JSON: {name} is not a JSON value")


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
# (json.dumps/loads with keyword arguments build a new encoder/decoder per call)


def decode_request(payload: bytes) -> dict[str, Any]:
    """Decode a request body: UTF-8 JSON holding an object, without duplicate keys.

    Raises:
        TwinError: 400 naming what is wrong.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TwinError(400, f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        body = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise TwinError(
            400, f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except _NotStrictJson as exc:
        raise TwinError(400, str(exc)) from None
    except ValueError:
        # int() refuses a number of more than sys.get_int_max_str_digits() digits.
        raise TwinError(400, "payload is not JSON: a number has too many digits") from None
    except RecursionError:
        raise TwinError(400, "payload is nested too deeply") from None
    if not isinstance(body, dict):
        raise TwinError(400, f"payload must be a JSON object, got {_json_type(body)}")
    return body


def event_id_of(body: Mapping[str, Any]) -> str:
    """The request's ``event_id`` when it is a string, else ``""``."""
    eid = body.get("event_id")
    return eid if isinstance(eid, str) and len(eid) <= MAX_EVENT_ID else ""


def sniff_event_id(payload: bytes) -> str:
    """``event_id`` of an oversized payload when it is JSON of at most 1 MiB, else ``""``."""
    if len(payload) > SNIFF_LIMIT:
        return ""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return ""
    return event_id_of(body) if isinstance(body, dict) else ""


def shown(value: Any, limit: int = 60) -> str:
    """A request value as a rejection reason shows it: scalars by ``repr``, cut to
    about ``limit`` characters; arrays and objects by their JSON type only (a reply
    never echoes a large or deeply nested structure back)."""
    if isinstance(value, list | dict):
        return _json_type(value)
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _cut(text: str, limit: int = 200) -> str:
    """``text`` cut to about ``limit`` characters (a message quoting a long value)."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_count(value: Any) -> bool:
    """A non-negative int64: what other twin clients (KubeEdge's Go types) can read back."""
    return type(value) is int and 0 <= value <= INT64_MAX


def _check_common(body: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    eid = body.get("event_id")
    if eid is not None and not isinstance(eid, str):
        raise TwinError(400, f"event_id must be a string, got {_json_type(eid)}")
    if isinstance(eid, str) and len(eid) > MAX_EVENT_ID:
        raise TwinError(400, f"event_id is longer than {MAX_EVENT_ID} characters")
    for key in body:
        if key not in allowed:
            raise TwinError(
                400, f"unknown field {shown(key)} in {what} (allowed: {', '.join(sorted(allowed))})"
            )
    ts = body.get("timestamp")
    if ts is not None and not _is_count(ts):
        raise TwinError(400, f"timestamp must be milliseconds since the epoch, got {shown(ts)}")


@dataclass(slots=True)
class UpdatePlan:
    """What an accepted update changes: the new twin per changed name (``None``: deleted)."""

    changes: dict[str, Twin | None]
    reported: list[str]
    """Names whose ``actual`` the request carried (their ``last_seen`` is refreshed)."""


def _check_type(name: str, meta: Any, current: PropertyType | None) -> PropertyType | None:
    """Validate ``metadata``; return the type it names (``None`` when it names none)."""
    if not isinstance(meta, dict):
        raise TwinError(400, f"twin.{name}.metadata must be an object, got {_json_type(meta)}")
    for key in meta:
        if key != "type":
            raise TwinError(
                400, f"twin.{name}.metadata: unknown field {shown(key)} (allowed: type)"
            )
    raw = meta.get("type")
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise TwinError(400, f"twin.{name}.metadata.type must be a string")
    try:
        ptype = PropertyType.parse(raw)
    except ValueError as exc:
        raise TwinError(400, f"twin.{name}.metadata.type: {_cut(str(exc))}") from None
    if current is not None and ptype.family != current.family:
        raise TwinError(
            400,
            f"twin.{name}.metadata.type: {shown(raw)} would change the type of {name}, "
            f"which is {current.value}",
        )
    return ptype


def _check_version_obj(name: str, key: str, raw: Any) -> None:
    if not isinstance(raw, dict) or set(raw) - _VERSION_KEYS:
        raise TwinError(400, f"twin.{name}.{key} must be an object {{cloud, edge}}")
    for k in _VERSION_KEYS:
        if k in raw and not _is_count(raw[k]):
            raise TwinError(400, f"twin.{name}.{key}.{k} must be an integer from 0 to 2^63-1")


def _parse_side(
    name: str, side: str, raw: Any, ptype: PropertyType, opts: Options
) -> tuple[str, Value, int | None]:
    if not isinstance(raw, dict):
        raise TwinError(
            400, f"twin.{name}.{side} must be an object with a string value, got {_json_type(raw)}"
        )
    for key in raw:
        if key not in _SIDE_KEYS:
            raise TwinError(
                400, f"twin.{name}.{side}: unknown field {shown(key)} (allowed: metadata, value)"
            )
    if "value" not in raw:
        raise TwinError(400, f"twin.{name}.{side}.value is missing")
    text = raw["value"]
    if not isinstance(text, str):
        raise TwinError(
            400,
            f"twin.{name}.{side}.value must be a JSON string (values travel as text), "
            f"got {_json_type(text)}",
        )
    if opts.kubeedge_strict and not STRICT_VALUE_RE.match(text):
        raise TwinError(
            400,
            f"twin.{name}.{side}.value {text[:40]!r} is outside KubeEdge's value character set "
            "(1-512 of letters, digits and -_.,:/@#)",
        )
    try:
        value = parse_text(text, ptype)
    except ValueError as exc:
        raise TwinError(
            400, f"twin.{name}.{side}.value: {_cut(str(exc))} ({ptype.value})"
        ) from None
    src: int | None = None
    meta = raw.get("metadata")
    if meta is not None:
        if not isinstance(meta, dict):
            raise TwinError(400, f"twin.{name}.{side}.metadata must be an object")
        for key in meta:
            if key != "timestamp":
                raise TwinError(
                    400,
                    f"twin.{name}.{side}.metadata: unknown field {shown(key)} (allowed: timestamp)",
                )
        src = meta.get("timestamp")
        if src is not None and not _is_count(src):
            raise TwinError(
                400, f"twin.{name}.{side}.metadata.timestamp must be milliseconds since the epoch"
            )
    return text, value, src


def _parse_ack(name: str, raw: Any, now: int, current: int) -> Ack:
    if not isinstance(raw, dict):
        raise TwinError(400, f"twin.{name}.ack must be an object, got {_json_type(raw)}")
    for key in raw:
        if key not in _ACK_KEYS:
            raise TwinError(
                400,
                f"twin.{name}.ack: unknown field {shown(key)} "
                "(allowed: expected_version, reason, status)",
            )
    # Without expected_version, the ack is about the expected value the twin holds now
    # (a mapper that got its desired value from somewhere without versions).
    ev = raw.get("expected_version", current)
    if not _is_count(ev):
        raise TwinError(
            400, f"twin.{name}.ack.expected_version must be an integer from 0 to 2^63-1"
        )
    status = raw.get("status")
    if status not in ACK_STATUSES:
        raise TwinError(
            400,
            f"twin.{name}.ack.status must be one of {', '.join(ACK_STATUSES)}, got {shown(status)}",
        )
    reason = raw.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise TwinError(
            400, f"twin.{name}.ack.reason must be a string of at most {MAX_REASON} characters"
        )
    return Ack(ev, status, reason, now)


def _plan_entry(
    dev: DeviceTwin, name: str, entry: dict[str, Any], opts: Options, now: int
) -> tuple[Twin | None, bool]:
    """Validate one twin entry; return ``(new twin or None when unchanged, reported)``."""
    for key in entry:
        if key not in _TWIN_KEYS:
            raise TwinError(
                400,
                f"twin.{name}: unknown field {shown(key)} (allowed: {_TWIN_ALLOWED})",
            )
    old = dev.twins.get(name)
    declared_type = old.type if old is not None else None
    named_type: PropertyType | None = None
    if "metadata" in entry and entry["metadata"] is not None:
        named_type = _check_type(name, entry["metadata"], declared_type)
    if "optional" in entry and not isinstance(entry["optional"], bool):
        raise TwinError(400, f"twin.{name}.optional must be a boolean")
    for key in ("expected_version", "actual_version"):
        if key in entry and entry[key] is not None:
            _check_version_obj(name, key, entry[key])
    if old is None:
        if not opts.allow_dynamic_twins:
            raise TwinError(
                400,
                f"twin.{name}: device {dev.id} has no property {name!r} "
                "(dynamic twins are off; start the service with --allow-dynamic-twins)",
            )
        # KubeEdge creates an optional twin, typed from the request, string by default.
        old_twin = Twin(name, named_type or PropertyType.STRING, optional=True)
    else:
        old_twin = old
    ptype = old_twin.type
    new = old_twin
    if "expected" in entry:
        raw = entry["expected"]
        if raw is None:
            if new.expected is not None:
                ev = new.expected_version
                new = new.but(expected=None, expected_version=(ev[0], ev[1] + 1))
        else:
            text, value, src = _parse_side(name, "expected", raw, ptype, opts)
            rule = dev.rules.get(name)
            if rule is not None:
                if not rule.writable:
                    raise TwinError(
                        400, f"twin.{name}.expected: {name} is ReadOnly; it takes no desired value"
                    )
                try:
                    check_range(value, rule.minimum, rule.maximum)
                except ValueError as exc:
                    raise TwinError(400, f"twin.{name}.expected.value: {exc}") from None
            cur = new.expected
            if cur is None or not values_equal(cur.value, value, ptype):
                ev = new.expected_version
                new = new.but(
                    expected=Side(text, value, now, src),
                    expected_version=(ev[0], ev[1] + 1),
                )
    reported = False
    if "actual" in entry:
        raw = entry["actual"]
        if raw is None:
            if new.actual is not None:
                av = new.actual_version
                new = new.but(actual=None, actual_version=(av[0], av[1] + 1))
        else:
            reported = True
            text, value, src = _parse_side(name, "actual", raw, ptype, opts)
            cur = new.actual
            if cur is None or not values_equal(cur.value, value, ptype):
                av = new.actual_version
                new = new.but(actual=Side(text, value, now, src), actual_version=(av[0], av[1] + 1))
    if "ack" in entry and entry["ack"] is not None:
        ack = _parse_ack(name, entry["ack"], now, new.expected_version[1])
        if not ack.same_as(new.ack):
            new = new.but(ack=ack)
    if old is None:
        return new, reported  # creating a dynamic twin is a change
    return (None if new is old else new), reported


def plan_update(dev: DeviceTwin, body: Mapping[str, Any], opts: Options, now: int) -> UpdatePlan:
    """Validate an update request against ``dev`` and plan its changes; ``dev`` is untouched.

    Raises:
        TwinError: 400 for a malformed request or a value the model refuses, 404
            for deleting a twin that does not exist, 409 when ``version`` is given
            and differs from the document's version (checked last).
    """
    _check_common(body, _REQUEST_KEYS, "an update request")
    expected_version = body.get("version")
    if expected_version is not None and not _is_count(expected_version):
        raise TwinError(
            400, f"version must be an integer from 0 to 2^63-1, got {shown(expected_version)}"
        )
    if "twin" not in body:
        raise TwinError(400, "the request has no twin object")
    twin = body["twin"]
    if not isinstance(twin, dict):
        raise TwinError(400, f"twin must be an object, got {_json_type(twin)}")
    changes: dict[str, Twin | None] = {}
    reported: list[str] = []
    missing: str | None = None
    for name, entry in twin.items():
        if not PROPERTY_NAME_RE.match(name):
            raise TwinError(
                400,
                f"twin key {name[:60]!r} is not a property name "
                "(1-128 letters, digits and -_.,:/@#)",
            )
        if entry is None:
            old = dev.twins.get(name)
            if old is None:
                if not opts.allow_dynamic_twins:
                    raise TwinError(400, f"twin.{name}: device {dev.id} has no property {name!r}")
                missing = missing or name
                continue
            if not old.optional:
                raise TwinError(
                    400, f"twin.{name}: {name} is declared by the device and cannot be deleted"
                )
            changes[name] = None
            continue
        if not isinstance(entry, dict):
            raise TwinError(400, f"twin.{name} must be an object or null, got {_json_type(entry)}")
        new, was_reported = _plan_entry(dev, name, entry, opts, now)
        if new is not None:
            changes[name] = new
        if was_reported:
            reported.append(name)
    if missing is not None:
        raise TwinError(404, f"twin.{missing}: device {dev.id} has no twin {missing!r} to delete")
    if opts.allow_dynamic_twins:
        _check_twin_count(dev, changes, opts.max_properties)
    if expected_version is not None and expected_version != dev.version:
        raise TwinError(
            409,
            f"version mismatch: the request names {expected_version}, the twin is at {dev.version}",
        )
    return UpdatePlan(changes, reported)


def _check_twin_count(dev: DeviceTwin, changes: Mapping[str, Twin | None], limit: int) -> None:
    """413 when the dynamic twins a plan creates would take the device past ``limit`` twins.

    Only a request that creates twins is refused: a device that holds more twins
    than a lowered limit keeps them and can still update and delete them.
    """
    twins = dev.twins
    created = sum(1 for n, t in changes.items() if t is not None and n not in twins)
    if not created:
        return
    deleted = sum(1 for t in changes.values() if t is None)
    total = len(twins) + created - deleted
    if total > limit:
        raise TwinError(
            413,
            f"device {dev.id} would have {total} twins, more than the limit of {limit} "
            f"(the request creates {created}); nothing was applied",
        )


@dataclass(slots=True)
class Applied:
    """What :func:`apply_plan` did, in the shapes the result and the document carry."""

    changed: bool
    result_twin: dict[str, Any]
    document_twin: dict[str, Any]


def apply_plan(dev: DeviceTwin, plan: UpdatePlan, now: int) -> Applied:
    """Apply a plan made by :func:`plan_update` to ``dev``."""
    result: dict[str, Any] = {}
    document: dict[str, Any] = {}
    seen = dev.seen
    for name in plan.reported:
        seen[name] = now
    for name, new in plan.changes.items():
        old = dev.twins.get(name)
        last = None if old is None or old.is_empty else old.wire(seen.get(name))
        if new is None:
            dev.twins.pop(name, None)
            seen.pop(name, None)
            result[name] = None
            document[name] = {"last": last, "current": None}
        else:
            dev.twins[name] = new
            result[name] = new.wire(seen.get(name), versions=False)
            document[name] = {"last": last, "current": new.wire(seen.get(name))}
    if plan.changes:
        dev.version += 1
    return Applied(bool(plan.changes), result, document)


def check_read(body: Mapping[str, Any], what: str) -> None:
    """Validate a ``twin/get`` or ``membership/get`` body: ``event_id`` and ``timestamp`` only.

    Raises:
        TwinError: 400 naming the field that is unknown or of the wrong type.
    """
    _check_common(body, _READ_KEYS, what)


def plan_state(body: Mapping[str, Any]) -> str:
    """Validate a ``state/update`` body; return the state in lower case.

    Raises:
        TwinError: 400 for a malformed body or a state that is not one of :data:`STATES`.
    """
    _check_common(body, _STATE_KEYS, "a state update")
    state = body.get("state")
    if not isinstance(state, str):
        raise TwinError(400, "state is missing or not a string")
    low = state.lower()
    if low not in STATES:
        raise TwinError(400, f"state must be one of {', '.join(STATES)}, got {shown(state)}")
    return low


def error_message(event_id: str, ts: int, code: int, reason: str, version: int | None) -> bytes:
    body: dict[str, Any] = {"event_id": event_id, "timestamp": ts, "code": code, "reason": reason}
    if version is not None:
        body["version"] = version
    return dumps(body)


def dumps(body: Any) -> bytes:
    """Compact UTF-8 JSON, the encoding of everything the service publishes."""
    return _ENCODER.encode(body).encode("utf-8")
