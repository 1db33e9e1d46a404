"""The JIT cache checks what it loads: every kind of damaged entry is rebuilt with one
warning (or refused: CasADi's virtual machine), never ``dlopen``-ed.

Each test builds a tiny CasADi Function with the real compiler into a cache folder of its
own (``BPCONTROL_JIT_CACHE``), damages the entry and asks again. A library is loaded in
this process only after the call under test (``dlopen`` keeps a library once loaded by
its path, so loading the good one first would hide a damaged one that is loaded after).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import casadi as ca
import numpy as np
import pytest

from bpcontrol.nmpc._rti import compiled
from models._jit import compile_functions, compile_in_background

REPO = Path(__file__).resolve().parents[2]
NAME = "jit_cache_tiny"
"""The library name; the Function inside is ``jit_tiny``."""
POINTS = ([0.3, -1.2, 2.5], [0.0, 1.0, -0.5], [4.0, 0.25, -3.0])


def _tiny() -> ca.Function:
    """Compiles in a fraction of a second."""
    x = ca.SX.sym("x", 3)
    return ca.Function("jit_tiny", [x], [ca.sin(x) * x + ca.exp(-x)])


def _impostor() -> ca.Function:
    """Another function of the same name and signature, other results: what an attacker
    would put under the library's name."""
    x = ca.SX.sym("x", 3)
    return ca.Function("jit_tiny", [x], [7.0 * ca.cos(x)])


def _sidecar(lib: Path) -> Path:
    return lib.with_name(lib.name + ".json")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache folder (not there yet, nor its parent) for this test only."""
    folder = tmp_path / "home" / "jit"
    monkeypatch.setenv("BPCONTROL_JIT_CACHE", str(folder))
    return folder


def _build() -> Path:
    """A library of :func:`_tiny` in the cache, compiled now (not loaded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lib, seconds = compile_functions([_tiny()], NAME)
    assert lib is not None and seconds > 0
    return lib


def _assert_correct(lib: Path) -> None:
    """The library computes what the virtual machine does (the impostor would not)."""
    ext, vm = ca.external("jit_tiny", str(lib)), _tiny()
    for x in POINTS:
        np.testing.assert_allclose(np.asarray(ext(x)), np.asarray(vm(x)), rtol=1e-13, atol=1e-15)


def _assert_entry_private_and_valid(lib: Path) -> None:
    """Library 0o700, sidecar 0o600, and the sidecar records this library's bytes."""
    assert stat.S_IMODE(lib.stat().st_mode) == 0o700
    assert stat.S_IMODE(_sidecar(lib).stat().st_mode) == 0o600
    record = json.loads(_sidecar(lib).read_text())
    assert record["library"] == lib.name and record["library_size"] == lib.stat().st_size
    assert record["library_sha256"] == hashlib.sha256(lib.read_bytes()).hexdigest()


def _assert_rebuilt_with_one_warning(lib: Path, reason: str) -> None:
    """Asking again warns once (naming the file and ``reason``), rebuilds the library,
    which then is correct and served from the cache without a warning."""
    with pytest.warns(RuntimeWarning) as record:
        again, seconds = compile_functions([_tiny()], NAME)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert str(lib) in messages[0] and reason in messages[0] and "rebuilding" in messages[0]
    assert again == lib and seconds > 0  # compiled anew
    _assert_correct(lib)
    _assert_entry_private_and_valid(lib)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_functions([_tiny()], NAME) == (lib, 0.0)


def test_a_fresh_cache_is_private_and_its_entries_carry_a_sidecar(cache: Path) -> None:
    lib = _build()
    assert lib.parent == cache
    for folder in (cache, cache.parent):  # created by the cache, parents included
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    _assert_entry_private_and_valid(lib)
    record = json.loads(_sidecar(lib).read_text())
    assert record["compiler"] == "cc" and record["flags"] == ["-O1", "-fPIC", "-shared"]
    assert record["casadi"] == ca.CasadiMeta.version()
    assert sorted(p.name for p in cache.iterdir()) == [lib.name, _sidecar(lib).name]
    assert compile_functions([_tiny()], NAME) == (lib, 0.0)
    _assert_correct(lib)


def test_a_truncated_library_is_rebuilt_not_loaded(cache: Path) -> None:
    lib = _build()
    lib.write_bytes(lib.read_bytes()[:1000])  # ELF headers intact, the rest cut off
    _assert_rebuilt_with_one_warning(lib, "truncated")


def test_a_truncated_library_does_not_kill_a_fresh_process(cache: Path) -> None:
    """Loading it unchecked dies of SIGBUS with nothing on stderr; through the cache the
    process goes on, with exactly one line on stderr: the warning naming the file."""
    lib = _build()
    lib.write_bytes(lib.read_bytes()[:1000])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    load_raw = f"import casadi as ca; ca.external('jit_tiny', {str(lib)!r})"
    raw = subprocess.run(
        [sys.executable, "-c", load_raw], capture_output=True, text=True, env=env, timeout=120
    )
    assert raw.returncode != 0  # what the cache spares its callers (here: SIGBUS)
    code = textwrap.dedent(
        f"""
        import casadi as ca
        from models._jit import compile_functions
        x = ca.SX.sym("x", 3)
        f = ca.Function("jit_tiny", [x], [ca.sin(x) * x + ca.exp(-x)])
        lib, seconds = compile_functions([f], {NAME!r})
        ext = ca.external("jit_tiny", str(lib))
        print(lib)
        print(max(float(ca.norm_inf(ext(v) - f(v))) for v in {POINTS!r}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "RuntimeWarning" in lines[0] and str(lib) in lines[0] and "truncated" in lines[0]
    printed_lib, error = proc.stdout.split()
    assert printed_lib == str(lib) and float(error) <= 1e-13
    _assert_entry_private_and_valid(lib)


def test_garbage_under_the_librarys_name_is_rebuilt(cache: Path) -> None:
    lib = _build()
    size = lib.stat().st_size
    lib.write_bytes(np.random.default_rng(0).bytes(size))  # same size: the hash decides
    _assert_rebuilt_with_one_warning(lib, "SHA-256")


@pytest.mark.parametrize("with_its_sidecar", [False, True])
def test_another_library_under_the_expected_name_is_not_loaded(
    cache: Path, with_its_sidecar: bool
) -> None:
    """A valid library of another function put in place of ours (code injection), alone
    or with its own sidecar: its hash, or its sidecar's fields, do not match."""
    lib = _build()
    other, _ = compile_functions([_impostor()], "jit_cache_impostor")
    assert other is not None and other != lib
    os.replace(other, lib)
    if with_its_sidecar:
        os.replace(_sidecar(other), _sidecar(lib))
    reason = "records another library" if with_its_sidecar else "replaced"
    _assert_rebuilt_with_one_warning(lib, reason)


def test_a_library_without_its_sidecar_is_rebuilt(cache: Path) -> None:
    lib = _build()
    _sidecar(lib).unlink()
    _assert_rebuilt_with_one_warning(lib, f"no sidecar {_sidecar(lib).name}")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source_sha256", "0" * 64),
        ("flags", ["-O3", "-fPIC", "-shared"]),
        ("library_sha256", "f" * 64),
        ("library_size", 1000),
    ],
)
def test_a_sidecar_that_does_not_match_is_rebuilt(cache: Path, field: str, value: object) -> None:
    lib = _build()
    record = json.loads(_sidecar(lib).read_text())
    record[field] = value
    _sidecar(lib).write_text(json.dumps(record))
    reason = {"library_sha256": "SHA-256", "library_size": "records 1000"}.get(
        field, f"records another {field}"
    )
    _assert_rebuilt_with_one_warning(lib, reason)


