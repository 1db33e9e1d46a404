"""Run one closed-loop batch against the in-process simulated plant: the main job.

``run_scenario`` wires the pieces the core defines (:class:`bpcontrol.loop.ControlLoop`,
EKF, NMPC, supervisor, recipe) to the simulated plant (:mod:`hil.plant`) and the embedded
historian (:mod:`services.historian`), runs the batch on a paced clock, and writes the run
folder ``runs/<id>/``: ``records.sqlite`` (every record), ``kpis.json``, ``report.html``,
the recipe and the scenario. A run is a pure function of its scenario, recipe and seed
(wall-time deadlines aside), so campaigns can farm runs out.

A scenario file (TOML) describes the plant side; every key is optional::

    name = "slow strain"
    model = "ecoli_fedbatch"
    seed = 7
    controller = "nmpc"            # or "recipe": FALLBACK for the whole batch
    controller_deadline_s = 2.0    # wall time per solve before the supervisor falls back
    auto_resume_after = 3          # usable shadow plans before AUTO returns (0: never)
    estimator = "compiled"         # EKF compiled to C (cached), or "jax" (same estimates)
    [parameter_factors]            # true plant = model parameters times these
    mu_max = 0.8
    Y_xs = 1.2
    [drift]                        # sensor bias growing per hour (output units / h)
    DO_probe = -0.2
    [delay_h]                      # sensor transport delay (h)
    y_O2_out = 0.02
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bpcontrol.adapters import LoopEstimator, NMPCController
from bpcontrol.clock import PacedClock
from bpcontrol.interfaces import Controller, Plant
from bpcontrol.kpis import product_g, run_kpis
from bpcontrol.loop import ControlLoop, LoopSnapshot, RunSummary
from bpcontrol.nmpc import NMPC, StateEstimate
from bpcontrol.nmpc.presets import ECOLI_DO_MIN, ecoli_nmpc_config
from bpcontrol.recipe import Recipe, default_recipe_path, load_recipe
from bpcontrol.supervisor import Supervisor, SupervisorConfig
from estimators import CompiledEKF, ExtendedKalmanFilter, OnlineEstimator, default_ekf_config
from hil.plant import SimulatedPlant, ecoli_plant
from models import Model, load_model
from services.historian import EmbeddedHistorian, read_records

__all__ = [
    "RunResult",
    "Scenario",
    "ScenarioError",
    "check_scenario",
    "load_scenario",
    "oracle_product",
    "run_scenario",
]


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """The plant side of a run (see the module docstring for the file format)."""

    name: str = "default"
    model: str = "ecoli_fedbatch"
    seed: int = 1
    controller: Literal["nmpc", "recipe"] = "nmpc"
    controller_deadline_s: float = 2.0
    auto_resume_after: int = 3
    estimator: Literal["compiled", "jax"] = "compiled"
    parameter_factors: Mapping[str, float] | None = None
    drift: Mapping[str, float] = field(default_factory=dict)
    delay_h: Mapping[str, float] = field(default_factory=dict)


_SCENARIO_KEYS = {f for f in Scenario.__dataclass_fields__}


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario TOML file (raises :class:`ScenarioError` naming the problem)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(doc) - _SCENARIO_KEYS)
    if unknown:
        raise ScenarioError(f"{path}: unknown keys {unknown}; allowed: {sorted(_SCENARIO_KEYS)}")
    if doc.get("controller", "nmpc") not in ("nmpc", "recipe"):
        raise ScenarioError(f"{path}: controller must be 'nmpc' or 'recipe'")
    if doc.get("estimator", "compiled") not in ("compiled", "jax"):
        raise ScenarioError(f"{path}: estimator must be 'compiled' or 'jax'")
    for key in ("parameter_factors", "drift", "delay_h"):
        table = doc.get(key, {})
        if not isinstance(table, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in table.values()
        ):
            raise ScenarioError(f"{path}: [{key}] must be a table of finite numbers")
    deadline = doc.get("controller_deadline_s", 2.0)
    if not (isinstance(deadline, (int, float)) and deadline > 0):
        raise ScenarioError(f"{path}: controller_deadline_s must be a number > 0")
    resume = doc.get("auto_resume_after", 3)
    if not (isinstance(resume, int) and resume >= 0):
        raise ScenarioError(f"{path}: auto_resume_after must be an integer >= 0")
    seed = doc.get("seed", 1)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ScenarioError(f"{path}: seed must be an integer")
    return Scenario(**doc)


@dataclass
class RunResult:
    """What a run produced: its folder, KPIs, loop summary and the plant's truth."""

    run_dir: Path
    kpis: dict[str, Any]
    summary: RunSummary
    truth_t: np.ndarray
    truth_x: np.ndarray
    report: Path | None


