"""Edges of the write path and transport: a slow loop (202, audited later), an ended batch
(409), TLS with HSTS."""

from __future__ import annotations

import json
import math
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from services.api.app import PREFIX
from tests.api.conftest import login, make_settings, served_reactor, start_server, stop_server


def test_a_write_the_loop_has_not_answered_is_pending_then_audited(tmp_path: Path) -> None:
    waiting = served_reactor(tmp_path, "P1", speed_up=math.inf)  # built, not started yet
    ended = served_reactor(tmp_path, "D1", speed_up=math.inf)
    ended.duration_h = 0.5
    ended.start()
    assert ended.thread is not None
    ended.thread.join(60)
    audit = tmp_path / "audit.jsonl"
    server, thread, base = start_server([waiting, ended], audit, make_settings(write_timeout_s=0.5))
    try:
        headers = {"Authorization": f"Bearer {login(base, 'operator')}"}
        body = {"mode": "hold", "reason": "wait for it"}
        late = httpx.post(f"{base}{PREFIX}/reactors/P1/mode", json=body, headers=headers)
        assert late.status_code == 202 and late.json()["result"] == "pending"
        assert not audit.exists() or audit.read_text() == ""  # no verdict yet
        done = httpx.post(f"{base}{PREFIX}/reactors/D1/mode", json=body, headers=headers)
        assert done.status_code == 409 and "has ended" in done.json()["detail"]
        waiting.start()  # the loop's first tick carries the command out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            results = [json.loads(x)["result"] for x in audit.read_text().splitlines()]
            if len(results) == 2:
                break
            time.sleep(0.05)
        assert sorted(results) == ["accepted", "refused (409)"]
        assert waiting.handle.loop.snapshot().mode.value == "hold"
    finally:
        stop_server(server, thread)
        waiting.stop("test over")
        ended.stop("test over")


def test_serve_over_tls_sends_hsts(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        [*openssl, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    cmd = [sys.executable, "-m", "bpcontrol.cli", "serve", "--port", "0", "--controller"]
    cmd += ["recipe", "--tls-cert", str(cert), "--tls-key", str(key), "--out", str(tmp_path / "s")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        url = ""
        for line in proc.stdout:
            match = re.search(r"serving on (https://\S+)", line)
            if match:
                url = match[1]
                break
        assert url, "serve did not start"
        deadline = time.monotonic() + 30
        while True:
            try:
                reply = httpx.get(f"{url}/health", verify=ssl.create_default_context(cafile=cert))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert reply.status_code == 200
        assert reply.headers["strict-transport-security"] == "max-age=31536000"
        plain = url.replace("https://", "http://")
        try:
            refused = httpx.get(f"{plain}/health")
            assert refused.status_code >= 400
        except httpx.HTTPError:
            pass  # a TLS server may just close a plain-text connection
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
