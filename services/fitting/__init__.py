"""Model fitting: weighted least squares of model parameters to recorded batches.

>>> from models import load_model
>>> from services.historian.readback import open_source
>>> from services.fitting import fit
>>> source = open_source("runs/")                         # doctest: +SKIP
>>> batches = [source.batch(b) for b in source.batch_ids()]  # doctest: +SKIP
>>> result = fit(load_model("dompc_batch_reactor"), batches, ["mu_m", "Y_x"])  # doctest: +SKIP

Direct multiple shooting in CasADi, solved by IPOPT with a Gauss-Newton Hessian and exact
sensitivities (:mod:`services.fitting._fit`); statistics, identifiability warnings and the
lack-of-fit tests of the residuals (:mod:`services.fitting._lack_of_fit`) in the
:class:`FitResult`; the format of the data and of the result file in docs/fitting.md.
"""

from services.fitting._data import DEFAULT_SIGMA_FRACTION, ErrorModel, FitError
from services.fitting._fit import AUTO_MAX_NODE_STATES, FitOptions, fit
from services.fitting._lack_of_fit import RUNS_Z_LIMIT, ResidualCheck, check_residuals
from services.fitting._report import fit_report_html, write_fit_report
from services.fitting._result import (
    CORRELATION_LIMIT,
    EIGEN_RATIO_LIMIT,
    Estimate,
    FitResult,
    FitWarning,
    Identifiability,
    ResidualSeries,
    StartOutcome,
    Timing,
)
from services.fitting._toml import result_toml
from services.fitting.handover import (
    FittedParameters,
    HandoverError,
    pack_with_parameters,
    read_fitted,
    write_into_pack,
)

__all__ = [
    "AUTO_MAX_NODE_STATES",
    "CORRELATION_LIMIT",
    "DEFAULT_SIGMA_FRACTION",
    "EIGEN_RATIO_LIMIT",
    "RUNS_Z_LIMIT",
    "ErrorModel",
    "Estimate",
    "FitError",
    "FitOptions",
    "FitResult",
    "FitWarning",
    "FittedParameters",
    "HandoverError",
    "Identifiability",
    "ResidualCheck",
    "ResidualSeries",
    "StartOutcome",
    "Timing",
    "check_residuals",
    "fit",
    "fit_report_html",
    "pack_with_parameters",
    "read_fitted",
    "result_toml",
    "write_fit_report",
    "write_into_pack",
]
