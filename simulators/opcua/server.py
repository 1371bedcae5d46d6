"""The OPC-UA simulator: a real asyncua server serving a :class:`~.profile.Profile`.

Start it in-process (tests, the demo, benchmarks)::

    async with OpcUaSimulator(load_profile("thermostat"), port=0) as sim:
        print(sim.url, sim.node_id("setpoint"))
        await sim.set_bad_status("temperature", "BadSensorFailure")
        await sim.restart(downtime=1.0)

or standalone with ``mapperkit sim opcua --profile FILE --port N``.

Besides serving the profile, it injects faults a real device shows:

* :meth:`OpcUaSimulator.restart` (and :meth:`~OpcUaSimulator.stop_listening` /
  :meth:`~OpcUaSimulator.start_listening`): every connection drops and the
  server forgets all sessions and subscriptions, as a restarted process does;
* :meth:`OpcUaSimulator.set_bad_status`: a variable reports a bad StatusCode
  (to reads and to monitored items) until :meth:`~OpcUaSimulator.clear_bad_status`;
* :meth:`OpcUaSimulator.refuse_writes`: writes to a variable (or to all) fail
  with a chosen status;
* :attr:`OpcUaSimulator.subscriptions_enabled` = ``False``: CreateSubscription
  fails with ``BadServiceUnsupported``, as on servers without subscriptions;
* :meth:`OpcUaSimulator.drop_subscriptions`: the server deletes every
  subscription while the sessions stay.

Read-only variables refuse writes with ``BadNotWritable``; writes of the wrong
VariantType get ``BadTypeMismatch``. :attr:`OpcUaSimulator.stats` counts the
service calls that touch the profile's variables.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import random
import socket
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from .profile import Behaviour, Profile, VariableProfile, VariableType

__all__ = ["OpcUaSimulator", "SimulatorStats"]

log = logging.getLogger(__name__)


@dataclass
class SimulatorStats:
    """Service calls seen by the simulator.

    Attributes:
        read_calls: Read service calls that asked for at least one profile variable.
        nodes_read: nodes asked for in those calls.
        read_calls_total: every Read service call (keep-alive reads of the
            server's status included).
        write_calls: Write service calls.
        subscriptions_created: CreateSubscription calls that succeeded.
        monitored_items_created: monitored items created.
        logins: the identity of every session activated, in order:
            ``anonymous``, ``user:<name>`` or ``certificate:<subject CN>``.
    """

    read_calls: int = 0
    nodes_read: int = 0
    read_calls_total: int = 0
    write_calls: int = 0
    subscriptions_created: int = 0
    monitored_items_created: int = 0
    logins: list[str] = field(default_factory=list)

    def reset(self) -> None:
        """Zero every counter and forget the logins."""
        for name in self.__dataclass_fields__:
            setattr(self, name, [] if name == "logins" else 0)


@dataclass(eq=False)
class _Var:
    profile: VariableProfile
    node_id: ua.NodeId
    vtype: ua.VariantType
    rng: random.Random
    bad: ua.StatusCode | None = None
    good_value: Any = None
    refuse: ua.StatusCode | None = None

    def variant(self, value: Any) -> ua.Variant:
        """``value`` as a Variant of this variable's type."""
        if self.vtype is ua.VariantType.LocalizedText:
            if isinstance(value, list):
                value = [
                    v if isinstance(v, ua.LocalizedText) else ua.LocalizedText(v) for v in value
                ]
            elif not isinstance(value, ua.LocalizedText):
                value = ua.LocalizedText(value)
        return ua.Variant(value, self.vtype, is_array=True if self.profile.array else None)


def _status(name: str) -> ua.StatusCode:
    code = getattr(StatusCodes, name, None)
    if not isinstance(code, int):
        raise ValueError(f"unknown OPC-UA status {name!r}")
    return ua.StatusCode(ua.UInt32(code))


@dataclass
class _Faults:
    subscriptions_enabled: bool = True
    refuse_all: ua.StatusCode | None = None
    vars_by_node: dict[ua.NodeId, _Var] = field(default_factory=dict)


class _Session(InternalSession):
    """A client session that counts calls and applies the simulator's faults."""

    sim: OpcUaSimulator

    def activate_session(
        self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
    ) -> ua.ActivateSessionResult:
        result = super().activate_session(params, peer_certificate)
        token = params.UserIdentityToken
        if isinstance(token, ua.UserNameIdentityToken):
            who = f"user:{token.UserName}"
        elif isinstance(token, ua.X509IdentityToken):
            cert = x509.load_der_x509_certificate(token.CertificateData)
            names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            common = names[0].value if names else cert.subject.rfc4514_string()
            who = f"certificate:{common!s}"
        else:
            who = "anonymous"
        self.sim.stats.logins.append(who)
        return result

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        stats = self.sim.stats
        stats.read_calls_total += 1
        known = self.sim._faults.vars_by_node
        if any(rv.NodeId in known for rv in params.NodesToRead):
            stats.read_calls += 1
            stats.nodes_read += len(params.NodesToRead)
        return await super().read(params)

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        self.sim.stats.write_calls += 1
        faults = self.sim._faults
        verdicts: list[ua.StatusCode | None] = []
        passed: list[ua.WriteValue] = []
        for item in params.NodesToWrite:
            var = faults.vars_by_node.get(item.NodeId)
            verdict = None
            if var is not None and item.AttributeId == AttributeIds.Value:
                if not var.profile.writable:
                    verdict = ua.StatusCode(ua.UInt32(StatusCodes.BadNotWritable))
                elif var.refuse is not None:
                    verdict = var.refuse
                elif faults.refuse_all is not None:
                    verdict = faults.refuse_all
            verdicts.append(verdict)
            if verdict is None:
                passed.append(item)
        if not passed:
            return [v for v in verdicts if v is not None]
        sub = ua.WriteParameters()
        sub.NodesToWrite = passed
        done = iter(await super().write(sub))
        return [v if v is not None else next(done) for v in verdicts]

    async def create_subscription(
        self,
        params: ua.CreateSubscriptionParameters,
        callback: Any,
        request_callback: Any = None,
    ) -> ua.CreateSubscriptionResult:
        if not self.sim._faults.subscriptions_enabled:
            raise ServiceError(StatusCodes.BadServiceUnsupported)
        result = await super().create_subscription(params, callback, request_callback)
        self.sim.stats.subscriptions_created += 1
        return result

    async def create_monitored_items(
        self, params: ua.CreateMonitoredItemsParameters
    ) -> list[ua.MonitoredItemCreateResult]:
        results = await super().create_monitored_items(params)
        self.sim.stats.monitored_items_created += sum(1 for r in results if r.StatusCode.is_good())
        return results


class _InternalServer(InternalServer):
    def __init__(self, sim: OpcUaSimulator) -> None:
        super().__init__(user_manager=_Users(sim))
        self._sim = sim

    def create_session(
        self, name: str, user: User | None = None, external: bool = False
    ) -> InternalSession:
        session = _Session(
            self,
            self.aspace,
            self.subscription_service,
            name,
            user=user if user is not None else User(role=UserRole.Anonymous),
            external=external,
        )
        session.sim = self._sim
        return session


class _Users(UserManager):
    """Username/password from the profile; certificates must come from the trusted CA."""

    def __init__(self, sim: OpcUaSimulator) -> None:
        self._sim = sim

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        users = self._sim.profile.security.users
        if username is not None:
            expected = users.get(username)
            if expected is None or not hmac.compare_digest(
                expected.encode("utf-8"), (password or "").encode("utf-8")
            ):
                log.info("opcua-sim event=login-refused user=%s", username)
                return None
            return User(role=UserRole.User, name=username)
        if certificate and not self._sim._trusted(certificate):
            return None
        return User(role=UserRole.User)


_POLICY_TYPES = {member.name: member for member in ua.SecurityPolicyType}


class OpcUaSimulator:
    """An asyncua server that serves a profile and injects faults (see the module docs).

    Args:
        profile: what to serve.
        host: address to listen on.
        port: TCP port; 0 picks a free one (read :attr:`port` after start).
    """

    def __init__(self, profile: Profile, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.profile = profile
        self.host = host
        self.port = port
        self.stats = SimulatorStats()
        self.namespace_index = 0
        self._faults = _Faults()
        self._vars: dict[str, _Var] = {}
        self._server: Server | None = None
        self._runner: asyncio.Task[None] | None = None
        self._ca: x509.Certificate | None = None
        self._t0 = 0.0
        self._listening = False

    # ---- lifecycle -----------------------------------------------------------------
    async def __aenter__(self) -> OpcUaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The endpoint URL clients connect to."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"opc.tcp://{host}:{self.port}{self.profile.path}"

    @property
    def subscriptions_enabled(self) -> bool:
        """False makes CreateSubscription fail with ``BadServiceUnsupported``."""
        return self._faults.subscriptions_enabled

    @subscriptions_enabled.setter
    def subscriptions_enabled(self, enabled: bool) -> None:
        self._faults.subscriptions_enabled = enabled

    async def start(self) -> None:
        """Build the address space and start listening. Takes about 1.5 s (asyncua's init)."""
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        if self.port == 0:
            self.port = _free_port(self.host)
        server = Server(iserver=_InternalServer(self))
        await server.init()
        self._server = server
        try:
            await self._configure(server)
            await self._populate(server)
            await self.start_listening()
        except BaseException:
            self._server = None
            await server.iserver.stop()
            raise
        self._t0 = asyncio.get_running_loop().time()
        self._runner = asyncio.create_task(
            self._animate_all(), name=f"opcua-sim[{self.profile.name}]"
        )
        log.info("opcua-sim event=started url=%s variables=%d", self.url, len(self._vars))

    async def stop(self) -> None:
        """Stop serving and release the port. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            try:
                await runner
            except asyncio.CancelledError:
                pass
        server, self._server = self._server, None
        if server is None:
            return
        await self.stop_listening(_server=server)
        await server.iserver.stop()

    async def _configure(self, server: Server) -> None:
        sec = self.profile.security
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}{self.profile.path}")
        server.set_server_name(f"Mapperkit simulator ({self.profile.name})")
        if sec.certificate is not None and sec.privateKey is not None:
            cert = _load_cert(sec.certificate)
            uris = _uris(cert)
            if uris:
                await server.set_application_uri(uris[0])
            server.iserver.certificate = cert
            server.iserver.private_key = _load_key(sec.privateKey)
        if sec.trustedCA is not None:
            self._ca = _load_cert(sec.trustedCA)
            server.set_certificate_validator(self._validate_client)
        server.set_security_policy(
            [_POLICY_TYPES["NoSecurity" if p == "None" else p] for p in sec.policies]
        )
        tokens: list[type] = []
        if sec.anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        if sec.users:
            tokens.append(ua.UserNameIdentityToken)
        if sec.certificate is not None:
            tokens.append(ua.X509IdentityToken)
        server.set_identity_tokens(tokens)

    async def _populate(self, server: Server) -> None:
        profile = self.profile
        self.namespace_index = await server.register_namespace(profile.namespace)
        folder = await server.nodes.objects.add_object(
            ua.NodeId(ua.String(profile.object), ua.Int16(self.namespace_index)),
            ua.QualifiedName(profile.object, self.namespace_index),
        )
        now = datetime.now(UTC)
        for var in profile.variables:
            node_id = ua.NodeId.from_string(profile.node_id_text(var, self.namespace_index))
            vtype = ua.VariantType[var.type.value]
            state = _Var(var, node_id, vtype, random.Random(var.seed))
            initial = state.variant(var.initial())
            node = await folder.add_variable(
                node_id, ua.QualifiedName(var.name, self.namespace_index), initial
            )
            if var.writable:
                await node.set_writable()
            if var.description:
                await node.write_attribute(
                    AttributeIds.Description,
                    ua.DataValue(ua.Variant(ua.LocalizedText(var.description))),
                )
            await server.write_attribute_value(node_id, _stamped(Value=initial, now=now))
            self._vars[var.name] = state
            self._faults.vars_by_node[node_id] = state

    # ---- listening and restarts ---------------------------------------------------------
    async def stop_listening(self, *, _server: Server | None = None) -> None:
        """Drop every connection and stop accepting new ones; forget sessions and subscriptions."""
        server = _server or self._require()
        if server.bserver is not None:
            await server.bserver.stop()
            server.bserver = None
        iserver = server.iserver
        # A restarted server process has no sessions or subscriptions left.
        for session in list(iserver._external_sessions.values()):
            await session.close_session(True)
        service = iserver.subscription_service
        if service.subscriptions:
            await service.delete_subscriptions(list(service.subscriptions))
        self._listening = False

    async def start_listening(self) -> None:
        """Accept connections again (on the same port)."""
        server = self._require()
        if self._listening:
            return
        if server.bserver is None and not server._policies:
            # First start: Server.start() builds the endpoints and the policies.
            await server.start()
        else:
            bserver = BinaryServer(server.iserver, self.host, self.port, server.limits)
            bserver.set_policies(server._policies)
            await bserver.start()
            server.bserver = bserver
        self._listening = True

    async def restart(self, downtime: float = 0.5) -> None:
        """Simulate a restart: connections drop, state is lost, back after ``downtime`` s."""
        await self.stop_listening()
        log.info("opcua-sim event=restarting downtime=%.1fs", downtime)
        await asyncio.sleep(downtime)
        await self.start_listening()

    async def drop_subscriptions(self) -> None:
        """Delete every subscription on the server; sessions stay connected."""
        service = self._require().iserver.subscription_service
        if service.subscriptions:
            await service.delete_subscriptions(list(service.subscriptions))

    # ---- values and faults --------------------------------------------------------------
    def node_id(self, name: str) -> str:
        """The variable's NodeId text (``ns=2;s=Thermostat.setpoint``), for Device YAML."""
        return self._var(name).node_id.to_string()

    def value(self, name: str) -> Any:
        """The variable's current value as the server holds it."""
        dv = self._require().read_attribute_value(self._var(name).node_id)
        return dv.Value.Value if dv.Value is not None else None

    async def set_value(self, name: str, value: Any) -> None:
        """Set a variable's value on the server side (no client involved)."""
        var = self._var(name)
        await self._store(var, value)

    async def set_bad_status(self, name: str, status: str = "BadSensorFailure") -> None:
        """Make the variable report ``status`` (reads and monitored items) until cleared."""
        var = self._var(name)
        code = _status(status)
        if not code.is_bad():
            raise ValueError(f"{status} is not a Bad status")
        if var.bad is None:
            var.good_value = self.value(name)
        var.bad = code
        now = datetime.now(UTC)
        await self._require().write_attribute_value(var.node_id, _stamped(StatusCode=code, now=now))

    async def clear_bad_status(self, name: str) -> None:
        """Undo :meth:`set_bad_status`: the variable reports its last good value again."""
        var = self._var(name)
        if var.bad is None:
            return
        var.bad = None
        await self._store(var, var.good_value)

    def refuse_writes(self, name: str | None = None, status: str = "BadOutOfService") -> None:
        """Fail writes to ``name`` (or to every variable) with ``status``."""
        code = _status(status)
        if name is None:
            self._faults.refuse_all = code
        else:
            self._var(name).refuse = code

    def accept_writes(self, name: str | None = None) -> None:
        """Undo :meth:`refuse_writes` for ``name`` (or for all)."""
        if name is None:
            self._faults.refuse_all = None
            for var in self._vars.values():
                var.refuse = None
        else:
            self._var(name).refuse = None

    async def clear_faults(self) -> None:
        """Undo every injected fault (bad statuses, refused writes, disabled subscriptions)."""
        self._faults.subscriptions_enabled = True
        self.accept_writes()
        for name, var in self._vars.items():
            if var.bad is not None:
                await self.clear_bad_status(name)

    # ---- behaviours -------------------------------------------------------------------
    async def _animate_all(self) -> None:
        groups: dict[int, list[_Var]] = defaultdict(list)
        for var in self._vars.values():
            if var.profile.behaviour is not Behaviour.CONSTANT:
                groups[var.profile.interval].append(var)
        if not groups:
            return
        async with asyncio.TaskGroup() as tg:
            for interval, members in sorted(groups.items()):
                tg.create_task(
                    self._animate(interval, members),
                    name=f"opcua-sim[{self.profile.name}].every-{interval}ms",
                )

    async def _animate(self, interval: int, members: list[_Var]) -> None:
        loop = asyncio.get_running_loop()
        period = interval / 1000.0
        due = loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due += period
            now = loop.time()
            if due <= now:
                due = now + period  # overran: keep going from now, do not burst
            t = now - self._t0
            for var in members:
                if var.bad is not None:
                    continue
                await self._store(var, self._next(var, t))

    def _next(self, var: _Var, t: float) -> Any:
        p = var.profile
        current = self.value(p.name)
        limits = p.type.integer_range
        if p.behaviour is Behaviour.SINE:
            centre = float(p.value or 0.0)
            value: float = centre + (p.amplitude if p.amplitude is not None else 1.0) * math.sin(
                2 * math.pi * t / (p.period or 60.0)
            )
        elif p.behaviour is Behaviour.COUNTER:
            step = p.step if p.step is not None else 1
            low = p.min if p.min is not None else (limits[0] if limits and limits[0] > 0 else 0)
            high = p.max if p.max is not None else (limits[1] if limits else math.inf)
            value = (current or 0) + (int(step) if limits else step)
            if value > high:
                value = low
        else:  # random walk
            step = p.step if p.step is not None else 1.0
            low = p.min if p.min is not None else (limits[0] if limits else -math.inf)
            high = p.max if p.max is not None else (limits[1] if limits else math.inf)
            value = min(high, max(low, (current or 0) + var.rng.uniform(-step, step)))
        if limits is not None:
            return int(min(limits[1], max(limits[0], round(value))))
        if p.type is VariableType.FLOAT:
            return float(value)
        return value

    async def _store(self, var: _Var, value: Any) -> None:
        now = datetime.now(UTC)
        await self._require().write_attribute_value(
            var.node_id,
            _stamped(Value=var.variant(value), now=now),
        )

    # ---- helpers -----------------------------------------------------------------------
    def _var(self, name: str) -> _Var:
        try:
            return self._vars[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not a variable of profile {self.profile.name} "
                f"(it has {', '.join(self._vars)})"
            ) from None

    def _require(self) -> Server:
        if self._server is None:
            raise RuntimeError("the simulator is not running")
        return self._server

    def _trusted(self, certificate: Any) -> bool:
        if self._ca is None:
            return True
        try:
            cert = (
                certificate
                if isinstance(certificate, x509.Certificate)
                else x509.load_der_x509_certificate(bytes(certificate))
            )
            cert.verify_directly_issued_by(self._ca)
        except (ValueError, TypeError, InvalidSignature):
            return False
        now = datetime.now(UTC)
        return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc

    async def _validate_client(
        self, cert: x509.Certificate, app: ua.ApplicationDescription
    ) -> None:
        if not self._trusted(cert):
            log.info(
                "opcua-sim event=certificate-refused subject=%s", cert.subject.rfc4514_string()
            )
            raise ServiceError(StatusCodes.BadCertificateUntrusted)


def _load_cert(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _stamped(*, now: datetime, **fields: Any) -> ua.DataValue:
    """A DataValue with both timestamps set to ``now``."""
    stamp = cast(ua.DateTime, now)  # asyncua's DateTime is a datetime subclass for typing
    return ua.DataValue(SourceTimestamp=stamp, ServerTimestamp=stamp, **fields)


def _load_key(path: Path) -> Any:
    data = path.read_bytes()
    if data.lstrip().startswith(b"-----BEGIN"):
        return serialization.load_pem_private_key(data, password=None)
    return serialization.load_der_private_key(data, password=None)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host or "127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.UniformResourceIdentifier))
