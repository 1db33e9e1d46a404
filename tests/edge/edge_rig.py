"""Helpers of the edge tests: certificates, a real Mosquitto, security settings.

Everything listens on 127.0.0.1 only, on a free port, with its files in ``tmp_path``; the
broker is a real ``mosquitto`` process stopped by PID (terminate, then kill); the device
server is a real asyncua server in a thread, stopped by the fixture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpcontrol.clock import PacedClock
from bpcontrol.interfaces import Plant
from bpcontrol.loop import LoopSnapshot
from bpcontrol.runspec import RunSpec
from hil.device_mqtt import DeviceMqtt
from hil.device_server import DeviceSecurity, DeviceServer
from hil.runner import RunResult, run_batch
from services.edge.broker import BrokerTls, Mosquitto, reactor_acl, start_mosquitto
from services.edge.mapping import DeviceMapping, MqttTopics
from services.edge.mqtt_gateway import MqttPlant, MqttSecurity
from services.edge.opcua_gateway import ClientSecurity, OpcUaPlant
from services.edge.pki import AppCertificate, make_certificate

MAPPING = Path(__file__).resolve().parents[2] / "services" / "edge" / "data" / "ecoli_reactor.toml"


@dataclass(frozen=True)
class Pki:
    """The device's and the controller's certificates, and a certificate nobody trusts."""

    device: AppCertificate
    controller: AppCertificate
    stranger: AppCertificate
    trusted_clients: Path


def make_pki(root: Path) -> Pki:
    """Self-signed application certificates in a temporary folder; only the controller's
    is in the device's trust list."""
    device = make_certificate(root / "device", "device", "urn:bpcontrol:device:r1", server=True)
    controller = make_certificate(
        root / "controller", "controller", "urn:bpcontrol:controller", server=False
    )
    stranger = make_certificate(
        root / "stranger", "stranger", "urn:bpcontrol:controller", server=False
    )
    trusted = root / "trusted"
    trusted.mkdir()
    (trusted / "controller.der").write_bytes(controller.cert.read_bytes())
    return Pki(device, controller, stranger, trusted)


USER, PASSWORD = "controller", "s3cret-pw"


def device_security(pki: Pki, *, allow_none: bool = False) -> DeviceSecurity:
    """The device's security: SignAndEncrypt, the controller's user, its trust list."""
    d = pki.device
    return DeviceSecurity(d.cert, d.key, d.uri, pki.trusted_clients, {USER: PASSWORD}, allow_none)


def client_security(
    pki: Pki, *, cert: AppCertificate | None = None, password: str = PASSWORD
) -> ClientSecurity:
    """The controller's security (its own certificate unless ``cert``)."""
    c = cert or pki.controller
    return ClientSecurity(c.cert, c.key, c.uri, pki.device.cert, USER, password)


class CountingPlant:
    """A plant that counts its reads (the devices' sampling pattern under test)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.reads = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def read(self, t_h: float) -> object:
        self.reads += 1
        return self.inner.read(t_h)  # type: ignore[attr-defined]


class Broker(Mosquitto):
    """The test broker (:class:`services.edge.broker.Mosquitto`) that can come back."""

    def restart(self) -> Broker:
        """A new broker on the same port and files (after :meth:`kill` or :meth:`stop`)."""
        return start_broker(self.log.parent, self.port)


BROKER_USERS = {"r1-controller": "pw-r1c", "r1-device": "pw-r1d", "r2-controller": "pw-r2c"}
"""Users of the test broker; the ACL gives each only its own reactor's topics."""

ACL = reactor_acl(
    MqttTopics("bpcontrol", "lab1", "r1"), controller="r1-controller", device="r1-device"
) + reactor_acl(
    MqttTopics("bpcontrol", "lab1", "r2"), controller="r2-controller", device="r2-device"
)
"""The broker's ACL: each user only its own reactor's topics (and the controller cannot
publish measurements)."""


def start_broker(folder: Path, port: int | None = None, tls: BrokerTls | None = None) -> Broker:
    """Mosquitto on 127.0.0.1 (a free port unless given), no anonymous clients, a password
    file and a per-reactor ACL (TLS only, when ``tls``); waits (<= 10 s) until it accepts
    connections."""
    b = start_mosquitto(folder, BROKER_USERS, ACL, port=port, tls=tls)
    return Broker(b.port, b.users, b.log, b.process)


@dataclass
class EdgeRun:
    """A batch run through a gateway and the simulated device: the run's result, the
    device (its write log) and the gateway (its exchange records)."""

    result: RunResult
    device: DeviceServer | DeviceMqtt
    gateway: OpcUaPlant | MqttPlant


def run_through_device(
    kind: str,
    spec: RunSpec,
    run_dir: Path,
    mapping: DeviceMapping,
    *,
    speed_up: float,
    pki: Pki | None = None,
    broker_port: int | None = None,
    duration_h: float | None = None,
    progress: Callable[[LoopSnapshot], None] | None = None,
    parts: dict[str, Any] | None = None,
) -> EdgeRun:
    """``run_batch`` with the loop's plant behind a gateway: the simulated plant is served by
    the device (``kind`` ``opcua``: the asyncua server, SignAndEncrypt; ``mqtt``: the MQTT
    device on the broker at ``broker_port``), on a clock ``speed_up`` that starts with the
    controller's first command, as the loop's does. ``parts`` (when given) receives the
    ``device`` and the ``gateway`` as soon as they exist (for a test that breaks them)."""
    made: dict[str, Any] = {} if parts is None else parts

    def wrap(sim: Plant) -> Plant:
        clock = PacedClock(speed_up)
        if kind == "opcua":
            assert pki is not None
            device = DeviceServer(
                sim, clock, mapping, security=device_security(pki), start_on_first_command=True
            )
            device.start()
            made["device"] = device
            gateway: OpcUaPlant | MqttPlant = OpcUaPlant(
                device.endpoint, mapping, security=client_security(pki)
            )
        else:
            assert broker_port is not None
            mdevice = DeviceMqtt(
                sim,
                clock,
                mapping,
                host="127.0.0.1",
                port=broker_port,
                security=MqttSecurity("r1-device", BROKER_USERS["r1-device"]),
                start_on_first_command=True,
            )
            mdevice.start()
            made["device"] = mdevice
            gateway = MqttPlant(
                "127.0.0.1",
                broker_port,
                mapping,
                security=MqttSecurity("r1-controller", BROKER_USERS["r1-controller"]),
            )
        made["gateway"] = gateway
        return gateway

    try:
        result = run_batch(
            spec,
            run_dir=run_dir,
            speed_up=speed_up,
            duration_h=duration_h,
            wrap_plant=wrap,
            progress=progress,
            report=False,
        )
    finally:
        if "gateway" in made:
            made["gateway"].close()
        if "device" in made:
            made["device"].stop()
    return EdgeRun(result, made["device"], made["gateway"])


def make_tls(folder: Path) -> BrokerTls:
    """A test CA and a broker certificate it signed (127.0.0.1, localhost), PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def build(
        subject: str, key: rsa.RSAPrivateKey, issuer: x509.Name | None, sign: rsa.RSAPrivateKey
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        b = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
        )
        if issuer is None:
            b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return b.sign(sign, hashes.SHA256())

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = build("bpcontrol test CA", ca_key, None, ca_key)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = build("127.0.0.1", key, ca.subject, ca_key)
    tls = BrokerTls(folder / "ca.pem", folder / "broker.pem", folder / "broker.key")
    tls.cafile.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return tls
