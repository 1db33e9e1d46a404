"""Time one right-hand side + Jacobian evaluation of each built-in model: CasADi vs JAX.

For every model in ``models.available_models()`` that loads, the script times

single reactor (one point x, u, p):
  * ``casadi DM``       a casadi Function returning (f, df/dx, df/du, df/dp), DM inputs
  * ``casadi numpy``    the same Function called with NumPy arrays (conversion per call)
  * ``casadi no-op``    a Function with the same signature and output sparsity but no
                        arithmetic: the cost of the Python -> C call itself
  * ``jax``             ``JaxModel.f_and_jac`` (jitted), ``block_until_ready`` on the result
  * ``jax no-op``       a jitted function with the same signature and output shapes
batched over ``--batch`` reactors (each its own x, u, p):
  * ``casadi map serial`` / ``map openmp`` / ``map thread``  ``Function.map(N, ...)``;
                        openmp is skipped (and noted) where CasADi was built without it
  * ``jax vmap``        ``JaxModel.f_and_jac_batch`` (``jit(vmap(...))``)

Points are drawn uniformly inside the state and input bounds (seeded); parameters are the
nominal values jittered by +-10 % (clipped to their bounds). Before timing, CasADi and JAX
results are checked against each other. Each variant runs timeit-style: ``number`` calls per
repeat (calibrated so a repeat takes >= ``--min-time``), ``--repeats`` repeats, the variants
of a model taking turns within each repeat so that load from other processes falls on all
alike; median and 90th percentile of the per-call time are reported in microseconds.

Run:
    python benchmarks/bench_model_eval.py --repeats 50 --batch 1000 --json run1.json
    python benchmarks/bench_model_eval.py --merge run1.json run2.json run3.json
(``--merge`` prints the table of the median over runs of each variant's median and p90.)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import casadi as ca
import jax
import jax.numpy as jnp
import numpy as np
from _machine import cpu_model

from models import Model, available_models, load_model

jax.config.update("jax_enable_x64", True)

SEED = 20261124


# --- timing -------------------------------------------------------------------------
def calibrate(fn: Callable[[], Any], min_time: float) -> int:
    """Calls per repeat so that one repeat takes at least ``min_time`` seconds."""
    for _ in range(3):  # warm-up (first calls allocate, JAX may still compile)
        fn()
    number = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - t0 >= min_time:
            return number
        number *= 2


def measure(
    fns: list[Callable[[], Any]], repeats: int, min_time: float
) -> list[tuple[list[float], int]]:
    """Per-call times (microseconds) of each function over ``repeats`` repeats.

    The functions take turns within every repeat (in a rotating order), so that load from
    other processes on a shared machine falls on all of them alike rather than on one.
    Returns (samples, calls per repeat) for each function.
    """
    numbers = [calibrate(fn, min_time) for fn in fns]
    samples: list[list[float]] = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for k in range(len(fns)):
                i = (k + r) % len(fns)
                fn, number = fns[i], numbers[i]
                t0 = time.perf_counter()
                for _ in range(number):
                    fn()
                samples[i].append((time.perf_counter() - t0) / number * 1e6)
    finally:
        if gc_was_enabled:
            gc.enable()
    return list(zip(samples, numbers, strict=True))


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


# --- test points ----------------------------------------------------------------------
def sample_points(model: Model, n: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(n, nx), (n, nu), (n, np) points inside the bounds; parameters near nominal."""
    x_lo, x_hi = model.bounds("states")
    u_lo, u_hi = model.bounds("inputs")
    p_lo, p_hi = model.bounds("parameters")
    X = rng.uniform(x_lo, x_hi, size=(n, model.nx))
    U = rng.uniform(u_lo, u_hi, size=(n, model.nu))
    P = np.clip(model.p0 * rng.uniform(0.9, 1.1, size=(n, model.n_p)), p_lo, p_hi)
    return X, U, P


