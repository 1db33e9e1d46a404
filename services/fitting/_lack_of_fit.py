"""Lack of fit: do the weighted residuals of a sensor look like noise, or like structure?

A model that lacks an effect (product inhibition, a slower oxygen transfer law) can still
fit its batches with plausible parameters; what gives it away is the *order* of its
residuals: long runs of one sign, or most residuals on one side. Two tests per sensor, each
pooled over the batches and independent of the error model's scale (so a wrong sigma does
not trigger them, unlike the residual variance):

- **runs test** (Wald and Wolfowitz 1940, Ann. Math. Stat. 11:147-162): the number of
  sign runs ``R`` of ``n`` residuals (``n1`` positive, ``n2`` negative) has, for
  independent residuals, mean ``1 + 2 n1 n2 / n`` and variance
  ``(mu - 1)(mu - 2) / (n - 1)``; per batch the counts are independent, so means and
  variances add. ``z = (R - mu) / sd`` far below 0 means too few runs: residuals that
  drift together;
- **sign test**: ``n1`` of ``n`` is Binomial(n, 1/2) for residuals symmetric about 0;
  ``z = (n1 - n/2) / sqrt(n/4)``: a prediction biased to one side.

A sensor is flagged when ``z_runs < -RUNS_Z_LIMIT`` or ``|z_sign| > RUNS_Z_LIMIT``: at 3,
about 0.13 % and 0.27 % of correct fits per sensor (normal tails), so a fit of 8 sensors
flags one by chance about 3 % of the time. Residuals of a fitted model are slightly
correlated through the estimates (p of n); with n >> p the normal approximation holds.
Tests need :data:`MIN_READINGS` readings of a sensor over all batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.fitting._result import ResidualSeries

__all__ = ["MIN_READINGS", "RUNS_Z_LIMIT", "ResidualCheck", "check_residuals"]

RUNS_Z_LIMIT = 3.0
"""|z| above which a sensor's residuals are called systematic (module docstring)."""
MIN_READINGS = 20
"""Fewest readings of a sensor (all batches) for the two tests (normal approximation)."""


@dataclass(frozen=True)
class ResidualCheck:
    """The lack-of-fit tests of one sensor's weighted residuals over every batch.

    ``runs_z`` and ``sign_z`` are NaN when there are fewer than :data:`MIN_READINGS`
    readings; ``mean`` and ``rms`` are of the weighted residuals (0 and 1 for a correct
    model and error model); ``worst_batch`` is the batch with the lowest runs z.
    """

    sensor: str
    n: int
    runs_z: float
    sign_z: float
    mean: float
    rms: float
    worst_batch: str

    @property
    def systematic(self) -> bool:
        """Whether the residuals show structure (module docstring's thresholds)."""
        return self.runs_z < -RUNS_Z_LIMIT or abs(self.sign_z) > RUNS_Z_LIMIT

    @property
    def message(self) -> str:
        """One sentence for the report and the command line."""
        side = "over" if self.mean > 0 else "under"
        return (
            f"{self.sensor}: systematic residuals (runs z = {self.runs_z:+.1f}, sign z = "
            f"{self.sign_z:+.1f}; |z| > {RUNS_Z_LIMIT:g} for noise in 0.4 % of fits; the "
            f"model {side}-predicts on average by {abs(self.mean):.2g} std, worst in "
            f"{self.worst_batch}): the model lacks an effect this sensor sees"
        )


def _runs(w: np.ndarray) -> tuple[int, float, float]:
    """(runs, expected runs, variance) of the signs of ``w`` (zeros left out)."""
    s = np.sign(w[w != 0.0])
    n = s.size
    n1 = int(np.count_nonzero(s > 0))
    n2 = n - n1
    if n < 2 or n1 == 0 or n2 == 0:
        return (1 if n else 0), (1.0 if n else 0.0), 0.0
    runs = 1 + int(np.count_nonzero(s[1:] != s[:-1]))
    mu = 1.0 + 2.0 * n1 * n2 / n
    var = (mu - 1.0) * (mu - 2.0) / (n - 1.0)
    return runs, mu, var


def check_residuals(residuals: Sequence[ResidualSeries]) -> tuple[ResidualCheck, ...]:
    """One :class:`ResidualCheck` per sensor (in order of first appearance)."""
    by_sensor: dict[str, list[ResidualSeries]] = {}
    for r in residuals:
        by_sensor.setdefault(r.sensor, []).append(r)
    out = []
    for sensor, series in by_sensor.items():
        ws = [np.asarray(r.weighted, dtype=float) for r in series]
        w_all = np.concatenate(ws) if ws else np.empty(0)
        w_all = w_all[np.isfinite(w_all)]
        n = int(w_all.size)
        runs = mu = var = 0.0
        worst, worst_z = series[0].batch_id, math.inf
        for r, w in zip(series, ws, strict=True):
            rb, mb, vb = _runs(w[np.isfinite(w)])
            runs, mu, var = runs + rb, mu + mb, var + vb
            zb = (rb - mb) / math.sqrt(vb) if vb > 0 else 0.0
            if zb < worst_z:
                worst, worst_z = r.batch_id, zb
        nz = w_all[w_all != 0.0]
        if n >= MIN_READINGS and nz.size:
            runs_z = (runs - mu) / math.sqrt(var) if var > 0 else 0.0
            sign_z = (np.count_nonzero(nz > 0) - nz.size / 2.0) / math.sqrt(nz.size / 4.0)
        else:
            runs_z = sign_z = math.nan
        out.append(
            ResidualCheck(
                sensor,
                n,
                float(runs_z),
                float(sign_z),
                float(np.mean(w_all)) if n else math.nan,
                float(np.sqrt(np.mean(w_all**2))) if n else math.nan,
                worst,
            )
        )
    return tuple(out)
