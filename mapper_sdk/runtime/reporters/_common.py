"""What every built-in sink shares: config parsing with precise errors, templates,
credential look-up, the reading JSON, the bounded batch queue and retry delays."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import string
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ...driver import Quality, Reading
from ...errors import ConfigError
from ...model import DeviceSpec, PropertySpec, Value
from .base import Item, ReporterStats, push_targets

__all__ = [
    "DEFAULT_QUEUE",
    "SINKS_EXTRA",
    "Batch",
    "BatchQueue",
    "Format",
    "PropCache",
    "PushConfig",
    "backoff_delays",
    "check_template",
    "fill_template",
    "json_value",
    "legacy_time",
    "parse_config",
    "property_config",
    "read_secret",
    "reading_json",
    "reading_prefix",
    "reading_suffix",
]

log = logging.getLogger("mapper_sdk.reporters")

DEFAULT_QUEUE = 10_000
"""Readings a sink keeps waiting by default before it drops the oldest."""

SINKS_EXTRA = "pip install mapperkit[sinks]"

Batch = tuple[DeviceSpec[Any, Any], Sequence[Item]]
"""One device's readings of one report."""

Format = Literal["json", "kubeedge-legacy"]

_SECRET_KEYS = frozenset({"password", "passWord", "token", "username", "userName", "user"})
_TEMPLATE_FIELDS = frozenset({"namespace", "device", "property"})


# --------------------------------------------------------------------------- config
class PushConfig(BaseModel):
    """Base of the sinks' config models: unknown keys and inline secrets are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    _allowed_secrets: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secrets(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            for key in data:
                if key in _SECRET_KEYS and key not in cls._allowed_secrets:
                    raise ValueError(
                        f"{key}: credentials never go in the device YAML; name where they are "
                        f"with {_secret_hint(key)}"
                    )
        return data


def _secret_hint(key: str) -> str:
    if key in ("token",):
        return "tokenEnv (an environment variable) or tokenFile (a file)"
    if key in ("username", "userName", "user"):
        return "usernameEnv (an environment variable)"
    return "passwordEnv (an environment variable) or passwordFile (a file)"


M = TypeVar("M", bound=BaseModel)


def parse_config(model: type[M], config: Mapping[str, Any]) -> M:
    """Validate a sink's config with ``model``; :class:`ConfigError` names each bad field."""
    try:
        return model.model_validate(dict(config))
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "required field is missing"
            problems.append(f"{loc}: {msg}" if loc else msg)
        raise ConfigError("; ".join(problems)) from None


def property_config(prop: PropertySpec[Any], kind: str) -> Mapping[str, Any] | None:
    """The config of sink ``kind`` in ``prop``'s ``pushMethod`` (``None`` if it has none)."""
    for found, _, config in push_targets(prop.push_method):
        if found == kind:
            return config
    return None


def check_template(text: str, what: str) -> None:
    """Reject a template using fields other than ``{namespace}``, ``{device}``, ``{property}``."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc} in {text!r}") from None
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in _TEMPLATE_FIELDS or spec or conversion:
            raise ConfigError(
                f"{what}: {{{name}}} is not a known field in {text!r} "
                "(use {namespace}, {device} or {property})"
            )


def fill_template(text: str, device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> str:
    """``text`` with ``{namespace}``, ``{device}`` and ``{property}`` filled in."""
    if "{" not in text:
        return text
    return text.format(namespace=device.namespace, device=device.name, property=prop.name)


def read_secret(
    environ: Mapping[str, str],
    *,
    env: str | None,
    file: str | None,
    what: str,
) -> str | None:
    """A credential from a file (first) or an environment variable; ``None`` if neither is set."""
    if file:
        try:
            with open(file, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} file {file}: {exc.strerror}") from None
    if env:
        return environ.get(env) or None
    return None


# --------------------------------------------------------------------------- payloads
def json_value(value: Value) -> str:
    """``value`` as JSON text: numbers, ``true``/``false``, strings; bytes as base64 text.

    Non-finite floats have no JSON form and become ``null``.
    """
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return '"' + base64.b64encode(value).decode("ascii") + '"'


def reading_prefix(device: DeviceSpec[Any, Any], prop: PropertySpec[Any]) -> str:
    """The fixed head of a property's reading JSON, up to ``"value":``."""
    return (
        f'{{"device":{json.dumps(device.name)},"namespace":{json.dumps(device.namespace)},'
        f'"property":{json.dumps(prop.name)},"value":'
    )


