"""CasADi Functions compiled to machine code once per machine and cached on disk.

The estimator (``estimators.CompiledEKF``) and the controller (``bpcontrol.nmpc`` real-time
iteration) both generate C with CasADi and load it as a shared library. This module does it
once for both: the C of the Functions is hashed together with the CasADi version, the
compiler and its flags; a library of that hash under ``$BPCONTROL_JIT_CACHE`` (default
``~/.cache/bpcontrol/jit``) is reused, else built in a temporary folder and moved in
atomically (concurrent builders cannot clash). Without a working C compiler it warns and
returns None: callers then run CasADi's virtual machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import casadi as ca

__all__ = ["DEFAULT_JIT_FLAGS", "compile_functions", "jit_cache_dir"]

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
    compiler = os.environ.get("CC", "cc")
    with tempfile.TemporaryDirectory() as tmp:
        gen = ca.CodeGenerator(f"{name}.c", {"with_header": False})
        for fn in fns:
            gen.add(fn)
        gen.generate(tmp + os.sep)
        source = (Path(tmp) / f"{name}.c").read_bytes()
    parts = [source, ca.CasadiMeta.version().encode(), compiler.encode(), *map(str.encode, flags)]
    key = hashlib.sha256(b"\n".join(parts)).hexdigest()[:24]
    cache = jit_cache_dir()
    lib = cache / f"{name}_{key}.so"
    if lib.exists():
        return lib, 0.0
    try:
        if shutil.which(compiler) is None:
            raise OSError(f"no C compiler {compiler!r} on PATH")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, out = Path(tmp) / f"{name}.c", Path(tmp) / "lib.so"
            src.write_bytes(source)
            t0 = time.perf_counter()
            subprocess.run(
                [compiler, *flags, str(src), "-o", str(out), "-lm"],
                check=True,
                capture_output=True,
            )
            seconds = time.perf_counter() - t0
            os.replace(out, lib)  # atomic: concurrent builders cannot clash
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        warnings.warn(
            f"{what or name}: could not compile ({exc}; {detail.decode()[-300:]}); "
            "using CasADi's virtual machine (several times slower)",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, 0.0
    return lib, seconds
