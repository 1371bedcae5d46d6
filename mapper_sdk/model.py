"""Device and DeviceModel definitions: KubeEdge ``devices.kubeedge.io/v1beta1`` YAML and
Mapperkit's compact native form, validated once at load time.

Two layers:

* the **schema** (pydantic models named ``K8s*``/``Native*``) mirrors the YAML as
  written, with KubeEdge's field names, and rejects what cannot be right;
* the **resolved** view (:class:`DeviceSpec`, :class:`PropertySpec`) is what the
  runtime, the drivers and the twin use: model and device merged, cycles
  defaulted, each ``configData`` validated by its driver's own pydantic class.

:func:`load_files` reads any number of files, each holding any mix of models
and devices, and raises :class:`~mapper_sdk.errors.ConfigError` naming the file,
the document, the field path and what was expected.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import yamlload
from .errors import ConfigError

if TYPE_CHECKING:
    from .driver import Driver

__all__ = [
    "API_VERSION",
    "AccessMode",
    "DeviceMethod",
    "DeviceSpec",
    "Inventory",
    "ModelSpec",
    "PropertySpec",
    "PropertyType",
    "PushMethod",
    "ReportMode",
    "ReportStrategy",
    "StateReport",
    "Value",
    "load_files",
    "load_objects",
    "load_text",
]

API_VERSION = "devices.kubeedge.io/v1beta1"
DEFAULT_CYCLE_MS = 1000
PROPERTY_NAME_RE = re.compile(r"^[A-Za-z0-9\-_.,:/@#]{1,128}$")
OBJECT_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$")

Value = int | float | bool | str | bytes
"""A typed property value as it crosses the driver boundary."""

P = TypeVar("P", bound=BaseModel)
V = TypeVar("V", bound=BaseModel)


class PropertyType(enum.StrEnum):
    """A property's type, from the DeviceModel (KubeEdge's names, any case)."""

    INT = "int"
    FLOAT = "float"
    DOUBLE = "double"
    STRING = "string"
    BOOLEAN = "boolean"
    BYTES = "bytes"

    @classmethod
    def parse(cls, text: str) -> PropertyType:
        key = text.strip().lower()
        key = {"integer": "int", "bool": "boolean"}.get(key, key)
        try:
            return cls(key)
        except ValueError:
            raise ValueError(
                f"unknown property type {text!r}; expected one of INT, FLOAT, DOUBLE, "
                "STRING, BOOLEAN, BYTES"
            ) from None

    @property
    def family(self) -> str:
        """``float`` for FLOAT and DOUBLE, the type's own name otherwise."""
        return "float" if self in (PropertyType.FLOAT, PropertyType.DOUBLE) else self.value

    @property
    def numeric(self) -> bool:
        return self in (PropertyType.INT, PropertyType.FLOAT, PropertyType.DOUBLE)


class AccessMode(enum.StrEnum):
    READ_WRITE = "ReadWrite"
    READ_ONLY = "ReadOnly"

    @classmethod
    def parse(cls, text: str) -> AccessMode:
        key = text.strip().lower()
        for mode in cls:
            if mode.value.lower() == key:
                return mode
        raise ValueError(f"unknown accessMode {text!r}; expected ReadWrite or ReadOnly")


class ReportMode(enum.StrEnum):
    """When a property's value is reported (to the twin and to its pushMethod sinks)."""

    PERIOD = "period"
    """The latest value every ``reportCycle`` (KubeEdge's behaviour; the default)."""
    ALWAYS = "always"
    """Every value collected, every ``collectCycle``."""
    ON_CHANGE = "on-change"
    """A value that differs from the last one reported (beyond the deadband)."""
    ON_CHANGE_OR_HEARTBEAT = "on-change-or-heartbeat"
    """On change, and at least every ``heartbeat`` ms."""


# --------------------------------------------------------------------------- schema
class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True)


