"""``bpcontrol hil run SUITE``: run a HIL scenario suite and say whether it passed.

Part of the composition root (it imports ``hil``). The suite is checked before anything
runs (bad input: one ``error:`` line, exit 2). Scenarios run on a local process pool or on
Dask (``--executor dask``, ``--scheduler ADDRESS`` or a LocalCluster); a line per scenario
goes to stderr as it finishes; JUnit XML and an HTML report on request. Exit 0 when every
scenario passed, 1 when any failed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from bpcontrol.cli_common import check_output_file, check_output_folder, fail, user_errors

__all__ = ["hil_app"]

hil_app = typer.Typer(help="Hardware-in-the-loop scenario suites.", no_args_is_help=True)


@hil_app.command("run")
def run_suite_command(
    suite: Annotated[Path, typer.Argument(help="Suite file (TOML, e.g. hil/suites/smoke.toml).")],
    executor: Annotated[
        str, typer.Option(help="'local' (process pool) or 'dask' (distributed).")
    ] = "local",
    scheduler: Annotated[
        str | None,
        typer.Option(help="Dask scheduler address (tcp://host:8786); none: a LocalCluster."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (local pool or LocalCluster).")
    ] = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here.")] = None,
    report: Annotated[Path | None, typer.Option(help="Write the HTML report here.")] = None,
    only: Annotated[
        list[str] | None, typer.Option(help="Run only this scenario (repeatable).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Root folder of the scenarios' run folders.")] = Path(
        "runs/hil"
    ),
    plots: Annotated[
        bool, typer.Option(help="Write each run's report.html with plots (slower).")
    ] = False,
) -> None:
    """Run every scenario of SUITE; print PASS/FAIL per scenario and the criteria failed."""
    from hil.campaign import make_executor, run_campaign
    from hil.hil_report import write_html, write_junit
    from hil.suite import load_suite

    with user_errors():
        the_suite = load_suite(suite)
        if only:
            the_suite = the_suite.only(list(only))
        check_output_folder(out, "--out")
        for path, option in ((junit, "--junit"), (report, "--report")):
            if path is not None:
                check_output_file(path, option)
        pool = make_executor(executor, scheduler=scheduler, workers=workers)
    total = len(the_suite.scenarios)
    sys.stderr.write(f"suite {the_suite.name}: {total} scenarios on {pool.name}\n")
    start = time.perf_counter()

    def show(outcome: object, done: int, n: int) -> None:
        line = outcome.summary_line()  # type: ignore[attr-defined]
        sys.stderr.write(f"[{done}/{n}] {line}\n")
        sys.stderr.flush()

    try:
        outcomes = run_campaign(
            the_suite.scenarios, pool, out_root=out, report=plots, on_outcome=show
        )
    finally:
        pool.close()
    wall = time.perf_counter() - start
    if junit is not None:
        typer.echo(f"wrote {write_junit(junit, the_suite.name, outcomes, suite_path=str(suite))}")
    if report is not None:
        path = write_html(
            report,
            the_suite.name,
            outcomes,
            suite_path=str(suite),
            description=the_suite.description,
            executor=pool.name,
            extra={"campaign wall time (s)": f"{wall:.1f}"},
        )
        typer.echo(f"wrote {path}")
    failed = [o for o in outcomes if not o.passed]
    typer.echo(f"{total - len(failed)} of {total} scenarios passed in {wall:.1f} s")
    if failed:
        names = ", ".join(o.name for o in failed)
        fail(RuntimeError(f"{len(failed)} scenario(s) failed: {names}"), 1)
