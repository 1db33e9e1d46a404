"""CasADi Functions compiled to machine code once per machine and cached on disk.

The estimator (``estimators.CompiledEKF``) and the controller (``bpcontrol.nmpc`` real-time
iteration) both generate C with CasADi and load it as a shared library. This module does it
once for both: the C of the Functions is hashed together with the CasADi version, the
compiler and its flags; a library of that hash under ``$BPCONTROL_JIT_CACHE`` (default
``~/.cache/bpcontrol/jit``) is reused, else built in a temporary folder and moved in
atomically (concurrent builders cannot clash). Without a working C compiler it warns and
returns None: callers then run CasADi's virtual machine.

:func:`compile_functions` waits for the compiler; :func:`compile_in_background` runs it
in the background (a helper process at low priority), so that a caller can start on the
virtual machine and switch to the library once it is built (a cold start then does not
wait the seconds ``cc`` takes).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path

import casadi as ca

__all__ = [
    "DEFAULT_JIT_FLAGS",
    "BackgroundBuild",
    "compile_functions",
    "compile_in_background",
    "jit_cache_dir",
]

DEFAULT_JIT_FLAGS = ("-O1", "-fPIC", "-shared")
"""``-O1``: as fast as ``-O3`` on generated straight-line code, at half the compile time."""


def jit_cache_dir() -> Path:
    """Where compiled libraries are kept (``$BPCONTROL_JIT_CACHE``)."""
    default = Path.home() / ".cache" / "bpcontrol" / "jit"
    return Path(os.environ.get("BPCONTROL_JIT_CACHE", default))


def compile_functions(
    fns: Sequence[ca.Function],
    name: str,
    *,
    flags: Sequence[str] = DEFAULT_JIT_FLAGS,
    what: str = "",
) -> tuple[Path | None, float]:
    """``fns`` as one shared library ``name``: (path, seconds spent compiling).

    The compiler is ``$CC`` (default ``cc``). ``(None, 0.0)`` with a RuntimeWarning naming
    ``what`` (default ``name``) when no compiler works; the caller falls back to CasADi's
    virtual machine. Load a function with ``casadi.external(fn.name(), str(path))``.
    """
    job = _Job.of(fns, name, flags, what)
    if job.lib.exists():
        return job.lib, 0.0
    try:
        return job.lib, job.build()
    except (OSError, subprocess.CalledProcessError) as exc:
        warnings.warn(job.fallback_message(exc), RuntimeWarning, stacklevel=3)
        return None, 0.0


class BackgroundBuild:
    """A library that :func:`compile_in_background` builds in the background.

    :meth:`done` says whether the build is over (a cached library: at once);
    :meth:`result` waits for it and gives what :func:`compile_functions` gives:
    ``(path, seconds compiling)``, or ``(None, 0.0)`` with the RuntimeWarning (issued in
    the thread that asks for the result) when the compiler failed. In a process forked
    while the build ran (the builder thread stays in the parent), it is done: the library
    if the parent has put it in the cache by then, else ``(None, 0.0)``.
    """

    def __init__(self, job: _Job, future: Future[float]) -> None:
        self._job, self._future, self._pid = job, future, os.getpid()

    def done(self) -> bool:
        return self._pid != os.getpid() or self._future.done()

    def result(self, timeout: float | None = None) -> tuple[Path | None, float]:
        """``(path, seconds)``; ``TimeoutError`` if not built within ``timeout`` s."""
        if self._pid != os.getpid():  # forked: no builder thread here
            return (self._job.lib, 0.0) if self._job.lib.exists() else (None, 0.0)
        try:
            return self._job.lib, self._future.result(timeout)
        except (OSError, subprocess.CalledProcessError) as exc:
            warnings.warn(self._job.fallback_message(exc), RuntimeWarning, stacklevel=3)
            return None, 0.0


_DETACHED_BUILD = """\
import os, shutil, subprocess, sys
folder, lib, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
try:
    os.nice(19)
except (AttributeError, OSError):
    pass
