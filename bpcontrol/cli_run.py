"""``bpcontrol run``: one closed-loop batch of any process against its simulated plant.

Part of the composition root (it may import ``hil`` and ``services``). The process comes
from a pack folder (``--pack``), a built-in model's pack (``--model NAME``), single files
(``--model FILE --recipe FILE --control FILE``) or a run spec of an earlier run
(``--spec runs/<id>/run.toml``). Everything is checked before the run folder exists
(bad input: one ``error:`` line, exit 2, nothing created). A run that did not end well
prints its KPIs, then one ``error:`` line, and exits with the run's status
(:attr:`hil.runner.RunResult.exit_code`): 1 for a failed batch or a failed ``--oracle``
after it (the batch's KPIs and report are kept), 128 + the signal for an interrupted one.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import SplitResult, urlsplit

import typer
from rich.console import Console
from rich.table import Table

from bpcontrol.cli_common import (
    check_output_folder,
    fail,
    parse_speed_up,
    progress_bar,
    user_errors,
)
from bpcontrol.tomlfile import read_toml

if TYPE_CHECKING:
    from bpcontrol.loop import LoopSnapshot
    from bpcontrol.pack import ProcessPack
    from bpcontrol.runspec import RunSpec
    from hil.runner import RunResult

__all__ = ["check_plant_url", "device_plant", "run_command"]

DEFAULT_MODEL = "ecoli_fedbatch"


def choose_pack(
    pack: Path | None,
    model: str | None,
    recipe: Path | None,
    control: Path | None,
    ekf: Path | None,
) -> ProcessPack:
    """The pack a run uses: a folder, a built-in model's pack or a model file's defaults,
    with any of its recipe, controller and estimator files replaced by the options."""
    from bpcontrol.pack import PackError, builtin_pack_dir, load_pack
    from bpcontrol.pack_template import model_pack_documents
    from models import available_models, load_model

    if pack is not None and model is not None:
        raise PackError("give --pack or --model, not both (a pack names its model)")
    if pack is not None:
        chosen = load_pack(pack)
    elif model is None or model in available_models():
        chosen = load_pack(builtin_pack_dir(model or DEFAULT_MODEL))
    else:  # a model file: the pack defaults of `pack init`, with the files given
        if recipe is None:
            raise PackError(f"--model {model}: a model file needs --recipe FILE (or use --pack)")
        the_model = load_model(model)
        docs = model_pack_documents(the_model, str(Path(model).resolve()))
        from bpcontrol.pack import ProcessPack

        chosen = ProcessPack(
            name=the_model.name,
            description=the_model.description,
            model=str(Path(model).resolve()),
            parameters={},
            bounds={},
            sensors=docs["pack"]["sensors"],
            kpis=docs["pack"]["kpis"],
            recipe={},
            sources={"pack": f"{model} (default instruments)"},
        )
    sources = dict(chosen.sources)
    parts: dict[str, Any] = {}
    for part, path in (("recipe", recipe), ("control", control), ("ekf", ekf)):
        if path is not None:
            parts[part] = read_toml(path, f"{part} file", PackError)
            sources[part] = str(path)
    if not parts:
        return chosen
    if not isinstance(parts.get("recipe", chosen.recipe), dict):
        raise PackError("recipe must be a table")
    return replace(chosen, **parts, sources=sources)


def _identity(site: str, reactor: str, batch: str | None, run_id: str) -> Any:
    """The identity of a new run: its batch id is ``--batch`` or else the run id, so that
    two runs of one pack recorded side by side read back as two batches, not one."""
    from bpcontrol.records import RunIdentity

    return RunIdentity.start(site=site, reactor=reactor, batch_id=batch or run_id, run_id=run_id)


def _kpi_table(kpis: dict[str, Any], title: str) -> Table:
    table = Table(title=title, show_header=True)
    table.add_column("KPI")
    table.add_column("value", justify="right")
    for key, value in kpis.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


def _ending(result: RunResult) -> str:
    """The one line of a run that did not end well: a failed ``--oracle`` after a
    completed batch, or the batch's own end (interrupted, failed) and its reason."""
    if result.state == "completed" and "oracle_error" in result.kpis:
        return (
            f"--oracle failed: {result.kpis['oracle_error']} "
            f"(the batch's KPIs and report are in {result.run_dir})"
        )
    return f"run {result.state}: {result.reason} (what ran is kept in {result.run_dir})"


