"""The OPC-UA driver: one client session per device, on asyncua.

* **Reads**: every property due in a cycle is read with one Read service call
  (``TimestampsToReturn.Both``); values are converted as described in
  :mod:`mappers.opcua.convert`; a bad StatusCode is a bad reading with the
  status name, never an exception.
* **Subscriptions**: properties with ``mode: subscribe`` (the default) are
  monitored items of one subscription per device (sampling interval, queue,
  absolute deadband); each data change goes to the runtime's sink as it comes.
  A subscription the server drops, lets go stale or reports bad is re-created.
  A server without subscriptions makes :meth:`OpcUaDriver.subscribe` raise
  :class:`~mapper_sdk.errors.NotSupported` (logged once) and the runtime polls.
* **Writes**: the node's DataType is read once and cached; the value is sent as
  that VariantType and read back. A status the server refuses the write with
  (``BadNotWritable``, ``BadTypeMismatch``, ...) raises
  :class:`~mapper_sdk.errors.WriteRejected` carrying the status name.
* **Connection**: the session's keep-alive watchdog (a status read every
  :data:`WATCHDOG_INTERVAL` seconds) and the socket itself detect a lost or
  restarted server; the driver then reports :attr:`DeviceState.OFFLINE` and the
  runtime reconnects with backoff, calling :meth:`OpcUaDriver.connect` and
  :meth:`OpcUaDriver.subscribe` again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.crypto import security_policies
from asyncua.crypto.uacrypto import CertProperties
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography.hazmat.primitives import serialization

from mapper_sdk.driver import (
    Capability,
    DeviceState,
    Driver,
    Reading,
    ReadingSink,
    Resources,
    now_ms,
)
from mapper_sdk.errors import (
    ConfigError,
    DeviceTimeout,
    DeviceUnavailable,
    MapperError,
    NotSupported,
    ProtocolError,
    WriteRejected,
)
from mapper_sdk.model import DeviceSpec, PropertySpec, Value

from . import security
from .config import OpcUaProtocolConfig, OpcUaVisitorConfig
from .convert import (
    encode_value,
    reading_from_datavalue,
    status_name,
    variant_type_of,
)

__all__ = ["SESSION_TIMEOUT_MS", "WATCHDOG_INTERVAL", "OpcUaDriver"]

log = logging.getLogger(__name__)
T = TypeVar("T")

WATCHDOG_INTERVAL = 2.0
"""Seconds between the session's keep-alive reads of the server's state."""
SESSION_TIMEOUT_MS = 60_000
"""How long the server keeps a silent session (and its subscription) alive."""
KEEPALIVE_MS = 1_000
"""Target period of a subscription's keep-alive messages."""
_PLAN_CACHE = 64

_POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic128Rsa15": security_policies.SecurityPolicyBasic128Rsa15,
    "Basic256": security_policies.SecurityPolicyBasic256,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128Sha256RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256Sha256RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
_POLICY_NAMES = {cls.URI: name for name, cls in _POLICIES.items()}
_POLICY_NAMES[security_policies.SecurityPolicyNone.URI] = "None"
_MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}

# Status codes that mean the session or channel is gone (reconnect), that the
# credentials are wrong, that a certificate is refused (configuration), or that
# the server has no subscriptions (poll instead).
_SESSION_GONE = frozenset(
    {
        "BadSessionIdInvalid",
        "BadSessionClosed",
        "BadSessionNotActivated",
        "BadSecureChannelIdInvalid",
        "BadSecureChannelClosed",
        "BadSecureChannelTokenUnknown",
        "BadTcpSecureChannelUnknown",
        "BadConnectionClosed",
        "BadNotConnected",
        "BadServerNotConnected",
        "BadServerHalted",
        "BadShutdown",
        "BadCommunicationError",
        "BadTimeout",
    }
)
_CREDENTIALS = frozenset(
    {
        "BadUserAccessDenied",
        "BadIdentityTokenInvalid",
        "BadIdentityTokenRejected",
        "BadUserSignatureInvalid",
    }
)
_CERTIFICATES = frozenset(
    {
        "BadCertificateInvalid",
        "BadCertificateUntrusted",
        "BadCertificateTimeInvalid",
        "BadCertificateIssuerTimeInvalid",
        "BadCertificateUriInvalid",
        "BadCertificateHostNameInvalid",
        "BadCertificateUseNotAllowed",
        "BadCertificateIssuerUseNotAllowed",
        "BadCertificateRevoked",
        "BadCertificateIssuerRevoked",
        "BadCertificateRevocationUnknown",
        "BadCertificateChainIncomplete",
        "BadSecurityChecksFailed",
        "BadSecurityPolicyRejected",
        "BadSecurityModeRejected",
        "BadNoValidCertificates",
        "BadApplicationSignatureInvalid",
        "BadNonceInvalid",
    }
)
_NO_SUBSCRIPTIONS = frozenset({"BadServiceUnsupported", "BadNotSupported", "BadNotImplemented"})


