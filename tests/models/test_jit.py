"""Compiling CasADi Functions to C with an on-disk cache, and the fallback without a compiler."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import casadi as ca
import numpy as np
import pytest

from bpcontrol.nmpc._rti import compiled
from models import load_model
from models._jit import compile_functions, compile_in_background


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


def test_background_build_gives_the_same_library_and_shares_one_compiler_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(tmp_path))
    f = _model_rhs()
    first = compile_in_background([f], "test_rhs_bg")
    second = compile_in_background([f], "test_rhs_bg")  # while the first builds
    lib, seconds = first.result(timeout=120)
    assert first.done() and lib is not None and lib.parent == tmp_path and seconds > 0
    assert second.result(timeout=120) == (lib, seconds)  # the same compiler run
    cached = compile_in_background([f], "test_rhs_bg")
    assert cached.done() and cached.result() == (lib, 0.0)
    assert compile_functions([f], "test_rhs_bg") == (lib, 0.0)  # one cache for both
    model = load_model("ecoli_fedbatch")
    ext = ca.external(f.name(), str(lib))
    x, u, p = model.x0, model.u0, model.p0
    np.testing.assert_array_equal(np.asarray(ext(x, u, p)), np.asarray(f(x, u, p)))


@pytest.mark.parametrize("compiler", ["no-such-compiler-bpcontrol", "false"])
def test_background_build_without_a_working_compiler_warns_when_asked(
    compiler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No compiler on PATH: done at once; a compiler that fails: warns at the result."""
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", compiler)
    build = compile_in_background([_model_rhs()], "test_rhs_bg_fail")
    with pytest.warns(RuntimeWarning, match="virtual machine"):
        assert build.result(timeout=60) == (None, 0.0)
    assert list(tmp_path.iterdir()) == []  # no library, no build folder left behind


def test_a_forked_child_does_not_wait_for_the_parents_builder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(tmp_path))
    f = _model_rhs()
    build = compile_in_background([f], "test_rhs_fork")
    pid = os.fork()
    if pid == 0:  # the child: done at once, and a new build of its own would start
        code = 0 if build.done() and build.result()[1] == 0.0 else 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert build.result(timeout=120)[0] is not None


def test_the_library_reaches_the_cache_after_the_process_ended(tmp_path: Path) -> None:
    """The compiler is not tied to the interpreter: exiting at once does not lose it."""
    code = (
        "import casadi as ca; from models._jit import compile_in_background\n"
        "x = ca.SX.sym('x', 3)\n"
        "b = compile_in_background([ca.Function('exit_early', [x], [ca.sin(x) * x])], 'early')\n"
        "assert not b.done()\n"
    )
    env = dict(os.environ, BPCONTROL_JIT_CACHE=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("early_*.so")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(list(tmp_path.glob("early_*.so"))) == 1
    while any(p.is_dir() for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the helper removes its build folder after the move
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".so"]  # + sidecar
