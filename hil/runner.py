"""Run one closed-loop batch against the in-process simulated plant: the main job.

The core assembles the loop (:func:`bpcontrol.assembly.build_loop`) from a run spec
(:mod:`bpcontrol.runspec`, usually made from a process pack); this module owns only the
plant side: a :class:`Scenario` says how the simulated plant differs from the
controller's model (true parameters, charged state, sensor noise, drift, delay), and
:func:`run_batch` builds that plant, runs the batch on a paced clock into the embedded
historian, and writes the run folder ``runs/<id>/``: ``records.sqlite`` (every record),
``kpis.json``, ``report.html``, ``run.toml`` (the spec: repeat the run with
``bpcontrol run --spec``) and ``scenario.json``. A run is a pure function of its spec,
scenario and seed (wall-time deadlines aside), so campaigns can farm runs out.

A scenario file (TOML, a pack's ``plant.toml``) describes the plant; every key is
optional::

    name = "slow strain"
    [parameter_factors]            # true plant = model parameters times these
    mu_max = 0.8
    Y_xs = 1.2
    [initial]                      # true charged state (default: the recipe's [initial])
    S = 5.5
    [noise]                        # sensor noise std (default: the pack's instruments)
    DO_probe = 2.0
    [drift]                        # sensor bias growing per hour (output units / h)
    DO_probe = -0.2
    [delay_h]                      # sensor transport delay (h)
    y_O2_out = 0.02
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bpcontrol.assembly import build_loop
from bpcontrol.clock import PacedClock
from bpcontrol.control_spec import oracle_configs
from bpcontrol.interfaces import Controller, Plant
from bpcontrol.kpis import run_kpis
from bpcontrol.loop import ControlLoop, LoopSnapshot, RunSummary
from bpcontrol.nmpc import NMPC, StateEstimate
from bpcontrol.records import EventKind
from bpcontrol.resume import resume_point
from bpcontrol.run_status import (
    RunState,
    StopOnSignals,
    signal_exit_code,
    write_json,
    write_status,
)
from bpcontrol.runspec import ResolvedRun, RunSpec, resolve
from bpcontrol.stderr_capture import StderrToEvents
from bpcontrol.tomlfile import read_toml
from hil.plant import SimulatedPlant
from hil.restart import ControllerCrash, CrashingPlant, merge_summaries
from hil.synthetic import OfflineAssays
from models import Model
from services.historian import EmbeddedHistorian, HistorianError, read_records
from services.historian.tee import TeeHistorian

__all__ = [
    "RunResult",
    "Scenario",
    "ScenarioError",
    "check_scenario",
    "load_scenario",
    "new_run_dir",
    "oracle_product",
    "parse_scenario",
    "product_value",
    "run_batch",
    "simulated_plant",
]


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """The plant side of a run (see the module docstring for the file format)."""

    name: str = "default"
    parameter_factors: Mapping[str, float] = field(default_factory=dict)
    initial: Mapping[str, float] = field(default_factory=dict)
    noise: Mapping[str, float] = field(default_factory=dict)
    drift: Mapping[str, float] = field(default_factory=dict)
    delay_h: Mapping[str, float] = field(default_factory=dict)
    parameter_changes: tuple[tuple[float, Mapping[str, float]], ...] = ()
    """Scheduled changes of the true parameters (:class:`hil.plant.SimulatedPlant`): set by
    a suite's plant faults (wrong feed concentration, growth change), not a file key."""


