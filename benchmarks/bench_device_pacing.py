"""Does a loop keep its paced clock with the OPC UA device in the same process? (issue 22)

The HIL rigs and the edge tests serve the plant on the asyncua device server in a thread of
the loop's own process. This runs ``--hours`` of the E. coli batch (default pack, seed 1,
``--controller`` recipe or nmpc) at ``--speed-up`` through the device and the OPC UA gateway
(SignAndEncrypt, certificates in a temporary folder) and reports the wall time against the
paced one, the records stored, the tick lateness and the time spent in the gateway's
``read`` and ``apply``. Run from the repository root::

    .venv/bin/python benchmarks/bench_device_pacing.py --hours 2 --controller recipe
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "edge"))

from edge_rig import MAPPING, make_pki, run_through_device

from bpcontrol.runspec import spec_for
from models import load_model
from services.edge.mapping import load_mapping
from services.edge.opcua_gateway import OpcUaPlant

_TIMES: dict[str, list[float]] = defaultdict(list)


def _timed(cls: type, name: str) -> None:
    """Wrap ``cls.name`` so that every call's wall time lands in ``_TIMES``."""
    fn: Callable[..., Any] = getattr(cls, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _TIMES[f"{cls.__name__}.{name}"].append(time.perf_counter() - t0)

    setattr(cls, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0, help="process hours (h)")
    ap.add_argument("--speed-up", type=float, default=600.0, help="process s per wall s")
    ap.add_argument("--controller", choices=("recipe", "nmpc"), default="recipe")
    args = ap.parse_args()
    logging.disable(logging.WARNING)  # asyncua's certificate hostname notes
    _timed(OpcUaPlant, "read")
    _timed(OpcUaPlant, "apply")
    root = Path(tempfile.mkdtemp(prefix="bench_device_pacing_"))
    mapping = load_mapping(MAPPING, load_model("ecoli_fedbatch"))
    run = run_through_device(
        "opcua",
        spec_for("ecoli_fedbatch", controller=args.controller),
        root / "run",
        mapping,
        speed_up=args.speed_up,
        pki=make_pki(root / "pki"),
        duration_h=args.hours,
    )
    k = run.result.kpis
    paced = args.hours * 3600.0 / args.speed_up
    load = os.getloadavg()[0]
    print(f"load {load:.2f}; {args.controller}, {args.hours:g} h at {args.speed_up:g}x")
    print(f"wall {k['wall_time_s']:.1f} s (paced {paced:.1f} s), records {k['records_stored']}")
    print(
        f"tick lateness median {k.get('jitter_median_ms', float('nan')):.1f} ms, "
        f"p99 {k.get('jitter_p99_ms', float('nan')):.1f} ms"
    )
    for name, values in _TIMES.items():
        ms = np.asarray(values) * 1e3
        print(
            f"{name}: {ms.size} calls, median {np.median(ms):.1f} ms, "
            f"p90 {np.percentile(ms, 90):.1f} ms, max {ms.max():.1f} ms"
        )


if __name__ == "__main__":
    main()