def check_plant_url(url: str, option: str) -> SplitResult:
    """``url`` split, once it is an ``opcua://``, ``opc.tcp://`` or ``mqtt://`` URL with a
    host and a port (ValueError naming ``option`` otherwise)."""
    problem = f"{option} must be opcua://HOST:PORT[/PATH] or mqtt://HOST:PORT, got {url!r}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is no number or out of range, a bad IPv6 address
        raise ValueError(problem) from None
    if parts.scheme not in ("opcua", "opc.tcp", "mqtt") or not parts.hostname or not port:
        raise ValueError(problem)
    return parts


def device_plant(
    url: str, mapping: Path, security: Path, model: Any, *, option: str = "--plant"
) -> Any:
    """The edge gateway (:mod:`services.edge`) to the device at ``url``, connected: the
    plant of ``bpcontrol run --plant`` and of a device reactor of ``bpcontrol serve``.

    ``url`` is ``opcua://HOST:PORT[/PATH]`` (``opc.tcp://`` too; path default
    ``/bpcontrol/``) or ``mqtt://HOST:PORT``; ``mapping`` the device's mapping file (TOML,
    checked against ``model``); ``security`` the controller's login (``bpcontrol device
    serve`` writes one). ``option`` names the setting in error messages.

    Raises:
        ValueError: a malformed ``url``, mapping or login file (the message names it).
        bpcontrol.interfaces.PlantError: the gateway could not connect to the device.
    """
    from services.edge.credentials import load_mqtt_security, load_opcua_security
    from services.edge.mapping import load_mapping

    parts = check_plant_url(url, option)
    device_map = load_mapping(mapping, model)
    assert parts.hostname is not None and parts.port is not None  # checked by _plant_url
    if parts.scheme == "mqtt":
        from services.edge.mqtt_gateway import MqttPlant

        login = load_mqtt_security(security)
        return MqttPlant(parts.hostname, parts.port, device_map, security=login)
    from services.edge.opcua_gateway import OpcUaPlant

    endpoint = f"opc.tcp://{parts.hostname}:{parts.port}{parts.path or '/bpcontrol/'}"
    return OpcUaPlant(endpoint, device_map, security=load_opcua_security(security))


def _device_plant(
    url: str, mapping: Path | None, security: Path | None, run: Any, speed: float
) -> Any:
    """The gateway of ``--plant`` (connected, :func:`device_plant`), after checking the
    options that go with it; a device that cannot be reached exits 1."""
    from bpcontrol.interfaces import PlantError

    check_plant_url(url, "--plant")
    if mapping is None or security is None:
        raise ValueError("--plant needs --device-mapping FILE and --device-security FILE")
    if math.isinf(speed):
        raise ValueError("--plant needs --speed-up N, the device's clock speed (a device is paced)")
    try:
        return device_plant(url, mapping, security, run.model)
    except PlantError as exc:
        fail(exc, 1)


_TRUTH_KPIS = ("final_product_g", "do_min_percent", "biomass_rmse_last_20h_percent_of_final")


def _device_kpis(kpis: dict[str, Any], run: Any, run_dir: Path) -> dict[str, Any]:
    """KPIs of a run on a device: the plant's truth is unknown, so the product is the last
    estimate's and the KPIs computed from the simulator's truth are dropped."""
    import numpy as np

    from bpcontrol.records import EstimateRecord, SetpointRecord
    from bpcontrol.run_status import write_json
    from hil.runner import product_value
    from services.historian import read_records

    records = read_records(run_dir / "records.sqlite")
    out = {
        k: v
        for k, v in kpis.items()
        if k not in _TRUTH_KPIS and not k.startswith("time_do_below") and "final_error" not in k
    }
    estimates = [r for r in records if isinstance(r, EstimateRecord)]
    setpoints = [r for r in records if isinstance(r, SetpointRecord)]
    model = run.model
    if estimates and setpoints:
        x = np.array([estimates[-1].x[n] for n in model.state_names])
        u = np.array([setpoints[-1].values[n] for n in model.input_names])
        out["final_product"] = product_value(run, x, u, None)
    else:
        out["final_product"] = math.nan
    out["final_product_source"] = "estimate (a device: the plant's truth is not known)"
    write_json(run_dir / "kpis.json", out)
    return out