def check_scenario(scenario: Scenario, model: Model, recipe: Recipe) -> None:
    """Refuse a scenario the runner cannot carry out, before anything is written."""
    if recipe.model != model.name:
        raise ScenarioError(f"recipe is for {recipe.model!r}, scenario for {model.name!r}")
    if scenario.controller == "nmpc" and model.name != "ecoli_fedbatch":
        raise ScenarioError(
            f"no NMPC preset for model {model.name!r}; use controller = 'recipe' in the scenario"
        )
    unknown = sorted(set(scenario.parameter_factors or {}) - set(model.parameter_names))
    if unknown:
        raise ScenarioError(f"parameter_factors names unknown parameters {unknown}")
    for key in ("drift", "delay_h"):
        bad = sorted(set(getattr(scenario, key)) - set(model.output_names))
        if bad:
            raise ScenarioError(f"[{key}] names unknown outputs {bad}")


def _controller_config(model: Model, recipe: Recipe, deadline_s: float) -> Any:
    limits = recipe.limits
    return replace(
        ecoli_nmpc_config(
            model,
            batch_end_h=recipe.duration_h,
            dt_h=recipe.control_period_h,
            horizon=max(1, min(20, int(recipe.duration_h / recipe.control_period_h + 1e-9))),
        ),
        initial_inputs=recipe.fallback,
        input_bounds={n: (lim.lower, lim.upper) for n, lim in limits.items()},
        rate_limits={
            n: lim.rate_per_h for n, lim in limits.items() if math.isfinite(lim.rate_per_h)
        },
        time_limit_s=deadline_s,
    )


def _plant(
    model: Model, recipe: Recipe, scenario: Scenario, ekf: ExtendedKalmanFilter | CompiledEKF
) -> SimulatedPlant:
    if model.name == "ecoli_fedbatch":
        return ecoli_plant(
            model,
            seed=scenario.seed,
            parameter_factors=scenario.parameter_factors,
            drift=dict(scenario.drift),
            delay_h=dict(scenario.delay_h),
        )
    online = {s.output: s.sigma for s in ekf.config.sensors}
    return SimulatedPlant(
        model,
        seed=scenario.seed,
        x0=recipe.initial_state(model),
        u0=recipe.fallback(0.0),
        parameter_factors=dict(scenario.parameter_factors or {}),
        online=online,
        period_h=recipe.measurement_period_h,
        drift=dict(scenario.drift),
        delay_h=dict(scenario.delay_h),
    )


