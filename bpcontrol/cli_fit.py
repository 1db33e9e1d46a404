"""``bpcontrol fit``: fit model parameters to recorded batches (issue 18).

Part of the composition root (it may import ``services``). The model comes from a pack
(``--pack DIR``: its model with the pack's overrides, the error models of its EKF sensors,
``ekf.toml``'s ``[sensors]`` or else the instruments of ``pack.toml``, and its recipe's
initial state for batches that recorded none) or a built-in or file model (``--model``:
default error models, the model's nominal initial state); the batches from a historian
path or a CSV folder (``--data``, :func:`services.historian.readback.open_source`). Prints
the estimates with standard errors, 95 % intervals and the identifiability warnings, and
writes the fitted parameters as a TOML file whose ``[parameters]`` table is a pack's
parameter overrides (:func:`services.fitting.result_toml`). Bad input: one ``error:`` line, exit
2, nothing written; a fit that does not converge: one ``error:`` line, exit 1, nothing
written. CasADi and the fitting code are imported inside the command only.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from bpcontrol.cli_common import (
    EXIT_FAILURE,
    check_output_file,
    check_output_folder,
    fail,
    user_errors,
)

if TYPE_CHECKING:
    from services.fitting import FitResult

__all__ = ["fit_command"]

_WHOLE_DATA_ERRORS = ("too few measurements", "the batches share no recorded series")
"""Starts of the fit's errors about the batches together, which name no file themselves."""


