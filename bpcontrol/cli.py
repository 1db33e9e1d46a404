"""Command line of bpcontrol, the composition root: it wires models, jobs and outputs.

Each command is a small function on :data:`app` that builds a request, calls a job
module (``bpcontrol.simulate_job`` ...) and prints. Bad user input (a model file, a
profile, a number, an output path) is reported as one line ``error: <message>`` naming
the option or the file and key, on stderr with exit status 2, and is found before
anything is created; an integration that fails on valid input exits with status 1.

Start-up stays fast (``bpcontrol --version`` and ``--help`` in well under a second): this
module imports only typer, rich and the standard library at the top; NumPy, JAX, CasADi,
the job modules, ``hil`` and ``models`` are imported inside the command that needs them.
A sub-command group lives in its own module ``bpcontrol/cli_<name>.py`` with the same rule
(light top-level imports, heavy ones inside its commands) and is registered here with
``app.add_typer(...)``.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from bpcontrol import __version__

if TYPE_CHECKING:
    from bpcontrol.estimate_job import RecordedData
    from models import Model

from bpcontrol.cli_common import (
    PROGRESS_MIN_STEPS,
    check_hours,
    check_output_file,
    check_output_folder,
    check_positive,
    progress_bar,
    user_errors,
)

RUNS = Path("runs")
"""Where ``simulate`` and ``estimate`` put their folder unless given ``--out``."""

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

    with user_errors():
        check_output_folder(out if out is not None else RUNS, "--out")
        check_positive(dt, "--dt", "h")
        check_hours(
            hours,
            "--hours",
            step_h=dt,
            steps="output steps of --dt",
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
            with progress_bar("simulating", progress_console) as bar:
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
        check_output_folder(out if out is not None else RUNS, "--out")
        prepared = prepare_estimation(request, _read_run)
        if progress_console.is_terminal and len(prepared.groups) > PROGRESS_MIN_STEPS:
            with progress_bar("estimating", progress_console) as bar:
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
    from hil.synthetic import DEFAULT_PERIOD_H
    from models import load_model

    with user_errors():
        check_output_file(out, "--out")
        check_hours(
            hours,
            "--hours",
            step_h=DEFAULT_PERIOD_H,
            steps="sensor periods",
        )
        periods = hours / DEFAULT_PERIOD_H
        if abs(periods - round(periods)) > 1e-6:
            raise ValueError(f"--hours must be a whole number of minutes, got {hours:g}")
        plant = load_model(model)
        paths = write_demo_run(plant, hours=hours, seed=seed, path=out, overwrite=force)
    for path in paths:
        typer.echo(f"wrote {path}")


from bpcontrol.cli_audit import audit_app  # noqa: E402  (light: heavy imports inside)
from bpcontrol.cli_compare import compare_command  # noqa: E402  (light: heavy imports inside)
from bpcontrol.cli_device import device_app  # noqa: E402  (light: heavy imports inside)
from bpcontrol.cli_export import export_command  # noqa: E402  (light: heavy imports inside)
from bpcontrol.cli_fit import fit_command  # noqa: E402  (light: heavy imports inside)
from bpcontrol.cli_hil import hil_app  # noqa: E402  (light: heavy imports inside)
from bpcontrol.cli_pack import pack_app  # noqa: E402  (light: heavy imports inside)
from bpcontrol.cli_run import run_command  # noqa: E402
from bpcontrol.cli_serve import serve_command  # noqa: E402  (light: heavy imports inside)

app.command("run")(run_command)
app.command("fit")(fit_command)
app.command("compare")(compare_command)
app.command("export")(export_command)
app.add_typer(pack_app, name="pack")
app.add_typer(audit_app, name="audit")
app.add_typer(hil_app, name="hil")
app.command("serve")(serve_command)
app.add_typer(device_app, name="device")


if __name__ == "__main__":  # python -m bpcontrol.cli
    app()
