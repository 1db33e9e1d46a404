"""A plant that fails like a field gateway: the loop survives and knows what the device holds.

Reads time out, a sensor sends NaN, setpoint writes go unconfirmed, and the device caps the
air flow below what the recipe asks; the batch must go on, every fault must be an event, and
the loop must carry on with the values the device confirms (DESIGN.md: gateways).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bpcontrol.interfaces import Plant
from bpcontrol.loop import LoopSnapshot
from bpcontrol.records import EventKind, EventRecord, MeasurementRecord, SetpointRecord
from bpcontrol.runspec import spec_for
from hil.faults import FlakyPlant
from hil.runner import run_batch
from services.historian import read_records

AIR_CAP = 15.0  # NL/min: the mass-flow controller's own limit, below the recipe's 20


def test_loop_survives_a_flaky_gateway(tmp_path: Path) -> None:
    flaky: list[FlakyPlant] = []

    def wrap(plant: Plant) -> Plant:
        flaky.append(
            FlakyPlant(plant, 0.5, 1.5, garbage_sensor="DO_probe", device_max={"Q_air": AIR_CAP})
        )
        return flaky[0]

    snapshots: list[LoopSnapshot] = []
    result = run_batch(
        spec_for("ecoli_fedbatch", controller="recipe"),
        run_dir=tmp_path,
        duration_h=2.0,
        wrap_plant=wrap,
        progress=snapshots.append,
        report=False,
    )
    fp = flaky[0]
    assert fp.read_failures > 0 and fp.apply_failures > 0
    assert result.summary.t_end_h == pytest.approx(2.0)

    records = read_records(tmp_path / "records.sqlite")
    kinds = [e.kind for e in records if isinstance(e, EventRecord)]
    assert kinds.count(EventKind.PLANT_READ_FAILED) == fp.read_failures
    assert kinds.count(EventKind.SETPOINT_WRITE_FAILED) == fp.apply_failures
    assert EventKind.SETPOINT_NOT_HELD in kinds
    # NaN readings are stored as received and rejected by the estimator, with a reason
    nan_do = [m for m in records if isinstance(m, MeasurementRecord) and m.sensor == "DO_probe"]
    assert any(m.value != m.value for m in nan_do)  # NaN kept in the historian
    assert EventKind.ESTIMATOR_REJECTED in kinds

    # the loop carries on with what the device confirms, not with what it asked
    assert all(s.applied["Q_air"] == AIR_CAP for s in snapshots)
    asked = [s.values["Q_air"] for s in records if isinstance(s, SetpointRecord)]
    assert max(asked) == 20.0
