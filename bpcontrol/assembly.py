"""The assembly: a ready control loop from a run spec plus a plant, a historian and a clock.

This is the one place that wires the core's pieces (estimator, controller, supervisor,
loop) for a run. The CLI, the HIL runner and the live API call :func:`build_loop` with
their own plant (simulator, device gateway, HIL rig), historian and clock; nothing else
repeats the wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bpcontrol.adapters import LoopEstimator, NMPCController
from bpcontrol.interfaces import Clock, Controller, Historian, Plant
from bpcontrol.loop import ControlLoop, LoopSnapshot
from bpcontrol.nmpc import NMPC
from bpcontrol.runspec import ResolvedRun, RunSpec, resolve
from bpcontrol.supervisor import Supervisor, SupervisorConfig
from estimators import CompiledEKF, ExtendedKalmanFilter, OnlineEstimator

__all__ = ["AssembledLoop", "build_loop"]


@dataclass
class AssembledLoop:
    """A loop ready to ``run()``, with the resolved run and the pieces it was built from."""

    loop: ControlLoop
    run: ResolvedRun
    estimator: LoopEstimator
    controller: Controller | None
    supervisor: Supervisor


def build_loop(
    spec: RunSpec | ResolvedRun,
    *,
    plant: Plant,
    historian: Historian,
    clock: Clock,
    progress: Callable[[LoopSnapshot], None] | None = None,
    wrap_controller: Callable[[Controller], Controller] | None = None,
    t0_h: float = 0.0,
) -> AssembledLoop:
    """Build the loop of ``spec`` around ``plant``, ``historian`` and ``clock``.

    The estimator starts from the recipe's charged state and is compiled before the
    clock starts (a live loop must not spend its first periods compiling); the NMPC
    warm-starts from the recipe. ``wrap_controller`` injects faults (HIL tests).
    Raises a ``ValueError`` subclass (one line naming the file and key) for a bad spec.
    """
    run = spec if isinstance(spec, ResolvedRun) else resolve(spec)
    model, recipe = run.model, run.recipe
    x0 = recipe.initial_state(model)
    u0 = recipe.fallback(t0_h)
    ekf: CompiledEKF | ExtendedKalmanFilter
    if run.spec.estimator == "compiled":
        ekf = CompiledEKF(model, run.ekf)
    else:
        ekf = ExtendedKalmanFilter(model, run.ekf)
    estimator = LoopEstimator(OnlineEstimator(ekf), x0, t0_h=t0_h)
    estimator.warm_up(u0)
    controller: Controller | None = None
    if run.controller is not None:
        controller = NMPCController(NMPC(model, run.controller), x0, u0)
        if wrap_controller is not None:
            controller = wrap_controller(controller)
    lo_u, hi_u = model.bounds("inputs")
    supervisor = Supervisor(
        SupervisorConfig(
            model.input_names,
            recipe.limits,
            recipe.fallback,
            run.deadline_s,
            {n: (float(lo_u[i]), float(hi_u[i])) for i, n in enumerate(model.input_names)},
            auto_resume_after=run.auto_resume_after if controller is not None else None,
        )
    )
    loop = ControlLoop(
        recipe=recipe,
        plant=plant,
        estimator=estimator,
        controller=controller,
        supervisor=supervisor,
        historian=historian,
        clock=clock,
        controller_deadline_s=run.deadline_s,
        progress=progress,
        t0_h=t0_h,
        identity=run.spec.identity,
    )
    return AssembledLoop(loop, run, estimator, controller, supervisor)
