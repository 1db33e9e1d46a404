"""The controller's device security file (TOML): how ``bpcontrol run --plant`` logs in.

``bpcontrol device serve`` writes one for its simulated device; for a real device the
site writes it by hand. One table per protocol (paths relative to the file)::

    [opcua]                       # Basic256Sha256 SignAndEncrypt, user login
    cert = "controller.der"       # the controller's application certificate (DER)
    key = "controller.pem"        # its private key (PEM)
    uri = "urn:bpcontrol:controller"   # its application URI (in the certificate)
    server_cert = "device.der"    # the device's certificate, the only one trusted
    user = "controller"
    password = "..."

    [mqtt]                        # broker login, TLS when ca_certs is given
    user = "r1-controller"
    password = "..."
    ca_certs = "ca.pem"           # optional; certfile / keyfile for client certificates

Every problem is a :class:`CredentialsError` naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bpcontrol.tomlfile import read_toml
from services.edge.mqtt_gateway import MqttSecurity
from services.edge.opcua_gateway import ClientSecurity

__all__ = ["CredentialsError", "load_mqtt_security", "load_opcua_security", "write_credentials"]


class CredentialsError(ValueError):
    """A device security file that cannot be used; the message names the file and key."""


def _section(path: Path, name: str) -> Mapping[str, Any]:
    doc = read_toml(path, "device security file", CredentialsError)
    table = doc.get(name)
    if not isinstance(table, Mapping):
        raise CredentialsError(f"{path}: no [{name}] table (see docs/device-mapping.md)")
    return table


def _text(path: Path, key: str, table: Mapping[str, Any], name: str) -> str:
    value = table.get(name)
    if not isinstance(value, str) or not value:
        raise CredentialsError(f"{path}: {key}.{name}: must be a non-empty string")
    return value


def _file(path: Path, key: str, table: Mapping[str, Any], name: str) -> Path:
    where = path.parent / _text(path, key, table, name)
    if not where.is_file():
        raise CredentialsError(f"{path}: {key}.{name}: no such file {where}")
    return where


def load_opcua_security(path: Path) -> ClientSecurity:
    """The ``[opcua]`` login of a device security file."""
    t = _section(path, "opcua")
    return ClientSecurity(
        cert=_file(path, "opcua", t, "cert"),
        key=_file(path, "opcua", t, "key"),
        uri=_text(path, "opcua", t, "uri"),
        server_cert=_file(path, "opcua", t, "server_cert"),
        user=_text(path, "opcua", t, "user"),
        password=_text(path, "opcua", t, "password"),
    )


def load_mqtt_security(path: Path) -> MqttSecurity:
    """The ``[mqtt]`` login of a device security file."""
    t = _section(path, "mqtt")
    optional = {
        name: _file(path, "mqtt", t, name)
        for name in ("ca_certs", "certfile", "keyfile")
        if name in t
    }
    return MqttSecurity(
        user=_text(path, "mqtt", t, "user"), password=_text(path, "mqtt", t, "password"), **optional
    )


def write_credentials(path: Path, tables: Mapping[str, Mapping[str, str]]) -> None:
    """Write a device security file (owner-readable only: it holds a password)."""
    lines = [
        "# How a controller logs in to this device (bpcontrol run --device-security FILE).",
        "# Written by bpcontrol device serve; keep it private: it holds a password.",
    ]
    for name, table in tables.items():
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {_quote(v)}" for k, v in table.items())
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
