"""Time the InfluxDB historian on a real influxd: whole path vs raw /write, read-back, growth.

Starts ``influxd`` (1.x, ``/usr/bin/influxd``) on free 127.0.0.1 ports with its data in a
temporary folder (the test fixture's helper, ``tests/services/influx/influx_server.py``),
then per run:

* ``raw``: the loop-like record stream (``tests/services/influx/influx_producer.py``:
  per 1-min step 4 measurements, 1 estimate, 1 plan of 20 intervals (22 points), 1
  setpoint, every 10th step an event and an audit record; 28.2 points per step) encoded
  up front, then POSTed to ``/write`` in batches of ``--batch`` lines over one keep-alive
  ``httpx.Client``: points/s = points / time until the last answer. The peer: what the
  server takes with no buffer and no encoding on our side;
* ``path``: the same records through ``InfluxHistorian.write`` (check + encode + queue),
  the SQLite buffer (each chunk committed before it is sent), the forwarder (POST, up to
  two requests in flight, acknowledge, delete) into a fresh database: points/s = points /
  (time from the first ``write`` until ``flush`` returned, i.e. everything delivered and
  deleted from the buffer); also ``write()`` per record (us, median and p99) as the loop
  pays it;
* ``narrow``: the same two for a stream of measurements only (one narrow point per
  record, 5x as many steps), the kind of points the raw figure of the issue was taken with;
* ``readback``: a 30 h batch at 1-min steps (1800 steps: 7200 readings of 5 sensors,
  1800 setpoints of 3 inputs) read with ``InfluxBatchSource.batch`` (ms), side by side
  with ``EmbeddedBatchSource.batch`` on the same records in a SQLite file;
* ``lateness``: the loop's tick lateness (``PacedClock.sleep_until``, ms; median and
  p99) and the time spent in ``write()`` per step, for an accelerated run of
  ``--lateness-steps`` steps at ``--step-s`` s each with the server up throughout, side
  by side with the steps of a run during which influxd was SIGKILLed (20 %-80 % of it);
* ``growth``: the server unreachable, ``--outage-steps`` steps written at once (the
  loop's records of that many minutes), waited into the buffer file: bytes of line
  protocol buffered and growth of the file (after a WAL checkpoint), scaled per hour of
  outage at the loop's rate (60 steps per hour at 1x).

The last row is the median over ``--runs`` runs.

Run from the repository root:
    .venv/bin/python benchmarks/bench_influx.py --steps 3000 --runs 3 --append
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "services" / "influx"))

from influx_producer import STEP_H, records  # noqa: E402
from influx_run import run_with_outage  # noqa: E402
from influx_server import InfluxServer, free_port  # noqa: E402

from bpcontrol.records import MeasurementRecord, Record, RunIdentity  # noqa: E402
from services.historian import EmbeddedHistorian  # noqa: E402
from services.historian.influx import InfluxHistorian  # noqa: E402
from services.historian.influx_client import InfluxConfig  # noqa: E402
from services.historian.influx_readback import InfluxBatchSource  # noqa: E402
from services.historian.lineprotocol import LineEncoder  # noqa: E402
from services.historian.readback import EmbeddedBatchSource  # noqa: E402

RUN = RunIdentity("basel", "R-101", "B-bench", "r-bench", "2026-03-01T08:00:00+00:00")


def raw_write(server: InfluxServer, database: str, stream: list[Record], batch: int) -> float:
    """Points/s of pre-encoded lines POSTed to /write."""
    enc = LineEncoder()
    lines = [line for r in stream for line in enc.encode(r)]
    bodies = ["\n".join(lines[i : i + batch]).encode() for i in range(0, len(lines), batch)]
    server.query(f'CREATE DATABASE "{database}"')
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        t0 = time.perf_counter()
        for body in bodies:
            r = client.post("/write", params={"db": database, "precision": "ns"}, content=body)
            if r.status_code != 204:
                raise RuntimeError(f"raw /write answered {r.status_code}: {r.text[:200]}")
        elapsed = time.perf_counter() - t0
    return len(lines) / elapsed


def whole_path(
    server: InfluxServer, database: str, stream: list[Record], folder: Path, batch: int
) -> dict[str, float]:
    """Points/s through the historian (buffer included) and write() latency (us)."""
    config = InfluxConfig(url=server.url, database=database)
    h = InfluxHistorian(config, folder / f"{database}.sqlite", batch_points=batch)
    lat = []
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for r in stream:
        a = clock()
        h.write(r)
        lat.append(clock() - a)
    accepted_s = time.perf_counter() - t0
    if not h.flush(600.0):
        raise RuntimeError(f"not delivered: {h.pending_points} points, {h.last_error!r}")
    elapsed = time.perf_counter() - t0
    points = h.delivered_points
    h.close()
    expect = sum(server.count(database, m) for m in ("measurement", "plan_prediction"))
    if expect == 0:
        raise RuntimeError("nothing arrived")
    lat.sort()
    return {
        "points": points,
        "path_pts_s": points / elapsed,
        "accept_pts_s": points / accepted_s,
        "write_med_us": lat[len(lat) // 2] / 1e3,
        "write_p99_us": lat[int(len(lat) * 0.99)] / 1e3,
    }


def readback(server: InfluxServer, database: str, folder: Path) -> dict[str, float]:
    """Read a 30 h batch at 1-min steps from InfluxDB and from the embedded file (ms)."""
    n_steps = round(30.0 / STEP_H)
    config = InfluxConfig(url=server.url, database=database)
    h = InfluxHistorian(config, folder / f"{database}.sqlite")
    emb = EmbeddedHistorian(folder / f"{database}-records.sqlite")
    for r in records(n_steps, RUN):
        h.write(r)
        emb.write(r)
    if not h.flush(600.0):
        raise RuntimeError("read-back data not delivered")
    h.close()
    emb.close()
    src = InfluxBatchSource(config)
    ref = EmbeddedBatchSource(folder / f"{database}-records.sqlite")
    times_i, times_e = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        b = src.batch(RUN.batch_id)
        times_i.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b2 = ref.batch(RUN.batch_id)
        times_e.append(time.perf_counter() - t0)
    n_i = sum(len(s) for s in b.measurements.values())
    n_e = sum(len(s) for s in b2.measurements.values())
    if n_i != n_e or n_i != 4 * n_steps:
        raise RuntimeError(f"read-back counts differ: influx {n_i}, embedded {n_e}")
    src.close()
    return {
        "readback_ms": 1e3 * statistics.median(times_i),
        "embedded_ms": 1e3 * statistics.median(times_e),
        "readback_points": n_i,
    }


def growth(folder: Path, n_steps: int) -> dict[str, float]:
    """Buffer growth per hour of outage at the loop's rate (60 one-minute steps per hour)."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is away
    path = folder / "outage-buffer.sqlite"
    config = InfluxConfig(url=url, database="d", timeout_s=0.5)
    h = InfluxHistorian(config, path, drain_on_close_s=0.05, max_backoff_s=0.5)
    for r in records(n_steps, RUN):
        h.write(r)
    if not h.wait_buffered(120.0):
        raise RuntimeError("outage records not buffered")
    logical = h.buffered_bytes
    points = h.pending_points
    h.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    hours = n_steps * STEP_H
    return {
        "buffer_b_per_h": logical / hours,
        "file_b_per_h": size / hours,
        "points_per_h": points / hours,
    }