def reading_suffix(prop: PropertySpec[Any]) -> str:
    """The fixed part after the value, up to ``"timestamp":``."""
    return f',"type":{json.dumps(prop.type.value)},"timestamp":'


_QUALITY_TAIL = {q: f',"quality":"{q.value}"}}' for q in Quality}


def reading_json(prefix: str, suffix: str, value: Value, reading: Reading) -> str:
    """One reading's JSON from the prepared ``prefix``/``suffix`` of its property."""
    ts = reading.source_timestamp or reading.timestamp
    return f"{prefix}{json_value(value)}{suffix}{ts}{_QUALITY_TAIL[reading.quality]}"


def legacy_time(ts_ms: int) -> str:
    """KubeEdge's time text: local time, ``2006-01-02 15:04:05``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts_ms // 1000))


# --------------------------------------------------------------------------- queue
class BatchQueue:
    """A bounded FIFO of batches, counted in readings, that drops the oldest when full.

    ``put`` never blocks (it runs on the collect path); ``take`` waits for work.
    Every reading that enters is counted in ``stats.queued``; every one pushed
    out by the bound in ``stats.dropped``; ``stats.depth`` is what waits now.
    """

    __slots__ = ("_batches", "_stats", "_wake", "max_items")

    def __init__(self, stats: ReporterStats, max_items: int = DEFAULT_QUEUE) -> None:
        self._batches: deque[Batch] = deque()
        self._stats = stats
        self._wake = asyncio.Event()
        self.max_items = max_items

    def put(self, device: DeviceSpec[Any, Any], items: Sequence[Item]) -> None:
        n = len(items)
        if not n:
            return
        stats = self._stats
        stats.queued += n
        if n > self.max_items:
            stats.dropped += n
            return
        batches = self._batches
        while stats.depth + n > self.max_items and batches:
            old = batches.popleft()
            stats.depth -= len(old[1])
            stats.dropped += len(old[1])
        batches.append((device, items))
        stats.depth += n
        if not self._wake.is_set():
            self._wake.set()

    def __len__(self) -> int:
        return self._stats.depth

    async def take(self, max_items: int) -> list[Batch]:
        """Wait for at least one batch; return whole batches up to ``max_items`` readings."""
        batches = self._batches
        while not batches:
            self._wake.clear()
            await self._wake.wait()
        out: list[Batch] = []
        count = 0
        stats = self._stats
        while batches and (not out or count + len(batches[0][1]) <= max_items):
            batch = batches.popleft()
            out.append(batch)
            count += len(batch[1])
        stats.depth -= count
        return out

    def discard(self) -> int:
        """Drop everything still waiting (at shutdown); counted as dropped."""
        n = self._stats.depth
        self._batches.clear()
        self._stats.depth = 0
        self._stats.dropped += n
        return n


def backoff_delays(initial: float = 0.2, maximum: float = 10.0) -> Iterator[float]:
    """Doubling delays from ``initial`` up to ``maximum``."""
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, maximum)


W = TypeVar("W")


class PropCache(dict[PropertySpec[Any], W]):
    """Prepared per-property data; cleared when it grows past a bound (devices redefined)."""

    LIMIT = 200_000

    def prepare(self, prop: PropertySpec[Any], factory: Callable[[], W]) -> W:
        if len(self) >= self.LIMIT:
            self.clear()
        value = self[prop] = factory()
        return value
