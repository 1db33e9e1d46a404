"""The assembly: a ready control loop from a run spec plus a plant, a historian and a clock.

This is the one place that wires the core's pieces (estimator, controller, supervisor,
loop) for a run. The CLI, the HIL runner and the live API call :func:`build_loop` with
their own plant (simulator, device gateway, HIL rig), historian and clock; nothing else
repeats the wiring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bpcontrol.adapters import LoopEstimator, NMPCController, PureEstimator
from bpcontrol.interfaces import Clock, Controller, Historian, Plant
from bpcontrol.loop import ControlLoop, LoopSnapshot
from bpcontrol.nmpc import NMPC, NMPCConfig
from bpcontrol.recipe import Recipe
from bpcontrol.records import EventKind, RunIdentity
from bpcontrol.resume import ResumePoint
from bpcontrol.runspec import EstimatorKind, ResolvedRun, RunSpec, resolve
from bpcontrol.supervisor import Supervisor, SupervisorConfig
from estimators import CompiledEKF, EKFConfig, MHEConfig, MovingHorizonEstimator, OnlineEstimator
from models import Model

__all__ = ["AssembledLoop", "assemble", "build_loop"]


@dataclass
class AssembledLoop:
    """A loop ready to ``run()``, with the pieces it was built from (``run``: the resolved
    run spec, None when built from Python objects by :func:`assemble`)."""

    loop: ControlLoop
    estimator: LoopEstimator
    controller: Controller | None
    supervisor: Supervisor
    run: ResolvedRun | None = None


def build_loop(
    spec: RunSpec | ResolvedRun,
    *,
    plant: Plant,
    historian: Historian,
    clock: Clock,
    progress: Callable[[LoopSnapshot], None] | None = None,
    wrap_controller: Callable[[Controller], Controller] | None = None,
    t0_h: float = 0.0,
    resume: ResumePoint | None = None,
) -> AssembledLoop:
    """Build the loop of ``spec`` around ``plant``, ``historian`` and ``clock``.

    Raises a ``ValueError`` subclass (one line naming the file and key) for a bad spec.
    See :func:`assemble` for what is built (``resume``: a restarted run's state).
    """
    run = spec if isinstance(spec, ResolvedRun) else resolve(spec)
    assembled = assemble(
        model=run.model,
        recipe=run.recipe,
        ekf_config=run.ekf,
        nmpc_config=run.controller,
        deadline_s=run.deadline_s,
        auto_resume_after=run.auto_resume_after,
        identity=run.spec.identity,
        estimator=run.spec.estimator,
        mhe_config=run.mhe,
        plant=plant,
        historian=historian,
        clock=clock,
        progress=progress,
        wrap_controller=wrap_controller,
        t0_h=t0_h,
        resume=resume,
    )
    assembled.run = run
    return assembled


def assemble(
    *,
    model: Model,
    recipe: Recipe,
    ekf_config: EKFConfig,
    nmpc_config: NMPCConfig | None,
    deadline_s: float,
    plant: Plant,
    historian: Historian,
    clock: Clock,
    auto_resume_after: int | None = None,
    identity: RunIdentity | None = None,
    estimator: EstimatorKind = "compiled",
    mhe_config: MHEConfig | None = None,
    progress: Callable[[LoopSnapshot], None] | None = None,
    wrap_controller: Callable[[Controller], Controller] | None = None,
    t0_h: float = 0.0,
    resume: ResumePoint | None = None,
) -> AssembledLoop:
    """Wire a loop from checked Python objects (what :func:`build_loop` does after reading
    a spec; scripts that build their configurations in Python call this directly).

    The estimator starts from the recipe's charged state and is compiled before the clock
    starts (a live loop must not spend its first periods compiling); the NMPC (none:
    recipe only) solves once from the charged state before the clock starts, so its first
    real-time solve is warm; the supervisor keeps the recipe's limits
    inside the model's input bounds. ``wrap_controller`` injects faults (HIL tests).
    ``estimator``: the EKF compiled to C (``"compiled"``, the default), in JAX (``"jax"``),
    or moving-horizon estimation (``"mhe"``, tuned by ``mhe_config``; default
    :class:`MHEConfig`) with the same sensor configuration ``ekf_config``.

    ``resume`` (:func:`bpcontrol.resume.resume_point` of the run's records) restarts a run
    that crashed: the loop starts at ``resume.t_h`` (``t0_h`` is ignored) from the last
    estimate and its covariance, the supervisor from the applied setpoints in their mode,
    and a ``resumed`` event says so.
    """
    x0 = recipe.initial_state(model)
    u0 = recipe.fallback(t0_h)
    p0 = model.p0.copy()
    theta0: dict[str, float] | None = None
    mode = None
    if resume is not None:
        t0_h = resume.t_h
        x0, u0, mode = resume.x0(model.state_names), resume.u0(model.input_names), resume.mode
        theta0 = dict(resume.parameters)
        for name, value in theta0.items():
            p0[model.index(name)] = value
    pure: PureEstimator
    if estimator == "mhe":
        pure = MovingHorizonEstimator(model, ekf_config, mhe_config or MHEConfig())
    elif estimator == "compiled":
        pure = OnlineEstimator(CompiledEKF(model, ekf_config))
    elif estimator == "jax":
        from estimators import ExtendedKalmanFilter  # JAX, imported only when chosen

        pure = OnlineEstimator(ExtendedKalmanFilter(model, ekf_config))
    else:
        raise ValueError(f"estimator must be 'compiled', 'jax' or 'mhe', got {estimator!r}")
    # a resumed filter starts where its last estimate was made and propagates from there
    # (the readings of the downtime are late samples inside its window, fused in order)
    t_est, P0_diag = t0_h, None
    if resume is not None:
        t_est = min(resume.estimate_t_h, t0_h)
        P0_diag = resume.p0_diag(model.state_names, pure.ekf.tracked_names)
    loop_estimator = LoopEstimator(pure, x0, t0_h=t_est, theta0=theta0, P0_diag=P0_diag)
    loop_estimator.warm_up(u0)
    controller: Controller | None = None
    if nmpc_config is not None:
        nmpc = NMPCController(NMPC(model, nmpc_config), x0, u0)
        nmpc.warm_up(x0, p0, u0, t0_h)
        controller = nmpc
        if wrap_controller is not None:
            controller = wrap_controller(controller)
    lo_u, hi_u = model.bounds("inputs")
    supervisor = Supervisor(
        SupervisorConfig(
            model.input_names,
            recipe.limits,
            recipe.fallback,
            deadline_s,
            {n: (float(lo_u[i]), float(hi_u[i])) for i, n in enumerate(model.input_names)},
            auto_resume_after=auto_resume_after if controller is not None else None,
            interlocks=recipe.interlocks,
        )
    )
    loop = ControlLoop(
        recipe=recipe,
        plant=plant,
        estimator=loop_estimator,
        controller=controller,
        supervisor=supervisor,
        historian=historian,
        clock=clock,
        controller_deadline_s=deadline_s,
        progress=progress,
        t0_h=t0_h,
        identity=identity,
        u0=u0 if resume is not None else None,
        mode=mode if controller is not None else None,
        fallback_cause=resume.fallback_cause if resume is not None else "",
        resumed=resume is not None,
    )
    if resume is not None:
        loop.note(EventKind.RESUMED, resume.describe(), "loop")
    return AssembledLoop(loop, loop_estimator, controller, supervisor)
