"""Time the embedded historian: write() latency on the loop's side and records stored per second.

A record stream as the closed loop writes it (per 1-min step: 4 measurements, 1 estimate
with 7 states and 2 tracked parameters, 1 plan with 20 intervals over 7 states and 3 inputs,
1 setpoint of 3 inputs; every 10th step also 1 event and 1 audit record) is built up front,
then written to a fresh ``EmbeddedHistorian`` in a temporary folder in a tight loop, each
``write()`` timed alone with ``time.perf_counter_ns``. Then ``flush()`` waits until the
writer thread has stored all of them.

Reported per run:
  * write() latency per record (us): median, p99, p99.9, max. This is what the loop pays;
    it includes waits for the GIL while the writer thread encodes (the tight loop is the
    worst case: the writer is busy the whole time);
  * ``paced``: the same latency when records come in bursts of one step (9-11 records)
    followed by a 2 ms pause, closer to a real loop (one step every few seconds);
  * accepted/s: records / time of the write loop;
  * stored/s: records / (time from the first write until flush() returned), the rate the
    writer sustains into the SQLite file (WAL, synchronous=NORMAL, batches of up to
    ``--max-batch`` records every ``--batch-interval`` s).
The last row is the median over runs of each column.

Run from the repository root:
    .venv/bin/python benchmarks/bench_historian.py --records 100000 --runs 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import cpu_model

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
    SetpointRecord,
)
from services.historian import EmbeddedHistorian, read_records

STATES = ("X", "S", "A", "DO", "V", "P", "T")
INPUTS = ("F", "Q_air", "N_stir")
N_INTERVALS = 20


def loop_records(n: int, seed: int = 0) -> list[Record]:
    """``n`` records in the order the loop writes them (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    step = 0
    while len(out) < n:
        t = step / 60
        for sensor in ("DO_probe", "y_O2_out", "y_CO2_out", "V_meas"):
            value = math.nan if rng.random() < 0.001 else float(rng.normal(30.0, 1.0))
            out.append(MeasurementRecord(t, sensor, value, t))
        x = {s: float(v) for s, v in zip(STATES, rng.random(len(STATES)), strict=True)}
        out.append(
            EstimateRecord(
                t,
                x,
                {s: 0.01 * v for s, v in x.items()},
                {"mu_max": 0.6, "Y_xs": 0.5},
                {"mu_max": 0.01, "Y_xs": 0.02},
                nis=float(rng.chisquare(4)),
                dof=4,
            )
        )
        nodes = tuple(t + k / 6 for k in range(N_INTERVALS + 1))
        out.append(
            PlanRecord(
                t,
                "solved",
                float(rng.uniform(0.05, 0.2)),
                nodes,
                {s: tuple(rng.random(N_INTERVALS + 1)) for s in STATES},
                {u: tuple(rng.random(N_INTERVALS)) for u in INPUTS},
                "Optimal Solution Found.",
            )
        )
        out.append(SetpointRecord(t, {u: float(rng.random()) for u in INPUTS}, "nmpc"))
        if step % 10 == 0:
            out.append(EventRecord(t, "mode-change", f"step {step}", "supervisor"))
            out.append(AuditRecord(t, "operator", "check", "setpoint F = 0.1", True))
        step += 1
    return out[:n]


def one_run(records: list[Record], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Write ``records`` once in a tight loop and once paced; the figures of one run."""
    load = os.getloadavg()[0]
    path = folder / "tight.sqlite"
    historian = EmbeddedHistorian(
        path, batch_interval_s=args.batch_interval, max_batch=args.max_batch
    )
    lat = np.empty(len(records), dtype=np.int64)
    clock = time.perf_counter_ns
    write = historian.write
    t_start = time.perf_counter()
    for i, record in enumerate(records):
        t0 = clock()
        write(record)
        lat[i] = clock() - t0
    t_written = time.perf_counter()
    if not historian.flush(timeout_s=600):
        raise RuntimeError(f"flush timed out; last error {historian.last_error!r}")
    t_stored = time.perf_counter()
    historian.close()
    if args.check:
        back = read_records(path)
        if len(back) != len(records):
            raise RuntimeError(f"stored {len(back)} records of {len(records)}")

    # Paced: bursts of one loop step, then a pause.
    paced_n = min(len(records), args.paced_records)
    paced = EmbeddedHistorian(
        folder / "paced.sqlite", batch_interval_s=args.batch_interval, max_batch=args.max_batch
    )
    plat = np.empty(paced_n, dtype=np.int64)
    for i, record in enumerate(records[:paced_n]):
        if isinstance(record, MeasurementRecord) and record.sensor == "DO_probe":
            time.sleep(0.002)  # a new step begins
        t0 = clock()
        paced.write(record)
        plat[i] = clock() - t0
    paced.close()

    timer = np.empty(10_000, dtype=np.int64)
    for i in range(len(timer)):
        t0 = clock()
        timer[i] = clock() - t0

    us = lat / 1e3
    pus = plat / 1e3
    return {
        "load": load,
        "median_us": float(np.median(us)),
        "p99_us": float(np.percentile(us, 99)),
        "p999_us": float(np.percentile(us, 99.9)),
        "max_us": float(us.max()),
        "paced_median_us": float(np.median(pus)),
        "paced_p99_us": float(np.percentile(pus, 99)),
        "accepted_per_s": len(records) / (t_written - t_start),
        "stored_per_s": len(records) / (t_stored - t_start),
        "timer_us": float(np.median(timer) / 1e3),
        "file_mb": path.stat().st_size / 1e6,
    }


COLUMNS = (
    ("write median (us)", "median_us", "{:.2f}"),
    ("write p99 (us)", "p99_us", "{:.2f}"),
    ("write p99.9 (us)", "p999_us", "{:.1f}"),
    ("write max (us)", "max_us", "{:.0f}"),
    ("paced median (us)", "paced_median_us", "{:.2f}"),
    ("paced p99 (us)", "paced_p99_us", "{:.2f}"),
    ("accepted/s", "accepted_per_s", "{:,.0f}"),
    ("stored/s", "stored_per_s", "{:,.0f}"),
    ("load (1 min)", "load", "{:.2f}"),
)


def table(runs: list[dict[str, Any]]) -> str:
    """The runs and their per-column median as a markdown table."""
    head = "| run | " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    lines = [head, rule]
    for i, run in enumerate(runs, 1):
        lines.append(f"| {i} | " + " | ".join(f.format(run[k]) for _, k, f in COLUMNS) + " |")
    med = {k: statistics.median(r[k] for r in runs) for _, k, _ in COLUMNS}
    lines.append(
        "| **median** | " + " | ".join("**" + f.format(med[k]) + "**" for _, k, f in COLUMNS) + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="records per run")
    ap.add_argument("--runs", type=int, default=3, help="runs (the table gives the median)")
    ap.add_argument("--paced-records", type=int, default=20_000, help="records, paced part")
    ap.add_argument("--batch-interval", type=float, default=0.1, help="writer batch time (s)")
    ap.add_argument("--max-batch", type=int, default=5000, help="writer batch size")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip read-back")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args(argv)
    if args.records < 1 or args.runs < 1:
        ap.error("--records and --runs must be >= 1")

    records = loop_records(args.records)
    kinds: dict[str, int] = {}
    for r in records:
        kinds[type(r).__name__] = kinds.get(type(r).__name__, 0) + 1
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(records, args, Path(tmp)))
    machine = {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    print(f"records per run: {args.records:,} ({', '.join(f'{k} {v}' for k, v in kinds.items())})")
    print(
        f"machine: {machine['nproc']} cores, {machine['cpu']}, Python {machine['python']}, "
        f"SQLite {machine['sqlite']}, {machine['date']}"
    )
    print(
        f"timer overhead (perf_counter_ns pair, included above): "
        f"{statistics.median(r['timer_us'] for r in runs):.3f} us; "
        f"file size {runs[0]['file_mb']:.1f} MB"
    )
    print()
    print(table(runs))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "kinds": kinds, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
