"""``bpcontrol audit verify FILE``: check the live API's tamper-evident audit file.

Exit 0 and ``OK`` when the chain is intact; exit 1 with one line per finding (modified,
inserted, reordered or deleted entries, each named by seq and line) when it is not; exit 2
for a file that cannot be read. A deleted last entry leaves an intact chain: it shows
against the head the service printed (``--head SEQ:HASH``) or against the historian, which
keeps every audit record too (``--historian records.sqlite``, repeatable, one per reactor:
each operator audit record missing from the file is named, the last one included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bpcontrol.cli_common import EXIT_USAGE, fail

__all__ = ["audit_app"]

audit_app = typer.Typer(
    help="The live API's audit trail (JSON lines, SHA-256 hash chain).", no_args_is_help=True
)


@audit_app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="The audit file (JSON lines).")],
    head: Annotated[
        str | None,
        typer.Option(help="The last entry as SEQ:HASH (the service logs it); detects a cut tail."),
    ] = None,
    historian: Annotated[
        list[Path] | None,
        typer.Option(
            help="A reactor's historian file (records.sqlite; repeatable): name every audit "
            "record it keeps that the file lacks (a cut tail too), and the reverse."
        ),
    ] = None,
) -> None:
    """Check every entry's hash, numbering and link; name each tampered entry."""
    from services.api.audit import cross_check_historian, verify_audit_file
    from services.historian import HistorianError

    try:
        problems = verify_audit_file(file, head=head)
    except (OSError, UnicodeError) as exc:
        fail(ValueError(f"{file}: cannot read the audit file ({exc})"), EXIT_USAGE)
    for path in historian or []:
        try:
            problems += cross_check_historian(file, [path])
        except (OSError, UnicodeError, HistorianError) as exc:
            fail(ValueError(f"--historian {path}: cannot read the historian ({exc})"), EXIT_USAGE)
    if problems:
        for problem in problems:
            typer.echo(f"{file}: {problem}")
        typer.echo(f"{file}: TAMPERED ({len(problems)} finding(s))")
        raise typer.Exit(1)
    typer.echo(f"{file}: OK")
