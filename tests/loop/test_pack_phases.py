"""A pack whose recipe forbids the NMPC early and schedules an input it does not manipulate.

The E. coli pack with two edits, run for 8 h against its simulated plant: the batch phase
(0-6 h) has ``auto = false`` (recipe only), and the controller manipulates only the feed
and the temperature while the agitation follows a step table of the recipe (1200 rpm,
1000 rpm from 7 h). Expected, from the recipe itself: every setpoint before 6 h comes from
the recipe, every one after from the NMPC; the agitation always equals the table; and the
NMPC's plans assume the table over their whole horizon.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from bpcontrol.pack import builtin_pack_dir
from bpcontrol.records import PlanRecord, SetpointRecord, SetpointSource
from bpcontrol.runspec import resolve, spec_for
from hil.runner import run_batch
from services.historian import read_records


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_recipe_only_phase_then_auto_with_a_scheduled_input(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(builtin_pack_dir("ecoli_fedbatch"), pack)
    _edit(pack / "recipe.toml", 'name = "batch"\n', 'name = "batch"\nauto = false\n')
    _edit(
        pack / "recipe.toml",
        "fallback = { F = { initial",
        "fallback = { N_stir = { steps = [[0.0, 1200.0], [1.0, 1000.0]] }, F = { initial",
    )
    _edit(pack / "control.toml", "horizon = 20 ", 'manipulated = ["F", "T_set"]\nhorizon = 20 ')
    run = resolve(spec_for(pack))
    assert run.nmpc is not None and run.nmpc.input_schedule is not None
    result = run_batch(run, run_dir=tmp_path / "run", duration_h=8.0, report=False)
    records = read_records(result.run_dir / "records.sqlite")
    setpoints = [r for r in records if isinstance(r, SetpointRecord)]
    before = [r for r in setpoints if r.t_h < 6.0 - 1e-9]
    after = [r for r in setpoints if r.t_h >= 6.0 - 1e-9]
    assert before and after
    assert {r.source for r in before} == {SetpointSource.RECIPE}
    assert {r.source for r in after} == {SetpointSource.NMPC}
    for r in setpoints:  # the agitation is the recipe's table (rate clamp 1200 rpm/h)
        want = 1000.0 if r.t_h >= 7.0 - 1e-9 else 1200.0
        assert r.values["N_stir"] == want, (r.t_h, r.values["N_stir"])
    plans = [r for r in records if isinstance(r, PlanRecord) and r.u_plan]
    late = [p for p in plans if 6.0 <= p.t_h < 7.0 - 1e-9]
    assert late, "no plan between 6 and 7 h"
    for p in late:  # the prediction knows the step at 7 h, beyond the plan's start
        t = np.asarray(p.t_nodes_h[:-1])
        np.testing.assert_array_equal(
            np.asarray(p.u_plan["N_stir"]), np.where(t >= 7.0 - 1e-9, 1000.0, 1200.0)
        )
    assert result.kpis["setpoints_outside_limits_or_rates"] == 0
