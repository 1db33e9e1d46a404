"""Application instance certificates for OPC UA (OPC 10000-6 6.2.2), made with ``cryptography``.

Tests and the demo device (``bpcontrol device serve``) make a self-signed certificate per
application into a folder of their own; a production device uses the vendor's PKI and
this module is not involved. The application URI is the certificate's subject alternative
name, and asyncua's validator checks that it matches what the peer says it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

__all__ = ["AppCertificate", "make_certificate"]


@dataclass(frozen=True)
class AppCertificate:
    """A certificate (DER) and its private key (PEM) on disk, and the application URI."""

    cert: Path
    key: Path
    uri: str


def make_certificate(
    folder: str | Path, name: str, uri: str, *, server: bool, days: int = 30
) -> AppCertificate:
    """A fresh RSA 2048 key and self-signed certificate ``<folder>/<name>.der`` / ``.pem``.

    ``server``: the certificate is for a server (serverAuth; else clientAuth); the host
    name in the subject alternative names is ``localhost`` and the IP 127.0.0.1.
    """
    import ipaddress

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = generate_self_signed_app_certificate(
        key,
        name,
        {"organizationName": "bpcontrol"},
        [
            x509.UniformResourceIdentifier(uri),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
        extended=use,
        days=days,
    )
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return AppCertificate(cert_path, key_path, uri)