# --- functions under test -------------------------------------------------------------
def casadi_functions(model: Model) -> tuple[ca.Function, ca.Function]:
    """(f_and_jac, no-op): (x, u, p) -> (f, df/dx, df/du, df/dp), and the same signature
    and output sparsity with no arithmetic."""
    cm = model.to_casadi()
    outs = [
        cm.xdot,
        ca.jacobian(cm.xdot, cm.x),
        ca.jacobian(cm.xdot, cm.u),
        ca.jacobian(cm.xdot, cm.p),
    ]
    names_in, names_out = ["x", "u", "p"], ["f", "dfdx", "dfdu", "dfdp"]
    F = ca.Function(f"{model.name}_f_and_jac", [cm.x, cm.u, cm.p], outs, names_in, names_out)
    noop_outs = [ca.SX.zeros(o.sparsity()) for o in outs]
    noop = ca.Function(f"{model.name}_noop", [cm.x, cm.u, cm.p], noop_outs, names_in, names_out)
    return F, noop


def jax_noop(model: Model) -> Callable[..., Any]:
    nx, nu, n_p = model.nx, model.nu, model.n_p

    def noop(x: jax.Array, u: jax.Array, p: jax.Array) -> Any:
        z = x[0] * 0.0
        return x + z, (
            jnp.zeros((nx, nx)) + z,
            jnp.zeros((nx, nu)) + z,
            jnp.zeros((nx, n_p)) + z,
        )

    return jax.jit(noop)


def _casadi_batch_to_numpy(outs: Any, n: int, nx: int) -> list[np.ndarray]:
    """Mapped outputs (nx, k*n) -> (n, nx) and (n, nx, k)."""
    f = np.asarray(outs[0].full()).T
    jacs = [np.asarray(o.full()).reshape(nx, n, -1).transpose(1, 0, 2) for o in outs[1:]]
    return [f, *jacs]


def check_agreement(F: ca.Function, jx_batch: Callable[..., Any], pts: tuple, nx: int) -> float:
    """Largest norm-wise relative deviation between CasADi and JAX: for each reactor and
    each output (f, df/dx, df/du, df/dp), max |casadi - jax| / max |casadi|.

    Norm-wise, because Jacobian entries that are zero in exact arithmetic come out as
    cancellation noise (1e-9 next to entries of 1e6) that differs between the two backends.
    """
    X, U, P = pts
    n = X.shape[0]
    cas = _casadi_batch_to_numpy(F.map(n, "serial")(X.T, U.T, P.T), n, nx)
    f, (A, B, Bp) = jx_batch(jnp.asarray(X), jnp.asarray(U), jnp.asarray(P))
    worst = 0.0
    for c, j in zip(cas, [f, A, B, Bp], strict=True):
        j = np.asarray(j)
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(j))):
            raise RuntimeError("non-finite model evaluation at a sampled point")
        axes = tuple(range(1, c.ndim))
        err = np.max(np.abs(c - j), axis=axes)
        scale = np.maximum(np.max(np.abs(c), axis=axes), np.finfo(float).tiny)
        worst = max(worst, float(np.max(err / scale)))
    return worst