with open(os.path.join(folder, "cc.log"), "wb") as log:
    status = subprocess.call(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
if status == 0:
    os.replace(os.path.join(folder, "lib.so"), lib)  # atomic, as in _Job.build
    shutil.rmtree(folder, ignore_errors=True)
sys.exit(status)
"""
"""The helper of :meth:`_Job.start_detached`: argv = folder, library, compiler command."""

_BUILDS: dict[Path, Future[float]] = {}
"""Libraries being built in this process: one compiler run per library however many ask."""
_BUILDS_LOCK = threading.Lock()


def _forget_builds_after_fork() -> None:
    """A forked child has no builder threads: its own builds start afresh."""
    global _BUILDS_LOCK
    _BUILDS_LOCK = threading.Lock()
    _BUILDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_builds_after_fork)


def compile_in_background(
    fns: Sequence[ca.Function],
    name: str,
    *,
    flags: Sequence[str] = DEFAULT_JIT_FLAGS,
    what: str = "",
) -> BackgroundBuild:
    """:func:`compile_functions` with the compiler in the background.

    The C code is generated and hashed here, in the caller's thread (CasADi is not
    called from the background); a library already in the cache, or no compiler on the
    ``PATH``, gives a build that is already done. Otherwise a small helper process runs
    ``$CC`` at the lowest CPU priority (``nice 19``: it does not slow down the caller's
    work, a control loop with deadlines, on a busy machine) and moves the library into
    the cache itself; a daemon thread waits for it. So the interpreter never waits for
    the compiler at exit, and the library reaches the cache even when the process ends
    (or is interrupted) first. Builds of the same library in one process share one
    compiler run.
    """
    job = _Job.of(fns, name, flags, what)
    future: Future[float]
    with _BUILDS_LOCK:
        running = _BUILDS.get(job.lib)
        if running is not None:
            return BackgroundBuild(job, running)
        future = Future()
        if job.lib.exists():
            future.set_result(0.0)
            return BackgroundBuild(job, future)
        if shutil.which(job.compiler) is None:
            future.set_exception(OSError(f"no C compiler {job.compiler!r} on PATH"))
            return BackgroundBuild(job, future)
        _BUILDS[job.lib] = future

    def done(wait: Callable[[], float]) -> None:
        try:
            future.set_result(wait())
        except BaseException as exc:
            future.set_exception(exc)
        finally:
            with _BUILDS_LOCK:
                _BUILDS.pop(job.lib, None)

    try:
        wait = job.start_detached()  # started here: an exit right after cannot lose it
    except OSError as exc:
        with _BUILDS_LOCK:
            _BUILDS.pop(job.lib, None)
        future.set_exception(exc)
        return BackgroundBuild(job, future)
    threading.Thread(target=done, args=(wait,), name=f"jit-{name}", daemon=True).start()
    return BackgroundBuild(job, future)


class _Job:
    """One library to build: the generated C, where it goes, compiler and flags."""

    def __init__(
        self, source: bytes, lib: Path, compiler: str, flags: Sequence[str], what: str
    ) -> None:
        self.source, self.lib, self.compiler, self.flags = source, lib, compiler, tuple(flags)
        self.what = what

    @classmethod
    def of(cls, fns: Sequence[ca.Function], name: str, flags: Sequence[str], what: str) -> _Job:
        """Generate the C of ``fns`` and name its library by hash (in the cache folder)."""
        compiler = os.environ.get("CC", "cc")
        with tempfile.TemporaryDirectory() as tmp:
            gen = ca.CodeGenerator(f"{name}.c", {"with_header": False})
            for fn in fns:
                gen.add(fn)
            gen.generate(tmp + os.sep)
            source = (Path(tmp) / f"{name}.c").read_bytes()
        parts = [
            source,
            ca.CasadiMeta.version().encode(),
            compiler.encode(),
            *map(str.encode, flags),
        ]
        key = hashlib.sha256(b"\n".join(parts)).hexdigest()[:24]
        return cls(source, jit_cache_dir() / f"{name}_{key}.so", compiler, flags, what or name)

    def build(self) -> float:
        """Compile into the cache: seconds the compiler took. Raises OSError or
        CalledProcessError when there is no working compiler."""
        if shutil.which(self.compiler) is None:
            raise OSError(f"no C compiler {self.compiler!r} on PATH")
        cache = self.lib.parent
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, out = Path(tmp) / f"{self.lib.stem}.c", Path(tmp) / "lib.so"
            src.write_bytes(self.source)
            t0 = time.perf_counter()
            subprocess.run(
                [self.compiler, *self.flags, str(src), "-o", str(out), "-lm"],
                check=True,
                capture_output=True,
            )
            seconds = time.perf_counter() - t0
            os.replace(out, self.lib)  # atomic: concurrent builders cannot clash
        return seconds

    def start_detached(self) -> Callable[[], float]:
        """Start :meth:`build` in a helper process of its own (session, priority nice 19)
        that installs the library; returns ``wait()``: seconds until it is in the cache
        (raises as :meth:`build` does)."""
        if shutil.which(self.compiler) is None:
            raise OSError(f"no C compiler {self.compiler!r} on PATH")
        if not sys.executable:
            return self.build
        self.lib.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=self.lib.parent))
        src = folder / f"{self.lib.stem}.c"
        src.write_bytes(self.source)
        cmd = [self.compiler, *self.flags, str(src), "-o", str(folder / "lib.so"), "-lm"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _DETACHED_BUILD, str(folder), str(self.lib), *cmd],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # an interrupt of the caller does not stop the build
        )

        def wait() -> float:
            status = proc.wait()
            seconds = time.perf_counter() - t0
            if status != 0:
                log = folder / "cc.log"
                output = log.read_bytes() if log.exists() else b""
                shutil.rmtree(folder, ignore_errors=True)
                raise subprocess.CalledProcessError(status, cmd, stderr=output)
            return seconds

        return wait

    def fallback_message(self, exc: BaseException) -> str:
        detail = getattr(exc, "stderr", b"") or b""
        return (
            f"{self.what}: could not compile ({exc}; {detail.decode(errors='replace')[-300:]}); "
            "using CasADi's virtual machine (several times slower)"
        )
