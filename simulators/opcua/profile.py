"""The OPC-UA simulator's profile: the variables it serves and how they behave.

A profile is YAML::

    name: thermostat
    namespace: urn:mapperkit:simulator:thermostat   # the variables' namespace URI
    object: Thermostat            # folder object under Objects holding the variables
    path: /mapperkit/thermostat   # endpoint path: opc.tcp://host:port/mapperkit/thermostat
    security:                     # optional; default: no security, anonymous only
      policies: [None, Basic256Sha256_SignAndEncrypt]
      certificate: server-cert.pem   # paths relative to the profile file
      privateKey: server-key.pem
      trustedCA: ca.pem           # client certificates must be signed by this CA
      anonymous: true             # allow anonymous sessions
      users: {operator: s3cret}   # username/password identities
    variables:
      - name: temperature         # browse name; node id ns=<ns>;s=Thermostat.temperature
        type: Double
        behaviour: sine           # constant | counter | sine | randomWalk
        value: 21.0               # initial value (sine: the centre line)
        amplitude: 1.5
        period: 120               # seconds
        interval: 1000            # ms between updates
      - name: setpoint
        type: Double
        value: 21.5
        writable: true            # clients may write it; it reads back what was written

Types: ``Boolean``, ``SByte``, ``Byte``, ``Int16``, ``UInt16``, ``Int32``,
``UInt32``, ``Int64``, ``UInt64``, ``Float``, ``Double``, ``String``,
``DateTime``, ``ByteString``, ``LocalizedText``; ``array: true`` serves a
constant array of the type.

Behaviours:

* ``constant``: keeps its value (a writable constant is a setpoint);
* ``counter``: adds ``step`` (default 1) every ``interval``, wrapping from
  ``max`` back to ``min`` (defaults 0 and the type's maximum);
* ``sine``: ``value + amplitude * sin(2 pi t / period)``;
* ``randomWalk``: adds a uniform step in ``[-step, step]``, kept within
  ``[min, max]`` (seeded with ``seed`` for reproducible runs).
"""

from __future__ import annotations

import base64
import enum
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "BUILTIN_PROFILES",
    "Behaviour",
    "Profile",
    "SecurityProfile",
    "VariableProfile",
    "VariableType",
    "load_profile",
]

BUILTIN_PROFILES = Path(__file__).parent / "profiles"


class VariableType(enum.StrEnum):
    """The built-in OPC-UA types the simulator serves."""

    BOOLEAN = "Boolean"
    SBYTE = "SByte"
    BYTE = "Byte"
    INT16 = "Int16"
    UINT16 = "UInt16"
    INT32 = "Int32"
    UINT32 = "UInt32"
    INT64 = "Int64"
    UINT64 = "UInt64"
    FLOAT = "Float"
    DOUBLE = "Double"
    STRING = "String"
    DATETIME = "DateTime"
    BYTESTRING = "ByteString"
    LOCALIZEDTEXT = "LocalizedText"

    @property
    def integer_range(self) -> tuple[int, int] | None:
        return _INT_RANGES.get(self)

    @property
    def numeric(self) -> bool:
        return self in _INT_RANGES or self in (VariableType.FLOAT, VariableType.DOUBLE)


_INT_RANGES = {
    VariableType.SBYTE: (-(2**7), 2**7 - 1),
    VariableType.BYTE: (0, 2**8 - 1),
    VariableType.INT16: (-(2**15), 2**15 - 1),
    VariableType.UINT16: (0, 2**16 - 1),
    VariableType.INT32: (-(2**31), 2**31 - 1),
    VariableType.UINT32: (0, 2**32 - 1),
    VariableType.INT64: (-(2**63), 2**63 - 1),
    VariableType.UINT64: (0, 2**64 - 1),
}


