"""Compiling CasADi Functions to C with an on-disk cache, and the fallback without a compiler."""

from __future__ import annotations

from pathlib import Path

import casadi as ca
import numpy as np
import pytest

from bpcontrol.nmpc._rti import compiled
from models import load_model
from models._jit import compile_functions


def _model_rhs() -> ca.Function:
    cas = load_model("ecoli_fedbatch").to_casadi()
    return cas.f


def test_compiled_library_matches_the_vm_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(tmp_path))
    f = _model_rhs()
    lib, seconds = compile_functions([f], "test_rhs")
    assert lib is not None and lib.parent == tmp_path and seconds > 0
    again, seconds_again = compile_functions([f], "test_rhs")
    assert again == lib and seconds_again == 0.0  # from the cache, no compiler run
    model = load_model("ecoli_fedbatch")
    ext = ca.external(f.name(), str(lib))
    for scale in (0.5, 1.0, 1.5):
        x, u, p = model.x0 * scale, model.u0, model.p0
        np.testing.assert_allclose(
            np.asarray(ext(x, u, p)), np.asarray(f(x, u, p)), rtol=1e-14, atol=1e-14
        )


def test_without_a_compiler_it_warns_and_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-bpcontrol")
    f = _model_rhs()
    with pytest.warns(RuntimeWarning, match="virtual machine"):
        assert compile_functions([f], "test_rhs") == (None, 0.0)
    with pytest.warns(RuntimeWarning, match="virtual machine"):
        assert compiled(f) is f
