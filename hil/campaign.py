"""Campaigns: run a suite's scenarios on an executor, results streaming back as they end.

:func:`run_scenario` is a pure function of a :class:`hil.suite.ScenarioSpec` (its seed
included): it resolves the pack, perturbs the plant, wraps faults and broken controllers
around the real loop, runs the batch (:func:`hil.runner.run_batch`) into its own run
folder and evaluates the criteria. Wall-time figures aside (solve times, the wall time),
the same spec gives the same KPIs wherever it runs, provided no solve misses its deadline
(give ``deadline_s`` room on a loaded machine).

Executors: :class:`LocalPool` (a process pool on this machine, the default) and
:class:`DaskExecutor` (``dask.distributed``: a scheduler's address, or a
``LocalCluster`` of worker processes when none is given). Both yield outcomes in the
order they finish.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from bpcontrol.interfaces import Controller, Plant
from bpcontrol.runspec import ResolvedRun
from bpcontrol.supervisor import SetpointLimits
from hil.criteria import CriterionResult, evaluate, measure
from hil.suite import FaultSpec, ScenarioSpec

_log = logging.getLogger(__name__)

__all__ = [
    "WALL_TIME_KPIS",
    "DaskExecutor",
    "Executor",
    "LocalPool",
    "ScenarioOutcome",
    "deterministic_kpis",
    "make_executor",
    "prepare_run",
    "run_campaign",
    "run_scenario",
]

WALL_TIME_KPIS = frozenset(
    {
        "run_id",
        "wall_time_s",
        "speed_up_achieved",
        "solve_time_median_s",
        "solve_time_max_s",
        "historian_outage_restart_s",
        "gateway_confirm_median_ms",
    }
)
"""KPIs that depend on the machine or the moment, not on the spec and seed."""
_NEVER = 10**9  # a FlakyPlant failure period that never comes round


@dataclass(frozen=True, kw_only=True)
class ScenarioOutcome:
    """What one scenario produced (picklable: it travels back from workers)."""

    name: str
    pack: str
    seed: int
    passed: bool
    criteria: tuple[CriterionResult, ...] = ()
    kpis: Mapping[str, Any] = field(default_factory=dict)
    measures: Mapping[str, float] = field(default_factory=dict)
    state: str = ""
    reason: str = ""
    error: str = ""
    run_dir: str = ""
    report: str = ""
    wall_s: float = math.nan
    worker: str = ""
    figure: str = ""
    """The scenario's figure for the suite report (a PNG data URI; empty: none was drawn)."""

    def failed_criteria(self) -> list[CriterionResult]:
        """The criteria that failed."""
        return [c for c in self.criteria if not c.passed]

    def summary_line(self) -> str:
        """One line: PASS/FAIL, the name, what failed."""
        if self.passed:
            return f"PASS {self.name} (seed {self.seed}, {self.wall_s:.1f} s)"
        why = self.error or "; ".join(c.message for c in self.failed_criteria())
        if not why and self.state != "completed":
            why = f"run {self.state}: {self.reason}"
        return f"FAIL {self.name} (seed {self.seed}): {why}"


def deterministic_kpis(kpis: Mapping[str, Any]) -> dict[str, Any]:
    """The KPIs that are a function of the spec and seed (wall-time figures dropped)."""
    return {
        k: v for k, v in kpis.items() if k not in WALL_TIME_KPIS and not k.startswith("jitter_")
    }


def prepare_run(spec: ScenarioSpec) -> tuple[ResolvedRun, Mapping[str, SetpointLimits]]:
    """The resolved run of ``spec`` (deadline, permissive supervisor) and the pack's own
    setpoint limits (what the criteria hold the applied setpoints to)."""
    from bpcontrol.runspec import resolve, spec_for

    run = resolve(spec_for(spec.pack, seed=spec.seed, controller=spec.controller))  # type: ignore[arg-type]
    limits = run.recipe.limits
    if spec.deadline_s is not None:  # the loop's deadline and the solver's own wall limit
        nmpc = run.nmpc if run.nmpc is None else replace(run.nmpc, time_limit_s=spec.deadline_s)
        run = replace(run, deadline_s=spec.deadline_s, nmpc=nmpc)
    broken = spec.broken
    if broken is not None and broken.options.get("permissive_supervisor"):
        wide = {
            name: replace(
                lim,
                lower=run.model.inputs[run.model.index(name)].lower,
                upper=run.model.inputs[run.model.index(name)].upper,
                rate_per_h=lim.rate_per_h * 1e6,
            )
            for name, lim in limits.items()
        }
        run = replace(run, recipe=replace(run.recipe, limits=wide))
    return run, limits