def narrow_records(n_steps: int) -> list[Record]:
    """Only the 4 measurements of each step: one narrow point per record."""
    return [r for r in records(n_steps, RUN) if isinstance(r, MeasurementRecord)]


def lateness(folder: Path, n_steps: int, step_s: float) -> dict[str, float]:
    """The loop's tick lateness and write() time per step (ms): a run where the server
    stayed up against one where it was SIGKILLed for the middle 60 % of the run."""
    out: dict[str, float] = {}
    for name, outage in (
        ("up", None),
        ("outage", (0.2 * n_steps * step_s, 0.8 * n_steps * step_s)),
    ):
        server = InfluxServer(folder / f"lateness-{name}")
        server.start()
        try:
            config = InfluxConfig(url=server.url, database="late", timeout_s=2.0)
            h = InfluxHistorian(config, folder / f"lateness-{name}.sqlite", max_backoff_s=0.5)
            stats = run_with_outage(h, server, n_steps, step_s, outage)
            if not h.flush(120.0):
                raise RuntimeError(f"lateness run {name}: not delivered")
            h.close()
        finally:
            server.stop()
        late = sorted(stats.lateness_up_s + stats.lateness_down_s)
        spent = sorted(stats.write_up_s + stats.write_down_s)
        if outage is not None:  # the steps while the server was down only
            late, spent = sorted(stats.lateness_down_s), sorted(stats.write_down_s)
        out[f"late_{name}_med_ms"] = 1e3 * statistics.median(late)
        out[f"late_{name}_p99_ms"] = 1e3 * late[int(0.99 * (len(late) - 1))]
        out[f"step_write_{name}_med_ms"] = 1e3 * statistics.median(spent)
    return out