def test_a_sidecar_that_is_not_json_is_rebuilt(cache: Path) -> None:
    lib = _build()
    _sidecar(lib).write_bytes(b"\x7fELF not json")
    _assert_rebuilt_with_one_warning(lib, "not a sidecar")


@pytest.mark.parametrize("mode", [0o722, 0o766, 0o666])
def test_a_library_writable_by_group_or_others_is_rebuilt(cache: Path, mode: int) -> None:
    lib = _build()
    lib.chmod(mode)
    _assert_rebuilt_with_one_warning(lib, "writable by group or others")
    assert lib.stat().st_mode & 0o022 == 0


def test_a_symbolic_link_under_the_librarys_name_is_rebuilt(cache: Path, tmp_path: Path) -> None:
    lib = _build()
    elsewhere = tmp_path / "elsewhere.so"
    os.replace(lib, elsewhere)
    lib.symlink_to(elsewhere)  # the very bytes the sidecar records, but not in the cache
    _assert_rebuilt_with_one_warning(lib, "symbolic link")
    assert not lib.is_symlink() and elsewhere.exists()  # the link replaced, its target kept


def _refused(cache: Path, damage: Callable[[Path], None], reason: str) -> None:
    """A valid library is in ``cache``; after ``damage(cache)`` it is not handed out: None
    with one warning naming the folder and ``reason`` (only the first time in this
    process), on both paths and through a caller (the RTI's ``compiled``); nothing is
    built, changed or left in the folder."""
    lib = _build()
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    damage(cache)
    with pytest.warns(RuntimeWarning) as record:
        assert compile_functions([_tiny()], NAME) == (None, 0.0)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert str(cache) in messages[0] and reason in messages[0] and "virtual machine" in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once: not again
        assert compile_functions([_tiny()], NAME) == (None, 0.0)
        assert compile_in_background([_tiny()], NAME).result(timeout=60) == (None, 0.0)
        vm = _tiny()
        assert compiled(vm) is vm
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert lib.exists()


