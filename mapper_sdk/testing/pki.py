"""A throwaway certificate authority for tests and demos (needs ``cryptography``).

``TestPki(directory)`` makes a CA, then server and client certificates signed by
it, written as PEM files; and an *untrusted* CA, to show a refusal. Nothing here
is meant for production keys.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CertFiles", "TestPki"]


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path


class TestPki:
    """A CA in ``directory`` with helpers to issue server and client certificates."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: str | Path, name: str = "Mapperkit Test CA") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._key, self._cert = self._make_ca(name)
        self.ca = self._write("ca", self._key, self._cert)

    # ---- internals -------------------------------------------------------------
    @staticmethod
    def _new_key() -> Any:
        from cryptography.hazmat.primitives.asymmetric import ec

        return ec.generate_private_key(ec.SECP256R1())

    def _make_ca(self, name: str) -> tuple[Any, Any]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        key = self._new_key()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def _write(self, stem: str, key: Any, cert: Any) -> CertFiles:
        from cryptography.hazmat.primitives import serialization

        cert_path = self.dir / f"{stem}.crt"
        key_path = self.dir / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return CertFiles(cert_path, key_path)

    def _issue(self, stem: str, common_name: str, *, server: bool) -> CertFiles:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = self._new_key()
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self._key, hashes.SHA256())
        return self._write(stem, key, cert)

    # ---- public ------------------------------------------------------------------
    def server(self, stem: str = "server") -> CertFiles:
        """A server certificate for ``localhost`` and ``127.0.0.1``."""
        return self._issue(stem, "localhost", server=True)

    def client(self, stem: str = "client", common_name: str = "mapperkit-client") -> CertFiles:
        """A client certificate."""
        return self._issue(stem, common_name, server=False)
