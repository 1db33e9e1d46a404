"""The fit's result file: the fitted parameters as a pack's parameter overrides, with the
data they came from.

``[parameters]`` has the same form as the ``[parameters]`` table of ``pack.toml``
(``name = { value = ..., unit = "..." }``, see :mod:`bpcontrol.pack`), so it can be copied
into a pack as it is; ``[fit]`` says where the values came from and how good they are.
Per-batch estimates and estimated initial states are listed under ``[fit.per_batch]``
(they are not overrides of a pack: a pack has one value per parameter).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import tomli_w

from services.fitting._result import FitResult

__all__ = ["result_toml"]


def _num(v: float) -> float | str:
    return v if math.isfinite(v) else str(v)


def result_toml(
    result: FitResult, *, data: str, pack: str | None = None, report: str | None = None
) -> str:
    """The result file's text (module docstring); ``data``: the path the batches came from;
    ``pack``: the pack folder whose model was fitted, if any; ``report``: the fit's HTML
    report, if one is written."""
    by_name = {e.name: e for e in result.estimates}
    params = {
        name: {"value": value, "unit": by_name[name].unit}
        for name, value in result.parameters.items()
    }
    fit: dict[str, Any] = {
        "model": result.model,
        "data": data,
        "sources": list(result.sources),
        "batches": list(result.batches),
        "sensors": sorted({r.sensor for r in result.residuals}),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "status": result.status,
        "converged": result.converged,
        "n_measurements": result.n_measurements,
        "ssr": _num(result.ssr),
        "residual_variance": _num(result.residual_variance),
        "aic": _num(result.aic),
        "bic": _num(result.bic),
        "standard_errors": {e.name: _num(e.se) for e in result.estimates if e.name in params},
        "ci95": {
            e.name: [_num(e.ci95[0]), _num(e.ci95[1])] for e in result.estimates if e.name in params
        },
        "warnings": [w.message for w in result.warnings],
        "systematic_residuals": [c.message for c in result.systematic],
    }
    if pack is not None:
        fit["pack"] = pack
    if report is not None:
        fit["report"] = report
    per_batch = {
        e.name: {"value": e.value, "unit": e.unit, "se": _num(e.se)}
        for e in result.estimates
        if e.name not in params
    }
    if per_batch:
        fit["per_batch"] = per_batch
    head = (
        f"# bpcontrol fit of model {result.model!r}: copy [parameters] into a pack's pack.toml\n"
        "# (same form as its [parameters] table); [fit] names the data and the fit's quality.\n"
    )
    return head + tomli_w.dumps({"parameters": params, "fit": fit})
