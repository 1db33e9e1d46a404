"""A fit handed over to the loop: does the fitted pack make more product (issue 18)?

The must-show: a pack fitted from three recorded batches of a mismatched plant, run closed
loop on that plant, makes more product than the unfitted pack on the same plant and seed.

1. Data: three simulated batches (``hil.synthetic.generate``, seeded) of the pack's plant:
   the pack's model with the ``[parameter_factors]`` of its ``plant.toml``, the recipe's
   charge and fallback schedule with the feed input (``--feed-input``) scaled by each of
   ``--feed-factors`` (clipped to the recipe's limits), recorded every ``--period-h`` h by
   the pack's instruments (``pack.toml`` ``[sensors]``: online probes with their sigma,
   offline assays with their floor, relative error, sampling interval and delay).
2. Fit: the parameters the plant factors change (or ``--params``), shared by the three
   batches, ``--starts`` starts (3, seed 0: ``bpcontrol fit``'s default; the first at the
   pack's values), the pack's sensor error models (as ``bpcontrol fit --pack`` takes
   them), by default ``integrator="auto"`` (for these stiff models, the DO settling in
   seconds: single shooting with Radau IIA steps on an error-controlled mesh); the result
   written as a hand-over file (``bpcontrol fit --out`` format, :mod:`services.fitting._toml`).
3. Loop: ``bpcontrol run --pack DIR --seed S --json`` as a subprocess, without and with
   ``--parameters fit.toml`` (the CLI's hand-over path: the controller's and estimator's
   model take the fitted values, ``hil.runner.same_plant`` keeps the plant where
   ``plant.toml`` puts it). The product is the run's ``final_product`` KPI: the pack's
   ``[kpis] product`` evaluated on the plant's true end state with the true parameters.
   One pair of runs per seed of ``--seeds`` (default 1: the must-show; more seeds show the
   seed-to-seed spread of the ratio); ``--oracle`` adds the whole-batch optimum with the
   plant's true parameters to the first unfitted run (``bpcontrol run --oracle``).

Prints the fitted values against the plant's truth, the fit's wall time, both runs'
products and the ratio fitted / unfitted, and the 1-min load average before and after, as
a markdown block for benchmarks/RESULTS.md. Everything is written in a temporary folder
(``--keep DIR``: there instead, kept).

    .venv/bin/python benchmarks/bench_fit_handover.py [--pack yeast_fedbatch] [--seeds 1,2,3] \
        [--oracle] [--plant-factors Y_xs_ox=1.2] [--params qO_max,qS_max] \
        [--feed-factors 0.6,1.0,1.4] [--period-h 0.25] [--starts 3] [--integrator auto] \
        [--steps 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats  # noqa: F401  (imported before timing: the fit imports it lazily)
from _machine import cpu_model  # benchmarks/ is on sys.path when run as a script
from bench_fit import to_batch

from bpcontrol.pack import load_pack
from bpcontrol.runspec import ResolvedRun, resolve, spec_for
from hil.runner import parse_scenario
from hil.synthetic import OfflineAssays, SyntheticRun, generate
from services.fitting import ErrorModel, FitOptions, FitResult, fit, result_toml
from services.historian.readback import BatchData


def pack_dir(name: str) -> Path:
    """A pack folder: ``name`` itself when it is one, else the shipped pack of that name."""
    path = Path(name)
    if path.is_dir():
        return path.resolve()
    shipped = Path(str(resources.files("bpcontrol") / "data" / "packs" / name))
    if not shipped.is_dir():
        raise SystemExit(f"--pack {name}: neither a folder nor a shipped pack")
    return shipped


def with_plant_factors(folder: Path, text: str, work: Path) -> Path:
    """A copy of pack ``folder`` in ``work`` whose ``plant.toml`` has the parameter factors
    ``text`` (``name=factor,...``) and nothing else: a plant mismatched where asked."""
    factors = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--plant-factors {text}: {item!r} is not name=factor")
        factors[name.strip()] = float(value)
    copy = work / f"{folder.name}-plant"
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    lines = [
        f"# {folder.name} with its plant's parameter factors from --plant-factors {text}",
        'name = "plant-factors"',
        "[parameter_factors]",
        *(f"{k} = {v!r}" for k, v in factors.items()),
    ]
    (copy / "plant.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return copy


def plant_factors(run: ResolvedRun) -> dict[str, float]:
    """The ``[parameter_factors]`` of the pack's ``plant.toml`` (empty: no plant file)."""
    pack = run.spec.pack
    if pack.plant is None:
        return {}
    sc = parse_scenario(pack.plant, source=pack.source("plant"))
    return {k: float(v) for k, v in sc.parameter_factors.items()}


