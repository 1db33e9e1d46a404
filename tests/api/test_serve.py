"""``bpcontrol serve`` as a user runs it: a subprocess on loopback, demo mode, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from bpcontrol.cli import app

BPCONTROL = [sys.executable, "-m", "bpcontrol.cli"]


def _wait_line(proc: subprocess.Popen[str], pattern: str, lines: list[str]) -> re.Match[str]:
    deadline = time.monotonic() + 120
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r}; got {lines}")


def test_serve_runs_loops_and_the_api_then_stops_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "serve"
    cmd = [*BPCONTROL, "serve", "--port", "0", "--reactors", "2", "--controller", "recipe"]
    cmd += ["--speed-up", "600", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines: list[str] = []
    try:
        _wait_line(proc, r"DEMO MODE", lines)
        password = _wait_line(proc, r"user operator\s+password (\S+)", lines)[1]
        url = _wait_line(proc, r"serving on (http://127\.0\.0\.1:\d+/api/v1)", lines)[1]
        with httpx.Client(base_url=url, timeout=30) as c:
            token = c.post("/token", data={"username": "operator", "password": password})
            assert token.status_code == 200
            c.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            assert [r["id"] for r in c.get("/reactors").json()] == ["R1", "R2"]
            reply = c.post("/reactors/R2/mode", json={"mode": "hold", "reason": "demo"})
            assert reply.status_code == 200, reply.text
            assert (
                c.post("/token", data={"username": "admin", "password": "admin"}).status_code == 401
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(lines) + rest
    head = re.search(r"audit head (\d+:[0-9a-f]+)", rest)
    assert head and head[1].startswith("1:")
    assert (out / "R1" / "records.sqlite").is_file() and (out / "R2" / "run.toml").is_file()
    verify = CliRunner().invoke(
        app, ["audit", "verify", str(out / "audit.jsonl"), "--head", head[1]]
    )
    assert verify.exit_code == 0 and verify.output.endswith(": OK\n")


def test_serve_refuses_unsafe_or_bad_settings(tmp_path: Path) -> None:
    runner = CliRunner()
    exposed = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--out", str(tmp_path / "a")])
    assert exposed.exit_code == 2 and "demo mode serves loopback only" in exposed.output
    config = tmp_path / "api.toml"
    config.write_text('[api]\nsecret = "short"\n')
    bad = runner.invoke(app, ["serve", "--config", str(config), "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "api.secret must be at least 32 bytes" in bad.output
    assert not (tmp_path / "b").exists()  # nothing was started or written
    hashed = runner.invoke(app, ["serve", "--hash-password"], input="s3cret\n")
    assert hashed.exit_code == 0 and hashed.output.startswith("$argon2id$")
