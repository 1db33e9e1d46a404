"""``bpcontrol pack init`` and ``bpcontrol pack check``: write and validate process packs.

Light at import time (heavy imports inside the commands), like the rest of the CLI.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from bpcontrol.cli_common import user_errors

__all__ = ["pack_app"]

pack_app = typer.Typer(
    help="Process packs: one folder per process (model, recipe, estimator, controller).",
    no_args_is_help=True,
)


@pack_app.command("init")
def init_command(
    directory: Annotated[Path, typer.Argument(help="Folder to write the pack into.")],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Built-in model name or a .py model file.")
    ],
    force: Annotated[bool, typer.Option(help="Overwrite existing pack files.")] = False,
) -> None:
    """Write an editable pack with commented defaults derived from the model."""
    from bpcontrol.pack_template import write_pack

    with user_errors():
        written = write_pack(model, directory, force=force)
    for path in written:
        typer.echo(f"wrote {path}")
    typer.echo(f"next: edit the files, then `bpcontrol pack check {directory}`")


@pack_app.command("check")
def check_command(
    directory: Annotated[Path, typer.Argument(help="The pack folder.")],
) -> None:
    """Validate a pack without running it: every file, name, unit and range."""
    from bpcontrol.runspec import resolve, spec_for
    from hil.runner import check_scenario, pack_scenario

    with user_errors():
        spec = spec_for(directory)
        if spec.pack.control is None:
            spec = replace(spec, controller="recipe")
        run = resolve(spec)
        check_scenario(pack_scenario(run), run, source=run.spec.pack.source("plant"))
    table = Table(title=f"pack {spec.pack.name}: ok", title_justify="left")
    table.add_column("part")
    table.add_column("summary")
    model, recipe = run.model, run.recipe
    table.add_row("model", f"{model.name}: {model.nx} states, {model.nu} inputs")
    table.add_row(
        "recipe",
        f"{recipe.duration_h:g} h, measure every {recipe.measurement_period_h * 60:g} min, "
        f"control every {recipe.control_period_h * 60:g} min, "
        f"phases {', '.join(p.name for p in recipe.phases)}",
    )
    online = [i.output for i in run.instruments if i.kind == "online"]
    offline = [i.output for i in run.instruments if i.kind == "offline"]
    sensors = f"online {', '.join(online) or '-'}; offline {', '.join(offline) or '-'}"
    table.add_row("sensors", sensors)
    tracked = ", ".join(run.ekf.tracked_names) or "no parameters"
    table.add_row("estimator", f"tracks {tracked}")
    if run.nmpc is None:
        table.add_row("controller", "none (recipe only)")
    else:
        cfg = run.nmpc
        table.add_row(
            "controller",
            f"{cfg.solver}, horizon {cfg.horizon} x {cfg.dt_h * 60:g} min ({cfg.horizon_mode}), "
            f"deadline {run.deadline_s:.3g} s, soft bounds "
            f"{', '.join(b.name for b in cfg.soft_bounds) or '-'}",
        )
    table.add_row("product", run.kpis.product or "-")
    Console().print(table)
