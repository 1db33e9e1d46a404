"""Command line of bpcontrol, the composition root: it wires models, jobs and outputs.

Each command is a small function on :data:`app` that builds a request, calls a job
module (``bpcontrol.simulate_job`` ...) and prints. Bad user input (a model file, a
profile, a number) is reported as one line ``error: <message>`` on stderr with exit
status 2; an integration that fails on valid input exits with status 1.

Start-up stays fast (``bpcontrol --version`` and ``--help`` in well under a second): this
module imports only typer, rich and the standard library at the top; NumPy, JAX, CasADi,
the job modules, ``hil`` and ``models`` are imported inside the command that needs them.
A sub-command group lives in its own module ``bpcontrol/cli_<name>.py`` with the same rule
(light top-level imports, heavy ones inside its commands) and is registered here with
``app.add_typer(...)``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from bpcontrol import __version__

if TYPE_CHECKING:
    from bpcontrol.estimate_job import RecordedData
    from bpcontrol.loop import LoopSnapshot
    from models import Model

EXIT_FAILURE = 1
EXIT_USAGE = 2
PROGRESS_MIN_STEPS = 50
"""Runs with more output steps than this show a progress bar (when stderr is a terminal)."""

app = typer.Typer(
    name="bpcontrol",
    help="Monitoring and nonlinear model-predictive control of fed-batch fermentations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Backend(StrEnum):
    casadi = "casadi"
    jax = "jax"


class OutputFormat(StrEnum):
    csv = "csv"
    parquet = "parquet"


def _progress_bar(label: str, console: Console) -> Progress:
    """A transient progress bar on ``console``: ``label``, bar, percent, elapsed time."""
    columns = (TextColumn(label), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=True)


def _fail(exc: BaseException, code: int) -> NoReturn:
    message = " ".join(str(exc).split()) or type(exc).__name__
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user's mistake into one ``error:`` line and an exit status, no traceback."""
    try:
        yield
    except ValueError as exc:  # ModelError and ProfileError included: both are ValueErrors
        _fail(exc, EXIT_USAGE)
    except RuntimeError as exc:
        if "models" in sys.modules:  # no SimulationError can come from an unloaded models
            from models import SimulationError

            if isinstance(exc, SimulationError):
                _fail(exc, EXIT_FAILURE)
        raise


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bpcontrol {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Monitoring and nonlinear model-predictive control of fed-batch fermentations."""


@app.command("models")
def models_command() -> None:
    """List the built-in kinetic models with their sizes and descriptions."""
    from models import available_models, load_model

    table = Table(title="built-in models", title_justify="left")
    table.add_column("name")
    table.add_column("states", justify="right")
    table.add_column("inputs", justify="right")
    table.add_column("description")
    for name in available_models():
        try:
            model = load_model(name)
        except Exception as exc:  # a broken or missing built-in must not hide the others
            table.add_row(name, "-", "-", f"unavailable: {type(exc).__name__}: {exc}")
            continue
        table.add_row(name, str(model.nx), str(model.nu), model.description)
    Console().print(table)


@app.command("simulate")
def simulate_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Built-in model name (see `bpcontrol models`) or path of a .py model file.",
        ),
    ],
    hours: Annotated[float, typer.Option("--hours", help="Simulated time in hours.")],
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help="Input profile, .csv (t_h + input columns) or .toml (\\[inputs] table); "
            "nominal inputs if omitted.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder \\[default: runs/sim-<model>-<timestamp>]."),
    ] = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", help="Trajectory file format.")
    ] = OutputFormat.csv,
    dt: Annotated[float, typer.Option("--dt", help="Output step in hours.")] = 0.1,
    backend: Annotated[
        Backend,
        typer.Option("--backend", help="casadi: CVODES (reference); jax: jitted RK4."),
    ] = Backend.casadi,
    seed: Annotated[
        int,
        typer.Option("--seed", help="Recorded in run.json; a plain simulation is deterministic."),
    ] = 0,
) -> None:
    """Simulate a model open-loop; write trajectories, plot.png and run.json."""
    from bpcontrol.simulate_job import (
        SimulationRequest,
        output_steps,
        run_simulation,
        summary_table,
    )

    request = SimulationRequest(
        model=model,
        hours=hours,
        inputs=inputs,
        out_dir=out,
        fmt=fmt.value,
        dt_h=dt,
        backend=backend.value,
        seed=seed,
    )
    progress_console = Console(stderr=True)
    with user_errors():
        if progress_console.is_terminal and output_steps(hours, dt) > PROGRESS_MIN_STEPS:
            with _progress_bar("simulating", progress_console) as bar:
                task = bar.add_task("simulate", total=hours)
                result = run_simulation(
                    request, progress=lambda t, _end: bar.update(task, completed=t)
                )
        else:
            result = run_simulation(request)
    Console().print(summary_table(result))
    for warning in result.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    typer.echo(f"wrote {result.data_path}")
    typer.echo(f"wrote {result.plot_path}")
    typer.echo(f"wrote {result.info_path}")


def _read_run(data: Path, inputs: Path, model: Model) -> RecordedData:
    from hil.synthetic import read_csv

    return read_csv(data, inputs, model=model)


@app.command("estimate")
def estimate_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="Built-in model name (see `bpcontrol models`) or path of a .py model file.",
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="Recorded readings, CSV with t_h,sensor,value,t_sample_h "
            "(format: `hil.synthetic`; `bpcontrol synth` writes one).",
        ),
    ],
    inputs: Annotated[
        Path | None,
        typer.Option(
            "--inputs",
            help="Inputs applied, CSV with t_h + one column per input "
            "\\[default: <data>_inputs.csv next to the data].",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Filter configuration, TOML (sensors, tracked parameters, noise); "
            "default: the model's preset, written to ekf.toml in the output folder.",
        ),
    ] = None,
    x0: Annotated[
        list[str] | None,
        typer.Option(
            "--x0",
            help="Initial state NAME=VALUE (comma-separated or repeated); "
            "other states start at the model's nominal values.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder \\[default: runs/est-<model>-<timestamp>]."),
    ] = None,
) -> None:
    """Run the online estimator (EKF) over a recorded run; write estimates, events, plot.

    Steps at every arrival time of the data with the inputs held since the last step;
    late offline assays are fused at their sample time. Writes estimates.csv, events.csv,
    plot.png, ekf.toml and run.json.
    """
    from bpcontrol.estimate_job import (
        EstimationRequest,
        consistency_line,
        events_table,
        prepare_estimation,
        run_estimation,
    )
    from bpcontrol.estimate_job import summary_table as estimate_summary_table
    from hil.synthetic import inputs_path_for

    request = EstimationRequest(
        model=model,
        data=data,
        inputs=inputs if inputs is not None else inputs_path_for(data),
        config=config,
        x0=tuple(x0 or ()),
        out_dir=out,
    )
    progress_console = Console(stderr=True)
    with user_errors():
        prepared = prepare_estimation(request, _read_run)
        if progress_console.is_terminal and len(prepared.groups) > PROGRESS_MIN_STEPS:
            with _progress_bar("estimating", progress_console) as bar:
                task = bar.add_task("estimate", total=prepared.t_end)
                result = run_estimation(
                    prepared, progress=lambda t, _end: bar.update(task, completed=t)
                )
        else:
            result = run_estimation(prepared)
    console = Console()
    console.print(estimate_summary_table(result))
    console.print(events_table(result))
    typer.echo(consistency_line(result))
    for warning in result.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    for path in (
        result.estimates_path,
        result.events_path,
        result.plot_path,
        result.config_path,
        result.info_path,
    ):
        typer.echo(f"wrote {path}")


@app.command("synth")
def synth_command(
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Readings file; <name>_inputs.csv and <name>_truth.csv go next to it."
        ),
    ] = Path("run.csv"),
    model: Annotated[
        str,
        typer.Option("--model", "-m", help="Model of the plant (only ecoli_fedbatch so far)."),
    ] = "ecoli_fedbatch",
    hours: Annotated[
        float, typer.Option("--hours", help="Length of the run in hours (whole minutes).")
    ] = 30.0,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sensor noise and plant.")] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the files if they exist.")
    ] = False,
) -> None:
    """Write a synthetic recorded run (readings, inputs, truth) to try `estimate` on.

    The plant is the E. coli fed-batch with mu_max x 0.8 and Y_xs x 1.2 against the
    literature model, online sensors every minute and offline assays 1-3 h late.
    """
    from hil.demo_run import write_demo_run
    from models import load_model

    with user_errors():
        plant = load_model(model)
        paths = write_demo_run(plant, hours=hours, seed=seed, path=out, overwrite=force)
    for path in paths:
        typer.echo(f"wrote {path}")


def _speed_up(text: str) -> float:
    if text.strip().lower() in ("max", "inf"):
        return math.inf
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"--speed-up must be a number (1 for live) or 'max', got {text!r}"
        ) from None
    if not (value >= 1e-3):
        raise ValueError(f"--speed-up must be >= 0.001 (1 for live) or 'max', got {text!r}")
    return value


@app.command("run")
def run_command(
    model: Annotated[
        str | None, typer.Option(help="Model name or .py file (default: the scenario's).")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="Recipe TOML (default: the one shipped for the model).")
    ] = None,
    scenario: Annotated[
        Path | None, typer.Option(help="Scenario TOML: plant parameters, noise, faults, seed.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Hours to run (default: the recipe's batch).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: the scenario's).")] = None,
    speed_up: Annotated[
        str, typer.Option("--speed-up", help="Process s per wall s: 1 = live, 'max' = flat out.")
    ] = "max",
    controller: Annotated[
        str | None, typer.Option(help="'nmpc' or 'recipe' (FALLBACK for the whole batch).")
    ] = None,
    compare_recipe: Annotated[
        bool, typer.Option(help="Also run the recipe alone on the same plant; report the ratio.")
    ] = False,
    oracle: Annotated[
        bool, typer.Option(help="Also compute the whole-batch optimum with the true parameters.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Root folder of run folders.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the KPIs as JSON only.")] = False,
) -> None:
    """Run a closed-loop batch (EKF + NMPC + supervisor) on the simulated plant; report it."""
    from bpcontrol.recipe import default_recipe_path, load_recipe
    from hil.runner import Scenario, check_scenario, load_scenario, new_run_dir, run_scenario
    from models import load_model

    with user_errors():
        sc = load_scenario(scenario) if scenario is not None else Scenario()
        if model is not None:
            sc = replace(sc, model=model)
        if seed is not None:
            sc = replace(sc, seed=seed)
        if controller is not None:
            if controller not in ("nmpc", "recipe"):
                raise ValueError(f"--controller must be nmpc or recipe, got {controller!r}")
            sc = replace(sc, controller=controller)  # type: ignore[arg-type]
        speed = _speed_up(speed_up)
        if duration is not None and not (math.isfinite(duration) and duration > 0):
            raise ValueError(f"--duration must be > 0 h, got {duration}")
        the_model = load_model(sc.model)
        the_recipe = load_recipe(recipe or default_recipe_path(the_model.name), the_model)
        check_scenario(sc, the_model, the_recipe)  # refuse before anything is written
        run_dir = new_run_dir(out, sc)
        console = Console(stderr=True)
        hours = duration or the_recipe.duration_h
        if console.is_terminal and not as_json:
            label = "batch {task.fields[t]:6.2f} h  {task.fields[mode]:8}"
            with _progress_bar(label, console) as bar:
                task = bar.add_task("run", total=hours, t=0.0, mode="")

                def show(snap: LoopSnapshot) -> None:
                    bar.update(task, completed=snap.t_h, t=snap.t_h, mode=snap.mode.value)

                result = run_scenario(
                    sc,
                    run_dir=run_dir,
                    recipe=the_recipe,
                    speed_up=speed,
                    duration_h=duration,
                    progress=show,
                    oracle=oracle,
                )
        else:
            result = run_scenario(
                sc,
                run_dir=run_dir,
                recipe=the_recipe,
                speed_up=speed,
                duration_h=duration,
                oracle=oracle,
            )
        kpis = dict(result.kpis)
        if compare_recipe and sc.controller == "nmpc":
            base = run_scenario(
                replace(sc, controller="recipe"),
                run_dir=run_dir / "recipe-only",
                recipe=the_recipe,
                duration_h=duration,
                report=False,
            )
            kpis["recipe_only_product_g"] = base.kpis["final_product_g"]
            kpis["recipe_only_time_do_below_min_percent"] = base.kpis.get(
                "time_do_below_min_percent", math.nan
            )
            kpis["product_vs_recipe"] = kpis["final_product_g"] / base.kpis["final_product_g"]
            (run_dir / "kpis.json").write_text(json.dumps(kpis, indent=2) + "\n", encoding="utf-8")
    if as_json:
        typer.echo(json.dumps(kpis, indent=2))
        return
    table = Table(title=f"run {result.run_dir.name}", show_header=True)
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key, value in kpis.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    typer.echo(f"wrote {result.run_dir / 'records.sqlite'}")
    if result.report is not None:
        typer.echo(f"wrote {result.report}")


if __name__ == "__main__":  # python -m bpcontrol.cli
    app()
