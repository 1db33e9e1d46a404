"""Load the live API from a separate process: 200 reads/s + 20 writes/s against 4 reactors.

Starts ``bpcontrol serve`` (4 recipe-only E. coli reactors, a settings file with one viewer
and four operators, ``--speed-up`` default 1500: one loop tick per 40 ms of wall time, a
30 h batch in 72 s) twice, each a fresh process:

1. idle: nobody calls the API for ``--seconds``; the loops' tick lateness is the baseline;
2. loaded: this process sends (a minimal asyncio HTTP/1.1 client on 48 keep-alive
   connections), on an open-loop schedule (requests start on time whether or
   not earlier ones returned), 200 reads/s (reactor list, reactor state, events, plan, in
   turn over the reactors) and 20 writes/s (operator setpoints in MANUAL, inside the
   limits, each operator on its own reactor) for ``--seconds``.

A write's answer is the supervisor's verdict, given at the loop's next tick, so a write's
latency includes the wait for that tick (up to one tick period, 40 ms at 1500x). Reported:
read and write latency (median, p99, max; ms), errors (any status other than 200, or a
failed request), and per run the loops' tick lateness (median, p99, max over the 4 loops'
ticks; ms), idle side by side with loaded. ``--append`` adds the table to
benchmarks/RESULTS.md.

Run from the repository root:
    .venv/bin/python benchmarks/bench_api.py --seconds 60 --append
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _machine import cpu_model

from services.api.auth import hash_password

REACTORS = ("R1", "R2", "R3", "R4")
ROOT = Path(__file__).resolve().parent.parent


def _settings(folder: Path, password: str) -> Path:
    users = [("viewer", "viewer")] + [(f"op{k}", "operator") for k in range(1, 5)]
    digest = hash_password(password)
    lines = [
        "[api]",
        f'secret = "{secrets.token_urlsafe(48)}"',
        "write_rate_per_s = 10.0",
        "write_burst = 20",
    ]
    for name, role in users:
        lines += [
            "[[users]]",
            f'name = "{name}"',
            f'role = "{role}"',
            f'password_hash = "{digest}"',
        ]
    path = folder / "api.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _start(
    folder: Path, config: Path, speed_up: str, label: str
) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "bpcontrol.cli", "serve", "--port", "0", "--reactors", "4"]
    cmd += ["--controller", "recipe", "--speed-up", speed_up, "--config", str(config)]
    cmd += ["--out", str(folder / label), "--summary", str(folder / f"{label}.json")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"serving on (http://\S+/api/v1)", line)
        if match:
            return proc, match[1]
    raise RuntimeError(f"serve did not start (exit {proc.wait()})")


def _stop(proc: subprocess.Popen[str], folder: Path, label: str) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    summary: dict[str, Any] = json.loads((folder / f"{label}.json").read_text())
    return summary


def _lateness(summary: dict[str, Any]) -> dict[str, float]:
    late = np.concatenate([np.asarray(v["lateness_ms"], float) for v in summary.values()])
    return {
        "median_ms": float(np.median(late)),
        "p99_ms": float(np.percentile(late, 99)),
        "max_ms": float(late.max()),
        "ticks": float(late.size),
    }


class _Connection:
    """One keep-alive HTTP/1.1 connection with a minimal client (a full client such as
    httpx costs more CPU per request than the server on a 2-core machine)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> _Connection:
        reader, writer = await asyncio.open_connection(host, port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, bytes]:
        lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


