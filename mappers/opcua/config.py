"""The OPC-UA driver's ``configData``: KubeEdge's keys, validated once at load time.

Device (``spec.protocol.configData``)::

    url: opc.tcp://10.0.0.5:4840/plant     # port 4840 when absent
    userName: operator                      # username/password identity
    password: /etc/mapper/opcua-password    # a FILE holding the password (KubeEdge)
    securityPolicy: Basic256Sha256          # None, Basic128Rsa15, Basic256, Basic256Sha256,
                                            # Aes128Sha256RsaOaep, Aes256Sha256RsaPss
    securityMode: SignAndEncrypt            # None, Sign, SignAndEncrypt
    certificate: /etc/mapper/client-cert.pem
    privateKey: /etc/mapper/client-key.pem
    remoteCertificate: /etc/mapper/server-cert.pem   # pin (or the CA that signed it)
    timeout: 5                              # seconds per request
    identity: Certificate                   # (ext) Anonymous | UserName | Certificate

Property visitor (``visitors.configData``)::

    nodeID: ns=2;s=Thermostat.Temperature   # or browseName when no nodeID is given
    browseName: 2:Thermostat/2:Temperature  # path from the Objects folder
    mode: subscribe                         # (ext) poll | subscribe (default subscribe)
    samplingInterval: 500                   # (ext) ms (default: the collectCycle)
    deadband: 0.2                           # (ext) absolute deadband on numeric values

File paths are checked when the driver connects (a missing or unreadable file
is then a :class:`~mapper_sdk.errors.ConfigError`), so a configuration can be
validated on a host that does not hold the secrets.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "SECURITY_MODES",
    "SECURITY_POLICIES",
    "Identity",
    "OpcUaProtocolConfig",
    "OpcUaVisitorConfig",
    "SecurityMode",
    "SecurityPolicy",
]

SecurityPolicy = Literal[
    "None",
    "Basic128Rsa15",
    "Basic256",
    "Basic256Sha256",
    "Aes128Sha256RsaOaep",
    "Aes256Sha256RsaPss",
]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]
Identity = Literal["Anonymous", "UserName", "Certificate"]

SECURITY_POLICIES: tuple[str, ...] = (
    "None",
    "Basic128Rsa15",
    "Basic256",
    "Basic256Sha256",
    "Aes128Sha256RsaOaep",
    "Aes256Sha256RsaPss",
)
SECURITY_MODES: tuple[str, ...] = ("None", "Sign", "SignAndEncrypt")
_IDENTITIES: tuple[str, ...] = ("Anonymous", "UserName", "Certificate")
_POLICY_URI_PREFIX = "http://opcfoundation.org/ua/securitypolicy#"
DEFAULT_PORT = 4840


def _canonical(value: Any, names: tuple[str, ...], what: str) -> Any:
    """Accept a name in any case (and a policy's URI form); return the canonical spelling."""
    if not isinstance(value, str):
        return value
    key = value.strip().lower()
    if key.startswith(_POLICY_URI_PREFIX):
        key = key[len(_POLICY_URI_PREFIX) :]
    key = key.replace("_", "")  # the policy URIs spell Aes128_Sha256_RsaOaep
    for name in names:
        if name.lower().replace("_", "") == key:
            return name
    raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(names)}")