def test_a_cache_folder_writable_by_others_is_refused(cache: Path) -> None:
    _refused(cache, lambda folder: folder.chmod(0o777), "writable by group or others")


def test_a_cache_folder_writable_by_the_group_is_refused_in_the_background(cache: Path) -> None:
    """The first to meet the folder is a background build: it warns at its result."""
    cache.mkdir(mode=0o700, parents=True)
    cache.chmod(0o770)
    with pytest.warns(RuntimeWarning, match="writable by group or others") as record:
        build = compile_in_background([_tiny()], NAME)
        assert build.done() and build.result() == (None, 0.0)
    assert len(record) == 1 and str(cache) in str(record[0].message)
    assert list(cache.iterdir()) == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to give the folder away"
)
def test_a_cache_folder_of_another_user_is_refused(cache: Path) -> None:
    _refused(cache, lambda folder: os.chown(folder, 65534, -1), "owned by user id 65534")


@pytest.mark.parametrize("failure", ["no compiler", "compile error"])
def test_a_damaged_entry_that_cannot_be_rebuilt_falls_back_to_the_vm(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """The rebuild fails (no ``cc`` on PATH; a compiler that fails, with the same ``$CC``
    so the same entry): a warning for the damage, one for the fallback, None; and the
    damaged file is gone, so nothing else loads it either."""
    script = tmp_path / "bin" / "mycc"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\nexec cc "$@"\n')
    script.chmod(0o755)
    if failure == "compile error":
        monkeypatch.setenv("CC", str(script))
    lib = _build()
    lib.write_bytes(lib.read_bytes()[:1000])
    if failure == "compile error":
        script.write_text("#!/bin/sh\necho 'mycc: broken' >&2\nexit 1\n")
    else:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.warns(RuntimeWarning) as record:
        assert compile_functions([_tiny()], NAME) == (None, 0.0)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2, messages
    assert str(lib) in messages[0] and "truncated" in messages[0]
    assert "virtual machine" in messages[1]
    assert ("mycc: broken" if failure == "compile error" else "no C compiler") in messages[1]
    assert not lib.exists() and not _sidecar(lib).exists()
    assert sorted(p.name for p in cache.iterdir()) == []  # no build folder left either


def test_a_damaged_entry_is_rebuilt_in_the_background(cache: Path) -> None:
    """The background path checks the same way: a garbage library is warned about at once
    and rebuilt by the helper process, which writes the sidecar too."""
    lib = _build()
    lib.write_bytes(b"\x7fELF" + bytes(200))
    with pytest.warns(RuntimeWarning) as record:
        build = compile_in_background([_tiny()], NAME)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and str(lib) in messages[0] and "no sidecar" not in messages[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, seconds = build.result(timeout=120)
    assert got == lib and seconds > 0
    _assert_correct(lib)
    _assert_entry_private_and_valid(lib)
    assert sorted(p.name for p in cache.iterdir()) == [lib.name, _sidecar(lib).name]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_functions([_tiny()], NAME) == (lib, 0.0)  # the same sidecar check


def test_concurrent_builders_of_one_entry_give_no_warning(cache: Path) -> None:
    """Processes that build the same library at once (several runs started together)
    each get a valid entry: no one sees a library without its sidecar, or another
    build's sidecar, so no warning; one library and one sidecar remain."""
    code = textwrap.dedent(
        f"""
        import warnings
        warnings.simplefilter("error")
        import casadi as ca
        from models._jit import compile_functions
        x = ca.SX.sym("x", 3)
        f = ca.Function("jit_tiny", [x], [ca.sin(x) * x + ca.exp(-x)])
        for _ in range(20):  # again and again, while the others install theirs
            lib, seconds = compile_functions([f], {NAME!r})
        ext = ca.external("jit_tiny", str(lib))
        print(max(float(ca.norm_inf(ext(v) - f(v))) for v in {POINTS!r}))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and err == "", err
        assert float(out) <= 1e-13
    libs = list(cache.glob(f"{NAME}_*.so"))
    assert len(libs) == 1
    assert sorted(p.name for p in cache.iterdir()) == [libs[0].name, _sidecar(libs[0]).name]
    _assert_entry_private_and_valid(libs[0])