# --- one model ------------------------------------------------------------------------
def bench_model(
    model: Model, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], float, list[str]]:
    rng = np.random.default_rng(SEED)
    n = args.batch
    Xb, Ub, Pb = sample_points(model, n, rng)
    x, u, p = Xb[0], Ub[0], Pb[0]

    F, noop = casadi_functions(model)
    jm = model.to_jax()
    deviation = check_agreement(F, jm.f_and_jac_batch, (Xb, Ub, Pb), model.nx)
    if deviation > 1e-10:
        raise RuntimeError(f"{model.name}: CasADi and JAX disagree (max rel dev {deviation:.2e})")

    xd, ud, pd = ca.DM(x), ca.DM(u), ca.DM(p)
    xj, uj, pj = (jax.device_put(jnp.asarray(a)) for a in (x, u, p))
    Xd, Ud, Pd = ca.DM(Xb.T), ca.DM(Ub.T), ca.DM(Pb.T)
    Xj, Uj, Pj = (jax.device_put(jnp.asarray(a)) for a in (Xb, Ub, Pb))
    jf, jf_batch, jnoop = jm.f_and_jac, jm.f_and_jac_batch, jax_noop(model)
    block = jax.block_until_ready

    variants: list[tuple[str, str, Callable[[], Any]]] = [
        ("single", "casadi DM", lambda: F(xd, ud, pd)),
        ("single", "casadi numpy", lambda: F(x, u, p)),
        ("single", "casadi no-op (call overhead)", lambda: noop(xd, ud, pd)),
        ("single", "jax jit f_and_jac", lambda: block(jf(xj, uj, pj))),
        ("single", "jax no-op (dispatch overhead)", lambda: block(jnoop(xj, uj, pj))),
    ]
    nthreads = os.cpu_count() or 1
    notes: list[str] = []
    for label, how, extra in (
        ("casadi map serial", "serial", ()),
        ("casadi map openmp", "openmp", ()),
        (f"casadi map thread ({nthreads})", "thread", (nthreads,)),
    ):
        # CasADi builds without OpenMP fall back to serial and say so (through Python's
        # stdout/stderr) when the map is created: catch that and skip the variant.
        said = io.StringIO()
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            mapped = F.map(n, how, *extra)
        if "Falling back to serial" in said.getvalue():
            notes.append(f"{label}: this CasADi build has no OpenMP (falls back to serial)")
            continue
        variants.append(("batch", label, functools.partial(mapped, Xd, Ud, Pd)))
    variants.append(("batch", "jax vmap f_and_jac_batch", lambda: block(jf_batch(Xj, Uj, Pj))))

    timings = measure([fn for _, _, fn in variants], args.repeats, args.min_time)
    rows = []
    for (group, label, _), (samples, number) in zip(variants, timings, strict=True):
        rows.append(
            {
                "model": model.name,
                "dims": f"{model.nx}/{model.nu}/{model.n_p}",
                "group": group,
                "variant": label,
                "n": 1 if group == "single" else n,
                "median_us": statistics.median(samples),
                "p90_us": p90(samples),
                "min_us": min(samples),
                "number": number,
                "repeats": len(samples),
                "samples_us": [round(v, 4) for v in samples],
            }
        )
        print(
            f"  {model.name:22s} {label:32s} median {rows[-1]['median_us']:10.2f} us",
            file=sys.stderr,
        )
    return rows, deviation, notes


# --- report ---------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "casadi": ca.CasadiMeta.version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "numpy": np.__version__,
    }


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One line per (model, variant); ``vs ref`` is median / median of the CasADi reference
    (``casadi DM`` for single, ``casadi map serial`` for batch): < 1 is faster."""
    ref = {
        (r["model"], r["group"]): r["median_us"]
        for r in rows
        if r["variant"] in ("casadi DM", "casadi map serial")
    }
    lines = [
        "| model (nx/nu/np) | case | variant | median us/call | p90 us/call | min us/call "
        "| us per reactor | vs CasADi ref |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = ref.get((r["model"], r["group"]))
        ratio = f"{r['median_us'] / base:.2f}x" if base else ""
        case = "1 reactor" if r["group"] == "single" else f"{r['n']} reactors"
        lines.append(
            f"| {r['model']} ({r['dims']}) | {case} | {r['variant']} | {r['median_us']:.2f} "
            f"| {r['p90_us']:.2f} | {r['min_us']:.2f} | {r['median_us'] / r['n']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Headline ratios per model: CasADi time / JAX time (> 1: JAX faster)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        med = {r["variant"]: r["median_us"] for r in rows if r["model"] == model}
        parts = []
        if "casadi DM" in med and "jax jit f_and_jac" in med:
            parts.append(f"single: CasADi/JAX = {med['casadi DM'] / med['jax jit f_and_jac']:.2f}")
        jv = med.get("jax vmap f_and_jac_batch")
        for k in sorted(v for v in med if v.startswith("casadi map")):
            if jv:
                parts.append(f"batch: {k.removeprefix('casadi ')}/JAX vmap = {med[k] / jv:.2f}")
        out.append(f"- {model}: " + "; ".join(parts))
    return out


def merge_runs(paths: list[str]) -> dict[str, Any]:
    """Median over runs of each (model, variant)'s median and p90."""
    runs = []
    for path in paths:
        with open(path) as fh:
            runs.append(json.load(fh))
    merged: list[dict[str, Any]] = []
    for row in runs[0]["results"]:
        key = (row["model"], row["variant"])
        same = [r for run in runs for r in run["results"] if (r["model"], r["variant"]) == key]
        merged.append(
            {
                **row,
                "median_us": statistics.median(r["median_us"] for r in same),
                "p90_us": statistics.median(r["p90_us"] for r in same),
                "min_us": statistics.median(r["min_us"] for r in same),
                "runs": len(same),
            }
        )
    return {
        "machine": runs[0]["machine"],
        "args": runs[0]["args"],
        "skipped": runs[0]["skipped"],
        "notes": runs[0].get("notes", []),
        "casadi_vs_jax_max_rel_deviation": runs[0].get("casadi_vs_jax_max_rel_deviation", {}),
        "results": merged,
        "merged_from": paths,
    }