class _QuietPublishLoss(logging.Filter):
    """Drop asyncua's traceback for the publish request a lost connection fails.

    The driver logs the loss itself (``event=connection-lost``); asyncua would
    add an ERROR with a traceback for the one Publish request in flight.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (
            record.msg == "Publish iteration crashed; retrying in 1s"
            and isinstance(exc, ConnectionError)
        )


logging.getLogger("asyncua.client.ua_session.UaSession").addFilter(_QuietPublishLoss())


@dataclass(slots=True, eq=False)
class _Point:
    """One property's node and what is cached about it."""

    prop: PropertySpec[OpcUaVisitorConfig]
    node_id: ua.NodeId | None
    read_id: ua.ReadValueId | None = None
    unresolved: str | None = None
    unresolved_code: str | None = None
    variant_type: ua.VariantType | None = None

    @property
    def name(self) -> str:
        return self.prop.name


@dataclass(slots=True)
class _Plan:
    """A prepared batch read: the request and where each result goes."""

    params: ua.ReadParameters
    readable: list[_Point]
    unresolved: list[_Point]


@dataclass(slots=True, eq=False)
class _Item:
    handle: int
    point: _Point
    sampling_ms: float
    queue_size: int
    deadband: float | None


@dataclass(slots=True, eq=False)
class _Subscription:
    """The device's one subscription: its items and liveness."""

    sink: ReadingSink
    items: dict[int, _Item]
    publishing_ms: float
    keepalive_count: int
    lifetime_count: int
    subscription_id: int | None = None
    last_publish: float = 0.0
    stale_after: float = 5.0
    recreate: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    sink_failed: bool = False


