"""A loop-like record stream for the InfluxDB historian tests and benchmark.

Per control step (1 min of process time), as the closed loop writes them: 4 measurements
(3 online sensors and, every 10th step, a late offline assay sampled 5 steps earlier;
otherwise a 4th online sensor), 1 estimate (5 states, 2 tracked parameters), 1 plan with
20 intervals over 5 states and 3 inputs, 1 setpoint of 3 inputs, and every 10th step 1
event and 1 audit record. :func:`expected_points` counts the points each measurement must
then hold, independently of the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
    RunIdentity,
    SetpointRecord,
)

STATES = ("X", "S", "A", "DO", "V")
INPUTS = ("F", "Q_air", "T")
N_INTERVALS = 20
STEP_H = 1.0 / 60.0


def step_records(k: int, run: RunIdentity) -> list[Record]:
    """The records of control step ``k`` (process time ``k`` min)."""
    t = k * STEP_H
    x = {s: 1.0 + 0.01 * k + i for i, s in enumerate(STATES)}
    out: list[Record] = [
        MeasurementRecord(t, "DO_probe", 30.0 + math.sin(k / 7.0), t, run=run),
        MeasurementRecord(t, "OUR", 10.0 + 0.001 * k, t, run=run),
        MeasurementRecord(t, "CER", 9.0 + 0.001 * k, t, run=run),
    ]
    if k % 10 == 9:
        out.append(MeasurementRecord(t, "X_offline", 1.0 + 0.01 * k, (k - 5) * STEP_H, run=run))
    else:
        out.append(MeasurementRecord(t, "pH", 7.0, t, run=run))
    out.append(
        EstimateRecord(
            t,
            x,
            {s: 0.1 for s in STATES},
            {"mu_max": 0.5, "Y_xs": 0.45},
            {"mu_max": 0.01, "Y_xs": 0.02},
            1.5,
            4,
            True,
            run=run,
        )
    )
    nodes = tuple(t + j * STEP_H for j in range(N_INTERVALS + 1))
    out.append(
        PlanRecord(
            t,
            "solved",
            0.012,
            nodes,
            {s: tuple(v + 0.001 * j for j in range(N_INTERVALS + 1)) for s, v in x.items()},
            {u: tuple(0.1 + 0.01 * j for j in range(N_INTERVALS)) for u in INPUTS},
            "Optimal Solution Found.",
            run=run,
        )
    )
    out.append(SetpointRecord(t, {u: 0.1 + 0.001 * k for u in INPUTS}, "nmpc", (), run=run))
    if k % 10 == 0:
        out.append(EventRecord(t, "phase", f"step {k}: phase fed-batch", "loop", run=run))
        out.append(AuditRecord(t, "ann", "test", f"setpoint F = {k}", True, run=run))
    return out


def records(n_steps: int, run: RunIdentity, first: int = 0) -> Iterator[Record]:
    """The records of steps ``first`` .. ``first + n_steps - 1``, in write order."""
    for k in range(first, first + n_steps):
        yield from step_records(k, run)


def expected_points(n_steps: int, first: int = 0) -> dict[str, int]:
    """Points per measurement after steps ``first`` .. ``first + n_steps - 1`` of one run."""
    events = sum(1 for k in range(first, first + n_steps) if k % 10 == 0)
    return {
        "measurement": 4 * n_steps,
        "estimate": n_steps,
        "plan": n_steps,
        "plan_prediction": (N_INTERVALS + 1) * n_steps,
        "setpoint": n_steps,
        "event": events,
        "audit": events,
        "run": 1,
    }