def print_report(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"machine: {m['cpu']}, nproc {m['nproc']}, {m['platform']}; python {m['python']}, "
        f"casadi {m['casadi']}, jax {m['jax']} ({m['jax_backend']}), numpy {m['numpy']}; "
        f"{m['date']}"
    )
    a = report["args"]
    extra = f", median over {len(report['merged_from'])} runs" if "merged_from" in report else ""
    print(
        f"repeats {a['repeats']}, batch {a['batch']}, min-time {a['min_time']} s, "
        f"JAX async dispatch {a.get('jax_async_dispatch', True)}{extra}\n"
    )
    print(markdown_table(report["results"]))
    print()
    for line in summary_lines(report["results"]):
        print(line)
    for name, dev in report.get("casadi_vs_jax_max_rel_deviation", {}).items():
        print(f"- {name}: CasADi and JAX agree to {dev:.1e} (max relative deviation)")
    for note in report.get("notes", []):
        print(f"- {note}")
    for name, why in report["skipped"].items():
        print(f"- skipped {name}: {why}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="repeats per variant (default 30)")
    ap.add_argument("--batch", type=int, default=1000, help="reactors in the batched case")
    ap.add_argument(
        "--min-time", type=float, default=0.01, help="seconds per repeat at least (default 0.01)"
    )
    ap.add_argument("--models", nargs="*", help="models to run (default: all that load)")
    ap.add_argument(
        "--jax-sync-dispatch",
        action="store_true",
        help="set jax_cpu_enable_async_dispatch=False (run on the calling thread)",
    )
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="merge earlier runs and print")
    args = ap.parse_args(argv)

    if args.merge:
        report = merge_runs(args.merge)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(report, fh, indent=1)
        print_report(report)
        return 0

    if args.jax_sync_dispatch:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    deviations: dict[str, float] = {}
    notes: list[str] = []
    for name in args.models or available_models():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = load_model(name)
        except Exception as exc:  # a model not written yet, or broken: say so, go on
            skipped[name] = f"does not load ({type(exc).__name__}: {exc})"
            print(f"  skipping {name}: {skipped[name]}", file=sys.stderr)
            continue
        model_rows, deviations[name], model_notes = bench_model(model, args)
        rows.extend(model_rows)
        notes.extend(f"{name}: {note}" for note in model_notes)

    report = {
        "machine": machine_info(),
        "args": {
            "repeats": args.repeats,
            "batch": args.batch,
            "min_time": args.min_time,
            "jax_async_dispatch": bool(jax.config.values["jax_cpu_enable_async_dispatch"]),
            "command": " ".join(["python", *sys.argv]),
        },
        "skipped": skipped,
        "notes": notes,
        "casadi_vs_jax_max_rel_deviation": deviations,
        "results": rows,
    }
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
