"""Time the command line's start-up: `bpcontrol --version` and `bpcontrol --help`.

Each command runs ``--runs`` times, each in a fresh subprocess (the console script of the
virtual environment next to this interpreter, else ``python -m bpcontrol.cli``), commands
taking turns; the wall time of every run is measured from spawn to exit. Prints median,
min and max per command with the 1-min load average before and after, and the machine;
``--json FILE`` writes the raw numbers. Exits 1 if a command fails, or if ``--limit S`` is
given and a median exceeds it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _machine import cpu_model

COMMANDS: dict[str, list[str]] = {
    "--version": ["--version"],
    "--help": ["--help"],
    "run --help": ["run", "--help"],
}


def entry_point() -> list[str]:
    """How to start the CLI: the console script beside this Python, else ``-m``."""
    script = Path(sys.executable).with_name("bpcontrol")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "bpcontrol.cli"]


def time_once(argv: list[str]) -> float:
    """Wall seconds of one run of ``argv`` (output discarded); raises if it fails."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    ap.add_argument("--limit", type=float, default=None, help="fail if a median exceeds S")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    base = entry_point()
    load_before = os.getloadavg()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    time_once([*base, "--version"])  # warm the OS file cache; not counted
    for _ in range(args.runs):
        for name, extra in COMMANDS.items():
            times[name].append(time_once([*base, *extra]))
    load_after = os.getloadavg()
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"entry point: {' '.join(base)}")
    print(
        f"machine: {os.cpu_count()} cores, {cpu_model()}; 1-min load {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after; {time.strftime('%Y-%m-%d %H:%M')}"
    )
    print()
    print(f"| command | median of {args.runs} | min | max |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| `bpcontrol {name}` | {medians[name]:.3f} s | {min(ts):.3f} s | {max(ts):.3f} s |")
    if args.json:
        result = {
            "entry_point": base,
            "cpu": cpu_model(),
            "nproc": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "times_s": times,
            "median_s": medians,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.limit is not None and max(medians.values()) > args.limit:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
