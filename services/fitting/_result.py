"""What a fit returns: estimates, their statistics, warnings, residuals, solver outcome."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from services.fitting._lack_of_fit import ResidualCheck

__all__ = [
    "CORRELATION_LIMIT",
    "EIGEN_RATIO_LIMIT",
    "Estimate",
    "FitResult",
    "FitWarning",
    "Identifiability",
    "ResidualSeries",
    "StartOutcome",
    "Timing",
]

EIGEN_RATIO_LIMIT = 1e-8
"""Near-singular Fisher information: smallest / largest eigenvalue of the Fisher matrix
scaled by the estimates (``D F D``, ``D = diag(|theta|)``, so the ratio does not depend on
units) below this. A ratio ``r`` means some combination of relative parameter changes is
known ``1 / sqrt(r)`` times worse than the best one (here 10^4 times)."""
CORRELATION_LIMIT = 0.95
"""Pairs of estimates whose |correlation| exceeds this are reported."""


class Identifiability(enum.StrEnum):
    """Kinds of identifiability warning."""

    SINGULAR = "near-singular"
    """The Fisher information is near singular; the message names the eigenvector."""
    CORRELATED = "correlated"
    """Two estimates correlate above :data:`CORRELATION_LIMIT`."""
    SPANS_BOUNDS = "interval-spans-bounds"
    """The 95 % interval reaches past both bounds: the data do not fix the parameter."""
    AT_BOUND = "at-bound"
    """The estimate sits on a bound; its statistics assume an interior optimum."""


@dataclass(frozen=True)
class FitWarning:
    """One identifiability warning: kind, the estimates involved and a sentence."""

    kind: Identifiability
    names: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class Estimate:
    """One fitted quantity (a parameter, a per-batch parameter ``name[batch]`` or an initial
    state ``name(0)[batch]``) in its unit, with its statistics.

    ``se`` is the standard error (inf where the Fisher information gives no information),
    ``ci95`` the 95 % confidence interval (t distribution, the fit's degrees of freedom).
    """

    name: str
    unit: str
    value: float
    start: float
    se: float
    ci95: tuple[float, float]
    lower: float
    upper: float

    @property
    def relative_se(self) -> float:
        """``se / |value|`` (inf for a zero estimate)."""
        return self.se / abs(self.value) if self.value else float("inf")


@dataclass(frozen=True, eq=False)
class ResidualSeries:
    """Residuals of one sensor in one batch at the sample times ``t_h``.

    ``weighted = (predicted - measured) / std`` (dimensionless, ~N(0, 1) for a correct model
    and error model).
    """

    batch_id: str
    sensor: str
    t_h: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    std: np.ndarray

    @property
    def weighted(self) -> np.ndarray:
        return (self.predicted - self.measured) / self.std


@dataclass(frozen=True)
class StartOutcome:
    """One start of the multi-start: where it began, how IPOPT ended, what it reached."""

    start: tuple[float, ...]
    status: str
    converged: bool
    objective: float
    iterations: int
    wall_s: float


@dataclass(frozen=True)
class Timing:
    """Wall time (s) of the fit, split by what it was spent on (all starts together).

    ``simulation``: NLP function values (the integrations of every shooting interval and the
    outputs); ``sensitivities``: gradients, constraint Jacobians and the Gauss-Newton
    Hessian (the integrator's forward sensitivities, by CasADi AD); ``optimiser``: IPOPT
    itself (linear algebra, line search); ``build``: setting up the NLP;
    ``statistics``: Fisher information and the rest after the solve.
    """

    build: float
    simulation: float
    sensitivities: float
    optimiser: float
    statistics: float

    @property
    def total(self) -> float:
        return self.build + self.simulation + self.sensitivities + self.optimiser + self.statistics


@dataclass(frozen=True, eq=False)
class FitResult:
    """The outcome of :func:`services.fitting.fit`.

    ``status`` is IPOPT's return status of the best start (``Solve_Succeeded`` when it
    converged); ``converged`` says whether it met IPOPT's tolerance (never an evaluation
    limit). ``ssr`` is the weighted sum of squared residuals, ``residual_variance`` =
    ``ssr / dof`` (about 1 when the error models are right), and the covariance of the
    estimates is ``residual_variance (J' W J)^-1`` (Gauss-Newton Fisher information at the
    optimum, ``J`` the exact sensitivities of the outputs to the estimates through the
    dynamics). ``aic`` and ``bic`` use the Gaussian likelihood with the error models'
    relative weights and a fitted common scale (``n ln(ssr / n) + sum ln std^2 +
    n (1 + ln 2 pi)`` plus ``2 k`` or ``k ln n``, ``k`` = estimates + 1): lower is better
    on the same data.
    """

    model: str
    batches: tuple[str, ...]
    sources: tuple[str, ...]
    estimates: tuple[Estimate, ...]
    correlation: np.ndarray
    fisher: np.ndarray
    eigen_ratio: float
    warnings: tuple[FitWarning, ...]
    n_measurements: int
    dof: int
    ssr: float
    residual_variance: float
    aic: float
    bic: float
    status: str
    converged: bool
    iterations: int
    evaluations: dict[str, int]
    starts: tuple[StartOutcome, ...]
    timing: Timing
    residuals: tuple[ResidualSeries, ...]
    parameters: dict[str, float] = field(default_factory=dict)
    """Shared fitted parameters by name (the model's parameter overrides)."""
    integrator: str = "cvodes"
    """The integrator of the solution: ``"cvodes"``, or ``"rk x2"`` (RK4, 2 steps per
    shooting interval), ``"collocation x4"``."""

    def estimate(self, name: str) -> Estimate:
        """The estimate called ``name`` (``KeyError`` naming the known ones otherwise)."""
        for e in self.estimates:
            if e.name == name:
                return e
        raise KeyError(f"no estimate {name!r}; estimates: {', '.join(self.names)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.estimates)

    def warned(self, kind: Identifiability) -> tuple[FitWarning, ...]:
        """The warnings of one kind."""
        return tuple(w for w in self.warnings if w.kind == kind)

    @property
    def lack_of_fit(self) -> tuple[ResidualCheck, ...]:
        """Runs and sign tests of every sensor's residuals (:mod:`._lack_of_fit`)."""
        from services.fitting._lack_of_fit import check_residuals

        return check_residuals(self.residuals)

    @property
    def systematic(self) -> tuple[ResidualCheck, ...]:
        """The sensors whose residuals show structure the model lacks."""
        return tuple(c for c in self.lack_of_fit if c.systematic)