def _names(values: list[str] | None) -> list[str]:
    """Comma-separated or repeated option values as one list (blanks dropped)."""
    out: list[str] = []
    for v in values or ():
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _g(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else str(v)


def fit_table(result: FitResult) -> Table:
    """The estimates as a rich table: value, SE, relative SE, 95 % interval, start, bounds."""
    table = Table(
        title=f"fit of {result.model}: {result.status} ({result.iterations} iterations), "
        f"{result.n_measurements} readings, {len(result.batches)} batch(es)",
        title_justify="left",
    )
    for col in ("estimate", "unit", "value", "SE", "rel. SE", "95 % interval", "start", "bounds"):
        table.add_column(col, justify="left" if col in ("estimate", "unit") else "right")
    for e in result.estimates:
        table.add_row(
            e.name,
            e.unit,
            _g(e.value),
            _g(e.se),
            f"{100 * e.relative_se:.2g} %" if math.isfinite(e.relative_se) else "inf",
            f"[{_g(e.ci95[0])}, {_g(e.ci95[1])}]",
            _g(e.start),
            f"[{_g(e.lower)}, {_g(e.upper)}]",
        )
    return table


def fit_command(
    params: Annotated[
        list[str],
        typer.Option("--params", help="Parameters to fit, comma-separated (e.g. mu_m,Y_x)."),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Recorded batches: a records.sqlite, a run folder, a folder of run "
            "folders, or a CSV folder (measurements.csv, inputs.csv; docs/fitting.md).",
        ),
    ],
    pack: Annotated[
        Path | None,
        typer.Option("--pack", help="Pack folder: its model, overrides and sensor errors."),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Built-in model name or .py model file."),
    ] = None,
    batches: Annotated[
        list[str] | None,
        typer.Option("--batches", help="Batch ids, comma-separated or repeated (default: all)."),
    ] = None,
    sensors: Annotated[
        list[str] | None,
        typer.Option("--sensors", help="Sensors to fit (default: all recorded in every batch)."),
    ] = None,
    per_batch: Annotated[
        list[str] | None,
        typer.Option("--per-batch", help="Of --params, those fitted with one value per batch."),
    ] = None,
    estimate_x0: Annotated[
        list[str] | None,
        typer.Option("--estimate-x0", help="States whose initial value is fitted per batch."),
    ] = None,
    starts: Annotated[int, typer.Option("--starts", help="Multi-start: number of starts.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the extra starts.")] = 0,
    out: Annotated[
        Path, typer.Option("--out", help="Result file (TOML: \\[parameters] for a pack).")
    ] = Path("fit.toml"),
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="HTML report of the fit (default: the result file's name, .html)."
        ),
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Write no HTML report.")] = False,
    write_pack: Annotated[
        bool,
        typer.Option("--write-pack", help="Also write the fitted values into --pack's pack.toml."),
    ] = False,
    into_pack: Annotated[
        Path | None,
        typer.Option(
            "--into-pack", help="Also write a copy of --pack with the fitted values (new folder)."
        ),
    ] = None,
) -> None:
    """Fit model parameters to recorded batches; print the fit, write the parameters (TOML).

    Weighted least squares by direct multiple shooting (CasADi, IPOPT, exact
    sensitivities); late offline samples count at their sample time.
    """
    with user_errors():
        if (pack is None) == (model is None):
            raise ValueError("give --pack DIR or --model NAME (one of them)")
        if starts < 1:
            raise ValueError(f"--starts must be >= 1, got {starts}")
        check_output_file(out, "--out")
        report_path = None if no_report else (report or out.with_suffix(".html"))
        if report_path is not None:
            check_output_file(report_path, "--report")
            if report_path.resolve() == out.resolve():
                raise ValueError(f"--report {report_path}: is the result file (--out)")
        if (write_pack or into_pack is not None) and pack is None:
            raise ValueError("--write-pack and --into-pack need --pack DIR (the pack to fit)")
        if write_pack and into_pack is not None:
            raise ValueError("give --write-pack (this pack) or --into-pack DIR2 (a copy), not both")
        if into_pack is not None:
            check_output_folder(into_pack.parent, "--into-pack", given=into_pack)
        if pack is not None and out.suffix == ".toml" and out.resolve().parent == pack.resolve():
            raise ValueError(
                f"--out {out}: inside the pack folder, where the pack loader refuses unknown "
                ".toml files; write the result next to the pack"
            )
        names = _names(params)
        if not names:
            raise ValueError("--params names no parameter")

        from services.fitting import ErrorModel, FitError, FitOptions, fit, result_toml
        from services.historian.readback import open_source

        errors: dict[str, ErrorModel] = {}
        initial: dict[str, float] = {}
        if pack is not None:
            from bpcontrol.runspec import resolve, spec_for

            resolved = resolve(spec_for(pack, controller="recipe"))
            the_model = resolved.model
            for sensor in resolved.ekf.sensors:  # ekf.toml's [sensors], else the instruments
                errors[sensor.output] = ErrorModel(sensor.sigma, sensor.relative_sigma)
            initial = dict(resolved.recipe.initial)
        else:
            from models import load_model

            the_model = load_model(str(model))
        source = open_source(data)
        ids = _names(batches) or list(source.batch_ids())
        if not ids:
            raise ValueError(f"--data {data}: holds no batches")
        twice = sorted({b for b in ids if ids.count(b) > 1})
        if twice:
            raise ValueError(f"--batches: {', '.join(twice)} given more than once")
        recorded = [source.batch(b) for b in ids]
        if initial:  # a batch without a recorded initial state starts as the recipe says
            recorded = [replace(b, initial_state={**initial, **b.initial_state}) for b in recorded]
        chosen = _names(sensors) or None
        if chosen is None and errors:
            chosen = [
                s
                for s in errors
                if all(s in b.measurements and len(b.measurements[s]) for b in recorded)
            ] or None
        try:
            result = fit(
                the_model,
                recorded,
                names,
                sensors=chosen,
                errors=errors,
                per_batch=_names(per_batch),
                estimate_x0=_names(estimate_x0),
                options=FitOptions(n_starts=starts, seed=seed),
            )
        except FitError as exc:
            if str(exc).startswith(_WHOLE_DATA_ERRORS):  # about all batches: name the data
                raise FitError(f"--data {data} (batches {', '.join(ids)}): {exc}") from None
            raise
    console = Console()
    console.print(fit_table(result))
    typer.echo(
        f"residual variance {result.residual_variance:.3g} (1 when the error models are right), "
        f"AIC {result.aic:.2f}, BIC {result.bic:.2f}, eigenvalue ratio {result.eigen_ratio:.2g}"
    )
    for w in result.warnings:
        sys.stderr.write(f"warning: {w.message}\n")
    for c in result.systematic:
        sys.stderr.write(f"warning: {c.message}\n")
    if not result.converged:
        fail(
            RuntimeError(
                f"the fit did not converge (IPOPT: {result.status}); nothing written. "
                "Try --starts with more starts, fewer --params, or check the data"
            ),
            EXIT_FAILURE,
        )
    text = result_toml(
        result,
        data=str(data.resolve()),
        pack=None if pack is None else str(pack.resolve()),
        report=None if report_path is None else str(report_path.resolve()),
    )
    update = None
    if pack is not None and (write_pack or into_pack is not None):
        from services.fitting.handover import fitted_from_result, plan_pack_update

        with user_errors():  # checked before anything is written
            fitted = fitted_from_result(
                result, data=str(data.resolve()), result_file=str(out.resolve())
            )
            update = plan_pack_update(fitted, pack, into=into_pack)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}")
    if report_path is not None:
        from services.fitting import write_fit_report

        write_fit_report(
            result,
            report_path,
            data=str(data.resolve()),
            result_file=str(out.resolve()),
            units={o.name: o.unit for o in the_model.outputs},
        )
        typer.echo(f"wrote {report_path}")
    if update is not None:
        from services.fitting.handover import apply_pack_update

        typer.echo(f"wrote {apply_pack_update(update)} (fitted [parameters])")