def _controller_wrap(
    spec: ScenarioSpec, run: ResolvedRun, limits: Mapping[str, SetpointLimits]
) -> Callable[[Controller], Controller] | None:
    from hil.broken import broken_controller
    from hil.faults import FaultyController

    layers: list[Callable[[Controller], Controller]] = []
    if spec.broken is not None:
        layers.append(
            broken_controller(
                spec.broken.kind,
                spec.broken.options,
                start_h=spec.broken.start_h,
                input_names=run.model.input_names,
                limits=limits,
            )
        )
    for fault in spec.faults:
        if fault.kind.startswith("controller_"):
            kind = fault.kind.removeprefix("controller_")
            hang = float(fault.options.get("hang_s", 5.0))

            def layer(
                c: Controller, f: FaultSpec = fault, k: str = kind, h: float = hang
            ) -> Controller:
                return FaultyController(c, k, f.start_h, f.end_h, hang_s=h)  # type: ignore[arg-type]

            layers.append(layer)
    if not layers:
        return None

    def wrap(controller: Controller) -> Controller:
        for layer_ in layers:
            controller = layer_(controller)
        return controller

    return wrap


def _uses_rig(spec: ScenarioSpec) -> bool:
    from hil.rig import RIG_FAULT_KINDS

    return bool(
        spec.sensors
        or spec.actuators
        or spec.base_layer
        or any(f.kind in RIG_FAULT_KINDS for f in spec.faults)
    )


def _rig_layer(
    spec: ScenarioSpec, run: ResolvedRun, made: list[Any]
) -> Callable[[Plant], Plant] | None:
    """The rig around the true plant (innermost: the network faults sit outside it); the
    rig made is appended to ``made`` so its figures can be read after the run."""
    from hil.plant import SimulatedPlant
    from hil.rig import BaseLayer, RigPlant

    if not _uses_rig(spec):
        return None
    model = run.model
    volume = 1.0
    if "V" in model.state_names:
        volume = float(run.recipe.initial_state(model)[model.index("V")])
    faults = [
        f
        for f in spec.faults
        if not f.kind.startswith("controller_")
        and f.kind not in _FLAKY_KINDS
        and f.kind not in ("historian_outage", "crash_restart")
    ]

    def layer(plant: Plant) -> Plant:
        assert isinstance(plant, SimulatedPlant)
        base, cascade = None, None
        b = spec.base_layer or {}
        if "do_percent" in b:
            cascade = (float(b["do_percent"]), str(b["do_input"]))
        if "temperature_C" in b or "ph" in b:
            base = BaseLayer(
                temperature_C=b.get("temperature_C"),
                ph=b.get("ph"),
                cooling_W=b.get("cooling_W", 500.0),
                heating_W=b.get("heating_W", 150.0),
                volume_L=volume,
            )
        rig = RigPlant(
            plant,
            seed=spec.seed,
            sensors=spec.sensors,
            actuators=spec.actuators,
            faults=faults,
            base_layer=base,
            do_cascade=cascade,
        )
        made.append(rig)
        return rig

    return layer


def _crash(spec: ScenarioSpec) -> tuple[float, float] | None:
    """``(at_h, down_h)`` of the scenario's crash_restart fault (None: it has none)."""
    for f in spec.faults:
        if f.kind == "crash_restart":
            return f.start_h, f.end_h - f.start_h
    return None


_FLAKY_KINDS = frozenset(
    {"network_loss", "read_failures", "write_failures", "sensor_garbage", "device_clamp"}
)


def _plant_wrap(
    spec: ScenarioSpec, *inner: Callable[[Plant], Plant] | None
) -> Callable[[Plant], Plant] | None:
    """The plant's layers, innermost first: ``inner`` (the rig, the transport), then the
    link faults (on the controller's side of the network)."""
    from hil.faults import FlakyPlant

    layers: list[Callable[[Plant], Plant]] = [layer for layer in inner if layer is not None]
    for f in spec.faults:
        if f.kind not in _FLAKY_KINDS:
            continue
        reads, writes, garbage, caps = _NEVER, _NEVER, None, {}
        if f.kind == "network_loss":
            reads, writes = 1, 1
        elif f.kind == "read_failures":
            reads = int(f.options["every"])
        elif f.kind == "write_failures":
            writes = int(f.options["every"])
        elif f.kind == "sensor_garbage":
            garbage = str(f.options["sensor"])
        elif f.kind == "device_clamp":
            caps = dict(f.options["max"])

        def layer(
            p: Plant,
            f: FaultSpec = f,
            r: int = reads,
            w: int = writes,
            g: str | None = garbage,
            m: dict[str, float] = caps,
        ) -> Plant:
            return FlakyPlant(
                p, f.start_h, f.end_h, read_fail_every=r, apply_fail_every=w,
                garbage_sensor=g, device_max=m,
            )  # fmt: skip

        layers.append(layer)
    if not layers:
        return None

    def wrap(plant: Plant) -> Plant:
        for layer_ in layers:
            plant = layer_(plant)
        return plant

    return wrap


