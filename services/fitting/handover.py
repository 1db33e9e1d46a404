"""Hand a fit over to the loop: fitted parameters into a pack, or as a run's parameter file.

Two ways, both re-validated against the model's declared parameter ranges by the pack
loader (:func:`bpcontrol.pack.model_with_overrides`) before anything is written:

- :func:`write_into_pack` puts the fitted values into the ``[parameters]`` table of a
  pack's ``pack.toml`` (``--write-pack``: that pack; ``--into-pack DIR2``: a copy of it).
  Overrides the fit did not touch are kept, the rest of the file is kept as written
  (comments included), and a comment block above ``[parameters]`` names the model, the
  data, the batches, the date and the result file. (The block is a comment because the
  pack loader refuses unknown tables in ``pack.toml``.) The file is replaced atomically;
  a copy is built in a temporary sibling folder and renamed into place.
- :func:`pack_with_parameters` applies a result file (``bpcontrol fit --out``, format in
  :mod:`services.fitting._toml`) to a loaded pack for one run
  (``bpcontrol run --pack DIR --parameters fit.toml``), without touching the pack.

Every problem is one :class:`HandoverError` line naming the file and the key; nothing is
written then.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpcontrol.pack import PackError, ProcessPack, load_pack, model_with_overrides
from models import ModelError, load_model

if TYPE_CHECKING:
    from services.fitting._result import FitResult

__all__ = [
    "FittedParameters",
    "HandoverError",
    "PackUpdate",
    "apply_pack_update",
    "fitted_from_result",
    "pack_with_parameters",
    "plan_pack_update",
    "read_fitted",
    "write_into_pack",
]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_MARK = "# >>> bpcontrol fit"
"""First line of the provenance comment block (a later hand-over replaces the block)."""
_MARK_END = "# <<< bpcontrol fit"


class HandoverError(ValueError):
    """A hand-over that cannot be done; one line naming the file and the key."""


@dataclass(frozen=True)
class FittedParameters:
    """Fitted values to hand over, with where they came from.

    ``values``: parameter name -> (value, unit) in the model's units; ``model``: the name
    of the fitted model; ``data``: the path the batches were read from; ``result_file``:
    the fit's result file (empty when not written yet).
    """

    values: Mapping[str, tuple[float, str]]
    model: str
    data: str
    batches: tuple[str, ...]
    created_utc: str
    result_file: str = ""


def fitted_from_result(result: FitResult, *, data: str, result_file: str) -> FittedParameters:
    """The shared fitted parameters of ``result`` (per-batch values are not a pack's)."""
    units = {e.name: e.unit for e in result.estimates}
    return FittedParameters(
        values={n: (float(v), units[n]) for n, v in result.parameters.items()},
        model=result.model,
        data=data,
        batches=tuple(result.batches),
        created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
        result_file=result_file,
    )


def read_fitted(path: str | Path) -> FittedParameters:
    """Read a fit's result file (``[parameters]`` and ``[fit]``, :mod:`._toml`)."""
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HandoverError(f"{p}: parameter file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HandoverError(f"{p}: cannot read the parameter file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise HandoverError(f"{p}: not valid TOML: {exc}") from None
    params = doc.get("parameters")
    if not isinstance(params, Mapping) or not params:
        raise HandoverError(f"{p}: [parameters]: missing or empty (a `bpcontrol fit` result)")
    values: dict[str, tuple[float, str]] = {}
    for name, entry in params.items():
        where = f"{p}: parameters.{name}"
        unit = ""
        raw = entry
        if isinstance(entry, Mapping):
            if "value" not in entry or set(entry) - {"value", "unit"}:
                raise HandoverError(f"{where}: must be a number or {{ value = ..., unit = ... }}")
            raw, unit = entry["value"], entry.get("unit", "")
            if not isinstance(unit, str):
                raise HandoverError(f"{where}.unit: must be a string, got {unit!r}")
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            raise HandoverError(f"{where}: must be a finite number, got {raw!r}")
        values[str(name)] = (float(raw), unit)
    fit = doc.get("fit", {})
    if not isinstance(fit, Mapping):
        raise HandoverError(f"{p}: [fit] must be a table")
    model = fit.get("model", "")
    batches = fit.get("batches", [])
    return FittedParameters(
        values=values,
        model=str(model),
        data=str(fit.get("data", "")),
        batches=tuple(str(b) for b in batches) if isinstance(batches, list) else (),
        created_utc=str(fit.get("created_utc", "")),
        result_file=str(p.resolve()),
    )


def _check_model(fitted: FittedParameters, pack: ProcessPack, where: str) -> None:
    """Refuse values fitted to another model than the pack's."""
    if not fitted.model:
        return
    try:
        name = load_model(pack.model).name
    except ModelError as exc:
        raise HandoverError(f"{pack.source('pack')}: model: {exc}") from None
    if name != fitted.model:
        raise HandoverError(
            f"{where}: fitted model {fitted.model!r}, but pack {pack.source('pack')} "
            f"runs model {name!r}"
        )


def _entries(fitted: FittedParameters) -> dict[str, Any]:
    """The values as ``[parameters]`` entries (unit given where known)."""
    return {n: ({"value": v, "unit": u} if u else v) for n, (v, u) in sorted(fitted.values.items())}


def _validated(pack: ProcessPack, parameters: Mapping[str, Any], source: str) -> ProcessPack:
    """``pack`` with ``parameters``, checked against the model's ranges (errors name
    ``source``)."""
    probe = replace(pack, parameters=dict(parameters), bounds={}, sources={"pack": source})
    try:
        model_with_overrides(probe)
    except PackError as exc:
        raise HandoverError(str(exc)) from None
    return replace(pack, parameters=dict(parameters))


def pack_with_parameters(pack: ProcessPack, path: str | Path) -> ProcessPack:
    """``pack`` with the fitted parameters of the result file at ``path`` over its own
    overrides (for one run; the pack's files are not touched). The file's values are
    checked against the model's ranges, and errors name the file and the key."""
    fitted = read_fitted(path)
    _check_model(fitted, pack, str(path))
    entries = _entries(fitted)
    _validated(pack, entries, str(path))
    merged = {**dict(pack.parameters), **entries}
    sources = {**dict(pack.sources), "parameters": str(Path(path).resolve())}
    return replace(_validated(pack, merged, pack.source("pack")), sources=sources)


# --------------------------------------------------------------------------------------
# Writing pack.toml
# --------------------------------------------------------------------------------------


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _value(raw: Any) -> str:
    """One ``[parameters]`` value as TOML (a number or an inline value/unit table)."""
    if isinstance(raw, Mapping):
        parts = [f"{_key(str(k))} = {_value(v)}" for k, v in raw.items()]
        return "{ " + ", ".join(parts) + " }"
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float):
        return repr(raw)
    if isinstance(raw, int):
        return str(raw)
    return json.dumps(str(raw))  # a basic string: JSON's escapes are TOML's


def _strip_parameters(text: str) -> tuple[list[str], int | None]:
    """The lines of ``text`` without its ``[parameters]`` table(s) and without an earlier
    hand-over's comment block; the index where the table was (None: there was none)."""
    lines = text.splitlines()
    out: list[str] = []
    at: int | None = None
    skipping = in_mark = False
    for line in lines:
        if line.startswith(_MARK):
            in_mark = True
            at = len(out) if at is None else at
            continue
        if in_mark:
            in_mark = not line.startswith(_MARK_END)
            continue
        m = _HEADER.match(line)
        if m:
            name = m.group(1).strip()
            skipping = name == "parameters" or name.startswith("parameters.")
            if skipping and at is None:
                at = len(out)
        if not skipping:
            out.append(line)
    return out, at


@dataclass(frozen=True)
class PackUpdate:
    """A checked hand-over, not yet written: ``text`` goes to ``target/pack.toml``;
    ``copy_from`` is the pack folder to copy first (None: ``target`` is that pack)."""

    target: Path
    text: str
    copy_from: Path | None
    parameters: Mapping[str, Any]


def plan_pack_update(
    fitted: FittedParameters, pack_dir: str | Path, *, into: str | Path | None = None
) -> PackUpdate:
    """Check a hand-over of ``fitted`` into ``pack_dir`` (or into a copy at ``into``, a
    folder that must not exist yet) and return the new ``pack.toml`` text; writes nothing.
    """
    src = Path(pack_dir)
    try:
        pack = load_pack(src)
    except PackError as exc:
        raise HandoverError(str(exc)) from None
    pack_toml = src / "pack.toml"
    _check_model(fitted, pack, fitted.result_file or "the fit")
    if into is not None and os.path.lexists(into):
        raise HandoverError(f"--into-pack {into}: already exists (give a new folder)")
    if not fitted.values:
        raise HandoverError(f"{fitted.result_file or 'the fit'}: no shared parameters to hand over")
    kept = {k: v for k, v in pack.parameters.items() if k not in fitted.values}
    merged = {**kept, **_entries(fitted)}
    _validated(pack, merged, str(pack_toml))
    try:
        original = pack_toml.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise HandoverError(f"{pack_toml}: cannot read: {exc}") from None
    lines, at = _strip_parameters(original)
    block = [
        f"{_MARK} hand-over, {fitted.created_utc or datetime.now(UTC).isoformat()}:",
        f"# model {fitted.model or '?'} fitted to batches {', '.join(fitted.batches) or '?'}",
        f"# of {fitted.data or '?'}",
        f"# result file (SE, 95 % intervals, warnings): {fitted.result_file or '(not written)'}",
        f"# fitted: {', '.join(sorted(fitted.values))}"
        + (f"; kept from before: {', '.join(sorted(kept))}" if kept else ""),
        _MARK_END,
        "[parameters]",
        *(f"{_key(k)} = {_value(v)}" for k, v in merged.items()),
    ]
    if at is None:
        while lines and not lines[-1].strip():
            lines.pop()
        new_lines = [*lines, "", *block]
    else:
        new_lines = [*lines[:at], *block, "", *lines[at:]]
    text = "\n".join(new_lines).rstrip("\n") + "\n"
    # the surgery must leave the rest of the document as it was, parameters as merged
    try:
        before, after = tomllib.loads(original), tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HandoverError(f"{pack_toml}: cannot rewrite [parameters]: {exc}") from None
    before.pop("parameters", None)
    got = after.pop("parameters", {})
    if before != after or got != merged:
        raise HandoverError(
            f"{pack_toml}: parameters: cannot rewrite this file's [parameters] in place "
            "(dotted parameters.* keys?); write them as one [parameters] table"
        )
    target = Path(into) if into is not None else src
    return PackUpdate(target, text, src if into is not None else None, merged)


def apply_pack_update(update: PackUpdate) -> Path:
    """Write a planned hand-over (atomically: a temporary file or folder, then a rename);
    returns the ``pack.toml`` written."""
    if update.copy_from is not None:
        parent = update.target.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{update.target.name}.", dir=parent))
        try:
            shutil.copytree(update.copy_from, tmp, dirs_exist_ok=True)
            (tmp / "pack.toml").write_text(update.text, encoding="utf-8")
            os.rename(tmp, update.target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return update.target / "pack.toml"
    path = update.target / "pack.toml"
    fd, tmp_name = tempfile.mkstemp(prefix=".pack.toml.", dir=update.target)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(update.text)
        shutil.copymode(path, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_into_pack(
    fitted: FittedParameters | str | Path,
    pack_dir: str | Path,
    *,
    into: str | Path | None = None,
) -> Path:
    """Write fitted parameters (a :class:`FittedParameters` or a result file's path) into
    ``pack_dir``'s ``pack.toml``, or into a new copy of the pack at ``into``; returns the
    ``pack.toml`` written. Checked first (:func:`plan_pack_update`): on any problem a
    :class:`HandoverError` and nothing written."""
    if not isinstance(fitted, FittedParameters):
        fitted = read_fitted(fitted)
    return apply_pack_update(plan_pack_update(fitted, pack_dir, into=into))
