"""Read a TOML file of the user's (a pack file, a recipe, a run spec, a scenario) with one
clear error line naming the file: missing or unreadable, not UTF-8, not valid TOML."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

__all__ = ["read_toml"]


def read_toml(path: str | Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The document in ``path``; raises ``error`` with ``"<path>: <problem>"`` otherwise.

    ``what`` names the file's role in the message (``"recipe"``, ``"run spec"``, ...).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from None
