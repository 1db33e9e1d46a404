"""Helpers of the edge tests: certificates, a real Mosquitto, security settings.

Everything listens on 127.0.0.1 only, on a free port, with its files in ``tmp_path``; the
broker is a real ``mosquitto`` process stopped by PID (terminate, then kill); the device
server is a real asyncua server in a thread, stopped by the fixture.
"""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hil.device_server import DeviceSecurity
from services.edge.link import free_port
from services.edge.opcua_gateway import ClientSecurity
from services.edge.pki import AppCertificate, make_certificate

MAPPING = Path(__file__).resolve().parents[2] / "services" / "edge" / "data" / "ecoli_reactor.toml"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


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


@dataclass(frozen=True)
class Broker:
    """A running Mosquitto: its port, users ``{name: password}``, PID and log file."""

    port: int
    users: dict[str, str]
    pid: int
    log: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Terminate the broker (kill after 5 s)."""
        _stop(self.process)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL: no goodbye to its clients)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5.0)

    def restart(self) -> Broker:
        """A new broker on the same port and files (after :meth:`kill` or :meth:`stop`)."""
        return start_broker(self.log.parent, self.port)


BROKER_USERS = {"r1-controller": "pw-r1c", "r1-device": "pw-r1d", "r2-controller": "pw-r2c"}
"""Users of the test broker; the ACL gives each only its own reactor's topics."""


ACL = """\
# the controller of r1 sends commands, beats and its presence, and reads the rest of r1
user r1-controller
topic write bpcontrol/lab1/r1/+/set
topic write bpcontrol/lab1/r1/heartbeat
topic readwrite bpcontrol/lab1/r1/controller
topic read bpcontrol/lab1/r1/#

# the device of r1 publishes its signals, confirmations and link, and reads r1's commands
user r1-device
topic readwrite bpcontrol/lab1/r1/#

# the controller of r2: nothing of r1
user r2-controller
topic write bpcontrol/lab1/r2/+/set
topic write bpcontrol/lab1/r2/heartbeat
topic readwrite bpcontrol/lab1/r2/controller
topic read bpcontrol/lab1/r2/#
"""
"""The broker's ACL: each user only its own reactor's topics (and the controller cannot
publish measurements)."""


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def start_broker(folder: Path, port: int | None = None) -> Broker:
    """Mosquitto on 127.0.0.1 (a free port unless given), no anonymous clients, a password
    file and a per-reactor ACL; waits (<= 10 s) until it accepts connections."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    passwd = folder / "passwd"
    passwd.write_text("", encoding="utf-8")
    for user, password in BROKER_USERS.items():
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True, capture_output=True
        )
    acl = folder / "acl"
    acl.write_text(ACL, encoding="utf-8")
    log = folder / "mosquitto.log"
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {acl}\npersistence false\nlog_dest file {log}\nlog_type all\n"
        f"user {getpass.getuser()}\nset_tcp_nodelay true\n",  # root would drop to mosquitto
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 10.0
    while True:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(
                f"mosquitto exited ({process.returncode}): {err} "
                f"{log.read_text() if log.exists() else ''}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline:
                _stop(process)
                raise RuntimeError("mosquitto did not accept connections within 10 s") from None
            time.sleep(0.05)
    return Broker(port, dict(BROKER_USERS), process.pid, log, process)
