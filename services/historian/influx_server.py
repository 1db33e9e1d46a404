"""A local ``influxd`` (1.x) for a run of its own, the HIL suites and the tests: loopback only.

:func:`start_influxd` starts Debian's ``influxd`` with a config of its own in a folder
(every listener, HTTP and the RPC bind address, on 127.0.0.1; reporting, the monitor's
store and continuous queries off), on a free port unless one is given, and waits until
``/ping`` answers. The :class:`InfluxServer` is stopped by its PID (SIGTERM, then
SIGKILL), killed at once (a crash), and started again on the same port and data folder,
so an outage of the historian can be staged. A production site runs its own server; this
module is not involved then.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

__all__ = ["INFLUXD", "InfluxServer", "free_port", "start_influxd"]

INFLUXD = shutil.which("influxd") or "/usr/bin/influxd"
"""The server binary (Debian's influxdb 1.6.7 here)."""

_CONFIG = """\
reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false

[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
{http_extra}
[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InfluxServer:
    """One ``influxd`` process over the data folder ``root``; the ports stay fixed over restarts.

    Args:
        root: its data folder (config ``influxdb.conf`` and log ``influxd.log`` in it too).
        http_port: the HTTP port on 127.0.0.1 (default: a free one).
        auth: ``auth-enabled = true``; :meth:`start` then creates the admin user
            ``credentials`` (the first user needs no authentication), with which
            :meth:`query` and :meth:`count` authenticate.
        tls: (certificate file, private key file, CA file): HTTPS only
            (``https-enabled``); the helper's own requests trust the CA file.

    Nothing is started by the constructor: :meth:`start` (or :func:`start_influxd`).
    """

    def __init__(
        self,
        root: Path,
        *,
        http_port: int | None = None,
        auth: bool = False,
        credentials: tuple[str, str] = ("admin", "admin-secret"),
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port() if http_port is None else http_port
        self.rpc_port = free_port()
        self.auth = auth
        self.credentials = credentials
        self.tls = tls
        extra = "  auth-enabled = true\n" if auth else ""
        if tls is not None:
            extra += (
                "  https-enabled = true\n"
                f'  https-certificate = "{tls[0]}"\n  https-private-key = "{tls[1]}"\n'
            )
        self.config = self.root / "influxdb.conf"
        self.config.write_text(
            _CONFIG.format(
                root=self.root, rpc_port=self.rpc_port, http_port=self.http_port, http_extra=extra
            ),
            encoding="utf-8",
        )
        self.log = self.root / "influxd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._user_created = False

    @property
    def url(self) -> str:
        """The HTTP API's base URL (``http://127.0.0.1:PORT``, ``https://`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int | None:
        """The server's process id (None when not started or stopped)."""
        return None if self.proc is None else self.proc.pid

    def _client_args(self) -> dict[str, Any]:
        """How the helper's own requests verify and authenticate."""
        args: dict[str, Any] = {}
        if self.tls is not None:
            args["verify"] = ssl.create_default_context(cafile=str(self.tls[2]))
        if self.auth:
            args["auth"] = self.credentials
        return args

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start ``influxd`` (no-op when running) and wait up to ``timeout_s`` (s) until
        ``/ping`` answers 204; RuntimeError otherwise (naming the log file)."""
        if self.running:
            return
        if not Path(INFLUXD).exists():
            raise RuntimeError(f"influxd not found ({INFLUXD}); install Debian's influxdb")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [INFLUXD, "run", "-config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        args = self._client_args()
        args.pop("auth", None)
        with httpx.Client(timeout=1.0, **args) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"influxd exited with {self.proc.returncode}; see {self.log}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.url}/ping").status_code == 204:
                        if self.auth and not self._user_created:
                            self._create_admin(client)
                        return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"influxd did not answer /ping within {timeout_s} s; see {self.log}")

    def _create_admin(self, client: httpx.Client) -> None:
        """The admin user of ``credentials`` (the first user needs no authentication)."""
        user, password = self.credentials
        r = client.post(
            f"{self.url}/query",
            data={"q": f"CREATE USER \"{user}\" WITH PASSWORD '{password}' WITH ALL PRIVILEGES"},
            auth=self.credentials,
        )
        r.raise_for_status()
        self._user_created = True

    def stop(self, *, kill: bool = False, timeout_s: float = 15.0) -> None:
        """Stop the process by its PID (SIGTERM, or SIGKILL when ``kill``; SIGKILL after
        ``timeout_s`` s); idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout_s)
        self.proc = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: a crash, nothing flushed); idempotent."""
        self.stop(kill=True)

    def query(self, q: str, database: str | None = None) -> dict[str, object]:
        """One InfluxQL statement through ``/query`` (POST); its JSON answer."""
        params = {"q": q, "epoch": "ns"}
        if database:
            params["db"] = database
        r = httpx.post(f"{self.url}/query", data=params, timeout=30.0, **self._client_args())
        r.raise_for_status()
        out: dict[str, object] = r.json()
        return out

    def count(self, database: str, measurement: str, where: str = "") -> int:
        """How many points ``measurement`` holds (``count`` of its field ``t_h``), those
        matching the InfluxQL condition ``where`` when given; 0 when the database or the
        measurement does not exist (nothing was ever delivered to it)."""
        clause = f" WHERE {where}" if where else ""
        res = self.query(f'SELECT count("t_h") FROM "{measurement}"{clause}', database)
        results = res.get("results")
        if not isinstance(results, list) or not results:
            raise RuntimeError(f"{self.url}: /query answered no results: {res!r}")
        series = results[0].get("series")
        if not series:
            return 0
        return int(series[0]["values"][0][1])


def start_influxd(
    folder: Path,
    *,
    port: int | None = None,
    timeout_s: float = 30.0,
) -> InfluxServer:
    """``influxd`` on 127.0.0.1 (HTTP on a free port unless given), its config, data and
    log in ``folder``; waits (<= ``timeout_s`` s) until ``/ping`` answers, else raises
    RuntimeError. Stop it with :meth:`InfluxServer.stop`, crash it with
    :meth:`InfluxServer.kill`, start it again (same port, same data) with
    :meth:`InfluxServer.start`."""
    server = InfluxServer(folder, http_port=port)
    server.start(timeout_s)
    return server