def check_resume_folder(folder: Path) -> Path:
    """The run folder ``--resume`` continues: it holds ``run.toml`` and ``records.sqlite``
    and did not complete, and no live process runs it. Raises ValueError (one line naming
    the folder) otherwise; nothing is written."""
    import os

    from bpcontrol.run_status import process_alive, read_status

    if not folder.is_dir():
        raise ValueError(f"--resume {folder}: no such run folder")
    for name in ("run.toml", "records.sqlite"):
        if not (folder / name).is_file():
            raise ValueError(f"--resume {folder}: no {name} (not a run folder of bpcontrol run)")
    try:
        status = read_status(folder)
    except (OSError, ValueError):
        status = {}
    state = status.get("state")
    if state == "completed":
        raise ValueError(f"--resume {folder}: the run completed; nothing to resume")
    pid = status.get("pid")
    # a dead run is what --resume is for; a live one is not to be run twice
    if state == "running" and isinstance(pid, int) and pid != os.getpid() and process_alive(pid):
        raise ValueError(f"--resume {folder}: still running (pid {pid})")
    return folder


def run_command(
    pack: Annotated[
        Path | None, typer.Option(help="Process pack folder (pack.toml, recipe.toml, ...).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Built-in model (its shipped pack) or a .py model file.  [default: ecoli_fedbatch]"
        ),
    ] = None,
    recipe: Annotated[Path | None, typer.Option(help="Recipe TOML (replaces the pack's).")] = None,
    control: Annotated[
        Path | None, typer.Option(help="Controller TOML (replaces the pack's control.toml).")
    ] = None,
    ekf: Annotated[
        Path | None, typer.Option(help="Estimator TOML (replaces the pack's ekf.toml).")
    ] = None,
    spec: Annotated[
        Path | None, typer.Option(help="Run spec of an earlier run (runs/<id>/run.toml).")
    ] = None,
    scenario: Annotated[
        Path | None,
        typer.Option(help="Plant scenario TOML (parameters, noise, drift); default: pack's."),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Hours to run (default: the recipe's batch).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed of the plant.  [default: 1]")
    ] = None,
    speed_up: Annotated[
        str, typer.Option("--speed-up", help="Process s per wall s: 1 = live, 'max' = flat out.")
    ] = "max",
    controller: Annotated[
        str | None, typer.Option(help="'nmpc' or 'recipe' (FALLBACK for the whole batch).")
    ] = None,
    estimator: Annotated[
        str | None,
        typer.Option(help="'compiled' (EKF in C), 'jax' (same estimates) or 'mhe'."),
    ] = None,
    site: Annotated[str, typer.Option(help="Site of the run's identity.")] = "local",
    reactor: Annotated[str, typer.Option(help="Reactor of the run's identity.")] = "R1",
    batch: Annotated[
        str | None, typer.Option(help="Batch id of the run's identity (default: the run id).")
    ] = None,
    compare_recipe: Annotated[
        bool, typer.Option(help="Also run the recipe alone on the same plant; report the ratio.")
    ] = False,
    oracle: Annotated[
        bool, typer.Option(help="Also compute the whole-batch optimum with the true parameters.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Root folder of run folders.")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the KPIs as JSON only.")] = False,
    parameters: Annotated[
        Path | None,
        typer.Option(help="A `bpcontrol fit` result file: its \\[parameters] over the pack's."),
    ] = None,
    plant: Annotated[
        str | None,
        typer.Option(
            "--plant",
            help="Drive a device instead of the in-process plant: opcua://HOST:PORT(/PATH) "
            "or mqtt://HOST:PORT (needs --device-mapping, --device-security, --speed-up N).",
        ),
    ] = None,
    device_mapping: Annotated[
        Path | None, typer.Option(help="The device's mapping file (TOML) for --plant.")
    ] = None,
    device_security: Annotated[
        Path | None,
        typer.Option(
            help="The controller's login for --plant (`bpcontrol device serve` writes one)."
        ),
    ] = None,
    historian: Annotated[
        str,
        typer.Option(
            help="'embedded' (the run folder's file) or 'influx': every record also to "
            "InfluxDB through a store-and-forward buffer (docs/historian.md) (default: "
            "embedded)."
        ),
    ] = "embedded",
    influx_config: Annotated[
        Path | None,
        typer.Option(
            help="TOML with an influx table for --historian influx (default: the "
            "BPCONTROL_INFLUX_* environment variables)."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the run in this folder, whose process died, on the same device "
            "(--plant): from its historian file's last state, at the device's process time; "
            "--duration is where the whole run ends.",
        ),
    ] = None,
) -> None:
    """Run a closed-loop batch (EKF + NMPC + supervisor) on the simulated plant; report it."""
    from bpcontrol.run_status import write_json
    from bpcontrol.runspec import ESTIMATOR_KINDS, load_run_spec, resolve, spec_for
    from hil.runner import (
        check_scenario,
        load_scenario,
        new_run_dir,
        pack_scenario,
        run_batch,
        same_plant,
    )

    with user_errors():
        check_output_folder(out, "--out")
        if resume is not None:
            given = {
                "--spec": spec, "--pack": pack, "--model": model, "--recipe": recipe,
                "--control": control, "--ekf": ekf, "--scenario": scenario,
                "--parameters": parameters, "--seed": seed, "--controller": controller,
                "--estimator": estimator, "--batch": batch,
            }  # fmt: skip
            extra = [k for k, v in given.items() if v is not None]
            if compare_recipe or oracle:
                extra.append("--compare-recipe/--oracle")
            if extra:
                raise ValueError(
                    f"--resume continues the run as its run.toml says: drop {', '.join(extra)}"
                )
            if plant is None:
                raise ValueError(
                    "--resume continues a run on a device (--plant URL): a simulated plant's "
                    "state died with the process that ran it"
                )
            spec = check_resume_folder(resume) / "run.toml"
        if spec is not None:
            if any(v is not None for v in (pack, model, recipe, control, ekf)):
                raise ValueError("--spec holds the whole process; drop --pack/--model/--recipe")
            base: RunSpec = load_run_spec(spec)
        else:
            base = spec_for(choose_pack(pack, model, recipe, control, ekf))
        unfitted = base
        if parameters is not None:  # issue 18's hand-over file, checked against the ranges
            from services.fitting.handover import pack_with_parameters

            base = replace(base, pack=pack_with_parameters(base.pack, parameters))
        if seed is not None:
            if not 0 <= seed < 2**63:
                raise ValueError(f"--seed must be in [0, 2^63), got {seed}")
            base = replace(base, seed=seed)
        if controller is not None:
            if controller not in ("nmpc", "recipe"):
                raise ValueError(f"--controller must be nmpc or recipe, got {controller!r}")
            base = replace(base, controller=controller)  # type: ignore[arg-type]
        if estimator is not None:
            if estimator not in ESTIMATOR_KINDS:
                allowed = ", ".join(ESTIMATOR_KINDS)
                raise ValueError(f"--estimator must be one of {allowed}, got {estimator!r}")
            base = replace(base, estimator=estimator)
        speed = parse_speed_up(speed_up)
        run = resolve(base)
        sc = load_scenario(scenario) if scenario is not None else pack_scenario(run)
        if parameters is not None:  # the fit moves the controller's model, not the plant
            from bpcontrol.pack import model_with_overrides

            sc = same_plant(sc, model_with_overrides(unfitted.pack), run.model)
        check_scenario(sc, run, source=str(scenario or run.spec.pack.source("plant")))
        hours = run.recipe.duration_h if duration is None else duration
        if not (math.isfinite(hours) and 0 < hours <= run.recipe.duration_h + 1e-9):
            raise ValueError(
                f"--duration must be > 0 h and at most the batch ({run.recipe.duration_h:g} h), "
                f"got {duration}"
            )
        if round(hours / run.recipe.measurement_period_h) < 1:
            raise ValueError(
                f"--duration {hours:g} h is shorter than one measurement period "
                f"({run.recipe.measurement_period_h * 60:g} min)"
            )
        if oracle and run.nmpc is None:
            raise ValueError(
                f"--oracle: {run.spec.pack.source('pack')} has no control.toml, whose "
                "economic problem the oracle solves over the whole batch"
            )
        influx = None
        if historian == "influx":
            from services.historian.influx_client import load_config

            influx = load_config(influx_config)
        elif historian != "embedded":
            raise ValueError(f"--historian must be embedded or influx, got {historian!r}")
        elif influx_config is not None:
            raise ValueError("--influx-config goes with --historian influx")
        device = None
        if plant is not None:
            if compare_recipe or oracle:
                raise ValueError(
                    "--plant drives a real device: --compare-recipe and --oracle need the simulator"
                )
            device = _device_plant(plant, device_mapping, device_security, run, speed)
        elif device_mapping is not None or device_security is not None:
            raise ValueError("--device-mapping and --device-security go with --plant")
        if resume is not None:  # the same folder, the same identity
            run_dir = resume
        else:
            run_dir = new_run_dir(out, run.spec.pack.name, run.spec.seed)
            ident = _identity(site, reactor, batch, run_dir.name)
            if spec is not None and batch is None:
                ident = replace(base.identity, run_id=run_dir.name, started_utc=ident.started_utc)
            run = replace(run, spec=replace(run.spec, identity=ident))
        ident = run.spec.identity
        console = Console(file=sys.stderr)  # the real stream: the run captures sys.stderr
        kwargs: dict[str, Any] = {
            "run_dir": run_dir,
            "scenario": sc,
            "speed_up": speed,
            "duration_h": duration,
            "oracle": oracle,  # a failed oracle is an ``oracle_error`` KPI, the rest kept
        }
        if influx is not None:  # one buffer per root of run folders: leftovers go first
            from services.historian.influx import InfluxHistorian

            kwargs["mirror"] = InfluxHistorian(influx, out / "influx-buffer.sqlite", identity=ident)
        if device is not None:  # the device is the plant; the simulator's truth is unknown
            kwargs["wrap_plant"] = lambda _sim: device
            kwargs["report"] = False
            if resume is not None:
                kwargs["resume"] = device.device_time_h
        if console.is_terminal and not as_json:
            label = "batch {task.fields[t]:6.2f} h  {task.fields[mode]:8}"
            with progress_bar(label, console) as bar:
                task = bar.add_task("run", total=hours, t=0.0, mode="")

                def show(snap: LoopSnapshot) -> None:
                    bar.update(task, completed=snap.t_h, t=snap.t_h, mode=snap.mode.value)

                result = run_batch(run, progress=show, **kwargs)
        else:
            result = run_batch(run, **kwargs)
        kpis = dict(result.kpis)
        if device is not None:
            device.close()
            kpis = _device_kpis(kpis, run, result.run_dir)
        ending = result  # the run whose end decides the exit status
        if compare_recipe and run.spec.controller == "nmpc" and result.state == "completed":
            recipe_run = replace(run, spec=replace(run.spec, controller="recipe"))
            base_result = run_batch(
                recipe_run,
                run_dir=run_dir / "recipe-only",
                scenario=sc,
                duration_h=duration,
                report=False,
            )
            if base_result.state == "completed":
                alone = base_result.kpis
                kpis["recipe_only_product"] = alone["final_product"]
                kpis["recipe_only_time_do_below_min_percent"] = alone.get(
                    "time_do_below_min_percent", math.nan
                )
                kpis["product_vs_recipe"] = kpis["final_product"] / alone["final_product"]
                write_json(run_dir / "kpis.json", kpis)
            else:
                ending = base_result
    if as_json:
        typer.echo(json.dumps(kpis, indent=2))
    else:
        Console().print(_kpi_table(kpis, f"run {result.run_dir.name}"))
        typer.echo(f"wrote {result.run_dir / 'records.sqlite'}")
        if result.report is not None:
            typer.echo(f"wrote {result.report}")
    if ending.exit_code != 0:
        fail(RuntimeError(_ending(ending)), ending.exit_code)