class OpcUaDriver(Driver[OpcUaProtocolConfig, OpcUaVisitorConfig]):
    """OPC-UA client driver (asyncua): batched reads, monitored items, typed writes.

    One instance serves one device (one server endpoint, one session). See the
    module documentation for the behaviour and ``docs/opcua.md`` for the keys.
    """

    protocol: ClassVar[str] = "opcua"
    protocol_config = OpcUaProtocolConfig
    visitor_config = OpcUaVisitorConfig
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.WRITE, Capability.SUBSCRIBE}
    )

    def __init__(
        self,
        device: DeviceSpec[OpcUaProtocolConfig, OpcUaVisitorConfig],
        resources: Resources | None = None,
    ) -> None:
        super().__init__(device, resources)
        self._config: OpcUaProtocolConfig = device.protocol_config
        self._label = f"opcua[{device.id}]"
        self._points: dict[str, _Point] = {}
        for prop in device.properties:
            visitor = prop.visitor
            node_id = ua.NodeId.from_string(visitor.nodeID) if visitor.nodeID else None
            self._points[prop.name] = _Point(prop, node_id)
        self._prepare_reads()
        self._client: Client | None = None
        self._lost = False
        self._closing = False
        self._connect_lock = asyncio.Lock()
        self._sub_lock = asyncio.Lock()
        self._sub: _Subscription | None = None
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._subscriptions_unsupported = False
        self._said_unsupported = False

    # ---- configuration -----------------------------------------------------------
    @classmethod
    def validate_device(cls, device: DeviceSpec[OpcUaProtocolConfig, OpcUaVisitorConfig]) -> None:
        """Reject visitor settings that cannot apply to their property."""
        for prop in device.properties:
            visitor = prop.visitor
            where = f"spec.properties[{prop.name}].visitors.configData"
            if visitor.deadband is not None and not prop.type.numeric:
                raise ConfigError(
                    f"a deadband applies to numeric properties; {prop.name} is "
                    f"{prop.type.value.upper()}",
                    location=f"{where}.deadband",
                )
            if visitor.mode == "poll":
                for key in ("deadband", "samplingInterval"):
                    if getattr(visitor, key) is not None:
                        raise ConfigError(
                            f"{key} applies to subscriptions; {prop.name} is polled (mode: poll)",
                            location=f"{where}.{key}",
                        )

    def subscribable(self, prop: PropertySpec[OpcUaVisitorConfig]) -> bool:
        """True unless the property says ``mode: poll`` or the server has no subscriptions."""
        return prop.visitor.mode != "poll" and not self._subscriptions_unsupported

    # ---- connection ----------------------------------------------------------------
    async def connect(self) -> None:
        """Open a session to ``url``; no-op while a healthy session exists.

        Raises:
            DeviceUnavailable: the server cannot be reached or refuses the session
                for a reason that may pass (``DeviceTimeout`` when it is silent).
            ConfigError: a file cannot be read, a certificate is refused or does
                not match ``remoteCertificate``, the credentials are wrong, or the
                server offers no endpoint with the configured policy and mode.
        """
        async with self._connect_lock:
            self._closing = False
            if self._client is not None and not self._lost:
                return
            await self._teardown()
            client = await self._open()
            self._client = client
            self._lost = False
            for point in self._points.values():
                point.variant_type = None
            self._plans.clear()
            try:
                await self._resolve_browse_paths(client)
            except BaseException:
                await self._teardown()
                raise
        log.info("%s event=connected url=%s", self._label, self._config.url)
        self.set_state(DeviceState.ONLINE)

    async def close(self) -> None:
        """Delete the subscription, close the session and the socket. Idempotent."""
        self._closing = True
        async with self._connect_lock:
            await self._teardown()

    async def _open(self) -> Client:
        cfg = self._config
        client = Client(cfg.url, timeout=cfg.timeout, watchdog_intervall=WATCHDOG_INTERVAL)
        client.name = "Mapperkit"
        client.description = f"Mapperkit {self.device.id}"
        client.application_uri = "urn:mapperkit:opcua-client"
        client.product_uri = "urn:mapperkit"
        client.session_timeout = SESSION_TIMEOUT_MS

        cert = key = None
        if cfg.certificate is not None and cfg.privateKey is not None:
            cert = security.load_certificate(cfg.certificate, "certificate")
            key = security.load_private_key(cfg.privateKey)
            uri = security.application_uri(cert)
            if uri:
                # Servers check that the session's ApplicationUri is the certificate's.
                client.application_uri = uri
        identity = cfg.user_identity
        if identity == "UserName":
            assert cfg.userName is not None
            client.set_user(cfg.userName)
            client.set_password(security.read_password(cfg.password) if cfg.password else "")
        elif identity == "Certificate":
            client.user_certificate = cert
            client.user_private_key = key

        pinned = None
        if cfg.remoteCertificate is not None:
            pinned = security.load_certificate(cfg.remoteCertificate, "remoteCertificate")
        try:
            await self._secure(client, cert, key, pinned)
            client.connection_lost_callback = self._lost_callback(client)
            await client.connect(auto_reconnect=False)
        except BaseException as exc:
            client.connection_lost_callback = None
            client.disconnect_socket()
            mapped = self._connect_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc
        return client

    async def _secure(
        self,
        client: Client,
        cert: Any,
        key: Any,
        pinned: Any,
    ) -> None:
        """Check the server's certificate and set up the secure channel's policy."""
        cfg = self._config
        if cfg.securityPolicy != "None" or pinned is not None:
            server_der = await self._server_certificate(client)
            if pinned is not None:
                assert cfg.remoteCertificate is not None
                security.check_server_certificate(server_der, pinned, cfg.remoteCertificate)
            if cfg.securityPolicy != "None":
                assert cert is not None
                assert key is not None
                await client.set_security(
                    _POLICIES[cfg.securityPolicy],
                    certificate=CertProperties(
                        cert.public_bytes(serialization.Encoding.DER), extension="der"
                    ),
                    private_key=CertProperties(
                        key.private_bytes(
                            serialization.Encoding.DER,
                            serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption(),
                        ),
                        extension="der",
                    ),
                    server_certificate=CertProperties(server_der, extension="der"),
                    mode=_MODES[cfg.mode],
                )

    async def _server_certificate(self, client: Client) -> bytes:
        """GetEndpoints over an unsecured channel; the certificate of the matching endpoint."""
        cfg = self._config
        endpoints = await client.connect_and_get_server_endpoints()
        policy_uri = (
            _POLICIES[cfg.securityPolicy].URI
            if cfg.securityPolicy != "None"
            else security_policies.SecurityPolicyNone.URI
        )
        mode = _MODES[cfg.mode]
        for ep in endpoints:
            if ep.SecurityPolicyUri == policy_uri and ep.SecurityMode == mode:
                return security.first_certificate(ep.ServerCertificate or b"")
        offered = sorted(
            {
                f"{_POLICY_NAMES.get(ep.SecurityPolicyUri, ep.SecurityPolicyUri)}/"
                f"{ep.SecurityMode.name.rstrip('_')}"
                for ep in endpoints
            }
        )
        raise ConfigError(
            f"securityPolicy/securityMode: {cfg.url} offers no endpoint with "
            f"{cfg.securityPolicy}/{cfg.mode}; it offers {', '.join(offered) or 'none'}"
        )

    def _connect_error(self, exc: BaseException) -> BaseException:
        """Map an exception from connecting to the SDK's errors."""
        cfg = self._config
        if isinstance(exc, MapperError | asyncio.CancelledError):
            return exc
        if isinstance(exc, TimeoutError):
            return DeviceTimeout(f"{cfg.url}: no answer within {cfg.timeout:g} s")
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            return DeviceUnavailable(f"cannot reach {cfg.url}: {reason}")
        if isinstance(exc, UaStatusCodeError):
            name = status_name(exc.code)
            if name in _CREDENTIALS:
                if cfg.user_identity == "UserName":
                    return ConfigError(
                        f"{cfg.url} refused user {cfg.userName!r} (password from "
                        f"{cfg.password!r}): {name}; check userName and the password file"
                    )
                return ConfigError(
                    f"{cfg.url} refused the {cfg.user_identity.lower()} identity: {name}; "
                    "the server must allow it, or set userName and password"
                )
            if name in _CERTIFICATES:
                return ConfigError(
                    f"{cfg.url} refused the secure channel ({cfg.securityPolicy}/{cfg.mode}, "
                    f"certificate {cfg.certificate!r}): {name}; the server must trust the "
                    "client certificate (or the CA that signed it)"
                )
            return DeviceUnavailable(f"{cfg.url} refused the session: {name}")
        if isinstance(exc, UaError):
            text = str(exc)
            if "certificate" in text.lower():
                return ConfigError(f"{cfg.url}: {text}")
            return DeviceUnavailable(f"{cfg.url}: {text}")
        return DeviceUnavailable(f"{cfg.url}: {type(exc).__name__}: {exc}")

    def _lost_callback(self, client: Client) -> Any:
        async def lost(exc: Exception) -> None:
            self._connection_lost(client, exc)

        return lost

    def _connection_lost(self, client: Client | None, exc: BaseException | None) -> None:
        """Called when the transport or the session fails: report offline once."""
        if client is not self._client or self._lost or self._closing:
            return
        self._lost = True
        reason = str(exc) if exc is not None and str(exc) else type(exc).__name__
        log.warning(
            "%s event=connection-lost url=%s error=%r", self._label, self._config.url, reason
        )
        sub = self._sub
        if sub is not None:
            sub.recreate.set()  # wake the supervisor so it notices and ends
        if client is not None:
            # asyncua's publish loop would retry on the dead transport every second.
            publish = client.uaclient.session._publish_task
            if publish is not None and not publish.done():
                publish.cancel()
        self.set_state(DeviceState.OFFLINE)

    async def _teardown(self) -> None:
        """Release the subscription and the client; never raises."""
        await self._drop_subscription(delete=not self._lost)
        client, self._client = self._client, None
        if client is None:
            return
        client.connection_lost_callback = None
        timeout = min(self._config.timeout, 5.0)
        try:
            async with asyncio.timeout(timeout):
                # Cancels asyncua's watchdog tasks, then CloseSession (deletes subscriptions).
                await client.close_session()
        except (Exception, TimeoutError):  # noqa: BLE001 - the session may be gone already
            pass
        if not self._lost:
            try:
                async with asyncio.timeout(timeout):
                    await client.close_secure_channel()
            except (Exception, TimeoutError):  # noqa: BLE001
                pass
        client.disconnect_socket()
        publish = client.uaclient.session._publish_task
        if publish is not None and not publish.done():
            publish.cancel()
            try:
                await publish
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def _session(self) -> Any:
        client = self._client
        if client is None or self._lost:
            raise DeviceUnavailable(
                f"{self._label}: not connected to {self._config.url}"
                if client is None
                else f"{self._label}: the session to {self._config.url} was lost"
            )
        return client.uaclient.session

    async def _call(self, request: Awaitable[T], what: str) -> T:
        """Await one service call, converting asyncua's errors once."""
        client = self._client
        try:
            return await request
        except TimeoutError as exc:
            self._connection_lost(client, exc)
            raise DeviceTimeout(
                f"{self._label}: no answer to {what} within {self._config.timeout:g} s"
            ) from exc
        except (ConnectionError, OSError) as exc:
            self._connection_lost(client, exc)
            raise DeviceUnavailable(f"{self._label}: {what} failed: {exc}") from exc
        except UaStatusCodeError as exc:
            name = status_name(exc.code)
            if name in _SESSION_GONE:
                self._connection_lost(client, exc)
                raise DeviceUnavailable(f"{self._label}: {what} failed: {name}") from exc
            raise ProtocolError(f"{self._label}: {what} failed: {name}", code=name) from exc
        except UaError as exc:
            raise ProtocolError(f"{self._label}: {what} failed: {exc}") from exc

    async def _resolve_browse_paths(self, client: Client) -> None:
        """Find the node of each property that names a browse path instead of a NodeId."""
        wanted = [p for p in self._points.values() if p.node_id is None]
        if wanted:
            paths = []
            for point in wanted:
                assert point.prop.visitor.browseName is not None
                path = ua.BrowsePath()
                path.StartingNode = ua.NodeId(ua.Int32(ObjectIds.ObjectsFolder))
                path.RelativePath = ua.RelativePath.from_string(point.prop.visitor.browseName)
                paths.append(path)
            outcome: list[tuple[ua.NodeId | None, str]] = []
            try:
                results = await self._call(
                    client.uaclient.session.translate_browsepaths_to_nodeids(paths),
                    "TranslateBrowsePathsToNodeIds",
                )
            except ProtocolError as exc:
                # The server cannot translate paths at all: those properties stay bad.
                outcome = [(None, str(exc.code or "BadServiceUnsupported")) for _ in wanted]
            else:
                for result in results:
                    if result.StatusCode.is_good() and result.Targets:
                        target = result.Targets[0].TargetId
                        outcome.append((ua.NodeId(target.Identifier, target.NamespaceIndex), ""))
                    else:
                        bad = result.StatusCode.is_bad()
                        outcome.append(
                            (None, status_name(result.StatusCode) if bad else "BadNoMatch")
                        )
            for point, (node_id, name) in zip(wanted, outcome, strict=True):
                if node_id is not None:
                    point.read_id = _read_id(node_id)
                    point.unresolved = point.unresolved_code = None
                    continue
                point.read_id = None
                point.unresolved = (
                    f"browse path {point.prop.visitor.browseName!r} leads to no node ({name})"
                )
                point.unresolved_code = name
                log.warning(
                    "%s event=browse-failed property=%s status=%s", self._label, point.name, name
                )

    def _prepare_reads(self) -> None:
        for point in self._points.values():
            if point.node_id is not None:
                point.read_id = _read_id(point.node_id)
            else:
                point.unresolved = "the browse path is resolved when the driver connects"
                point.unresolved_code = None

    def _node_of(self, point: _Point) -> ua.NodeId | None:
        return point.read_id.NodeId if point.read_id is not None else None

    # ---- reads -------------------------------------------------------------------------
    async def read(
        self, properties: Sequence[PropertySpec[OpcUaVisitorConfig]]
    ) -> dict[str, Reading]:
        """Read a batch with one Read service call.

        Raises:
            DeviceUnavailable: the session is gone (the runtime reconnects).
        """
        if not properties:
            return {}
        session = self._session()
        key = tuple(p.name for p in properties)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(properties, key)
        out: dict[str, Reading] = {}
        if plan.readable:
            try:
                results = await self._call(session.read(plan.params), "Read")
            except ProtocolError as exc:
                # The whole service failed (BadTooManyOperations, ...): every property is bad.
                now = now_ms()
                for point in plan.readable:
                    out[point.name] = Reading.bad(str(exc), code=exc.code, timestamp=now)
                results = None
            if results is not None:
                now = now_ms()
                for point, dv in zip(plan.readable, results, strict=True):
                    out[point.name] = reading_from_datavalue(dv, point.prop.type, now)
        if plan.unresolved:
            now = now_ms()
            for point in plan.unresolved:
                out[point.name] = Reading.bad(
                    point.unresolved or "unresolved", code=point.unresolved_code, timestamp=now
                )
        return out

    def _plan(
        self, properties: Sequence[PropertySpec[OpcUaVisitorConfig]], key: tuple[str, ...]
    ) -> _Plan:
        readable: list[_Point] = []
        unresolved: list[_Point] = []
        for prop in properties:
            point = self._points.get(prop.name)
            if point is None:
                raise KeyError(f"{prop.name!r} is not a property of {self.device.id}")
            (readable if point.read_id is not None else unresolved).append(point)
        params = ua.ReadParameters()
        params.MaxAge = 0
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = [p.read_id for p in readable if p.read_id is not None]
        plan = _Plan(params, readable, unresolved)
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    # ---- writes ------------------------------------------------------------------------
    async def write(self, prop: PropertySpec[OpcUaVisitorConfig], value: Value) -> Reading | None:
        """Write ``value`` as the node's own VariantType, then read it back.

        Raises:
            WriteRejected: the value does not fit the node's type, or the server
                refused the write (``code`` is the status name).
            DeviceUnavailable: the session is gone.
        """
        session = self._session()
        point = self._points[prop.name]
        node_id = self._node_of(point)
        if node_id is None:
            raise WriteRejected(
                point.unresolved or "the node is unknown", code=point.unresolved_code
            )
        vtype = point.variant_type
        if vtype is None:
            vtype = await self._variant_type(session, point, node_id)
        variant = encode_value(value, vtype)
        item = ua.WriteValue()
        item.NodeId = node_id
        item.AttributeId = AttributeIds.Value
        # Only the value: no StatusCode, no timestamps (some PLCs refuse writes carrying them).
        item.Value = ua.DataValue(Value=variant, StatusCode=None)
        params = ua.WriteParameters()
        params.NodesToWrite = [item]
        try:
            results = await self._call(session.write(params), "Write")
        except ProtocolError as exc:
            raise WriteRejected(str(exc), code=exc.code) from exc
        status = results[0]
        if not status.is_good():
            name = status_name(status)
            if name == "BadTypeMismatch":
                point.variant_type = None  # the node may have changed type: ask again next time
            raise WriteRejected(
                f"{self._config.url} refused the write of {value!r} to {prop.name}: {name}",
                code=name,
            )
        return (await self.read([prop]))[prop.name]

    async def _variant_type(
        self, session: Any, point: _Point, node_id: ua.NodeId
    ) -> ua.VariantType:
        """Read the node's DataType (and current value) once; cache the VariantType."""
        params = ua.ReadParameters()
        for attribute in (AttributeIds.DataType, AttributeIds.Value):
            rv = ua.ReadValueId()
            rv.NodeId = node_id
            rv.AttributeId = attribute
            params.NodesToRead.append(rv)
        try:
            dtype_dv, value_dv = await self._call(session.read(params), "Read")
        except ProtocolError as exc:
            raise WriteRejected(str(exc), code=exc.code) from exc
        for dv in (dtype_dv, value_dv):
            if dv.StatusCode is not None and dv.StatusCode.is_bad():
                name = status_name(dv.StatusCode)
                raise WriteRejected(f"cannot learn the type of {point.name}: {name}", code=name)
        dtype = dtype_dv.Value.Value if dtype_dv.Value is not None else None
        current = value_dv.Value
        if current is not None and current.is_array:
            raise WriteRejected(
                f"{point.name} is an array node; writing arrays is not supported",
                code="BadTypeMismatch",
            )
        vtype = variant_type_of(dtype if isinstance(dtype, ua.NodeId) else None, current)
        if vtype is None:
            assert isinstance(dtype, ua.NodeId)
            try:
                vtype = await self._call(
                    data_type_to_variant_type(Node(session, dtype)), "Browse DataType"
                )
            except ProtocolError as exc:
                raise WriteRejected(str(exc), code=exc.code) from exc
        point.variant_type = vtype
        return vtype

    # ---- subscriptions ------------------------------------------------------------------
    async def subscribe(
        self, properties: Sequence[PropertySpec[OpcUaVisitorConfig]], sink: ReadingSink
    ) -> None:
        """Monitor ``properties`` on one subscription; deliver every data change to ``sink``.

        Calling it again (after a reconnect) replaces the previous subscription.

        Raises:
            NotSupported: the server has no subscription service or refuses one;
                the runtime polls these properties instead.
            DeviceUnavailable: the session is gone.
        """
        async with self._sub_lock:
            session = self._session()
            await self._drop_subscription(delete=True)
            if not properties:
                return
            items: dict[int, _Item] = {}
            unmonitored: list[_Point] = []
            for handle, prop in enumerate(properties, start=1):
                point = self._points[prop.name]
                if point.read_id is None:
                    unmonitored.append(point)
                    continue
                visitor = prop.visitor
                sampling = (
                    visitor.samplingInterval
                    if visitor.samplingInterval is not None
                    else float(prop.collect_cycle_ms)
                )
                items[handle] = _Item(handle, point, sampling, 1, visitor.deadband)
            publishing = max(10.0, min((i.sampling_ms for i in items.values()), default=1000.0))
            for item in items.values():
                # Room for every sample of three publishing intervals: asyncua keeps one
                # Publish request in flight, so samples wait out a whole round trip.
                samples = publishing / item.sampling_ms if item.sampling_ms > 0 else 1.0
                item.queue_size = 3 * max(1, math.ceil(samples))
            keepalive = max(1, math.ceil(KEEPALIVE_MS / publishing))
            sub = _Subscription(
                sink=sink,
                items=items,
                publishing_ms=publishing,
                keepalive_count=keepalive,
                lifetime_count=min(keepalive * 10, 15_000),
            )
            now = now_ms()
            for point in unmonitored:
                _deliver(
                    sub,
                    point.name,
                    Reading.bad(
                        point.unresolved or "unresolved", code=point.unresolved_code, timestamp=now
                    ),
                    self._label,
                )
            if not items:
                return
            # Registered first: the server sends each item's initial value right away.
            self._sub = sub
            try:
                await self._create(session, sub)
            except BaseException as exc:
                self._sub = None
                if sub.subscription_id is not None:
                    await self._forget(
                        session,
                        sub.subscription_id,
                        delete=not isinstance(exc, asyncio.CancelledError),
                    )
                if not isinstance(exc, ProtocolError):
                    raise
                if exc.code in _NO_SUBSCRIPTIONS:
                    self._subscriptions_unsupported = True
                if not self._said_unsupported:
                    self._said_unsupported = True
                    log.warning(
                        "%s event=subscriptions-unavailable fallback=poll reason=%r",
                        self._label,
                        str(exc),
                    )
                raise NotSupported(
                    f"{self._config.url} does not give this device a subscription "
                    f"({exc.code or exc}); its properties are polled"
                ) from exc
            sub.task = asyncio.create_task(self._supervise(sub), name=f"{self._label}.subscription")

    async def _create(self, session: Any, sub: _Subscription) -> None:
        """CreateSubscription and CreateMonitoredItems for ``sub``'s items."""
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = sub.publishing_ms
        params.RequestedLifetimeCount = sub.lifetime_count
        params.RequestedMaxKeepAliveCount = sub.keepalive_count
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        result = await self._call(
            session.create_subscription(params, lambda r: self._on_publish(sub, r)),
            "CreateSubscription",
        )
        sub.subscription_id = result.SubscriptionId
        revised_ms = result.RevisedPublishingInterval or sub.publishing_ms
        keepalive = result.RevisedMaxKeepAliveCount or sub.keepalive_count
        sub.stale_after = max(3.0 * keepalive * revised_ms / 1000.0, 3.0) + 1.0
        sub.last_publish = time.monotonic()

        requests = []
        for item in sub.items.values():
            rv = item.point.read_id
            assert rv is not None
            mp = ua.MonitoringParameters()
            mp.ClientHandle = item.handle
            mp.SamplingInterval = item.sampling_ms
            mp.QueueSize = item.queue_size
            mp.DiscardOldest = True
            if item.deadband is not None:
                flt = ua.DataChangeFilter()
                flt.Trigger = ua.DataChangeTrigger.StatusValue
                flt.DeadbandType = ua.DeadbandType.Absolute
                flt.DeadbandValue = item.deadband
                mp.Filter = flt
            req = ua.MonitoredItemCreateRequest()
            req.ItemToMonitor = rv
            req.MonitoringMode = ua.MonitoringMode.Reporting
            req.RequestedParameters = mp
            requests.append(req)
        cparams = ua.CreateMonitoredItemsParameters()
        cparams.SubscriptionId = sub.subscription_id
        cparams.TimestampsToReturn = ua.TimestampsToReturn.Both
        cparams.ItemsToCreate = requests
        results = await self._call(session.create_monitored_items(cparams), "CreateMonitoredItems")
        now = now_ms()
        for item, res in zip(list(sub.items.values()), results, strict=True):
            if not res.StatusCode.is_good():
                name = status_name(res.StatusCode)
                _deliver(
                    sub,
                    item.point.name,
                    Reading.bad(
                        f"the server cannot monitor the node: {name}", code=name, timestamp=now
                    ),
                    self._label,
                )

    def _on_publish(self, sub: _Subscription, result: ua.PublishResult) -> None:
        """asyncua's publish callback: route data changes to the sink."""
        if sub is not self._sub or result.SubscriptionId != sub.subscription_id:
            return
        sub.last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return  # keep-alive
        now = now_ms()
        items = sub.items
        sink = sub.sink
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                for change in notification.MonitoredItems:
                    item = items.get(change.ClientHandle)
                    if item is None:
                        continue
                    reading = reading_from_datavalue(change.Value, item.point.prop.type, now)
                    try:
                        sink(item.point.name, reading)
                    except Exception:
                        if not sub.sink_failed:
                            sub.sink_failed = True
                            log.exception(
                                "%s event=sink-failed property=%s", self._label, item.point.name
                            )
            elif isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and not status.is_good() and not self._lost:
                    log.warning(
                        "%s event=subscription-status status=%s action=re-create",
                        self._label,
                        status_name(status),
                    )
                    sub.recreate.set()

    async def _supervise(self, sub: _Subscription) -> None:
        """Re-create the subscription when the server drops it or it goes silent."""
        check = max(0.25, min(1.0, sub.stale_after / 4))
        while True:
            try:
                async with asyncio.timeout(check):
                    await sub.recreate.wait()
            except TimeoutError:
                pass
            if self._lost or sub is not self._sub:
                return
            silent = time.monotonic() - sub.last_publish
            client = self._client
            publishing = (
                client is not None
                and client.uaclient.session._publish_task is not None
                and not client.uaclient.session._publish_task.done()
            )
            # asyncua ends its publish loop when the server answers BadNoSubscription.
            if not sub.recreate.is_set() and publishing and silent < sub.stale_after:
                continue
            sub.recreate.clear()
            try:
                await self._recreate(sub, silent)
            except DeviceUnavailable:
                return  # the connection is gone; the runtime reconnects and subscribes again
            except MapperError as exc:
                log.warning(
                    "%s event=resubscribe-failed error=%r retry=%.1fs", self._label, str(exc), check
                )

    async def _recreate(self, sub: _Subscription, silent: float) -> None:
        async with self._sub_lock:
            if sub is not self._sub or self._lost:
                return
            session = self._session()
            old = sub.subscription_id
            log.warning(
                "%s event=resubscribe subscription=%s silent=%.1fs", self._label, old, silent
            )
            sub.subscription_id = None
            if old is not None:
                await self._forget(session, old, delete=True)
            await self._create(session, sub)
            log.info("%s event=resubscribed subscription=%s", self._label, sub.subscription_id)

    async def _drop_subscription(self, *, delete: bool) -> None:
        """Forget the subscription; delete it on the server when the session is alive."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        task = sub.task
        if task is not None and task is not asyncio.current_task() and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        client = self._client
        sub_id = sub.subscription_id
        if client is None or sub_id is None:
            return
        await self._forget(client.uaclient.session, sub_id, delete=delete)

    async def _forget(self, session: Any, sub_id: int, *, delete: bool) -> None:
        """Delete subscription ``sub_id`` on the server, or at least its local callback.

        asyncua drops the callback itself once the server confirms the deletion;
        when the server cannot (session lost, subscription already gone) it is
        dropped here so nothing of the old subscription stays registered.
        """
        if delete and not self._lost:
            try:
                async with asyncio.timeout(min(self._config.timeout, 5.0)):
                    results = await session.delete_subscriptions([sub_id])
                if results and results[0].is_good():
                    return
            except (Exception, TimeoutError):  # noqa: BLE001 - best effort: CloseSession deletes it
                pass
        session._subscription_callbacks.pop(sub_id, None)


def _read_id(node_id: ua.NodeId) -> ua.ReadValueId:
    rv = ua.ReadValueId()
    rv.NodeId = node_id
    rv.AttributeId = AttributeIds.Value
    return rv


def _deliver(sub: _Subscription, name: str, reading: Reading, label: str) -> None:
    try:
        sub.sink(name, reading)
    except Exception:
        if not sub.sink_failed:
            sub.sink_failed = True
            log.exception("%s event=sink-failed property=%s", label, name)
