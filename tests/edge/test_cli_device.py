"""``bpcontrol device serve`` and ``bpcontrol run --plant`` through the real CLI (subprocesses).

The device listens on a free 127.0.0.1 port; its certificates, passwords and the
controller's security file go into the test's folder; it is stopped with SIGINT by PID
(killed if it does not stop within 20 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_rig import MAPPING

from services.edge.credentials import load_mqtt_security, load_opcua_security
from services.edge.link import free_port

BPCONTROL = [sys.executable, "-m", "bpcontrol.cli"]
SPEED_UP = "600"


class Served:
    """A ``bpcontrol device serve`` process and the lines it printed so far."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(
            [*BPCONTROL, "device", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("drive it:"):
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until the device printed how to drive it (or exited)."""
        assert self._ready.wait(timeout_s), "device serve printed nothing in time"
        if self.process.poll() is not None:
            err = self.process.stderr.read() if self.process.stderr else ""
            pytest.fail(f"device serve exited {self.process.returncode}: {err}")

    def interrupt(self, timeout_s: float = 20.0) -> int:
        """Ctrl-C by PID; the exit status (killed after ``timeout_s``)."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
        try:
            code = self.process.wait(timeout_s)
            self._reader.join(5.0)  # every line printed is in ``lines``
            return code
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5.0)
            raise

    def run_line(self) -> list[str]:
        """The printed ``bpcontrol run ...`` arguments after ``bpcontrol run``."""
        line = next(x for x in self.lines if x.startswith("drive it:"))
        return line.split("bpcontrol run ", 1)[1].split()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Served]:
    """``device serve --protocol <param>`` on a free port, stopped at the end."""
    port = free_port()
    device = Served(
        [
            "--protocol",
            request.param,
            "--port",
            str(port),
            "--folder",
            str(tmp_path / "device"),
            "--speed-up",
            SPEED_UP,
        ]
    )
    try:
        device.wait_ready()
        yield device
    finally:
        if device.process.poll() is None:
            device.interrupt()


@pytest.mark.parametrize("served", ["opcua", "mqtt"], indirect=True)
def test_device_serve_prints_its_endpoint_and_stops_on_ctrl_c(
    served: Served, tmp_path: Path
) -> None:
    text = "\n".join(served.lines)
    security = tmp_path / "device" / "controller.toml"
    if "opc.tcp://" in text:
        assert "SignAndEncrypt" in text
        login = load_opcua_security(security)
        assert login.server_cert.is_file() and login.user == "controller"
    else:
        assert "mqtt://127.0.0.1:" in text
        assert load_mqtt_security(security).user == "r1-controller"
    assert security.stat().st_mode & 0o077 == 0  # it holds a password: owner only
    assert served.interrupt() == 0
    assert served.lines[-1] == "device stopped (0 setpoint writes applied)"