def _plant_scenario(spec: ScenarioSpec, run: ResolvedRun) -> Any:
    """The plant side of ``spec`` with its plant faults as scheduled parameter changes."""
    from hil.rig import parameter_changes

    changes = parameter_changes(spec.faults, run.model.parameter_names)
    return replace(spec.plant, parameter_changes=changes) if changes else spec.plant


def _truth_do(run: ResolvedRun, result: Any) -> tuple[Any, Any, float] | None:
    """(t, true DO, the pack's DO minimum) of a run, for the DO recovery measure."""
    minimum = run.kpis.minimum.get("DO")
    if minimum is None or "DO" not in run.model.state_names:
        return None
    return result.truth_t, result.truth_x[:, run.model.index("DO")], float(minimum)


def run_scenario(spec: ScenarioSpec, out_root: str, report: bool = False) -> ScenarioOutcome:
    """Run one scenario into a fresh folder under ``out_root``; never raises for a run
    that fails (the outcome says why)."""
    from bpcontrol.records import RunIdentity
    from bpcontrol.run_status import write_json
    from hil.historian import RunHistorian
    from hil.runner import new_run_dir, run_batch
    from hil.transport import close as close_transport
    from hil.transport import kpis as transport_kpis
    from hil.transport import layer as transport_layer
    from services.historian import read_records

    start = time.perf_counter()
    worker = f"{os.uname().nodename}:{os.getpid()}"
    base: dict[str, Any] = {
        "name": spec.name,
        "pack": spec.pack,
        "seed": spec.seed,
        "worker": worker,
    }
    try:
        run, limits = prepare_run(spec)
        run_dir = new_run_dir(out_root, spec.name, spec.seed)
        ident = RunIdentity.start(
            site="hil", reactor=spec.name, batch_id=run_dir.name, run_id=run_dir.name
        )
        run = replace(run, spec=replace(run.spec, identity=ident))
        rigs: list[Any] = []
        network: dict[str, Any] = {}
        historian = RunHistorian(spec.historian, spec.faults, run_dir, ident)
        transport = transport_layer(spec.transport, run_dir, spec.speed_up, run, network)
        try:
            historian.start()
            result = run_batch(
                run,
                run_dir=run_dir,
                scenario=_plant_scenario(spec, run),
                duration_h=spec.duration_h,
                speed_up=spec.speed_up,
                wrap_controller=_controller_wrap(spec, run, limits),
                wrap_plant=_plant_wrap(spec, _rig_layer(spec, run, rigs), transport),
                oracle=spec.oracle,
                report=report,
                mirror=historian.mirror,
                progress=historian.progress if historian.outages else None,
                crash=_crash(spec),
            )
            historian.settle()
            result.kpis.update(transport_kpis(spec.transport, spec.speed_up, network))
        finally:
            close_transport(network)
            historian.close()
        if historian.enabled or spec.transport != "inprocess":  # InfluxDB's, the network's
            result.kpis.update(historian.kpis() if historian.enabled else {})
            write_json(run_dir / "kpis.json", result.kpis)
        if rigs:  # the rig's figures join the run's KPIs; its base layer's series a file
            result.kpis.update(rigs[0].kpis())
            write_json(run_dir / "kpis.json", result.kpis)
            write_json(run_dir / "rig.json", {"counts": rigs[0].counts, **rigs[0].series()})
        records = read_records(run_dir / "records.sqlite")
        measures = measure(
            kpis=result.kpis,
            records=records,
            limits=limits,
            records_emitted=result.summary.records,
            fault_start_h=spec.fault_start_h(),
            fault_end_h=spec.fault_end_h(),
            truth=_truth_do(run, result),
            historian_points=historian.points(records),
        )
        criteria = tuple(evaluate(spec.criteria, measures, result.kpis))
        figure = _figure(spec, run, result, records, limits)
    except Exception as exc:  # a scenario that cannot run fails; the campaign goes on
        return ScenarioOutcome(
            **base,
            passed=False,
            error=f"{type(exc).__name__}: {exc}",
            wall_s=time.perf_counter() - start,
        )
    passed = result.state == "completed" and all(c.passed for c in criteria)
    return ScenarioOutcome(
        **base,
        passed=passed,
        criteria=criteria,
        kpis=dict(result.kpis),
        measures=measures,
        state=result.state,
        reason=result.reason,
        run_dir=str(run_dir),
        report=str(result.report or ""),
        wall_s=time.perf_counter() - start,
        figure=figure,
    )


