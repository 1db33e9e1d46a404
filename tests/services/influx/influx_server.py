"""A real ``influxd`` (1.x) on free 127.0.0.1 ports with its data in a temporary folder.

Used by the InfluxDB historian tests and by ``benchmarks/bench_influx.py``: start it, wait
for ``/ping``, stop it by PID (SIGTERM, then SIGKILL) and start it again on the same data
(for the outage tests).
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
        root: its data folder.
        http_port: the HTTP port (default: a free one).
        auth: ``auth-enabled = true``; :meth:`start` then creates the admin user
            ``credentials`` (the first user needs no authentication), with which
            :meth:`query` and :meth:`count` authenticate.
        tls: (certificate file, private key file, CA file): HTTPS only
            (``https-enabled``); the helper's own requests trust the CA file.
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
            )
        )
        self.log = self.root / "influxd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The HTTP API's base URL (``http://127.0.0.1:PORT``, ``https://`` with TLS)."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.http_port}"

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
        """Start ``influxd`` and wait until ``/ping`` answers 204 (RuntimeError otherwise)."""
        if self.running:
            return
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
                        if self.auth:  # the first user may be created without credentials
                            user, password = self.credentials
                            r = client.post(
                                f"{self.url}/query",
                                data={
                                    "q": f"CREATE USER \"{user}\" WITH PASSWORD '{password}' "
                                    "WITH ALL PRIVILEGES"
                                },
                                auth=self.credentials,
                            )
                            r.raise_for_status()
                        return
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"influxd did not answer /ping within {timeout_s} s; see {self.log}")

    def stop(self, *, kill: bool = False, timeout_s: float = 15.0) -> None:
        """Stop the process by its PID (SIGTERM, or SIGKILL when ``kill``; SIGKILL after
        ``timeout_s``)."""
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

    def query(self, q: str, database: str | None = None) -> dict[str, object]:
        """One InfluxQL statement through ``/query``; its JSON answer."""
        params = {"q": q, "epoch": "ns"}
        if database:
            params["db"] = database
        r = httpx.post(f"{self.url}/query", data=params, timeout=30.0, **self._client_args())
        r.raise_for_status()
        out: dict[str, object] = r.json()
        return out

    def count(self, database: str, measurement: str, where: str = "") -> int:
        """How many points ``measurement`` holds (``count`` of its field ``t_h``)."""
        clause = f" WHERE {where}" if where else ""
        res = self.query(f'SELECT count("t_h") FROM "{measurement}"{clause}', database)
        results = res.get("results")
        assert isinstance(results, list)
        series = results[0].get("series")
        if not series:
            return 0
        return int(series[0]["values"][0][1])