def test_device_serve_bad_input_is_one_line(tmp_path: Path) -> None:
    for args, says in [
        (["--protocol", "modbus"], "--protocol must be opcua or mqtt"),
        (["--speed-up", "max"], "--speed-up must be a number"),
        (["--mapping", str(tmp_path / "none.toml")], "none.toml"),
    ]:
        done = subprocess.run(
            [*BPCONTROL, "device", "serve", "--folder", str(tmp_path / "d"), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0]
        assert not (tmp_path / "d").exists()  # nothing written


def test_run_plant_bad_options_are_one_line(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    security = tmp_path / "controller.toml"
    security.write_text('[opcua]\nuser = "x"\n', encoding="utf-8")
    for args, says in [
        (["--plant", "opcua://127.0.0.1:4840"], "--plant needs --device-mapping"),
        (["--plant", "http://x:1", "--device-mapping", str(MAPPING)], "--plant must be"),
        (["--device-mapping", str(MAPPING)], "go with --plant"),
        (
            [
                "--plant",
                "opcua://127.0.0.1:4840",
                "--device-mapping",
                str(MAPPING),
                "--device-security",
                str(security),
                "--speed-up",
                "600",
            ],
            "opcua.cert: must be a non-empty string",
        ),
        (
            [
                "--plant",
                "opcua://127.0.0.1:4840",
                "--device-mapping",
                str(MAPPING),
                "--device-security",
                str(security),
            ],
            "--plant needs --speed-up N",
        ),
    ]:
        done = subprocess.run(
            [*BPCONTROL, "run", "--out", str(runs), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
        assert not runs.exists() or not any(runs.iterdir())  # no run folder


@pytest.mark.slow
@pytest.mark.parametrize("served", ["opcua", "mqtt"], indirect=True)
def test_run_drives_the_served_device(served: Served, tmp_path: Path) -> None:
    runs = str(tmp_path / "runs")
    done = subprocess.run(
        [*BPCONTROL, "run", *served.run_line(), "--duration", "1", "--json", "--out", runs],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    kpis = json.loads(done.stdout)
    assert kpis["duration_h"] == pytest.approx(1.0)
    assert kpis["plant_reads_failed"] == 0
    # 1 h of the batch phase: the product estimate is small and positive (g)
    assert 0.0 < kpis["final_product"] < 1.0
    assert kpis["final_product_source"].startswith("estimate")
    assert served.interrupt() == 0
    applied = int(served.lines[-1].split("(")[1].split()[0])
    assert applied >= kpis["setpoints_applied"]  # each applied step reached the device


def _records(run_dir: Path) -> list[object]:
    from services.historian import read_records

    return list(read_records(run_dir / "records.sqlite"))


RESUME_RUN_H = 5.0
"""Length of the killed-and-resumed run (h): killed at 0.5 h, the device runs on at 600x, so
the second process has (5 - 0.5) h / 600 = 27 s of wall time to start (imports, loop
build) before the batch is over; 2 h left 8 s, which a loaded 2-core machine exceeded."""


@pytest.mark.parametrize("served", ["opcua", "mqtt"], indirect=True)
def test_a_killed_run_resumes_on_the_device_from_its_historian(
    served: Served, tmp_path: Path
) -> None:
    """The controller *process* dies (SIGKILL mid-batch) while the device runs on; `bpcontrol
    run --resume RUN_DIR` on the same device continues the run in its folder from the
    historian file's last state, at the device's process time, bumplessly."""
    import time

    from bpcontrol.records import EventKind, EventRecord, MeasurementRecord, SetpointRecord

    runs = tmp_path / "runs"
    first = subprocess.Popen(
        [
            *BPCONTROL,
            "run",
            *served.run_line(),
            "--duration",
            str(RESUME_RUN_H),
            "--out",
            str(runs),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:  # until the run has stored half an hour of its batch (600x: 3 s of wall)
        deadline = time.monotonic() + 120.0
        run_dir: Path | None = None
        while time.monotonic() < deadline and first.poll() is None:
            folders = list(runs.glob("*/records.sqlite"))
            if folders:
                run_dir = folders[0].parent
                meas = [r for r in _records(run_dir) if isinstance(r, MeasurementRecord)]
                if meas and meas[-1].t_h >= 0.5:
                    break
            time.sleep(0.2)
        assert first.poll() is None and run_dir is not None, "the run ended before the kill"
    finally:
        first.kill()  # SIGKILL: no handler runs, the status stays "running"
        first.wait(10.0)
    before = _records(run_dir)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
    last_sp = [r for r in before if isinstance(r, SetpointRecord)][-1]
    time.sleep(1.0)  # 10 min of process time with no controller
    done = subprocess.run(
        [*BPCONTROL, "run", *served.run_line(), "--resume", str(run_dir), "--duration",
         str(RESUME_RUN_H), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    kpis = json.loads(done.stdout)
    assert kpis["restarts"] == 1
    # it resumed after the downtime (>= 10 min of process time), not at the crash
    assert kpis["restart_resumed_h"] >= kpis["restart_at_h"] + 10 / 60
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    after = _records(run_dir)[len(before) :]
    resumed = [r for r in after if isinstance(r, EventRecord) and r.kind == EventKind.RESUMED]
    assert len(resumed) == 1
    meas = [r for r in after if isinstance(r, MeasurementRecord)]
    assert meas and meas[-1].t_h == pytest.approx(RESUME_RUN_H, abs=1 / 60 + 1e-9)  # to the end
    assert min(r.t_h for r in meas) >= kpis["restart_resumed_h"] - 1e-9
    # bumpless: the first setpoints after the restart are those the device held
    first_sp = next(r for r in after if isinstance(r, SetpointRecord))
    assert first_sp.t_h == pytest.approx(kpis["restart_resumed_h"])
    for name, value in last_sp.values.items():
        assert first_sp.values[name] == pytest.approx(value, rel=1e-9), name
    assert served.interrupt() == 0