async def _load(
    base: str, password: str, seconds: float, reads_per_s: float, writes_per_s: float
) -> dict[str, Any]:
    url = urllib.parse.urlsplit(base)
    host, port, prefix = url.hostname or "127.0.0.1", url.port or 80, url.path
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    for _ in range(48):
        pool.put_nowait(await _Connection.open(host, port))
    async with httpx.AsyncClient(base_url=base, timeout=30.0) as c:
        tokens = {}
        for name in ("viewer", "op1", "op2", "op3", "op4"):
            reply = await c.post("/token", data={"username": name, "password": password})
            reply.raise_for_status()
            tokens[name] = {"Authorization": f"Bearer {reply.json()['access_token']}"}
        for k, rid in enumerate(REACTORS, start=1):
            reply = await c.post(
                f"/reactors/{rid}/mode",
                json={"mode": "manual", "reason": "bench"},
                headers=tokens[f"op{k}"],
            )
            reply.raise_for_status()
    await asyncio.sleep(2.0)  # the writes above count against the rate limit's burst
    reads: list[float] = []
    writes: list[float] = []
    errors: list[str] = []

    async def one(kind: str, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        t0 = time.perf_counter()
        conn = await pool.get()
        try:
            data = None if body is None else json.dumps(body).encode()
            status, text = await conn.request(method, prefix + path, headers, data)
            ok, why = status == 200, f"{status} {text[:120]!r}"
            pool.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
            pool.put_nowait(await _Connection.open(host, port))
        (reads if kind == "read" else writes).append((time.perf_counter() - t0) * 1e3)
        if not ok:
            errors.append(f"{method} {path}: {why}")

    paths = ["/reactors"] + [
        p
        for r in REACTORS
        for p in (f"/reactors/{r}", f"/reactors/{r}/events?limit=20", f"/reactors/{r}/plan")
    ]
    tasks: list[asyncio.Task[None]] = []
    start = time.perf_counter()
    schedule = sorted(
        [(i / reads_per_s, "read", i) for i in range(int(seconds * reads_per_s))]
        + [(i / writes_per_s, "write", i) for i in range(int(seconds * writes_per_s))]
    )
    for at, kind, i in schedule:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "read":
            job = one("read", "GET", paths[i % len(paths)], tokens["viewer"], None)
        else:
            k = i % 4
            body = {"value": 0.01 * (1 + (i // 4) % 5), "reason": f"bench {i}"}
            path = f"/reactors/{REACTORS[k]}/setpoints/F"
            job = one("write", "PUT", path, tokens[f"op{k + 1}"], body)
        tasks.append(asyncio.create_task(job))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not pool.empty():
        pool.get_nowait().writer.close()
    return {"reads": reads, "writes": writes, "errors": errors, "elapsed_s": elapsed}


def _stats(values: list[float]) -> str:
    a = np.asarray(values)
    return f"{np.median(a):.1f} / {np.percentile(a, 99):.1f} / {a.max():.1f}"


def _late(d: dict[str, float]) -> str:
    return f"{d['median_ms']:.2f} / {d['p99_ms']:.2f} / {d['max_ms']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--reads-per-s", type=float, default=200.0)
    parser.add_argument("--writes-per-s", type=float, default=20.0)
    parser.add_argument("--speed-up", default="1500")
    parser.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    password = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        folder = Path(tmp)
        config = _settings(folder, password)
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        proc, _ = _start(folder, config, args.speed_up, "idle")
        time.sleep(args.seconds)
        idle = _lateness(_stop(proc, folder, "idle"))
        proc, base = _start(folder, config, args.speed_up, "loaded")
        result = asyncio.run(
            _load(base, password, args.seconds, args.reads_per_s, args.writes_per_s)
        )
        loaded = _lateness(_stop(proc, folder, "loaded"))
        load_after = Path("/proc/loadavg").read_text().split()[:3]
    reads, writes, errors = result["reads"], result["writes"], result["errors"]
    p99_all = float(np.percentile(np.asarray(reads + writes), 99))
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "",
        f"## Live API under load (issue 21): {len(reads)} reads + {len(writes)} writes "
        f"in {result['elapsed_s']:.1f} s",
        "",
        f"`.venv/bin/python benchmarks/bench_api.py --seconds {args.seconds:g}` against "
        f"`bpcontrol serve --reactors 4 --controller recipe --speed-up {args.speed_up}` (one tick "
        f"per {60 / float(args.speed_up) * 1e3:.0f} ms wall), load generator in a separate process "
        "(asyncio HTTP/1.1, 48 keep-alive connections, open loop); "
        f"{os.cpu_count()} cores ({cpu_model()}), load average "
        f"{' '.join(load_before)} before, {' '.join(load_after)} after; {when}.",
        "",
        "| | median / p99 / max (ms) |",
        "|---|---|",
        f"| reads ({args.reads_per_s:g}/s) | {_stats(reads)} |",
        f"| writes ({args.writes_per_s:g}/s; answered at the next tick) | {_stats(writes)} |",
        f"| all requests: p99 | {p99_all:.1f} |",
        f"| errors | {len(errors)} |",
        f"| tick lateness, idle run ({idle['ticks']:.0f} ticks) | {_late(idle)} |",
        f"| tick lateness, loaded run ({loaded['ticks']:.0f} ticks) | {_late(loaded)} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    for e in errors[:10]:
        print("error:", e)
    if args.append:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a", encoding="utf-8") as out:
            out.write(text)


if __name__ == "__main__":
    main()