class Behaviour(enum.StrEnum):
    CONSTANT = "constant"
    COUNTER = "counter"
    SINE = "sine"
    RANDOM_WALK = "randomWalk"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VariableProfile(_Model):
    """One simulated variable (see the module documentation)."""

    name: str = Field(min_length=1, max_length=128)
    type: VariableType
    nodeId: str | None = None
    """``i=<number>`` or ``s=<text>`` in the profile's namespace; default ``s=<object>.<name>``."""
    value: Any = None
    writable: bool = False
    array: bool = False
    behaviour: Behaviour = Behaviour.CONSTANT
    interval: int = Field(default=1000, ge=1, le=3_600_000)
    step: float | None = None
    amplitude: float | None = None
    period: float | None = Field(default=None, gt=0)
    min: float | None = None
    max: float | None = None
    seed: int | None = None
    description: str | None = None
    unit: str | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, value: Any) -> Any:
        if isinstance(value, str):
            for member in VariableType:
                if member.value.lower() == value.strip().lower():
                    return member
            names = ", ".join(m.value for m in VariableType)
            raise ValueError(f"unknown type {value!r}; expected one of {names}")
        return value

    @field_validator("behaviour", mode="before")
    @classmethod
    def _behaviour(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().replace("_", "").replace("-", "").lower()
            for member in Behaviour:
                if member.value.lower() == key:
                    return member
            names = ", ".join(m.value for m in Behaviour)
            raise ValueError(f"unknown behaviour {value!r}; expected one of {names}")
        return value

    @field_validator("nodeId")
    @classmethod
    def _node_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        kind, sep, ident = text.partition("=")
        if not sep or kind not in ("i", "s") or not ident:
            raise ValueError(f"nodeId {value!r}: expected i=<number> or s=<text> (no ns=)")
        if kind == "i" and not ident.isdigit():
            raise ValueError(f"nodeId {value!r}: i= needs a non-negative number")
        return text

    @model_validator(mode="after")
    def _rules(self) -> VariableProfile:
        moving = self.behaviour is not Behaviour.CONSTANT
        if moving and not self.type.numeric:
            raise ValueError(
                f"behaviour {self.behaviour.value} needs a numeric type, not {self.type}"
            )
        if moving and self.array:
            raise ValueError(f"behaviour {self.behaviour.value} cannot drive an array")
        if self.behaviour is not Behaviour.SINE and (
            self.amplitude is not None or self.period is not None
        ):
            raise ValueError("amplitude and period apply to behaviour sine")
        if self.behaviour not in (Behaviour.COUNTER, Behaviour.RANDOM_WALK) and (
            self.step is not None or self.min is not None or self.max is not None
        ):
            raise ValueError("step, min and max apply to behaviours counter and randomWalk")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min {self.min:g} must be below max {self.max:g}")
        if self.array:
            if self.value is not None and not isinstance(self.value, list):
                raise ValueError("an array variable's value is a list")
            for item in self.value or []:
                initial_value(self.type, item)
        else:
            initial_value(self.type, self.value)
        return self

    def initial(self) -> Any:
        """The initial value as the Python value asyncua encodes for ``type``."""
        if self.array:
            return [initial_value(self.type, v) for v in self.value or []]
        return initial_value(self.type, self.value)


def initial_value(vtype: VariableType, value: Any) -> Any:
    """Convert a profile value to the Python value of ``vtype``; ``ValueError`` if it cannot."""
    if vtype is VariableType.BOOLEAN:
        if value is None:
            return False
        if not isinstance(value, bool):
            raise ValueError(f"a Boolean value is true or false, not {value!r}")
        return value
    limits = vtype.integer_range
    if limits is not None:
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"an {vtype.value} value is an integer, not {value!r}")
        number = int(value)
        if not limits[0] <= number <= limits[1]:
            raise ValueError(
                f"{number} is outside the {vtype.value} range {limits[0]}..{limits[1]}"
            )
        return number
    if vtype in (VariableType.FLOAT, VariableType.DOUBLE):
        if value is None:
            return 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"a {vtype.value} value is a number, not {value!r}")
        return float(value)
    if vtype in (VariableType.STRING, VariableType.LOCALIZEDTEXT):
        if value is None:
            return ""
        if not isinstance(value, str):
            raise ValueError(f"a {vtype.value} value is text, not {value!r}")
        return value
    if vtype is VariableType.BYTESTRING:
        if value is None:
            return b""
        if isinstance(value, bytes):
            return value
        if isinstance(value, dict) and set(value) == {"base64"}:
            return base64.b64decode(value["base64"], validate=True)
        if isinstance(value, str):
            return value.encode("utf-8")
        raise ValueError(f"a ByteString value is text or {{base64: ...}}, not {value!r}")
    # DateTime
    if value is None or value == "now":
        return datetime.now(UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        moment = datetime.fromisoformat(value)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    raise ValueError(f"a DateTime value is ISO 8601 text or 'now', not {value!r}")


PolicyName = Literal[
    "None",
    "Basic128Rsa15_Sign",
    "Basic128Rsa15_SignAndEncrypt",
    "Basic256_Sign",
    "Basic256_SignAndEncrypt",
    "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt",
    "Aes128Sha256RsaOaep_Sign",
    "Aes128Sha256RsaOaep_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt",
]


class SecurityProfile(_Model):
    """The simulator's endpoints and identities (see the module documentation)."""

    policies: tuple[PolicyName, ...] = ("None",)
    certificate: Path | None = None
    privateKey: Path | None = None
    trustedCA: Path | None = None
    anonymous: bool = True
    users: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rules(self) -> SecurityProfile:
        if not self.policies:
            raise ValueError("policies lists at least one endpoint policy")
        if (self.certificate is None) != (self.privateKey is None):
            raise ValueError("certificate and privateKey go together")
        if any(p != "None" for p in self.policies) and self.certificate is None:
            raise ValueError("secure policies need the server's certificate and privateKey")
        if not self.anonymous and not self.users and self.certificate is None:
            raise ValueError("with anonymous false, give users or a certificate to log in with")
        return self

    def resolved(self, base: Path) -> SecurityProfile:
        """A copy whose relative paths are taken from ``base`` (the profile's directory)."""

        def fix(path: Path | None) -> Path | None:
            return None if path is None or path.is_absolute() else base / path

        return self.model_copy(
            update={
                key: fix(getattr(self, key)) or getattr(self, key)
                for key in ("certificate", "privateKey", "trustedCA")
            }
        )


class Profile(_Model):
    """A whole simulated server (see the module documentation)."""

    name: str = "simulator"
    namespace: str = "urn:mapperkit:simulator"
    object: str = "Device"
    path: str = "/mapperkit"
    security: SecurityProfile = Field(default_factory=SecurityProfile)
    variables: tuple[VariableProfile, ...] = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return value if value.startswith("/") else f"/{value}"

    @model_validator(mode="after")
    def _unique(self) -> Profile:
        seen: set[str] = set()
        ids: set[str] = set()
        for var in self.variables:
            if var.name in seen:
                raise ValueError(f"variable {var.name!r} is listed twice")
            seen.add(var.name)
            node = var.nodeId or f"s={self.object}.{var.name}"
            if node in ids:
                raise ValueError(f"nodeId {node!r} is used twice")
            ids.add(node)
        return self

    def node_id_text(self, var: VariableProfile, namespace_index: int) -> str:
        """The variable's NodeId as text, e.g. ``ns=2;s=Thermostat.temperature``."""
        return f"ns={namespace_index};{var.nodeId or f's={self.object}.{var.name}'}"


def load_profile(path: str | Path) -> Profile:
    """Load a profile file, or a built-in profile by name (``"thermostat"``).

    Relative security paths in the file are taken from its directory.

    Raises:
        ValueError: naming the file and what is wrong.
    """
    p = Path(path)
    if not p.exists() and p.suffix == "" and len(p.parts) == 1:
        builtin = BUILTIN_PROFILES / f"{p.name}.yaml"
        if not builtin.exists():
            names = ", ".join(sorted(f.stem for f in BUILTIN_PROFILES.glob("*.yaml")))
            raise ValueError(f"{path}: no such file, nor a built-in profile (built-in: {names})")
        p = builtin
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{p}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping with `variables:`")
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"{p}: {problems}") from None
    return profile.model_copy(update={"security": profile.security.resolved(p.parent.resolve())})
