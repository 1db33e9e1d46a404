"""``bpcontrol serve --devices FILE`` drives a device through the OPC UA edge gateway.

The device is the simulated E. coli reactor served by :class:`hil.device_server.
DeviceServer` on a free 127.0.0.1 port (SignAndEncrypt, certificates and login from the
edge tests' helpers, ``tests/edge/edge_rig.py``); ``bpcontrol serve`` runs as a subprocess
in demo mode; the test reads the reactor's measurements over real HTTP and writes a
setpoint, which the device applies. The device is stopped by the test, serve by SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.clock import PacedClock
from hil.device_server import DeviceServer
from hil.plant import ecoli_plant
from models import load_model
from services.edge.credentials import write_credentials
from services.edge.mapping import load_mapping
from tests.api.test_serve import _wait_line
from tests.edge.edge_rig import MAPPING, PASSWORD, USER, device_security, make_pki

BPCONTROL = [sys.executable, "-m", "bpcontrol.cli"]
SPEED_UP = 600.0  # the device's clock and serve's: 1 min of process time per 0.1 s


@pytest.fixture
def device(tmp_path: Path) -> Iterator[tuple[DeviceServer, Path]]:
    """The simulated device (its clock starts with the controller's first command) and the
    controller's login file for it."""
    pki = make_pki(tmp_path / "pki")
    model = load_model("ecoli_fedbatch")
    server = DeviceServer(
        ecoli_plant(model, seed=3),
        PacedClock(SPEED_UP),
        load_mapping(MAPPING, model),
        security=device_security(pki),
        start_on_first_command=True,
    )
    login = tmp_path / "controller.toml"
    c = pki.controller
    write_credentials(
        login,
        {
            "opcua": {
                "cert": str(c.cert),
                "key": str(c.key),
                "uri": c.uri,
                "server_cert": str(pki.device.cert),
                "user": USER,
                "password": PASSWORD,
            }
        },
    )
    server.start()
    try:
        yield server, login
    finally:
        server.stop()


def _devices_file(tmp_path: Path, url: str, login: Path) -> Path:
    path = tmp_path / "devices.toml"
    path.write_text(
        f'[R1]\nplant = "{url}"\nmapping = "{MAPPING}"\nsecurity = "{login.name}"\n',
        encoding="utf-8",
    )
    return path


def test_serve_drives_a_device_over_opcua_and_the_api_reads_and_writes_it(
    device: tuple[DeviceServer, Path], tmp_path: Path
) -> None:
    server, login = device
    url = f"opcua://127.0.0.1:{server.port}/bpcontrol/"
    devices = _devices_file(tmp_path, url, login)
    out = tmp_path / "serve"
    cmd = [*BPCONTROL, "serve", "--port", "0", "--controller", "recipe", "--devices", str(devices)]
    cmd += ["--speed-up", str(SPEED_UP), "--out", str(out)]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    try:
        password = _wait_line(proc, r"user operator\s+password (\S+)", lines)[1]
        assert _wait_line(proc, r"reactor R1: (.*)", lines)[1].startswith(f"device {url}")
        base = _wait_line(proc, r"serving on (http://127\.0\.0\.1:\d+/api/v1)", lines)[1]
        with httpx.Client(base_url=base, timeout=30) as c:
            token = c.post("/token", data={"username": "operator", "password": password})
            c.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            deadline = time.monotonic() + 60
            while not c.get("/reactors/R1").json()["measurements"]:
                assert time.monotonic() < deadline, "no measurement from the device"
                time.sleep(0.1)
            state = c.get("/reactors/R1").json()
            sensors = {m["sensor"]: m["value"] for m in state["measurements"]}
            assert "DO_probe" in sensors and "V_meas" in sensors  # the mapping's outputs
            # % saturation read from the device: near air saturation at the start (100 %,
            # the recipe's charge), with a 5 % margin for the probe's noise
            assert 0.0 < sensors["DO_probe"] <= 105.0
            assert state["setpoints"]["applied"]  # the device confirmed what it holds
            manual = c.post("/reactors/R1/mode", json={"mode": "manual", "reason": "device"})
            assert manual.status_code == 200, manual.text
            feed = c.put("/reactors/R1/setpoints/F", json={"value": 0.02, "reason": "feed"})
            assert feed.status_code == 200, feed.text
            # the next control step writes it to the device (<= 10 min process = 1 s wall)
            deadline = time.monotonic() + 30
            while not any(abs(e.held["F"] - 0.02) < 1e-9 for e in server.write_log):
                assert time.monotonic() < deadline, "the device never held F = 0.02 L/h"
                time.sleep(0.1)
            applied = c.get("/reactors/R1").json()["setpoints"]["applied"]["F"]
            deadline = time.monotonic() + 30
            while applied != pytest.approx(0.02):
                assert time.monotonic() < deadline, f"the API shows F = {applied}"
                time.sleep(0.1)
                applied = c.get("/reactors/R1").json()["setpoints"]["applied"]["F"]
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    assert re.search(r"audit head 2:[0-9a-f]+", rest)


def test_a_bad_devices_file_is_one_error_line(tmp_path: Path) -> None:
    login = tmp_path / "controller.toml"
    login.write_text("[opcua]\n", encoding="utf-8")
    runner = CliRunner()
    for text, says in [
        ('[R9]\nplant = "opcua://127.0.0.1:1"\n', "[R9]: no such reactor"),
        ('[R1]\nplant = "opcua://x:1"\nmapping = "m"\nsecurity = "s"\n', "R1.mapping: no such"),
        (
            f'[R1]\nplant = "http://x:1"\nmapping = "{MAPPING}"\nsecurity = "{login.name}"\n',
            "devices.toml [R1].plant must be opcua://",
        ),
        ('[R1]\nplant = "opcua://h:1"\nmappings = "m"\n', "R1.mappings: unknown key"),
    ]:
        path = tmp_path / "devices.toml"
        path.write_text(text, encoding="utf-8")
        out = tmp_path / "out"
        result = runner.invoke(app, ["serve", "--devices", str(path), "--out", str(out)])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], lines