def _optional_number(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _check_property_name(value: str) -> str:
    if not PROPERTY_NAME_RE.match(value):
        raise ValueError(
            f"property name {value!r} must be 1-128 characters of letters, digits and -_.,:/@#"
        )
    return value


def _check_object_name(value: str) -> str:
    if not OBJECT_NAME_RE.match(value):
        raise ValueError(
            f"name {value!r} must be 1-253 characters of letters, digits, '.', '_' and '-', "
            "starting and ending with a letter or digit"
        )
    return value


class K8sMetadata(_Loose):
    name: str = Field(
        description="the object's name: 1-253 letters, digits, `.`, `_` and `-`",
    )
    namespace: str = Field(
        default="default",
        description="the object's namespace; a Device refers to a DeviceModel of its own namespace",
    )

    _names = field_validator("name", "namespace")(_check_object_name)


class ReportStrategyDoc(_Schema):
    """``reportStrategy`` (ext), on a device (the default) or a property (key by key on top)."""

    mode: ReportMode = Field(
        default=ReportMode.PERIOD,
        description="when a value is reported: `period`, `always`, `on-change` or "
        "`on-change-or-heartbeat`",
    )
    deadband: float | None = Field(
        default=None,
        ge=0,
        description="on-change modes: a numeric change no larger than this is not a change",
    )
    deadbandPercent: float | None = Field(
        default=None,
        ge=0,
        description="on-change modes: a numeric change no larger than this percentage of "
        "the last reported value is not a change",
    )
    heartbeat: int | None = Field(
        default=None,
        gt=0,
        description="on-change-or-heartbeat: report at least every this many ms (default: "
        "the reportCycle)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ReportStrategyDoc:
        on_change = self.mode in (ReportMode.ON_CHANGE, ReportMode.ON_CHANGE_OR_HEARTBEAT)
        if (self.deadband is not None or self.deadbandPercent is not None) and not on_change:
            raise ValueError(
                f"deadband applies to the on-change modes, not to mode {self.mode.value!r}"
            )
        if self.heartbeat is not None and self.mode is not ReportMode.ON_CHANGE_OR_HEARTBEAT:
            raise ValueError(
                f"heartbeat applies to mode 'on-change-or-heartbeat', not to {self.mode.value!r}"
            )
        return self


class VisitorConfigData(_Schema):
    protocolName: str | None = Field(
        default=None,
        description="the protocol the configData is for; must equal the device's protocol "
        "when given",
    )
    configData: dict[str, Any] | None = Field(
        default=None,
        description="where the value is on the device, in the driver's visitor keys (see "
        "the protocol sections)",
    )


class ModelPropertyDoc(_Schema):
    name: str = Field(
        description="the property's name, unique in the model: 1-128 letters, digits and "
        "`-_.,:/@#`",
    )
    description: str | None = Field(
        default=None,
        description="free text for people",
    )
    type: PropertyType = Field(
        description="the value's type: INT, FLOAT, DOUBLE, STRING, BOOLEAN or BYTES (any case)",
    )
    accessMode: AccessMode = Field(
        default=AccessMode.READ_WRITE,
        description="ReadWrite (desired values are written to the device) or ReadOnly",
    )
    minimum: float | None = Field(
        default=None,
        description="the smallest desired value accepted (numeric types); reported values "
        "are not clipped",
    )
    maximum: float | None = Field(
        default=None,
        description="the largest desired value accepted (numeric types); reported values "
        "are not clipped",
    )
    unit: str | None = Field(
        default=None,
        description="the unit of the value, for people and sinks (`degC`, `kWh`)",
    )
    visitors: VisitorConfigData | None = Field(
        default=None,
        description="default visitor for every device of the model; a device's own visitor "
        "keys override it key by key",
    )

    _name = field_validator("name")(_check_property_name)

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> PropertyType:
        if isinstance(value, PropertyType):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected a type name, got {value!r}")
        return PropertyType.parse(value)

    @field_validator("accessMode", mode="before")
    @classmethod
    def _access(cls, value: Any) -> AccessMode:
        if isinstance(value, AccessMode):
            return value
        if not isinstance(value, str):
            raise ValueError(f"expected ReadWrite or ReadOnly, got {value!r}")
        return AccessMode.parse(value)

    @field_validator("minimum", "maximum", mode="before")
    @classmethod
    def _number(cls, value: Any) -> float | None:
        return _optional_number(value)

    @model_validator(mode="after")
    def _range(self) -> ModelPropertyDoc:
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum:g} is greater than maximum {self.maximum:g}")
        return self


class DeviceModelSpecDoc(_Schema):
    protocol: str | None = Field(
        default=None,
        description="the protocol of the model's devices; a device naming another protocol "
        "is an error",
    )
    protocolConfigData: dict[str, Any] | None = Field(
        default=None,
        description="default connection keys for every device of the model; a device's "
        "configData overrides them key by key",
    )
    properties: list[ModelPropertyDoc] = Field(
        default_factory=list,
        description="the properties every device of the model has",
    )

    @field_validator("properties")
    @classmethod
    def _unique(cls, props: list[ModelPropertyDoc]) -> list[ModelPropertyDoc]:
        _reject_duplicates(p.name for p in props)
        return props


class DeviceModelDoc(_Schema):
    apiVersion: str = Field(
        description="`devices.kubeedge.io/v1beta1`",
    )
    kind: Literal["DeviceModel"] = Field(
        description="`DeviceModel`",
    )
    metadata: K8sMetadata = Field(
        description="name and namespace",
    )
    spec: DeviceModelSpecDoc = Field(
        description="the protocol and the properties",
    )
    status: dict[str, Any] | None = Field(
        default=None,
        description="ignored (kept for files exported from a cluster)",
    )


class DesiredDoc(_Schema):
    value: str | None = Field(
        default=None,
        description="the desired value in wire text (`21.5`, `true`); YAML numbers and "
        "booleans are accepted and stored as text",
    )
    metadata: dict[str, Any] | None = Field(
        default=None,
        description="KubeEdge's metadata of the desired value (kept, not interpreted)",
    )

    @field_validator("value", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        # KubeEdge stores desired values as strings; YAML writes `30` as an int.
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return repr(value) if isinstance(value, float) else str(value)
        return value


class PushMethod(_Schema):
    """Where a property's readings are pushed besides the twin (KubeEdge ``pushMethod``)."""

    mqtt: dict[str, Any] | None = Field(
        default=None,
        description="publish readings to an MQTT broker (see pushMethod.mqtt)",
    )
    http: dict[str, Any] | None = Field(
        default=None,
        description="POST readings to an HTTP endpoint",
    )
    otel: dict[str, Any] | None = Field(
        default=None,
        description="export readings as OpenTelemetry metrics (OTLP over HTTP)",
    )
    dbMethod: dict[str, Any] | None = Field(
        default=None,
        description="write readings to a database, keyed by kind: `influxdb2`, `redis`, "
        "`mysql`, `tdengine`",
    )


class DevicePropertyDoc(_Schema):
    name: str = Field(
        description="the model property this entry configures on the device",
    )
    desired: DesiredDoc | None = Field(
        default=None,
        description="the initial desired value, applied when the twin has none",
    )
    visitors: VisitorConfigData | None = Field(
        default=None,
        description="where the value is on this device; its configData keys override the "
        "model's visitor key by key",
    )
    reportToCloud: bool | None = Field(
        default=None,
        description="report the property to the twin (default true); false keeps it to its "
        "pushMethod sinks",
    )
    collectCycle: int | None = Field(
        default=None,
        ge=0,
        description="ms between reads of the property (default 1000; 0 means the default)",
    )
    reportCycle: int | None = Field(
        default=None,
        ge=0,
        description="ms between reports of the property (default 1000; 0 means the default)",
    )
    pushMethod: PushMethod | None = Field(
        default=None,
        description="sinks that receive the property's readings besides the twin",
    )
    reportStrategy: dict[str, Any] | None = Field(
        default=None,
        description="when the property is reported (see reportStrategy); its keys override "
        "the device's",
    )

    _name = field_validator("name")(_check_property_name)


class ProtocolDoc(_Schema):
    protocolName: str = Field(
        description="the protocol, the name of an installed driver (see `mapperkit drivers`)",
    )
    configData: dict[str, Any] | None = Field(
        default=None,
        description="how to reach the device, in the driver's connection keys (see the "
        "protocol sections); merged over the model's protocolConfigData",
    )


class DeviceModelRef(_Schema):
    name: str = Field(
        description="the DeviceModel's name, in the device's namespace",
    )


class MethodDoc(_Schema):
    name: str = Field(
        description="the method's name",
    )
    description: str | None = Field(
        default=None,
        description="free text for people",
    )
    propertyNames: list[str] = Field(
        default_factory=list,
        description="the device's properties the method sets",
    )


class StateReportDoc(_Schema):
    reportToCloud: bool | None = Field(
        default=None,
        description="report the device's state (online, offline, unhealthy) to the twin "
        "(default true)",
    )
    reportCycle: int | None = Field(
        default=None,
        ge=0,
        description="ms between state reports, besides a report on every change (default 1000)",
    )


class DeviceSpecDoc(_Schema):
    deviceModelRef: DeviceModelRef = Field(
        description="the DeviceModel the device is an instance of",
    )
    nodeName: str | None = Field(
        default=None,
        description="the edge node that serves the device (used by the twin for membership)",
    )
    protocol: ProtocolDoc = Field(
        description="the protocol and the device's connection",
    )
    properties: list[DevicePropertyDoc] = Field(
        default_factory=list,
        description="the model properties the device serves, with per-device settings; "
        "properties not listed are not served",
    )
    methods: list[MethodDoc] = Field(
        default_factory=list,
        description="named groups of properties that are set together (KubeEdge device methods)",
    )
    stateReport: StateReportDoc | None = Field(
        default=None,
        description="whether and how often the device's state is reported",
    )
    reportStrategy: dict[str, Any] | None = Field(
        default=None,
        description="the default reportStrategy of the device's properties",
    )

    @field_validator("properties")
    @classmethod
    def _unique(cls, props: list[DevicePropertyDoc]) -> list[DevicePropertyDoc]:
        _reject_duplicates(p.name for p in props)
        return props


class DeviceDoc(_Schema):
    apiVersion: str = Field(
        description="`devices.kubeedge.io/v1beta1`",
    )
    kind: Literal["Device"] = Field(
        description="`Device`",
    )
    metadata: K8sMetadata = Field(
        description="name and namespace",
    )
    spec: DeviceSpecDoc = Field(
        description="the model, the protocol and the properties",
    )
    status: dict[str, Any] | None = Field(
        default=None,
        description="ignored, except `reportToCloud`/`reportCycle` from KubeEdge before "
        "1.23 when spec.stateReport is absent",
    )


class NativePropertyDoc(_Schema):
    name: str = Field(
        description="the property's name, unique in the device: 1-128 letters, digits and "
        "`-_.,:/@#`",
    )
    description: str | None = Field(
        default=None,
        description="free text for people",
    )
    type: PropertyType = Field(
        description="the value's type: INT, FLOAT, DOUBLE, STRING, BOOLEAN or BYTES (any case)",
    )
    accessMode: AccessMode = Field(
        default=AccessMode.READ_WRITE,
        description="ReadWrite (desired values are written to the device) or ReadOnly",
    )
    minimum: float | None = Field(
        default=None,
        description="the smallest desired value accepted (numeric types); reported values "
        "are not clipped",
    )
    maximum: float | None = Field(
        default=None,
        description="the largest desired value accepted (numeric types); reported values "
        "are not clipped",
    )
    unit: str | None = Field(
        default=None,
        description="the unit of the value, for people and sinks (`degC`, `kWh`)",
    )
    desired: str | DesiredDoc | None = Field(
        default=None,
        description="the initial desired value (wire text, or a mapping with `value`), "
        "applied when the twin has none",
    )
    collectCycle: int | None = Field(
        default=None,
        ge=0,
        description="ms between reads of the property (default: the device's collectCycle, "
        "else 1000)",
    )
    reportCycle: int | None = Field(
        default=None,
        ge=0,
        description="ms between reports of the property (default: the device's reportCycle,"
        " else 1000)",
    )
    reportToCloud: bool | None = Field(
        default=None,
        description="report the property to the twin (default true); false keeps it to its "
        "pushMethod sinks",
    )
    pushMethod: PushMethod | None = Field(
        default=None,
        description="sinks that receive the property's readings besides the twin",
    )
    reportStrategy: dict[str, Any] | None = Field(
        default=None,
        description="when the property is reported (see reportStrategy); its keys override "
        "the device's",
    )
    visitor: dict[str, Any] = Field(
        default_factory=dict,
        description="where the value is on the device, in the driver's visitor keys (see "
        "the protocol sections)",
    )

    _name = field_validator("name")(_check_property_name)
    _type = field_validator("type", mode="before")(ModelPropertyDoc._type.__func__)  # type: ignore[attr-defined]
    _access = field_validator("accessMode", mode="before")(
        ModelPropertyDoc._access.__func__  # type: ignore[attr-defined]
    )
    _number = field_validator("minimum", "maximum", mode="before")(
        ModelPropertyDoc._number.__func__  # type: ignore[attr-defined]
    )

    @field_validator("desired", mode="before")
    @classmethod
    def _desired(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        return DesiredDoc._stringify(value)


class NativeDeviceDoc(_Schema):
    name: str = Field(
        description="the device's name: 1-253 letters, digits, `.`, `_` and `-`",
    )
    namespace: str = Field(
        default="default",
        description="the device's namespace",
    )
    model: str | None = Field(
        default=None,
        description="the name of the DeviceModel the device implies (default: `<name>-model`)",
    )
    protocol: str = Field(
        description="the protocol, the name of an installed driver (see `mapperkit drivers`)",
    )
    nodeName: str | None = Field(
        default=None,
        description="the edge node that serves the device (used by the twin for membership)",
    )
    connection: dict[str, Any] = Field(
        default_factory=dict,
        description="how to reach the device, in the driver's connection keys (see the "
        "protocol sections)",
    )
    collectCycle: int | None = Field(
        default=None,
        ge=0,
        description="default ms between reads of each property (default 1000)",
    )
    reportCycle: int | None = Field(
        default=None,
        ge=0,
        description="default ms between reports of each property (default 1000)",
    )
    stateReport: StateReportDoc | None = Field(
        default=None,
        description="whether and how often the device's state is reported",
    )
    reportStrategy: dict[str, Any] | None = Field(
        default=None,
        description="the default reportStrategy of the device's properties",
    )
    methods: list[MethodDoc] = Field(
        default_factory=list,
        description="named groups of properties that are set together (KubeEdge device methods)",
    )
    properties: list[NativePropertyDoc] = Field(
        default_factory=list,
        description="the device's properties, each with its model part and its visitor",
    )

    _names = field_validator("name", "namespace")(_check_object_name)

    @field_validator("properties")
    @classmethod
    def _unique(cls, props: list[NativePropertyDoc]) -> list[NativePropertyDoc]:
        _reject_duplicates(p.name for p in props)
        return props


class NativeFileDoc(_Schema):
    devices: list[NativeDeviceDoc] = Field(
        description="the devices of the file",
    )


class _NativeFileShape(_Schema):
    """The outline of a native file; each device is validated when it is resolved."""

    devices: list[dict[str, Any]]


def _reject_duplicates(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"property {name!r} is listed twice")
        seen.add(name)


# --------------------------------------------------------------------------- resolved
@dataclass(frozen=True, slots=True)
class StateReport:
    """Whether and how often the device's state is reported (KubeEdge ``stateReport``)."""

    report_to_cloud: bool = True
    report_cycle_ms: int = DEFAULT_CYCLE_MS


@dataclass(frozen=True, slots=True)
class ReportStrategy:
    """When a property is reported; see :class:`ReportMode`."""

    mode: ReportMode = ReportMode.PERIOD
    deadband: float | None = None
    deadband_percent: float | None = None
    heartbeat_ms: int | None = None


DEFAULT_STRATEGY = ReportStrategy()


@dataclass(frozen=True, slots=True)
class DeviceMethod:
    name: str
    description: str | None
    property_names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A DeviceModel after validation."""

    name: str
    namespace: str
    protocol: str | None
    protocol_config: Mapping[str, Any]
    properties: Mapping[str, ModelPropertyDoc]


@dataclass(frozen=True, slots=True, eq=False)
class PropertySpec(Generic[V]):
    """One property of one device, merged from model and device and validated.

    ``visitor`` is the driver's visitor-config instance (a plain dict only when
    no driver for the protocol is installed, as in the twin service).
    """

    name: str
    type: PropertyType
    access_mode: AccessMode
    minimum: float | None
    maximum: float | None
    unit: str | None
    description: str | None
    visitor: V
    collect_cycle_ms: int
    report_cycle_ms: int
    report_to_cloud: bool
    desired: str | None
    push_method: PushMethod | None
    index: int
    strategy: ReportStrategy = DEFAULT_STRATEGY

    @property
    def writable(self) -> bool:
        return self.access_mode is AccessMode.READ_WRITE


@dataclass(frozen=True, slots=True, eq=False)
class DeviceSpec(Generic[P, V]):
    """One device, ready to serve: what the runtime hands to a driver."""

    name: str
    namespace: str
    model: str
    protocol: str
    node_name: str | None
    protocol_config: P
    properties: tuple[PropertySpec[V], ...]
    methods: tuple[DeviceMethod, ...] = ()
    state_report: StateReport = field(default_factory=StateReport)
    source: str = ""
    validated: bool = True
    """False when no driver validated ``protocol_config`` and the visitors (raw dicts)."""

    @property
    def id(self) -> str:
        """``namespace/name``, the device's identity on the twin topics."""
        return f"{self.namespace}/{self.name}"

    def property(self, name: str) -> PropertySpec[V]:
        for prop in self.properties:
            if prop.name == name:
                return prop
        raise KeyError(name)

    def property_map(self) -> dict[str, PropertySpec[V]]:
        return {p.name: p for p in self.properties}


@dataclass(slots=True)
class Inventory:
    """Everything loaded from a set of files."""

    models: dict[tuple[str, str], ModelSpec] = field(default_factory=dict)
    devices: list[DeviceSpec[Any, Any]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """Devices left out because their protocol has no installed driver: (id, protocol)."""

    def device(self, device_id: str) -> DeviceSpec[Any, Any]:
        for dev in self.devices:
            if dev.id == device_id or (dev.namespace == "default" and dev.name == device_id):
                return dev
        raise KeyError(device_id)


# --------------------------------------------------------------------------- loading
DriverLookup = Mapping[str, "type[Driver[Any, Any]]"]
MissingDriver = Literal["keep", "skip", "error"]


def _loc(parts: Sequence[int | str]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _format_validation(exc: ValidationError, prefix: str, path_prefix: str = "") -> ConfigError:
    lines = []
    for err in exc.errors(include_url=False):
        loc = _loc(
            [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        )
        if path_prefix:
            loc = f"{path_prefix}.{loc}" if loc else path_prefix
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"] in ("missing",):
            msg = "required field is missing"
        elif err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif "input" in err and err["type"] not in ("value_error",):
            shown = repr(err["input"])
            if len(shown) > 60:
                shown = shown[:57] + "..."
            msg = f"{msg} (got {shown})"
        lines.append(f"{loc}: {msg}" if loc else msg)
    return ConfigError("; ".join(lines), location=prefix)


@dataclass(slots=True)
class _RawDevice:
    """A device document kept as parsed YAML until it is resolved.

    Validating each device right before resolving it (rather than all of them
    first) keeps the transient pydantic documents of one device alive at a time,
    which matters for files with thousands of devices.
    """

    where: str
    data: dict[str, Any]
    native: bool
    error_where: str
    error_path: str


def load_text(
    text: str,
    source: str = "<string>",
    drivers: DriverLookup | None = None,
    *,
    missing_driver: MissingDriver = "keep",
) -> Inventory:
    """Load devices and models from YAML text (see :func:`load_files`)."""
    models: dict[tuple[str, str], ModelSpec] = {}
    raw: list[_RawDevice] = []
    _parse_file(text, source, models, raw)
    return _resolve(models, raw, drivers, missing_driver)


def load_objects(
    documents: Iterable[Any],
    source: str = "<objects>",
    drivers: DriverLookup | None = None,
    *,
    missing_driver: MissingDriver = "keep",
) -> Inventory:
    """Load devices and models from already-parsed documents (dicts shaped like the YAML).

    For sources that are not files: KubeEdge's DMI hands over Device and
    DeviceModel objects, which are converted to these dicts first.
    """
    models: dict[tuple[str, str], ModelSpec] = {}
    raw: list[_RawDevice] = []
    _parse_documents(list(documents), source, models, raw)
    return _resolve(models, raw, drivers, missing_driver)


def load_files(
    paths: Iterable[str | Path],
    drivers: DriverLookup | None = None,
    *,
    missing_driver: MissingDriver = "keep",
) -> Inventory:
    """Load every Device and DeviceModel from ``paths``.

    Args:
        paths: YAML files, each with one or more documents (KubeEdge objects in
            any mix and order) or one native ``devices:`` document.
        drivers: protocol name to driver class; each device's protocol and
            visitor ``configData`` is validated by its driver's classes.
        missing_driver: what to do with a device whose protocol has no driver
            in ``drivers``: ``"keep"`` it with raw dicts (``validated=False``, as
            the twin service does), ``"skip"`` it (listed in
            ``Inventory.skipped``, as a mapper does) or raise ``"error"``.

    Raises:
        ConfigError: naming the file, the document, the field path and what was
            expected.
    """
    models: dict[tuple[str, str], ModelSpec] = {}
    raw: list[_RawDevice] = []
    for path in paths:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("file not found", location=str(p)) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read: {exc}", location=str(p)) from None
        _parse_file(text, str(p), models, raw)
    return _resolve(models, raw, drivers, missing_driver)


def _parse_file(
    text: str,
    source: str,
    models: dict[tuple[str, str], ModelSpec],
    raw: list[_RawDevice],
) -> None:
    try:
        documents = yamlload.load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", location=where) from None
    _parse_documents(documents, source, models, raw)


def _parse_documents(
    documents: Sequence[Any],
    source: str,
    models: dict[tuple[str, str], ModelSpec],
    raw: list[_RawDevice],
) -> None:
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        where = f"{source}: document {index}"
        if not isinstance(doc, dict):
            raise ConfigError(
                f"expected a mapping (a KubeEdge object or a `devices:` list), "
                f"got {type(doc).__name__}",
                location=where,
            )
        if "devices" in doc and "kind" not in doc:
            try:
                native = _NativeFileShape.model_validate(doc)
            except ValidationError as exc:
                raise _format_validation(exc, where) from None
            for i, dev in enumerate(native.devices):
                name = dev.get("name")
                label = f"{where} (devices[{i}] {name})" if isinstance(name, str) else where
                raw.append(_RawDevice(label, dev, True, where, f"devices[{i}]"))
            continue
        kind = doc.get("kind")
        name = (
            (doc.get("metadata") or {}).get("name")
            if isinstance(doc.get("metadata"), dict)
            else None
        )
        label = f"{where} ({kind} {name})" if kind and name else where
        if kind not in ("Device", "DeviceModel"):
            raise ConfigError(
                f"kind: expected Device or DeviceModel, got {kind!r}"
                if kind is not None
                else "neither a KubeEdge object (no `kind`) nor a native `devices:` list",
                location=label,
            )
        api = doc.get("apiVersion")
        if api != API_VERSION:
            raise ConfigError(f"apiVersion: expected {API_VERSION!r}, got {api!r}", location=label)
        try:
            if kind == "DeviceModel":
                model_doc = DeviceModelDoc.model_validate(doc)
                key = (model_doc.metadata.namespace, model_doc.metadata.name)
                if key in models:
                    raise ConfigError(
                        f"DeviceModel {key[0]}/{key[1]} is defined twice", location=label
                    )
                models[key] = ModelSpec(
                    name=model_doc.metadata.name,
                    namespace=model_doc.metadata.namespace,
                    protocol=model_doc.spec.protocol,
                    protocol_config=dict(model_doc.spec.protocolConfigData or {}),
                    properties={p.name: p for p in model_doc.spec.properties},
                )
            else:
                raw.append(_RawDevice(label, doc, False, label, ""))
        except ValidationError as exc:
            raise _format_validation(exc, label) from None


def _cycle(*values: int | None) -> int:
    for value in values:
        if value:
            return value
    return DEFAULT_CYCLE_MS


def _resolve(
    models: dict[tuple[str, str], ModelSpec],
    raw: list[_RawDevice],
    drivers: DriverLookup | None,
    missing_driver: MissingDriver,
) -> Inventory:
    inventory = Inventory(models=models)
    seen: dict[str, str] = {}
    for item in raw:
        doc: DeviceDoc | NativeDeviceDoc
        try:
            if item.native:
                doc = NativeDeviceDoc.model_validate(item.data)
            else:
                doc = DeviceDoc.model_validate(item.data)
        except ValidationError as exc:
            raise _format_validation(exc, item.error_where, item.error_path) from None
        if isinstance(doc, DeviceDoc):
            ident = f"{doc.metadata.namespace}/{doc.metadata.name}"
            protocol = doc.spec.protocol.protocolName
        else:
            ident, protocol = f"{doc.namespace}/{doc.name}", doc.protocol
        driver = drivers.get(protocol) if drivers is not None else None
        if driver is None and missing_driver != "keep":
            if missing_driver == "error":
                installed = ", ".join(sorted(drivers or {})) or "none"
                raise ConfigError(
                    f"protocol {protocol!r} has no installed driver (installed: {installed})",
                    location=item.where,
                )
            inventory.skipped.append((ident, protocol))
            continue
        if isinstance(doc, DeviceDoc):
            spec = _resolve_k8s(doc, item.where, models, driver)
        else:
            spec, model = _resolve_native(doc, item.where, driver)
            inventory.models.setdefault((model.namespace, model.name), model)
        if spec.id in seen:
            raise ConfigError(
                f"device {spec.id} is defined twice (first in {seen[spec.id]})", location=item.where
            )
        seen[spec.id] = item.where
        inventory.devices.append(spec)
    return inventory


def _validate_config(
    cls: type[BaseModel] | None, data: Mapping[str, Any], where: str, path: str
) -> Any:
    if cls is None:
        return dict(data)
    try:
        return cls.model_validate(dict(data))
    except ValidationError as exc:
        raise _format_validation(exc, where, path) from None


def _resolve_k8s(
    doc: DeviceDoc,
    where: str,
    models: Mapping[tuple[str, str], ModelSpec],
    driver: type[Driver[Any, Any]] | None,
) -> DeviceSpec[Any, Any]:
    ns = doc.metadata.namespace
    model_key = (ns, doc.spec.deviceModelRef.name)
    model = models.get(model_key)
    if model is None:
        raise ConfigError(
            f"spec.deviceModelRef.name: DeviceModel {model_key[0]}/{model_key[1]} is not defined "
            "in the files given",
            location=where,
        )
    protocol = doc.spec.protocol.protocolName
    if model.protocol and model.protocol != protocol:
        raise ConfigError(
            f"spec.protocol.protocolName: {protocol!r} differs from the model's protocol "
            f"{model.protocol!r}",
            location=where,
        )
    merged = {**model.protocol_config, **(doc.spec.protocol.configData or {})}
    protocol_config = _validate_config(
        driver.protocol_config if driver else None, merged, where, "spec.protocol.configData"
    )
    props: list[PropertySpec[Any]] = []
    for i, dp in enumerate(doc.spec.properties):
        path = f"spec.properties[{i}]"
        mp = model.properties.get(dp.name)
        if mp is None:
            known = ", ".join(model.properties) or "none"
            raise ConfigError(
                f"{path}.name: property {dp.name!r} is not in DeviceModel {model.name} "
                f"(it has: {known})",
                location=where,
            )
        visitor_raw: dict[str, Any] = dict((mp.visitors.configData or {}) if mp.visitors else {})
        if dp.visitors is not None:
            if dp.visitors.protocolName and dp.visitors.protocolName != protocol:
                raise ConfigError(
                    f"{path}.visitors.protocolName: {dp.visitors.protocolName!r} differs from the "
                    f"device's protocol {protocol!r}",
                    location=where,
                )
            visitor_raw.update(dp.visitors.configData or {})
        visitor = _validate_config(
            driver.visitor_config if driver else None,
            visitor_raw,
            where,
            f"{path}.visitors.configData",
        )
        props.append(
            PropertySpec(
                name=dp.name,
                type=mp.type,
                access_mode=mp.accessMode,
                minimum=mp.minimum,
                maximum=mp.maximum,
                unit=mp.unit,
                description=mp.description,
                visitor=visitor,
                collect_cycle_ms=_cycle(dp.collectCycle),
                report_cycle_ms=_cycle(dp.reportCycle),
                report_to_cloud=True if dp.reportToCloud is None else dp.reportToCloud,
                desired=dp.desired.value if dp.desired else None,
                push_method=dp.pushMethod,
                index=i,
                strategy=_strategy(
                    doc.spec.reportStrategy,
                    dp.reportStrategy,
                    _cycle(dp.reportCycle),
                    where,
                    f"{path}.reportStrategy",
                ),
            )
        )
    state = doc.spec.stateReport
    if state is None and doc.status:
        # KubeEdge before 1.23 kept these under status.
        try:
            state = StateReportDoc.model_validate(
                {k: doc.status[k] for k in ("reportToCloud", "reportCycle") if k in doc.status}
            )
        except ValidationError as exc:
            raise _format_validation(exc, where, "status") from None
    spec = DeviceSpec(
        name=doc.metadata.name,
        namespace=ns,
        model=model.name,
        protocol=protocol,
        node_name=doc.spec.nodeName,
        protocol_config=protocol_config,
        properties=tuple(props),
        methods=_methods(doc.spec.methods, props, where),
        state_report=_state_report(state),
        source=where,
        validated=driver is not None,
    )
    _driver_check(driver, spec, where)
    return spec


def _resolve_native(
    doc: NativeDeviceDoc,
    where: str,
    driver: type[Driver[Any, Any]] | None,
) -> tuple[DeviceSpec[Any, Any], ModelSpec]:
    protocol_config = _validate_config(
        driver.protocol_config if driver else None, doc.connection, where, "connection"
    )
    props: list[PropertySpec[Any]] = []
    model_props: dict[str, ModelPropertyDoc] = {}
    for i, np_ in enumerate(doc.properties):
        visitor = _validate_config(
            driver.visitor_config if driver else None,
            np_.visitor,
            where,
            f"properties[{i}].visitor",
        )
        if np_.minimum is not None and np_.maximum is not None and np_.minimum > np_.maximum:
            raise ConfigError(
                f"properties[{i}]: minimum {np_.minimum:g} is greater than maximum {np_.maximum:g}",
                location=where,
            )
        desired = np_.desired.value if isinstance(np_.desired, DesiredDoc) else np_.desired
        props.append(
            PropertySpec(
                name=np_.name,
                type=np_.type,
                access_mode=np_.accessMode,
                minimum=np_.minimum,
                maximum=np_.maximum,
                unit=np_.unit,
                description=np_.description,
                visitor=visitor,
                collect_cycle_ms=_cycle(np_.collectCycle, doc.collectCycle),
                report_cycle_ms=_cycle(np_.reportCycle, doc.reportCycle),
                report_to_cloud=True if np_.reportToCloud is None else np_.reportToCloud,
                desired=desired,
                push_method=np_.pushMethod,
                index=i,
                strategy=_strategy(
                    doc.reportStrategy,
                    np_.reportStrategy,
                    _cycle(np_.reportCycle, doc.reportCycle),
                    where,
                    f"properties[{i}].reportStrategy",
                ),
            )
        )
        model_props[np_.name] = ModelPropertyDoc(
            name=np_.name,
            description=np_.description,
            type=np_.type,
            accessMode=np_.accessMode,
            minimum=np_.minimum,
            maximum=np_.maximum,
            unit=np_.unit,
        )
    model = ModelSpec(
        name=doc.model or f"{doc.name}-model",
        namespace=doc.namespace,
        protocol=doc.protocol,
        protocol_config={},
        properties=model_props,
    )
    spec = DeviceSpec(
        name=doc.name,
        namespace=doc.namespace,
        model=model.name,
        protocol=doc.protocol,
        node_name=doc.nodeName,
        protocol_config=protocol_config,
        properties=tuple(props),
        methods=_methods(doc.methods, props, where),
        state_report=_state_report(doc.stateReport),
        source=where,
        validated=driver is not None,
    )
    _driver_check(driver, spec, where)
    return spec, model


def _strategy(
    device: Mapping[str, Any] | None,
    prop: Mapping[str, Any] | None,
    report_cycle_ms: int,
    where: str,
    path: str,
) -> ReportStrategy:
    if not device and not prop:
        return DEFAULT_STRATEGY
    merged = {**(device or {}), **(prop or {})}
    try:
        doc = ReportStrategyDoc.model_validate(merged)
    except ValidationError as exc:
        raise _format_validation(exc, where, path) from None
    heartbeat = doc.heartbeat
    if doc.mode is ReportMode.ON_CHANGE_OR_HEARTBEAT and heartbeat is None:
        heartbeat = report_cycle_ms
    return ReportStrategy(doc.mode, doc.deadband, doc.deadbandPercent, heartbeat)


def _methods(
    methods: Sequence[MethodDoc], props: Sequence[PropertySpec[Any]], where: str
) -> tuple[DeviceMethod, ...]:
    names = {p.name for p in props}
    out = []
    for i, m in enumerate(methods):
        for pn in m.propertyNames:
            if pn not in names:
                raise ConfigError(
                    f"spec.methods[{i}].propertyNames: {pn!r} is not a property of this device",
                    location=where,
                )
        out.append(DeviceMethod(m.name, m.description, tuple(m.propertyNames)))
    return tuple(out)


def _state_report(doc: StateReportDoc | None) -> StateReport:
    if doc is None:
        return StateReport()
    return StateReport(
        report_to_cloud=True if doc.reportToCloud is None else doc.reportToCloud,
        report_cycle_ms=_cycle(doc.reportCycle),
    )


def _driver_check(
    driver: type[Driver[Any, Any]] | None, spec: DeviceSpec[Any, Any], where: str
) -> None:
    if driver is None:
        return
    try:
        driver.validate_device(spec)
    except ConfigError as exc:
        location = f"{where}: {exc.location}" if exc.location else where
        raise ConfigError(exc.message, location=location) from None
