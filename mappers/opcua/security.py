"""Loading the files a secure OPC-UA connection needs, with precise errors.

Everything here raises :class:`~mapper_sdk.errors.ConfigError` naming the
configuration key and the file, because a missing certificate or a wrong pin
never fixes itself by retrying.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mapper_sdk.errors import ConfigError

__all__ = [
    "application_uri",
    "check_server_certificate",
    "fingerprint",
    "first_certificate",
    "load_certificate",
    "load_private_key",
    "read_password",
]


def _read(path: str, key: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: file {path!r} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{key}: {path!r} is a directory, not a file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc.strerror}") from None


def read_password(path: str) -> str:
    """The password held in the file ``path`` (KubeEdge's ``password`` key).

    One trailing line break is not part of the password, as the files are
    usually written with ``echo``.
    """
    data = _read(path, "password")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"password: the file {path!r} is not UTF-8 text") from None
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def load_certificate(path: str, key: str) -> x509.Certificate:
    """An X.509 certificate from a PEM or DER file."""
    data = _read(path, key)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ConfigError(
            f"{key}: {path!r} is not an X.509 certificate in PEM or DER form ({exc})"
        ) from None


def load_private_key(path: str, key: str = "privateKey") -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key from a PEM or DER file (OPC-UA's policies use RSA)."""
    data = _read(path, key)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_private_key(data, password=None)
        else:
            loaded = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise ConfigError(
            f"{key}: {path!r} is encrypted; give the key without a passphrase"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"{key}: {path!r} is not a private key in PEM or DER form ({exc})"
        ) from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ConfigError(
            f"{key}: {path!r} holds a {type(loaded).__name__}; OPC-UA security policies need RSA"
        )
    return loaded


def application_uri(cert: x509.Certificate) -> str | None:
    """The ApplicationUri in the certificate's subjectAltName, if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def first_certificate(der: bytes) -> bytes:
    """The leading certificate of a DER blob that may hold a whole chain."""
    # DER SEQUENCE with a two-byte long-form length: 30 82 HH LL.
    if len(der) > 4 and der[0] == 0x30 and der[1] == 0x82:
        return der[: int.from_bytes(der[2:4], "big") + 4]
    return der


def fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint, colon separated, as certificate tools print it."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def check_server_certificate(server_der: bytes, expected: x509.Certificate, path: str) -> None:
    """Check the server's certificate against ``remoteCertificate``.

    ``expected`` is either the server's own certificate (it must match byte for
    byte) or a CA certificate (the server's certificate must be issued and
    signed by it and be valid now).
    """
    if not server_der:
        raise ConfigError(
            f"remoteCertificate: the server presents no certificate to check against {path!r}"
        )
    expected_der = expected.public_bytes(serialization.Encoding.DER)
    if server_der == expected_der:
        return
    try:
        is_ca = expected.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(
            f"remoteCertificate: the server's certificate (SHA-256 {fingerprint(server_der)}) "
            f"is not the pinned one in {path!r} (SHA-256 {fingerprint(expected_der)})"
        )
    try:
        server = x509.load_der_x509_certificate(server_der)
    except ValueError as exc:
        raise ConfigError(
            f"remoteCertificate: the server's certificate is malformed ({exc})"
        ) from None
    try:
        server.verify_directly_issued_by(expected)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"remoteCertificate: the server's certificate ({server.subject.rfc4514_string()}) "
            f"is not signed by the CA in {path!r} ({expected.subject.rfc4514_string()})"
        ) from None
    now = datetime.now(UTC)
    if not server.not_valid_before_utc <= now <= server.not_valid_after_utc:
        raise ConfigError(
            f"remoteCertificate: the server's certificate is valid from "
            f"{server.not_valid_before_utc:%Y-%m-%d} to {server.not_valid_after_utc:%Y-%m-%d}, "
            "not now"
        )