def one_run(server: InfluxServer, args: argparse.Namespace, folder: Path, i: int) -> dict[str, Any]:
    stream = list(records(args.steps, RUN))
    out: dict[str, Any] = {"raw_pts_s": raw_write(server, f"raw{i}", stream, args.batch)}
    out.update(whole_path(server, f"path{i}", stream, folder, args.batch))
    narrow = narrow_records(args.steps * 5)
    out["narrow_raw_pts_s"] = raw_write(server, f"nraw{i}", narrow, args.batch)
    path = whole_path(server, f"npath{i}", narrow, folder, args.batch)
    out["narrow_path_pts_s"] = path["path_pts_s"]
    out.update(readback(server, f"rb{i}", folder))
    out.update(growth(folder / f"g{i}", args.outage_steps))
    out.update(lateness(folder / f"l{i}", args.lateness_steps, args.step_s))
    return out


COLUMNS = (
    ("raw_pts_s", "raw /write pts/s", "{:,.0f}"),
    ("path_pts_s", "whole path pts/s", "{:,.0f}"),
    ("accept_pts_s", "write() accepts pts/s", "{:,.0f}"),
    ("narrow_raw_pts_s", "narrow: raw pts/s", "{:,.0f}"),
    ("narrow_path_pts_s", "narrow: path pts/s", "{:,.0f}"),
    ("write_med_us", "write() med us", "{:.1f}"),
    ("write_p99_us", "write() p99 us", "{:.1f}"),
    ("readback_ms", "30 h read-back ms", "{:.0f}"),
    ("embedded_ms", "same, embedded ms", "{:.0f}"),
)
COLUMNS_2 = (
    ("late_up_med_ms", "tick late ms, up: med", "{:.2f}"),
    ("late_up_p99_ms", "up: p99", "{:.2f}"),
    ("late_outage_med_ms", "server down: med", "{:.2f}"),
    ("late_outage_p99_ms", "down: p99", "{:.2f}"),
    ("step_write_up_med_ms", "write/step ms up", "{:.3f}"),
    ("step_write_outage_med_ms", "write/step ms down", "{:.3f}"),
    ("buffer_b_per_h", "buffer B/h outage", "{:,.0f}"),
    ("file_b_per_h", "file B/h outage", "{:,.0f}"),
)


def table(runs: list[dict[str, Any]], columns: tuple[tuple[str, str, str], ...]) -> str:
    head = "| run | " + " | ".join(c[1] for c in columns) + " |"
    sep = "|---|" + "---:|" * len(columns)
    rows = [head, sep]
    for i, run in enumerate(runs, 1):
        rows.append(f"| {i} | " + " | ".join(f.format(run[k]) for k, _, f in columns) + " |")
    med = {k: statistics.median(r[k] for r in runs) for k, _, _ in columns}
    rows.append("| **median** | " + " | ".join(f.format(med[k]) for k, _, f in columns) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="control steps per run (28.2 pts each)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch", type=int, default=5000, help="lines per /write request")
    p.add_argument("--outage-steps", type=int, default=600, help="steps written during outage")
    p.add_argument("--lateness-steps", type=int, default=1000, help="steps of a lateness run")
    p.add_argument("--step-s", type=float, default=0.01, help="wall s per step (lateness)")
    p.add_argument("--append", action="store_true", help="append to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="bench-influx-") as tmp:
        folder = Path(tmp)
        server = InfluxServer(folder / "influxd")
        server.start()
        try:
            runs = []
            for i in range(args.runs):
                runs.append(one_run(server, args, folder, i))
                print(f"run {i + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in runs[-1].items()))
        finally:
            server.stop()
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    cmd = "python benchmarks/bench_influx.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (
        "\n## InfluxDB historian (issue 19): whole path vs raw /write, read-back, "
        "buffer growth\n\n"
        f"`{cmd}`; {cpu_model()}, {os.cpu_count()} cores, influxd 1.6.7 on loopback, "
        f"{started:%Y-%m-%d %H:%M} UTC, load average {' '.join(load_before)} before, "
        f"{' '.join(load_after)} after; {args.steps} steps per run "
        f"({runs[0]['points']:,} points), batches of {args.batch} lines; read-back: "
        f"{runs[0]['readback_points']:,} readings of a 30 h batch; growth: "
        f"{args.outage_steps} steps buffered with the server away; lateness: "
        f"{args.lateness_steps} steps at {args.step_s} s.\n\n"
        f"{table(runs, COLUMNS)}\n\n{table(runs, COLUMNS_2)}\n"
    )
    print(text)
    if args.append:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