def _instruments(run: ResolvedRun) -> tuple[dict[str, float], OfflineAssays | None]:
    """The pack's online probes (output -> sigma) and its offline assays, as
    :mod:`hil.synthetic` records them (one interval, delay and relative error for all)."""
    online = {i.output: i.sigma for i in run.instruments if i.kind == "online"}
    offline = [i for i in run.instruments if i.kind == "offline"]
    if not offline:
        return online, None
    shared = {(i.interval_h, i.delay_h, i.relative_sigma) for i in offline}
    if len(shared) > 1:
        raise SystemExit(
            f"{run.spec.pack.source('pack')}: the offline sensors differ in interval, delay "
            "or relative error; hil.synthetic draws one schedule for all of them"
        )
    interval, delay, rel = shared.pop()
    assays = OfflineAssays(
        outputs=tuple(i.output for i in offline),
        interval_h=interval,
        delay_h=delay,
        relative_sigma=rel,
        absolute_sigma={i.output: i.sigma for i in offline},
    )
    return online, assays


def _feed_schedule(run: ResolvedRun, feed: str, factor: float) -> Callable[[float], np.ndarray]:
    """The recipe's fallback schedule with input ``feed`` scaled by ``factor`` (clipped)."""
    recipe = run.recipe
    k = run.model.index(feed)
    lim = recipe.limits.get(feed)

    def u(t_h: float) -> np.ndarray:
        out = recipe.fallback(t_h)
        value = out[k] * factor
        out[k] = value if lim is None else min(max(value, lim.lower), lim.upper)
        return out

    return u


def recorded_batches(
    run: ResolvedRun,
    factors: dict[str, float],
    feed: str,
    feed_factors: Sequence[float],
    period_h: float,
    seed0: int = 41,
) -> list[BatchData]:
    """One recorded batch per feed factor (module docstring), as the read-back gives them."""
    model = run.model
    online, offline = _instruments(run)
    hours = run.recipe.duration_h
    n = round(hours / period_h)
    if abs(n * period_h - hours) > 1e-9:
        raise SystemExit(f"--period-h {period_h}: not a whole fraction of the {hours:g} h batch")
    out = []
    for k, f in enumerate(feed_factors):
        syn = SyntheticRun(
            hours=hours,
            inputs=_feed_schedule(run, feed, f),
            period_h=period_h,
            parameter_factors=factors,
            x0=dict(run.recipe.initial),
            online=online,
            offline=offline,
        )
        data = generate(model, syn, seed=seed0 + k)
        out.append(
            to_batch(
                data,
                f"B{k + 1}",
                origin=f"synthetic B{k + 1} (feed x{f:g})",
                initial_state=dict(run.recipe.initial),
            )
        )
    return out


def error_models(run: ResolvedRun) -> dict[str, ErrorModel]:
    """The pack's sensor error models, as ``bpcontrol fit --pack`` takes them."""
    return {s.output: ErrorModel(s.sigma, s.relative_sigma) for s in run.ekf.sensors}


@dataclass(frozen=True)
class LoopRun:
    """One ``bpcontrol run``: its command, KPIs and wall time (s)."""

    argv: list[str]
    kpis: dict[str, Any]
    wall_s: float


def closed_loop(
    pack: Path, seed: int, out: Path, parameters: Path | None, *, oracle: bool = False
) -> LoopRun:
    """``bpcontrol run --pack PACK --seed SEED --json`` (with ``--parameters``, with
    ``--oracle``), in a subprocess; its KPIs."""
    exe = Path(sys.executable).with_name("bpcontrol")
    argv = [str(exe), "run", "--pack", str(pack), "--seed", str(seed), "--out", str(out)]
    if parameters is not None:
        argv += ["--parameters", str(parameters)]
    if oracle:
        argv.append("--oracle")
    argv.append("--json")
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise SystemExit(f"{shlex.join(argv)}: exit {proc.returncode}\n{tail}")
    start = proc.stdout.find("{")
    return LoopRun(argv, json.loads(proc.stdout[start:]), wall)


