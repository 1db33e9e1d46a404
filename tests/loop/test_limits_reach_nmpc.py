"""An operator's limit change reaches the NMPC's bounds in the next plan.

Real parts: the built-in do-mpc batch-reactor pack (NMPC, EKF, supervisor), its simulated
plant, the embedded SQLite historian and an unpaced clock. The operator lowers the feed
pump's upper limit mid-batch through the loop's command queue (what the live API does);
every plan from the next control step on keeps all its moves, not only the first, inside
the new limit, so the supervisor never has to clamp what the controller planned.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from pathlib import Path

from bpcontrol.assembly import build_loop
from bpcontrol.clock import PacedClock
from bpcontrol.loop import ControlLoop, LoopSnapshot
from bpcontrol.records import AuditRecord, PlanRecord, SetpointRecord, SetpointSource
from bpcontrol.runspec import resolve, spec_for
from hil.runner import pack_scenario, simulated_plant
from services.historian import EmbeddedHistorian, read_records

T_CHANGE_H = 10.0  # when the operator lowers the limit (control period: 1 h)


def test_lowered_limit_bounds_every_planned_move_from_the_next_plan(tmp_path: Path) -> None:
    run = resolve(spec_for("dompc_batch_reactor", seed=2))
    historian = EmbeddedHistorian(tmp_path / "records.sqlite")
    loop_ref: dict[str, ControlLoop] = {}
    answers: dict[str, Future[AuditRecord]] = {}
    caps: list[float] = []

    def operator(snap: LoopSnapshot) -> None:  # between ticks, like the live API
        if abs(snap.t_h - T_CHANGE_H) < 1e-9 and snap.plan is not None:
            # halfway between the feed applied now (a limit must contain it: the supervisor
            # refuses one that does not) and the largest the plan wants: an active limit
            caps.append(0.5 * (snap.applied["inp"] + max(snap.plan.u_plan["inp"])))
            answers["limit"] = loop_ref["loop"].submit_limits(
                "inp", lower=0.0, upper=caps[0], rate_per_h=0.2, who="ana", why="pump service"
            )

    assembled = build_loop(
        run,
        plant=simulated_plant(run, pack_scenario(run), seed=2),
        historian=historian,
        clock=PacedClock(math.inf),
        progress=operator,
    )
    loop_ref["loop"] = assembled.loop
    assembled.loop.run(duration_h=2 * T_CHANGE_H)
    historian.close()
    audit = answers["limit"].result(timeout=1)
    assert audit.accepted, audit.reason
    limit = caps[0]

    records = read_records(tmp_path / "records.sqlite")
    plans = [r for r in records if isinstance(r, PlanRecord) and r.status.usable]
    before = [p for p in plans if p.t_h <= T_CHANGE_H]
    after = [p for p in plans if p.t_h > T_CHANGE_H]
    assert after, "no usable plan after the change"
    assert max(max(p.u_plan["inp"]) for p in before) > limit  # the limit is active
    # every move of every later plan inside it (IPOPT ends within its bound_relax_factor,
    # 1e-8 relative; the plan clips): 1e-9 m3/h
    assert max(max(p.u_plan["inp"]) for p in after) <= limit + 1e-9
    # and the controller keeps planning (the supervisor takes its plans, no clamping source)
    nmpc_after = [
        s
        for s in records
        if isinstance(s, SetpointRecord) and s.t_h > T_CHANGE_H and s.source is SetpointSource.NMPC
    ]
    assert nmpc_after and max(s.values["inp"] for s in nmpc_after) <= limit + 1e-9