def new_run_dir(root: str | Path, scenario: Scenario) -> Path:
    """A fresh ``<root>/<UTC time>-<model>-s<seed>[-k]`` folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{scenario.model}-s{scenario.seed}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    path.mkdir(parents=True)
    return path


def run_scenario(
    scenario: Scenario,
    *,
    run_dir: str | Path,
    recipe: Recipe | None = None,
    speed_up: float = math.inf,
    duration_h: float | None = None,
    progress: Callable[[LoopSnapshot], None] | None = None,
    wrap_controller: Callable[[Controller], Controller] | None = None,
    wrap_plant: Callable[[Plant], Plant] | None = None,
    oracle: bool = False,
    report: bool = True,
) -> RunResult:
    """Run one batch (see the module docstring).

    ``wrap_controller`` and ``wrap_plant`` inject faults (:mod:`hil.faults`); ``progress``
    is called with the loop's snapshot after every tick.
    """
    model = load_model(scenario.model)
    recipe = recipe or load_recipe(default_recipe_path(model.name), model)
    check_scenario(scenario, model, recipe)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    x0 = recipe.initial_state(model)
    ekf: ExtendedKalmanFilter | CompiledEKF
    if scenario.estimator == "compiled":
        ekf = CompiledEKF(model, default_ekf_config(model))
    else:
        ekf = ExtendedKalmanFilter(model, default_ekf_config(model))
    sim = _plant(model, recipe, scenario, ekf)
    plant: Plant = sim if wrap_plant is None else wrap_plant(sim)
    estimator = LoopEstimator(OnlineEstimator(ekf), x0)
    estimator.warm_up(recipe.fallback(0.0))
    controller: Controller | None = None
    if scenario.controller == "nmpc":
        nmpc = NMPC(model, _controller_config(model, recipe, scenario.controller_deadline_s))
        controller = NMPCController(nmpc, x0, recipe.fallback(0.0))
        if wrap_controller is not None:
            controller = wrap_controller(controller)
    lo_u, hi_u = model.bounds("inputs")
    hard = {n: (float(lo_u[i]), float(hi_u[i])) for i, n in enumerate(model.input_names)}
    supervisor = Supervisor(
        SupervisorConfig(
            model.input_names,
            recipe.limits,
            recipe.fallback,
            scenario.controller_deadline_s,
            hard,
        )
    )
    historian = EmbeddedHistorian(run_dir / "records.sqlite")
    loop = ControlLoop(
        recipe=recipe,
        plant=plant,
        estimator=estimator,
        controller=controller,
        supervisor=supervisor,
        historian=historian,
        clock=PacedClock(speed_up),
        controller_deadline_s=scenario.controller_deadline_s,
        auto_resume_after=scenario.auto_resume_after or None,
        progress=progress,
    )
    try:
        summary = loop.run(duration_h)
    finally:
        historian.close()
    truth = sim.truth()
    p_true = sim.p_true
    tracked = {n: float(p_true[model.index(n)]) for n in ekf.tracked_names}
    records = read_records(run_dir / "records.sqlite")
    kpis: dict[str, Any] = {
        "scenario": scenario.name,
        "controller": scenario.controller,
        "seed": scenario.seed,
        "duration_h": summary.t_end_h,
        "wall_time_s": summary.wall_s,
        "speed_up_achieved": summary.t_end_h * 3600.0 / max(summary.wall_s, 1e-9),
    }
    kpis.update(
        run_kpis(
            records,
            model=model,
            limits=recipe.limits,
            truth=(truth.t, truth.x),
            true_parameters=tracked,
            do_min=ECOLI_DO_MIN if "DO" in model.state_names else None,
        )
    )
    jitter = summary.jitter()
    if math.isfinite(speed_up):
        kpis.update({f"jitter_{k}": v for k, v in jitter.items()})
    if oracle:
        kpis["oracle_product_g"] = oracle_product(model, recipe, p_true, truth.x[0])
        kpis["product_vs_oracle"] = kpis["final_product_g"] / kpis["oracle_product_g"]
    (run_dir / "kpis.json").write_text(json.dumps(kpis, indent=2) + "\n", encoding="utf-8")
    (run_dir / "scenario.json").write_text(
        json.dumps(asdict(scenario), indent=2, default=dict) + "\n", encoding="utf-8"
    )
    if recipe.source and Path(recipe.source).is_file():
        (run_dir / "recipe.toml").write_text(Path(recipe.source).read_text(encoding="utf-8"))
    report_path = None
    if report:
        report_path = _write_report(run_dir, records, model, recipe, kpis, truth, tracked, scenario)
    return RunResult(run_dir, kpis, summary, truth.t, truth.x, report_path)


def _write_report(
    run_dir: Path,
    records: list[Any],
    model: Model,
    recipe: Recipe,
    kpis: Mapping[str, Any],
    truth: Any,
    tracked: Mapping[str, float],
    scenario: Scenario,
) -> Path:
    from bpcontrol.report import write_report

    bounds: dict[str, tuple[float, float]] = {}
    if "DO" in model.state_names:
        bounds["DO"] = (ECOLI_DO_MIN, math.inf)
    return write_report(
        run_dir / "report.html",
        records=records,
        model=model,
        limits=recipe.limits,
        kpis=kpis,
        title=f"{recipe.name}: {scenario.name} ({scenario.controller}, seed {scenario.seed})",
        truth=(truth.t, truth.x, truth.u),
        true_parameters=tracked,
        state_bounds=bounds,
        notes=(f"run folder {run_dir}", f"recipe {recipe.source}"),
    )


def oracle_product(model: Model, recipe: Recipe, p_true: np.ndarray, x0: np.ndarray) -> float:
    """Product (g) of the whole-batch open-loop optimum computed with the plant's parameters.

    One IPOPT solve of the same economic problem over the whole batch (60 intervals, Radau
    collocation), applied open loop to the true model (CVODES). No real-time limit.
    """
    n = 60
    dt = recipe.duration_h / n
    cfg = replace(
        _controller_config(model, recipe, 1800.0),
        horizon=n,
        dt_h=dt,
        horizon_mode="batch_end",
        max_iter=3000,
        ipopt_options={},
    )
    oracle = NMPC(model, cfg)
    plan, _ = oracle.step(oracle.init(x0, recipe.fallback(0.0)), StateEstimate(x0, p_true), 0.0)
    if not plan.status.usable:
        raise RuntimeError(f"oracle solve failed: {plan.message}")
    step = model.to_casadi().integrator(dt)
    x = np.asarray(x0, dtype=float)
    for k in range(n):
        x = np.asarray(step(x, plan.U[k], p_true)).ravel()
    return product_g(model, x)