def _fmt(v: Any, spec: str = ".4g") -> str:
    return format(v, spec) if isinstance(v, int | float) and math.isfinite(v) else str(v)


def _product(lr: LoopRun) -> float:
    return float(lr.kpis["final_product"])


def report(
    args: argparse.Namespace,
    run: ResolvedRun,
    factors: dict[str, float],
    batches: list[BatchData],
    r: FitResult,
    fit_wall: float,
    loops: list[tuple[int, LoopRun, LoopRun]],
    loads: tuple[tuple[float, float, float], tuple[float, float, float]],
) -> str:
    """The markdown block for RESULTS.md."""
    model = run.model
    unit = loops[0][1].kpis.get("product_unit", "")
    n_read = sum(len(s) for b in batches for s in b.measurements.values())
    cmd = shlex.join([".venv/bin/python", "benchmarks/bench_fit_handover.py", *sys.argv[1:]])
    plant = ", ".join(f"{k} x{v:g}" for k, v in factors.items()) or "the model"
    source = ", written by --plant-factors" if args.plant_factors else ""
    (l0, l1) = loads
    lines = [
        f"### Hand-over: `{args.pack}` fitted from 3 batches of its plant, then run closed loop "
        "(issue 18)",
        "",
        "```bash",
        cmd,
        "```",
        "",
        f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"load average {l0[0]:.2f} / {l0[1]:.2f} / {l0[2]:.2f} at the start, "
        f"{l1[0]:.2f} / {l1[1]:.2f} / {l1[2]:.2f} at the end.",
        "",
        f"Plant: {plant} (`plant.toml`{source}). Data: {len(batches)} batches x "
        f"{run.recipe.duration_h:g} h, the recipe's schedule with {args.feed_input} x "
        f"{', '.join(f'{f:g}' for f in args.feed_factors)}, readings every {args.period_h:g} h, "
        f"{n_read} readings (the pack's instruments and noise), seeds "
        f"{args.data_seed}-{args.data_seed + len(batches) - 1}.",
        "",
        f"Fit: {', '.join(r.parameters)}, {args.starts} start(s); integrator {r.integrator}; "
        f"{r.status}, {r.iterations} iterations, converged {r.converged}; "
        f"**wall {fit_wall:.1f} s** (build {r.timing.build:.1f}, simulation "
        f"{r.timing.simulation:.1f}, sensitivities {r.timing.sensitivities:.1f} s); residual "
        f"variance {r.residual_variance:.3g}; systematic residuals: "
        f"{', '.join(c.sensor for c in r.systematic) or 'none'}.",
        "",
        "Starts (start -> status, objective, iterations, wall): "
        + "; ".join(
            f"({', '.join(f'{v:.4g}' for v in s.start)}) -> {s.status}, {s.objective:.6g}, "
            f"{s.iterations}, {s.wall_s:.1f} s"
            for s in r.starts
        )
        + ".",
        "",
        "| parameter | pack's model | plant (truth) | fitted +- SE | fitted / truth |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in r.parameters:
        nominal = float(model.p0[model.index(p)])
        truth = nominal * factors.get(p, 1.0)
        e = r.estimate(p)
        lines.append(
            f"| {p} | {nominal:.4g} | {truth:.4g} | {e.value:.4g} +- {e.se:.2g} "
            f"| {e.value / truth:.4f} |"
        )
    tracked = ", ".join(f"{t.name} (sigma0 {t.sigma0:g})" for t in run.ekf.tracked)
    lines += [
        "",
        f"Closed loop: `bpcontrol run --pack {args.pack} --seed S` (EKF + NMPC) without and "
        "with `--parameters fit.toml`, the same plant and seed; the pack's EKF tracks "
        f"{tracked or 'no parameters'} in both.",
        "",
        "| seed | product unfitted | product fitted | fitted / unfitted | DO below min "
        "(% of batch) unfitted / fitted | loop wall unfitted / fitted |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []
    for seed, bare, fitted in loops:
        p0, p1 = _product(bare), _product(fitted)
        ratios.append(p1 / p0)
        lo = [
            _fmt(x.kpis.get("time_do_below_min_percent", math.nan), ".2f") for x in (bare, fitted)
        ]
        with_oracle = " (with the oracle)" if "oracle_product" in bare.kpis else ""
        lines.append(
            f"| {seed} | {p0:.2f} {unit} | {p1:.2f} {unit} | **{p1 / p0:.4f}** "
            f"| {lo[0]} / {lo[1]} | {bare.wall_s:.1f}{with_oracle} / {fitted.wall_s:.1f} s |"
        )
    more = sum(q > 1.0 for q in ratios)
    lines += [
        "",
        f"Fitted / unfitted: {', '.join(f'{q:.4f}' for q in ratios)} (the fitted pack makes "
        f"more product on {more} of {len(ratios)} seed(s)).",
    ]
    oracle = loops[0][1].kpis.get("oracle_product")
    if oracle is not None:
        lines.append(
            f"Oracle (the whole-batch optimum with the plant's true parameters, seed "
            f"{loops[0][0]}'s run): {_fmt(oracle, '.2f')} {unit}."
        )
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pack", default="yeast_fedbatch", help="shipped pack name or folder")
    ap.add_argument(
        "--seeds", type=_ints, default=[1], help="the closed loop's plant seeds (comma list)"
    )
    ap.add_argument("--oracle", action="store_true", help="also the oracle (first seed's run)")
    ap.add_argument(
        "--plant-factors",
        default="",
        help="name=factor,... : the plant of a copy of the pack (default: its plant.toml)",
    )
    ap.add_argument("--params", default="", help="comma list (default: the plant's factors)")
    ap.add_argument("--feed-input", default="F")
    ap.add_argument("--feed-factors", type=_floats, default=[0.6, 1.0, 1.4])
    ap.add_argument("--period-h", type=float, default=0.25, help="recording period (h)")
    ap.add_argument("--data-seed", type=int, default=41, help="seed of the first batch")
    ap.add_argument("--starts", type=int, default=3, help="multi-start (bpcontrol fit's 3)")
    ap.add_argument("--integrator", default="auto")
    ap.add_argument("--steps", type=int, default=4, help="RK4 steps or collocation elements")
    ap.add_argument("--keep", type=Path, default=None, help="write here (kept), not in /tmp")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-handover-") as tmp:
        work = args.keep if args.keep is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        folder = pack_dir(args.pack)
        if args.plant_factors:
            folder = with_plant_factors(folder, args.plant_factors, work)
        pack = load_pack(folder)
        run = resolve(spec_for(pack, controller="recipe"))
        factors = plant_factors(run)
        params = [p for p in args.params.split(",") if p] or list(factors)
        if not params:
            raise SystemExit(f"{folder}: the plant has no parameter factors; give --params")
        if args.feed_input not in run.model.input_names:
            raise SystemExit(f"--feed-input {args.feed_input}: not an input of {run.model.name}")
        load0 = os.getloadavg()
        batches = recorded_batches(
            run, factors, args.feed_input, args.feed_factors, args.period_h, args.data_seed
        )
        options = FitOptions(
            n_starts=args.starts, integrator=args.integrator, steps_per_interval=args.steps
        )
        t0 = time.perf_counter()
        r = fit(run.model, batches, params, errors=error_models(run), options=options)
        fit_wall = time.perf_counter() - t0
        print(f"fit: {r.status}, converged {r.converged}, {fit_wall:.1f} s", file=sys.stderr)
        result_file = work / "fit.toml"
        result_file.write_text(
            result_toml(r, data="synthetic (bench_fit_handover.py)", pack=str(folder)),
            encoding="utf-8",
        )
        loops = []
        for k, seed in enumerate(args.seeds):
            bare = closed_loop(folder, seed, work / "runs", None, oracle=args.oracle and k == 0)
            fitted = closed_loop(folder, seed, work / "runs", result_file)
            loops.append((seed, bare, fitted))
            print(
                f"seed {seed}: unfitted {_product(bare):.4f} ({bare.wall_s:.0f} s), "
                f"fitted {_product(fitted):.4f} ({fitted.wall_s:.0f} s)",
                file=sys.stderr,
            )
        load1 = os.getloadavg()
        text = report(args, run, factors, batches, r, fit_wall, loops, (load0, load1))
    print(text)


if __name__ == "__main__":
    main()
