"""A local Mosquitto for the demo device and the tests: loopback, logins, an ACL per reactor.

``bpcontrol device serve --protocol mqtt`` and the edge tests start a real ``mosquitto``
(2.x) with a config of their own in a folder: a listener on 127.0.0.1 only, no anonymous
clients, a password file made with ``mosquitto_passwd -b`` and an ACL that gives each
user only its reactor's topics (:func:`reactor_acl`). The process is stopped by its PID.
A production site runs its own broker; this module is not involved then.
"""

from __future__ import annotations

import getpass
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.edge.link import free_port
from services.edge.mapping import MqttTopics

__all__ = [
    "BrokerTls",
    "Mosquitto",
    "ReactorLogins",
    "reactor_acl",
    "reactor_logins",
    "start_mosquitto",
]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def reactor_acl(topics: MqttTopics, *, controller: str, device: str) -> str:
    """ACL lines for one reactor: its controller sends commands, beats and its presence and
    reads the rest; its device reads and writes the reactor's topics."""
    b = topics.base
    return (
        f"user {controller}\n"
        f"topic write {b}/+/set\n"
        f"topic write {b}/heartbeat\n"
        f"topic readwrite {b}/controller\n"
        f"topic read {b}/#\n\n"
        f"user {device}\n"
        f"topic readwrite {b}/#\n\n"
    )


@dataclass(frozen=True)
class ReactorLogins:
    """One reactor's two broker users (controller and device), their passwords and ACL."""

    controller: str
    device: str
    users: dict[str, str]
    acl: str


def reactor_logins(topics: MqttTopics, reactor: str) -> ReactorLogins:
    """Fresh logins ``<reactor>-controller`` and ``<reactor>-device`` (random passwords,
    good for one broker's life) and their ACL (:func:`reactor_acl`)."""
    controller, device = f"{reactor}-controller", f"{reactor}-device"
    users = {controller: secrets.token_urlsafe(16), device: secrets.token_urlsafe(16)}
    acl = reactor_acl(topics, controller=controller, device=device)
    return ReactorLogins(controller, device, users, acl)


@dataclass(frozen=True)
class Mosquitto:
    """A running broker: its port, users ``{name: password}``, log file and process."""

    port: int
    users: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        """The broker's process id."""
        return self.process.pid

    def stop(self) -> None:
        """Terminate the broker (kill after 5 s); idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5.0)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5.0)

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL: no goodbye to its clients)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5.0)


@dataclass(frozen=True)
class BrokerTls:
    """The broker's TLS files (PEM): the CA its clients trust, its certificate and key."""

    cafile: Path
    certfile: Path
    keyfile: Path


def start_mosquitto(
    folder: Path,
    users: Mapping[str, str],
    acl: str,
    *,
    port: int | None = None,
    tls: BrokerTls | None = None,
) -> Mosquitto:
    """Mosquitto on 127.0.0.1 (a free port unless given) with ``users`` and ``acl`` (and
    TLS only, when ``tls``), its files in ``folder``; waits (<= 10 s) until it accepts
    connections, else raises."""
    if not Path(MOSQUITTO).exists():
        raise RuntimeError(f"mosquitto not found ({MOSQUITTO}); install Debian's mosquitto")
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    passwd = folder / "passwd"
    passwd.write_text("", encoding="utf-8")
    passwd.chmod(0o600)
    for user, password in users.items():
        subprocess.run(
            [MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True, capture_output=True
        )
    (folder / "acl").write_text(acl, encoding="utf-8")
    log = folder / "mosquitto.log"
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        + (
            ""
            if tls is None
            else f"cafile {tls.cafile}\ncertfile {tls.certfile}\nkeyfile {tls.keyfile}\n"
        )
        + f"allow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {folder / 'acl'}\npersistence false\nlog_dest file {log}\nlog_type all\n"
        f"user {getpass.getuser()}\n"  # run as root it would drop to 'mosquitto' (no access)
        "set_tcp_nodelay true\n",  # a command is several small publishes: send each at once
        encoding="utf-8",
    )
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    broker = Mosquitto(port, dict(users), log, process)
    deadline = time.monotonic() + 10.0
    while True:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            seen = log.read_text() if log.exists() else ""
            raise RuntimeError(f"mosquitto exited ({process.returncode}): {err} {seen}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return broker
        except OSError:
            if time.monotonic() > deadline:
                broker.stop()
                raise RuntimeError("mosquitto did not accept connections within 10 s") from None
            time.sleep(0.05)