_TABLES = ("parameter_factors", "initial", "noise", "drift", "delay_h")
_MOVED = {
    "model": "choose the process with --pack or --model",
    "seed": "use --seed (or seed in the run spec)",
    "controller": "use --controller",
    "estimator": "use --estimator",
    "controller_deadline_s": "set deadline_s in the pack's control.toml",
    "auto_resume_after": "set auto_resume_after in the pack's control.toml",
}


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario TOML file (raises :class:`ScenarioError` naming the key)."""
    path = Path(path)
    doc = read_toml(path, "scenario", ScenarioError)
    return parse_scenario(doc, source=str(path))


def parse_scenario(doc: Mapping[str, Any], *, source: str) -> Scenario:
    """Validate a parsed scenario document (structure; names: :func:`check_scenario`)."""
    for key in doc:
        if key in _MOVED:
            raise ScenarioError(f"{source}: {key}: not a plant property; {_MOVED[key]}")
    allowed = ("name", *_TABLES)
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ScenarioError(f"{source}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    name = doc.get("name", "default")
    if not isinstance(name, str):
        raise ScenarioError(f"{source}: name: must be a string, got {name!r}")
    tables: dict[str, dict[str, float]] = {}
    for key in _TABLES:
        table = doc.get(key, {})
        if not isinstance(table, Mapping):
            raise ScenarioError(f"{source}: [{key}] must be a table of numbers")
        for k, v in table.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ScenarioError(f"{source}: {key}.{k}: must be a finite number, got {v!r}")
        tables[key] = {str(k): float(v) for k, v in table.items()}
    return Scenario(
        name=name,
        parameter_factors=tables["parameter_factors"],
        initial=tables["initial"],
        noise=tables["noise"],
        drift=tables["drift"],
        delay_h=tables["delay_h"],
    )


def check_scenario(scenario: Scenario, run: ResolvedRun, *, source: str = "scenario") -> None:
    """Refuse a scenario that does not fit the run's model, before anything is written.

    The true parameters (model values times the factors) must stay inside the
    parameters' declared ranges; the charged state inside the states' bounds; noise,
    drift and delay must name the pack's instruments (noise > 0, delay >= 0).
    """
    model = run.model
    for name, factor in scenario.parameter_factors.items():
        if name not in model.parameter_names:
            raise ScenarioError(
                f"{source}: parameter_factors.{name}: not a parameter of {model.name!r}"
            )
        p = model.parameters[model.index(name)]
        true = p.value * factor
        if not p.lower <= true <= p.upper:
            raise ScenarioError(
                f"{source}: parameter_factors.{name} = {factor:g} makes {name} = {true:g} "
                f"{p.unit}, outside its declared range [{p.lower:g}, {p.upper:g}]"
            )
    lo, hi = model.bounds("states")
    for name, value in scenario.initial.items():
        if name not in model.state_names:
            raise ScenarioError(f"{source}: initial.{name}: not a state of {model.name!r}")
        i = model.index(name)
        if not lo[i] <= value <= hi[i]:
            raise ScenarioError(
                f"{source}: initial.{name} = {value:g} is outside [{lo[i]:g}, {hi[i]:g}]"
            )
    online = {i.output for i in run.instruments if i.kind == "online"}
    sensors = {i.output for i in run.instruments}
    for key, allowed in (("noise", sensors), ("drift", online), ("delay_h", online)):
        for name, value in getattr(scenario, key).items():
            if name not in allowed:
                raise ScenarioError(
                    f"{source}: {key}.{name}: not an {'' if key == 'noise' else 'online '}"
                    f"instrument of the pack; instruments: {', '.join(sorted(allowed))}"
                )
            if (key == "noise" and value <= 0) or (key == "delay_h" and value < 0):
                raise ScenarioError(f"{source}: {key}.{name} = {value:g} must be > 0")
    offline = [i for i in run.instruments if i.kind == "offline"]
    schedules = {(i.interval_h, i.delay_h) for i in offline}
    if len(schedules) > 1:
        raise ScenarioError(
            f"{run.spec.pack.source('pack')}: the simulated plant draws one sampling schedule "
            "for all offline sensors; give them the same interval_h and delay_h"
        )


def simulated_plant(run: ResolvedRun, scenario: Scenario, *, seed: int) -> SimulatedPlant:
    """The simulated plant of ``scenario`` for ``run``: it starts from the recipe's charge
    (or the scenario's), reads the pack's instruments with the scenario's noise."""
    check_scenario(scenario, run)
    model, recipe = run.model, run.recipe
    x0 = recipe.initial_state(model)
    for name, value in scenario.initial.items():
        x0[model.index(name)] = value
    online = {
        i.output: scenario.noise.get(i.output, i.sigma)
        for i in run.instruments
        if i.kind == "online"
    }
    offline_sensors = [i for i in run.instruments if i.kind == "offline"]
    offline = None
    if offline_sensors:
        first = offline_sensors[0]
        offline = OfflineAssays(
            outputs=tuple(i.output for i in offline_sensors),
            interval_h=first.interval_h,
            delay_h=first.delay_h,
            relative_sigma=first.relative_sigma,
            absolute_sigma={
                i.output: scenario.noise.get(i.output, i.sigma) for i in offline_sensors
            },
        )
    return SimulatedPlant(
        model,
        seed=seed,
        x0=x0,
        u0=recipe.fallback(0.0),
        parameter_factors=dict(scenario.parameter_factors),
        online=online,
        period_h=recipe.measurement_period_h,
        offline=offline,
        drift=dict(scenario.drift),
        delay_h=dict(scenario.delay_h),
        parameter_changes=scenario.parameter_changes,
    )


def same_plant(scenario: Scenario, before: Model, after: Model) -> Scenario:
    """``scenario`` rewritten for a run whose model's parameters went from ``before`` to
    ``after`` (``bpcontrol run --parameters``: a fit handed over), so that the simulated
    plant stays the one the scenario describes against ``before``: each changed
    parameter's factor becomes ``before * factor / after``. Fitting the controller's model
    must not move the plant it is tested on."""
    factors = dict(scenario.parameter_factors)
    for i, name in enumerate(after.parameter_names):
        old, new = float(before.p0[i]), float(after.p0[i])
        if old != new and new != 0.0:
            factors[name] = old * factors.get(name, 1.0) / new
    return replace(scenario, parameter_factors=factors)


def pack_scenario(run: ResolvedRun) -> Scenario:
    """The pack's own simulated plant (``plant.toml``), or the nominal plant."""
    pack = run.spec.pack
    if pack.plant is None:
        return Scenario()
    return parse_scenario(pack.plant, source=pack.source("plant"))


@dataclass
class RunResult:
    """What a run produced: its folder, KPIs, loop summary and the plant's truth; how it
    ended (``state`` as in ``status.json``, the ``reason``, the process ``exit_code``)."""

    run_dir: Path
    kpis: dict[str, Any]
    summary: RunSummary
    truth_t: np.ndarray
    truth_x: np.ndarray
    report: Path | None
    state: RunState = "completed"
    reason: str = ""
    exit_code: int = 0


def new_run_dir(root: str | Path, label: str, seed: int) -> Path:
    """A fresh ``<root>/<UTC time>-<label>-s<seed>[-k]`` folder, created atomically."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{stamp}-{label}-s{seed}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        path = base if k == 1 else base.with_name(f"{base.name}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"no free run folder name under {root}")


def product_value(
    run: ResolvedRun, x: np.ndarray, u: np.ndarray, p: np.ndarray | None = None
) -> float:
    """The pack's product KPI (a state or output) at state ``x`` under inputs ``u`` and
    parameters ``p`` (default: the model's); NaN when the pack names none."""
    name = run.kpis.product
    model = run.model
    if name is None:
        return math.nan
    if model.kind(name) == "state":
        return float(x[model.index(name)])
    y = np.asarray(model.to_casadi().h(x, u, model.p0 if p is None else p)).ravel()
    return float(y[model.index(name)])


STDERR_LOG = "stderr.log"
"""What solvers and integrators printed during the loop (also kept as events)."""
STORE_TIMEOUT_S = 10.0
"""How long (wall s) the historian may fail to store anything before the run ends, and
the longest wait for it at the end of a run."""


class MirrorEvent(Protocol):
    """What a mirror historian reports (:class:`services.historian.influx.HistorianEvent`)."""

    @property
    def kind(self) -> str: ...
    @property
    def message(self) -> str: ...


class MirrorHistorian(Protocol):
    """A second store every record also goes to (:class:`services.historian.influx.
    InfluxHistorian`): it buffers while its server is away and reports events."""

    def write(self, record: Any) -> None: ...
    def flush(self, timeout_s: float | None = None) -> bool: ...
    def close(self, timeout_s: float | None = None) -> None: ...
    def events(self) -> list[Any]: ...
    @property
    def pending_points(self) -> int: ...
    @property
    def delivered_points(self) -> int: ...


def run_batch(
    spec: RunSpec | ResolvedRun,
    *,
    run_dir: str | Path,
    scenario: Scenario | None = None,
    speed_up: float = math.inf,
    duration_h: float | None = None,
    progress: Callable[[LoopSnapshot], None] | None = None,
    wrap_controller: Callable[[Controller], Controller] | None = None,
    wrap_plant: Callable[[Plant], Plant] | None = None,
    oracle: bool = False,
    report: bool = True,
    store_timeout_s: float = STORE_TIMEOUT_S,
    checkpoint_interval_s: float = 1.0,
    mirror: MirrorHistorian | None = None,
    crash: tuple[float, float] | None = None,
    resume: Callable[[], float] | None = None,
) -> RunResult:
    """Run one batch (see the module docstring); ``scenario`` defaults to the pack's plant.

    ``wrap_controller`` and ``wrap_plant`` inject faults (:mod:`hil.faults`); ``progress``
    is called with the loop's snapshot after every tick. The folder's ``status.json``
    (:mod:`bpcontrol.run_status`) says ``running`` from the start and how the run ended:
    SIGINT or SIGTERM stop the loop at its next tick (``interrupted``); a historian that
    stores nothing for ``store_timeout_s`` (a full disk) ends the run (``failed``), and
    so does a plant from which no measurement ever arrived. Either way the records that
    were stored, the KPIs and the report of what ran are kept, and the result says what
    happened (:attr:`RunResult.state`, ``reason``, ``exit_code``). The historian
    checkpoints its WAL every ``checkpoint_interval_s`` (wall s).

    ``mirror`` (InfluxDB) gets every record too; the run folder's file stays the source of
    the KPIs and the report. Its events become ``historian`` events of the loop; at the end
    it delivers for up to ``store_timeout_s`` and what is left waits in its buffer
    (KPIs ``mirror_delivered_points``, ``mirror_pending_points``).

    ``crash = (at_h, down_h)``: the controller process crashes at ``at_h`` and restarts
    ``down_h`` hours later from the historian's last state (:mod:`hil.restart`); the KPIs
    gain ``restarts``, ``restart_at_h`` and ``restart_wall_s``.

    ``resume`` continues the run in ``run_dir`` whose controller process died (``bpcontrol
    run --resume``): it gives the plant's process time now (h; a device's clock), and the
    new loop starts at the next measurement instant after it from the state the folder's
    historian file holds (:func:`_resumed`), appending to that file; ``duration_h`` is
    where the whole run ends (h of process time), as it was for the run that died.
    """
    run = spec if isinstance(spec, ResolvedRun) else resolve(spec)
    scenario = scenario if scenario is not None else pack_scenario(run)
    sim = simulated_plant(run, scenario, seed=run.spec.seed)
    plant: Plant = sim if wrap_plant is None else wrap_plant(sim)
    if crash is not None:
        plant = CrashingPlant(plant, crash[0])
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume is None:  # a resumed run keeps the files of the run it continues
        (run_dir / "run.toml").write_text(run.spec.to_toml(), encoding="utf-8")
        (run_dir / "scenario.json").write_text(
            json.dumps(asdict(scenario), indent=2, default=dict) + "\n", encoding="utf-8"
        )
    write_status(run_dir, "running", run_id=run.spec.identity.run_id, pid=os.getpid())
    historian = EmbeddedHistorian(
        run_dir / "records.sqlite", checkpoint_interval_s=checkpoint_interval_s
    )
    sink = historian if mirror is None else TeeHistorian(historian, mirror)
    clock = PacedClock(speed_up)
    stop = _StopRequest()
    loops: list[ControlLoop] = []
    if report:  # load the report's plotting while the loop waits on its solver
        threading.Thread(target=_preload_report, name="preload-report", daemon=True).start()

    def watch(snapshot: LoopSnapshot) -> None:
        if historian.failing_for_s() > store_timeout_s:
            stop(
                f"the historian stored nothing for {store_timeout_s:g} s "
                f"({historian.failure_cause}); {historian.stored} records stored"
            )
        if mirror is not None and loops:
            for ev in mirror.events():
                loops[-1].note(EventKind.HISTORIAN, f"{ev.kind}: {ev.message}", "mirror")
        if progress is not None:
            progress(snapshot)

    restart_kpis: dict[str, Any] = {}
    with StopOnSignals(stop) as signals:
        try:
            hours = duration_h
            if resume is None:
                assembled = build_loop(
                    run,
                    plant=plant,
                    historian=sink,
                    clock=clock,
                    progress=watch,
                    wrap_controller=wrap_controller,
                )
                clock.restart()  # the warm-up compile is not process time
            else:
                resumed = _resumed(
                    run, run_dir, resume, duration_h,
                    plant=plant, historian=sink, clock=clock, progress=watch,
                    wrap_controller=wrap_controller,
                )  # fmt: skip
                assembled, hours = resumed.assembled, resumed.hours
                restart_kpis.update(resumed.kpis)
            loop = assembled.loop
            loops.append(loop)
            stop.attach(loop)
            with StderrToEvents(
                lambda line: loops[-1].note(EventKind.SOLVER_OUTPUT, line, "stderr"),
                run_dir / STDERR_LOG,
            ):
                try:
                    summary = loop.run(hours)
                except ControllerCrash as crashed:
                    assert crash is not None  # only a CrashingPlant raises it
                    restarted = _restart(
                        run, crashed.t_h, crash[1], duration_h, historian, run_dir,
                        plant=plant, historian=sink, clock=clock, progress=watch,
                        wrap_controller=wrap_controller,
                    )  # fmt: skip
                    loops.append(restarted.loop)
                    stop.attach(restarted.loop)
                    summary = merge_summaries(loop.summary, restarted.loop.run(restarted.hours))
                    restart_kpis.update(restarted.kpis)
        except BaseException as exc:
            ended: RunState = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            _close_within(historian, store_timeout_s)
            if mirror is not None:
                _close_mirror(mirror, store_timeout_s)
            with contextlib.suppress(OSError):
                write_status(run_dir, ended, f"{type(exc).__name__}: {exc}")
            raise
        store_error = _close_within(historian, store_timeout_s)
        mirrored = None if mirror is None else _close_mirror(mirror, store_timeout_s)
        state, why = _outcome(summary, signals.signum, store_error)
        try:
            result = _finish_run(
                run,
                scenario,
                sim,
                summary,
                run_dir,
                speed_up=speed_up,
                report=report,
                oracle=oracle and state == "completed",
            )
        except OSError as exc:  # a full disk: the records are what there is
            if state == "completed":
                state, why = "failed", f"writing the run folder failed: {exc}"
            truth = sim.truth()
            result = RunResult(run_dir, {}, summary, truth.t, truth.x, None)
        if mirrored is not None or restart_kpis:
            result.kpis.update(mirrored or {})
            result.kpis.update(restart_kpis)
            with contextlib.suppress(OSError):
                write_json(run_dir / "kpis.json", result.kpis)
        why = result.kpis.get("oracle_error", "") or why
        stored_to = result.kpis.get("records_up_to_h")  # read back with the KPIs
        if stored_to is None:  # no KPIs (a full disk): read the file for it
            stored_to = _stored_up_to_h(run_dir / "records.sqlite")
        if state == "failed" and store_error is not None:
            why = f"{why}, up to {stored_to:.3f} h of {summary.t_end_h:.3f} h"
        with contextlib.suppress(OSError):
            write_status(
                run_dir,
                state,
                why,
                t_end_h=summary.t_end_h,
                records_stored=historian.stored,
                records_up_to_h=stored_to,
            )
    result.state, result.reason = state, why
    result.exit_code = _exit_code(
        state, signals.signum, oracle_failed="oracle_error" in result.kpis
    )
    return result


@dataclass
class _Restarted:
    """A loop resumed after a crash: run it ``hours`` more; ``kpis`` say what happened."""

    loop: ControlLoop
    hours: float
    kpis: dict[str, Any]


def _restart(
    run: ResolvedRun,
    at_h: float,
    down_h: float,
    duration_h: float | None,
    store: EmbeddedHistorian,
    run_dir: Path,
    /,
    **build: Any,
) -> _Restarted:
    """The new loop of a run whose controller crashed at ``at_h`` (h): ``down_h`` hours
    later (on the measurement grid), from the state the historian file holds."""
    wall0 = time.perf_counter()
    if not store.flush(timeout_s=STORE_TIMEOUT_S):  # what the dead loop had handed over
        raise HistorianError("the historian did not store the records before the restart")
    model, recipe = run.model, run.recipe
    point = resume_point(
        read_records(run_dir / "records.sqlite"),
        state_names=model.state_names,
        input_names=model.input_names,
        tracked=run.ekf.tracked_names,
        source=str(run_dir / "records.sqlite"),
    )
    period = recipe.measurement_period_h
    t0 = math.ceil((at_h + down_h) / period - 1e-9) * period
    end = recipe.duration_h if duration_h is None else float(duration_h)
    assembled = build_loop(run, resume=replace(point, t_h=t0), **build)
    build["clock"].sleep_until(t0)  # the plant runs on alone until then (a paced clock)
    kpis = {
        "restarts": 1,
        "restart_at_h": at_h,
        "restart_resumed_h": t0,
        "restart_wall_s": time.perf_counter() - wall0,
        "restart_estimate_age_h": at_h - point.estimate_t_h,
    }
    return _Restarted(assembled.loop, end - t0, kpis)


@dataclass(frozen=True)
class _Resumed:
    """The loop of a run continued in a new process: run it ``hours`` more."""

    assembled: Any
    hours: float
    kpis: dict[str, Any]


_RESUME_ALLOWANCE_S = 2.0
"""Wall s allowed for building the resumed loop before its first instant (measured: about
0.9 s for the E. coli pack; it is built again, warm, from a later instant when the build
takes longer)."""


def _resumed(
    run: ResolvedRun,
    run_dir: Path,
    plant_time_h: Callable[[], float],
    duration_h: float | None,
    /,
    **build: Any,
) -> _Resumed:
    """Build the loop that continues the run in ``run_dir`` after its process died: from
    the folder's historian file (:func:`bpcontrol.resume.resume_point`), starting at the
    first measurement instant the plant (``plant_time_h``: its process time now, h) has
    not passed once the loop is built; the clock then runs from the plant's time."""
    wall0 = time.perf_counter()
    model, recipe, clock = run.model, run.recipe, build["clock"]
    point = resume_point(
        read_records(run_dir / "records.sqlite"),
        state_names=model.state_names,
        input_names=model.input_names,
        tracked=run.ekf.tracked_names,
        source=str(run_dir / "records.sqlite"),
    )
    period = recipe.measurement_period_h
    speed = clock.speed_up if math.isfinite(clock.speed_up) else 0.0
    end = recipe.duration_h if duration_h is None else float(duration_h)

    def first_instant(t_h: float, allowance_s: float) -> float:
        return math.ceil((t_h + allowance_s * speed / 3600.0) / period - 1e-9) * period

    t0 = first_instant(plant_time_h(), _RESUME_ALLOWANCE_S)
    assembled = build_loop(run, resume=replace(point, t_h=t0), **build)
    now_h = plant_time_h()
    if now_h > t0 - 1e-9:  # the build took longer than allowed: again, warm, from later
        took_s = time.perf_counter() - wall0
        t0 = first_instant(now_h, 2.0 * took_s)
        assembled = build_loop(run, resume=replace(point, t_h=t0), **build)
        now_h = plant_time_h()
    if t0 >= end - 1e-9:
        raise ValueError(
            f"{run_dir}: nothing left to resume: the plant is at {now_h:.3f} h and the run "
            f"ends at {end:g} h"
        )
    clock.restart(now_h)
    clock.sleep_until(t0)
    kpis = {
        "restarts": 1,
        "restart_at_h": point.t_h,
        "restart_resumed_h": t0,
        "restart_wall_s": time.perf_counter() - wall0,
        "restart_estimate_age_h": t0 - point.estimate_t_h,
    }
    return _Resumed(assembled, end - t0, kpis)


def _preload_report() -> None:
    """Import the report module (matplotlib) and draw one small figure (fonts), so the
    report after the batch starts at once. CasADi's solvers release the GIL, so on a
    second core this costs the loop nothing; any error is left to the real import."""
    with contextlib.suppress(Exception):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        import bpcontrol.report  # noqa: F401

        fig = Figure(figsize=(1, 1))
        FigureCanvasAgg(fig)
        fig.subplots().set_title("t [h]")
        fig.canvas.draw()


class _StopRequest:
    """Stop requests before the loop exists (a signal during set-up) and after."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._loop: ControlLoop | None = None

    def __call__(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if self._loop is not None:
            self._loop.request_stop(reason)

    def attach(self, loop: ControlLoop) -> None:
        self._loop = loop
        if self.reason is not None:
            loop.request_stop(self.reason)


def _close_within(historian: EmbeddedHistorian, timeout_s: float) -> str | None:
    """Close ``historian`` waiting at most ``timeout_s``; what went wrong, or None."""
    try:
        historian.close(timeout_s=timeout_s)
    except HistorianError:
        error, stored = historian.failure_cause or historian.last_error, historian.stored
        lost = historian.abandon()
        return (
            f"the historian could not store {lost} records within {timeout_s:g} s "
            f"({error}); {stored} records stored"
        )
    return None


def _close_mirror(mirror: MirrorHistorian, timeout_s: float) -> dict[str, Any]:
    """Close the mirror (it delivers what it can); its delivery counts for the KPIs."""
    error = ""
    try:
        mirror.close(timeout_s=timeout_s)
    except Exception as exc:  # what is not delivered stays in its buffer file
        error = f"{type(exc).__name__}: {exc}"
    out: dict[str, Any] = {
        "mirror_delivered_points": mirror.delivered_points,
        "mirror_pending_points": mirror.pending_points,
    }
    if error:
        out["mirror_error"] = error
    return out


def _stored_up_to_h(path: Path) -> float:
    """The latest process time (h) of any record stored in the historian file at ``path``."""
    try:
        records = read_records(path)
    except Exception:  # an unreadable file stored nothing usable
        return 0.0
    return max((r.t_h for r in records), default=0.0)


def _outcome(
    summary: RunSummary, signum: int | None, store_error: str | None
) -> tuple[RunState, str]:
    """The run's end state and its reason, from what the loop and the historian said."""
    if store_error is not None:
        return "failed", store_error
    if summary.stopped is not None:
        return ("interrupted" if signum is not None else "failed"), summary.stopped
    if summary.readings == 0 and summary.ticks > 0:
        return "failed", (
            f"no measurement ever arrived from the plant ({summary.plant_reads_failed} of "
            f"{summary.ticks} reads failed)"
        )
    return "completed", ""


def _exit_code(state: RunState, signum: int | None, *, oracle_failed: bool) -> int:
    if state == "interrupted" and signum is not None:
        return signal_exit_code(signum)
    if state != "completed" or oracle_failed:
        return 1
    return 0


def _finish_run(
    run: ResolvedRun,
    scenario: Scenario,
    sim: SimulatedPlant,
    summary: RunSummary,
    run_dir: Path,
    *,
    speed_up: float,
    report: bool,
    oracle: bool,
) -> RunResult:
    """KPIs (with the oracle's, when asked) and report of what ran (read back from the
    records stored)."""
    model, recipe = run.model, run.recipe
    truth = sim.truth()
    p_true = sim.p_true
    tracked = {n: float(p_true[model.index(n)]) for n in run.ekf.tracked_names}
    records = read_records(run_dir / "records.sqlite")
    ident = run.spec.identity
    kpis: dict[str, Any] = {
        "pack": run.spec.pack.name,
        "model": model.name,
        "scenario": scenario.name,
        "controller": run.spec.controller,
        "seed": run.spec.seed,
        "run_id": ident.run_id,
        "duration_h": summary.t_end_h,
        "wall_time_s": summary.wall_s,
        "speed_up_achieved": summary.t_end_h * 3600.0 / max(summary.wall_s, 1e-9),
        "records_stored": len(records),
        "records_up_to_h": max((r.t_h for r in records), default=0.0),
        "plant_reads_failed": summary.plant_reads_failed,
        "plant_reads_failed_percent": 100.0 * summary.plant_reads_failed / max(summary.ticks, 1),
    }
    kpis.update(
        run_kpis(
            records,
            model=model,
            limits=recipe.limits,
            truth=(truth.t, truth.x),
            true_parameters=tracked,
            do_min=run.kpis.minimum.get("DO"),
        )
    )
    _product_kpis(kpis, run, truth.x[-1], truth.u[-1], p_true)
    if math.isfinite(speed_up):
        kpis.update({f"jitter_{k}": v for k, v in summary.jitter().items()})
    write_json(run_dir / "kpis.json", kpis)  # the batch's, whatever the oracle does
    if oracle:
        _add_oracle(kpis, run, sim, run_dir / "kpis.json")
    report_path = None
    if report:
        report_path = _write_report(run_dir, records, run, kpis, truth, tracked, scenario)
    return RunResult(run_dir, kpis, summary, truth.t, truth.x, report_path)


def _add_oracle(kpis: dict[str, Any], run: ResolvedRun, sim: SimulatedPlant, path: Path) -> None:
    """Add the oracle's KPIs and rewrite ``path``; a failed oracle is noted in the KPIs as
    ``oracle_error`` and keeps the batch's."""
    try:
        value, slack = oracle_product(run, sim.p_true, sim.truth().x[0])
    except Exception as exc:  # the batch's KPIs are worth keeping whatever the oracle does
        kpis["oracle_error"] = f"{type(exc).__name__}: {exc}"
    else:
        kpis["oracle_product"] = value
        kpis["oracle_slack_max"] = slack
        kpis["product_vs_oracle"] = kpis["final_product"] / value
    write_json(path, kpis)


def _product_kpis(
    kpis: dict[str, Any], run: ResolvedRun, x: np.ndarray, u: np.ndarray, p: np.ndarray
) -> None:
    name = run.kpis.product
    kpis.pop("final_product_g", None)  # P V by convention; the pack names its product
    kpis["final_product"] = product_value(run, x, u, p)
    kpis["product"] = name or ""
    if name is not None:
        model = run.model
        group = model.states if model.kind(name) == "state" else model.outputs
        unit = group[model.index(name)].unit
        kpis["product_unit"] = unit
        if unit == "g":
            kpis["final_product_g"] = kpis["final_product"]


def _write_report(
    run_dir: Path,
    records: list[Any],
    run: ResolvedRun,
    kpis: Mapping[str, Any],
    truth: Any,
    tracked: Mapping[str, float],
    scenario: Scenario,
) -> Path:
    from bpcontrol.report import write_report

    model, recipe = run.model, run.recipe
    bounds = {name: (value, math.inf) for name, value in run.kpis.minimum.items()}
    return write_report(
        run_dir / "report.html",
        records=records,
        model=model,
        limits=recipe.limits,
        kpis=kpis,
        title=f"{recipe.name}: {scenario.name} ({run.spec.controller}, seed {run.spec.seed})",
        truth=(truth.t, truth.x, truth.u),
        true_parameters=tracked,
        state_bounds=bounds,
        notes=(f"run folder {run_dir}", f"pack {run.spec.pack.name}", f"recipe {recipe.source}"),
    )


def oracle_product(
    run: ResolvedRun, p_true: np.ndarray, x0: np.ndarray, *, intervals: int = 60
) -> tuple[float, float]:
    """Product of the whole-batch open-loop optimum computed with the plant's parameters,
    and the largest soft-bound slack that optimum needed (0: no bound softened).

    IPOPT solves of the pack's economic problem over the whole batch (``intervals`` equal
    intervals; see :func:`bpcontrol.control_spec.oracle_configs`), each applied open loop
    to the true model (CVODES); the best true product wins. No real-time limit. Each
    problem is solved twice: from the recipe, and by continuation from the optimum of the
    same problem with its soft bounds at the nodes only (measured on do-mpc's batch
    reactor: from the recipe, IPOPT stopped feeding at 70 h, 1.434 mol/L against 1.681
    with the continuation, whose start holds X_s on its bound).
    """
    if run.nmpc is None:
        raise ScenarioError(f"{run.spec.pack.source('pack')}: the oracle needs a control.toml")
    model, recipe = run.model, run.recipe
    best: tuple[float, float] | None = None
    message = ""
    estimate = StateEstimate(x0, p_true)
    configs = oracle_configs(run.nmpc, recipe.duration_h, intervals=intervals)
    step = model.to_casadi().integrator(configs[0].dt_h)  # every config: the same intervals
    for cfg in configs:
        starts = [cfg]
        nodes = _solve_open_loop(replace(cfg, bounds_between_nodes=False), x0, estimate, run)
        if nodes.status.usable:
            starts.append(replace(cfg, initial_inputs=_held(nodes.U.copy(), cfg.dt_h)))
        for start in starts:
            plan = _solve_open_loop(start, x0, estimate, run)
            if not plan.status.usable:
                message = plan.message
                continue
            x = np.asarray(x0, dtype=float)
            for k in range(intervals):
                x = np.asarray(step(x, plan.U[k], p_true)).ravel()
            value = product_value(run, x, plan.U[-1], p_true)
            if best is None or value > best[0]:
                best = (value, float(plan.slack_max))
    if best is None:
        raise RuntimeError(f"oracle solve failed: {message}")
    return best


def _solve_open_loop(cfg: Any, x0: np.ndarray, estimate: StateEstimate, run: ResolvedRun) -> Any:
    """One whole-batch plan of ``cfg`` from ``x0`` (the oracle's solve)."""
    solver = NMPC(run.model, cfg)
    plan, _ = solver.step(solver.init(x0, run.recipe.fallback(0.0)), estimate, 0.0)
    return plan


def _held(U: np.ndarray, dt_h: float) -> Callable[[float], np.ndarray]:
    """The inputs ``U`` (one row per interval of ``dt_h`` h) held piecewise constant."""

    def inputs(t_h: float) -> np.ndarray:
        return U[min(max(int(t_h / dt_h + 1e-9), 0), len(U) - 1)]

    return inputs