def _figure(
    spec: ScenarioSpec,
    run: ResolvedRun,
    result: Any,
    records: Any,
    limits: Mapping[str, SetpointLimits],
) -> str:
    """The scenario's figure (:mod:`hil.scenario_figure`); a figure that cannot be drawn is
    logged and left out, it never fails the scenario."""
    from hil.scenario_figure import figure_data, scenario_figure

    try:
        truth = _truth_do(run, result)
        data = figure_data(
            title=f"{spec.name} (seed {spec.seed})",
            records=records,
            limits=limits,
            faults=[(f.kind, f.start_h, f.end_h) for f in spec.faults],
            truth_t=result.truth_t if truth is None else truth[0],
            truth_do=None if truth is None else truth[1],
            do_minimum=None if truth is None else truth[2],
        )
        return scenario_figure(data)
    except Exception:
        _log.exception("scenario %s: its figure could not be drawn", spec.name)
        return ""


class Executor(Protocol):
    """Runs scenarios somewhere and yields their outcomes as they finish."""

    name: str

    def run(
        self, specs: Sequence[ScenarioSpec], out_root: str, report: bool
    ) -> Iterator[ScenarioOutcome]:
        """Submit every spec; yield outcomes in the order they finish."""
        ...

    def close(self) -> None:
        """Release the workers."""
        ...


def _exit_with_parent(parent_pid: int, poll_s: float = 1.0) -> None:
    """In a pool worker: exit when the campaign's process is gone (killed), so no worker
    runs on as an orphan."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class LocalPool:
    """A pool of ``workers`` processes on this machine (spawned: no forked solver state)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(os.cpu_count() or 1, 1)
        ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=ctx,
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )

    def run(
        self, specs: Sequence[ScenarioSpec], out_root: str, report: bool
    ) -> Iterator[ScenarioOutcome]:
        """Submit every spec; yield outcomes as they finish."""
        futures = [self._pool.submit(run_scenario, s, out_root, report) for s in specs]
        for future in as_completed(futures):
            yield future.result()

    def close(self) -> None:
        """Stop the pool's processes."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Dask distributed: the scheduler at ``address``, or a LocalCluster of ``workers``
    processes (one thread each) when no address is given."""

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        from distributed import Client, LocalCluster

        self._cluster: LocalCluster | None = None
        if address is None:
            self._cluster = LocalCluster(
                n_workers=workers or max(os.cpu_count() or 1, 1),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
            )
            self.client = Client(self._cluster)
        else:
            self.client = Client(address)
        self.address = str(self.client.scheduler.address if self.client.scheduler else address)

    def run(
        self, specs: Sequence[ScenarioSpec], out_root: str, report: bool
    ) -> Iterator[ScenarioOutcome]:
        """Submit every spec as a task (not cached: a rerun runs again); yield as done."""
        from distributed import as_completed as dask_completed

        futures = [
            self.client.submit(run_scenario, s, out_root, report, pure=False, retries=0)
            for s in specs
        ]
        for future in dask_completed(futures):
            outcome: ScenarioOutcome = future.result()
            yield outcome

    def close(self) -> None:
        """Close the client (and the LocalCluster this executor started)."""
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def make_executor(kind: str, *, scheduler: str | None, workers: int | None) -> Executor:
    """``local`` or ``dask`` (raises ValueError naming the option for anything else)."""
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if kind == "local":
        if scheduler is not None:
            raise ValueError("--scheduler needs --executor dask")
        return LocalPool(workers)
    if kind == "dask":
        return DaskExecutor(scheduler, workers)
    raise ValueError(f"--executor must be local or dask, got {kind!r}")


def run_campaign(
    specs: Sequence[ScenarioSpec],
    executor: Executor,
    *,
    out_root: str | Path,
    report: bool = False,
    on_outcome: Callable[[ScenarioOutcome, int, int], None] | None = None,
) -> list[ScenarioOutcome]:
    """Run every spec on ``executor``; ``on_outcome(outcome, done, total)`` as each ends.

    Returns the outcomes in the specs' order.
    """
    Path(out_root).mkdir(parents=True, exist_ok=True)
    done: dict[str, ScenarioOutcome] = {}
    for outcome in executor.run(list(specs), str(out_root), report):
        done[outcome.name] = outcome
        if on_outcome is not None:
            on_outcome(outcome, len(done), len(specs))
    return [done[s.name] for s in specs]
