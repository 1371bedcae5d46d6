"""A throwaway certificate authority and OPC-UA application certificates.

OPC-UA secure channels authenticate both ends with X.509 application instance
certificates whose subjectAltName carries the application's URI. For tests,
demos and the documentation's walk-through, :func:`generate_test_pki` writes a
complete set into a directory::

    ca.pem                 the CA certificate (trust this, or pin the server cert)
    server-cert.pem        the simulator's certificate, signed by the CA
    server-key.pem         its private key
    client-cert.pem        the mapper's certificate, signed by the CA
    client-key.pem         its private key
    rogue-cert.pem         a self-signed client certificate the CA never signed
    rogue-key.pem          its private key

These are for testing only: short-lived, unprotected keys.
``mapperkit sim opcua --make-certs DIR`` runs the same generator.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLIENT_URI",
    "SERVER_URI",
    "TestPki",
    "generate_test_pki",
    "issue_certificate",
    "make_ca",
]

SERVER_URI = "urn:mapperkit:simulator:opcua"
CLIENT_URI = "urn:mapperkit:opcua-client"


def _key(bits: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mapperkit test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(
    common_name: str = "Mapperkit test CA", *, days: int = 30, bits: int = 2048
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA certificate and its key."""
    key = _key(bits)
    now = datetime.now(UTC)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_certificate(
    common_name: str,
    application_uri: str,
    *,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1",),
    days: int = 30,
    bits: int = 2048,
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """An OPC-UA application instance certificate (self-signed when ``issuer`` is None).

    It carries what OPC-UA Part 6 asks of one: the ApplicationUri and host names
    in subjectAltName, key usages for signing and key/data encipherment, and
    both server and client authentication as extended key usages.
    """
    key = _key(bits)
    now = datetime.now(UTC)
    subject = _name(common_name)
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    san += [x509.DNSName(h) for h in hostnames]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=issuer is None,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


@dataclass(frozen=True, slots=True)
class TestPki:
    """Paths of a generated test PKI (see the module documentation)."""

    __test__ = False  # not a pytest test class

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path
    server_uri: str = SERVER_URI
    client_uri: str = CLIENT_URI


def generate_test_pki(
    directory: str | Path,
    *,
    hostnames: tuple[str, ...] = (),
    days: int = 30,
    bits: int = 2048,
) -> TestPki:
    """Write a CA, a server and a client certificate (and an untrusted one) to ``directory``.

    Args:
        directory: created if missing; existing files are overwritten.
        hostnames: extra DNS names for the server and client certificates
            (``localhost`` and this machine's host name are always included).
        days: validity.
        bits: RSA key size (2048 suits every policy from Basic128Rsa15 to
            Aes256Sha256RsaPss).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = tuple(dict.fromkeys(("localhost", socket.gethostname(), *hostnames)))
    ca = make_ca(days=days, bits=bits)
    server = issue_certificate(
        "Mapperkit OPC-UA simulator", SERVER_URI, issuer=ca, hostnames=names, days=days, bits=bits
    )
    client = issue_certificate(
        "Mapperkit OPC-UA client", CLIENT_URI, issuer=ca, hostnames=names, days=days, bits=bits
    )
    rogue = issue_certificate("Untrusted client", CLIENT_URI, hostnames=names, days=days, bits=bits)
    return TestPki(
        directory=out,
        ca=_write_cert(out / "ca.pem", ca[0]),
        server_cert=_write_cert(out / "server-cert.pem", server[0]),
        server_key=_write_key(out / "server-key.pem", server[1]),
        client_cert=_write_cert(out / "client-cert.pem", client[0]),
        client_key=_write_key(out / "client-key.pem", client[1]),
        rogue_cert=_write_cert(out / "rogue-cert.pem", rogue[0]),
        rogue_key=_write_key(out / "rogue-key.pem", rogue[1]),
    )
