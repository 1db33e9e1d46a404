"""The loop's estimate carries the tracked parameters' standard deviations, which robust
NMPC's ``sigma_factors`` sample their scenarios from (NaN for parameters not estimated)."""

from __future__ import annotations

import numpy as np

from bpcontrol.adapters import LoopEstimator
from estimators import CompiledEKF, OnlineEstimator, Reading, default_ekf_config
from models import load_model


def test_estimate_has_the_tracked_parameters_sigma_and_nan_elsewhere() -> None:
    model = load_model("ecoli_fedbatch")
    cfg = default_ekf_config(model)
    assert cfg.tracked  # the E. coli filter tracks mu_max and Y_xs
    est = LoopEstimator(OnlineEstimator(CompiledEKF(model, cfg)), model.x0)
    out = est.step(1.0 / 60.0, model.u0, [Reading(cfg.sensors[0].output, 95.0)])
    p_sigma = out.estimate.p_sigma
    assert p_sigma is not None and p_sigma.shape == (model.n_p,)
    tracked = [model.index(tp.name) for tp in cfg.tracked]
    for tp, i in zip(cfg.tracked, tracked, strict=True):
        # the record and the estimate say the same; after one minute the std is still
        # about the prior's (drift per sqrt(h) times sqrt(1/60 h) at most added)
        assert p_sigma[i] == out.record.parameter_sigma[tp.name]
        assert 0.5 * tp.sigma0 <= p_sigma[i] <= tp.sigma0 + tp.drift_per_sqrt_h
    others = np.setdiff1d(np.arange(model.n_p), tracked)
    assert np.all(np.isnan(p_sigma[others]))