class OpcUaProtocolConfig(BaseModel):
    """A device's connection: endpoint, security and identity.

    Attributes:
        url: the endpoint, ``opc.tcp://host[:port][/path]``; port 4840 when absent.
        userName: user name for a username/password identity.
        password: path of a file holding the password (KubeEdge stores the
            password in a file, never inline). One trailing newline is ignored.
        securityPolicy: the secure channel's policy; ``None`` for no security.
        securityMode: ``Sign`` or ``SignAndEncrypt`` (the default when a policy
            is set); ``None`` only with policy ``None``.
        certificate: the client's application instance certificate (PEM or DER).
        privateKey: its private key (PEM or DER, not encrypted).
        remoteCertificate: the server's certificate to pin, or the CA
            certificate that must have signed it. Without it the certificate the
            server presents in its endpoints is used as is.
        timeout: seconds allowed for each request (and for the connection).
        identity: (ext) the user identity: ``UserName`` when ``userName`` is set,
            otherwise ``Anonymous``; ``Certificate`` authenticates the session
            with ``certificate``/``privateKey`` (an X.509 identity token).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    userName: str | None = None
    password: str | None = None
    securityPolicy: SecurityPolicy = "None"
    securityMode: SecurityMode | None = None
    certificate: str | None = None
    privateKey: str | None = None
    remoteCertificate: str | None = None
    timeout: float = Field(default=5.0, gt=0, le=600)
    identity: Identity | None = None

    @field_validator(
        "userName",
        "password",
        "certificate",
        "privateKey",
        "remoteCertificate",
        "securityMode",
        "identity",
        mode="before",
    )
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        # KubeEdge files often carry the keys with empty strings.
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("securityPolicy", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return "None"
        return _canonical(value, SECURITY_POLICIES, "securityPolicy")

    @field_validator("securityMode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        return _canonical(value, SECURITY_MODES, "securityMode")

    @field_validator("identity", mode="before")
    @classmethod
    def _identity(cls, value: Any) -> Any:
        return _canonical(value, _IDENTITIES, "identity")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        text = value.strip()
        parts = urlsplit(text)
        if parts.scheme.lower() != "opc.tcp":
            raise ValueError(f"expected an opc.tcp://host:port/path URL, got {value!r}")
        if not parts.hostname:
            raise ValueError(f"the URL {value!r} names no host")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"the URL {value!r} has an invalid port") from None
        if port is None:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            text = urlunsplit(("opc.tcp", f"{host}:{DEFAULT_PORT}", parts.path, "", ""))
        return text

    @model_validator(mode="after")
    def _rules(self) -> OpcUaProtocolConfig:
        if self.securityPolicy == "None":
            if self.securityMode not in (None, "None"):
                raise ValueError(
                    f"securityMode {self.securityMode} needs a securityPolicy other than None"
                )
        elif self.securityMode == "None":
            raise ValueError(
                f"securityPolicy {self.securityPolicy} needs securityMode Sign or SignAndEncrypt"
            )
        if (self.certificate is None) != (self.privateKey is None):
            raise ValueError("certificate and privateKey go together: give both or neither")
        if self.securityPolicy != "None" and self.certificate is None:
            raise ValueError(
                f"securityPolicy {self.securityPolicy} needs the client's certificate "
                "and privateKey"
            )
        if self.password is not None and self.userName is None:
            raise ValueError("password (a file path) is given without userName")
        if self.identity == "UserName" and self.userName is None:
            raise ValueError("identity UserName needs userName")
        if self.identity == "Certificate" and self.certificate is None:
            raise ValueError("identity Certificate needs certificate and privateKey")
        return self

    @property
    def mode(self) -> SecurityMode:
        """The effective security mode (``SignAndEncrypt`` when a policy is set without one)."""
        if self.securityPolicy == "None":
            return "None"
        return self.securityMode or "SignAndEncrypt"

    @property
    def user_identity(self) -> Identity:
        """The effective user identity."""
        if self.identity is not None:
            return self.identity
        return "UserName" if self.userName is not None else "Anonymous"


class OpcUaVisitorConfig(BaseModel):
    """How one property maps to a node.

    Attributes:
        nodeID: the node, in OPC-UA text form (``ns=2;i=7``, ``ns=2;s=Temp``,
            ``ns=3;g=<guid>``, ``ns=4;b=<base64>``, ``i=2258``).
        browseName: the node's browse path from the Objects folder
            (``2:Thermostat/2:Temperature``); used when ``nodeID`` is absent,
            resolved once per connection.
        mode: (ext) ``subscribe`` (the default) delivers changes through a
            monitored item; ``poll`` reads the node every collect cycle.
        samplingInterval: (ext) the monitored item's sampling interval in ms;
            the property's ``collectCycle`` when absent.
        deadband: (ext) absolute deadband: a numeric change smaller than this
            is not reported (subscriptions only).
        dataType: accepted for compatibility with KubeEdge files; the model's
            property type decides the value's type.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodeID: str | None = None
    browseName: str | None = None
    mode: Literal["poll", "subscribe"] | None = None
    samplingInterval: float | None = Field(default=None, ge=0)
    deadband: float | None = Field(default=None, ge=0)
    dataType: str | None = None

    @field_validator("nodeID", "browseName", "dataType", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if isinstance(value, str):
            key = value.strip().lower()
            if key in ("poll", "subscribe"):
                return key
            raise ValueError(f"unknown mode {value!r}; expected poll or subscribe")
        return value

    @field_validator("nodeID")
    @classmethod
    def _node_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from asyncua import ua

        text = value.strip()
        try:
            ua.NodeId.from_string(text)
        except Exception as exc:  # noqa: BLE001 - asyncua raises several kinds
            raise ValueError(
                f"{value!r} is not a NodeId (expected ns=<index>;i=<number>, ns=<index>;s=<name>, "
                f"ns=<index>;g=<guid> or ns=<index>;b=<base64>): {exc}"
            ) from None
        return text

    @field_validator("browseName")
    @classmethod
    def _browse_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from asyncua import ua

        text = value.strip()
        try:
            ua.RelativePath.from_string(text)
        except Exception as exc:  # noqa: BLE001 - asyncua raises several kinds
            raise ValueError(
                f"{value!r} is not a browse path (expected <ns>:<Name>/<ns>:<Name>...): {exc}"
            ) from None
        return text

    @model_validator(mode="after")
    def _node(self) -> OpcUaVisitorConfig:
        if self.nodeID is None and self.browseName is None:
            raise ValueError("give nodeID (or browseName when the node id is not known)")
        return self
