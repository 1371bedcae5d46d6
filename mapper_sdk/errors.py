"""The one exception hierarchy of Mapperkit.

Every error raised on purpose by the SDK, a driver or the twin derives from
:class:`MapperError`. Errors are grouped by cause so callers can react by
class (retry a :class:`DeviceUnavailable`, never retry a :class:`ConfigError`)
and carry machine-readable data (a protocol's exception code, an OPC-UA status
name, a twin rejection code) next to the human message.

Drivers convert their library's exceptions once, at the boundary, chained with
``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeviceTimeout",
    "DeviceUnavailable",
    "DriverNotFound",
    "MapperError",
    "NotSupported",
    "ProtocolError",
    "TwinRejected",
    "WriteRejected",
]


class MapperError(Exception):
    """Root of every Mapperkit error."""


class ConfigError(MapperError):
    """A configuration that cannot work: invalid YAML, a bad field, an unknown model.

    The runtime never retries a ``ConfigError``. ``location`` names where the
    problem is (file, document, field path) when known.
    """

    def __init__(self, message: str, *, location: str | None = None) -> None:
        self.location = location
        self.message = message
        super().__init__(f"{location}: {message}" if location else message)


class DriverNotFound(ConfigError):
    """No installed driver serves the protocol a device names."""

    def __init__(self, protocol: str, installed: list[str]) -> None:
        self.protocol = protocol
        self.installed = installed
        names = ", ".join(sorted(installed)) or "none"
        super().__init__(
            f"no driver installed for protocol {protocol!r} (installed: {names}); "
            f"install the package that provides it, e.g. `pip install mapperkit[{protocol}]`"
        )


class DeviceUnavailable(MapperError):
    """The device cannot be reached right now; the runtime retries with backoff."""


class DeviceTimeout(DeviceUnavailable):
    """The device did not answer within the configured timeout."""


class ProtocolError(MapperError):
    """The device answered, but with an error or a malformed response.

    ``code`` carries the protocol's own error identity: a Modbus exception code
    (``2``), an OPC-UA status name (``"BadNodeIdUnknown"``), a BLE ATT error
    name (``"READ_NOT_PERMITTED"``).
    """

    def __init__(self, message: str, *, code: int | str | None = None) -> None:
        self.code = code
        super().__init__(message)


class WriteRejected(MapperError):
    """A desired value was refused: by the model (range, type, access mode) or the device.

    A rejection is final for that value; the runtime reports it as a
    ``rejected`` ack to the twin and does not retry it.
    """

    def __init__(self, reason: str, *, code: int | str | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


class NotSupported(MapperError):
    """An optional driver ability (subscribe, discover, ...) the driver does not have."""


class TwinRejected(MapperError):
    """The twin service refused a request; ``code`` is its HTTP-like code (400, 404, 409, ...)."""

    def __init__(self, code: int, reason: str, *, version: int | None = None) -> None:
        self.code = code
        self.reason = reason
        self.version = version
        super().__init__(f"{code}: {reason}")
