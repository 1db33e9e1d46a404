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

What is checked before a library is handed out, and why. Loading a shared library runs
its code in this process, and mapping a file that is shorter than its ELF headers claim
kills the process with SIGBUS (no Python error, nothing on stderr). So nothing from the
cache is returned, hence ``dlopen``-ed by a caller's ``casadi.external``, unchecked:

- The folder must be a private one: owned by the current user and writable by nobody
  else (else anyone who may write there could put code of theirs under the predictable
  name of a library). A folder this module creates is created ``0o700``, with any missing
  parents. A folder writable by group or others, or owned by someone else, is refused
  (one warning per folder and process, nothing built or loaded there): the caller runs
  the virtual machine.
- Beside each library ``<name>_<key>.so`` lies a sidecar ``<name>_<key>.so.json`` with
  what it was built from (the SHA-256 of the generated C, the CasADi version, compiler
  and flags) and the size and SHA-256 of the library file. The library is returned only
  if the sidecar is there and agrees with what the caller would build, and the library
  file (a regular file owned by the user and not writable by group or others, as is the
  sidecar) has that size and SHA-256. Anything else (truncated, garbage, another
  library put under the name, no or a different sidecar, loose permissions) is damage:
  one warning naming the file and the reason, the entry is deleted (never loaded) and
  rebuilt; if that build fails, a warning and None (the virtual machine).
- Library and sidecar are written in a private build folder inside the cache (the
  library ``0o700``, the sidecar ``0o600``) and moved in, sidecar first, while the
  folder is locked (``flock``), by the builder itself: the blocking path in this
  process, the background path in its helper process (this module run as a script),
  with the same code. A reader checks under the same lock, so it never sees a library
  of one build with the sidecar of another; an interrupted or crashed install, or a
  file cut short by a power loss, fails the check and is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

if sys.platform != "win32":
    import fcntl

if TYPE_CHECKING:  # imported where used: the helper process runs this file without CasADi
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

_SIDECAR_FORMAT = 1
"""Version of the sidecar's fields; a sidecar of another version is a mismatch."""
_SIDECAR_MAX_BYTES = 1 << 16
"""A sidecar is a few hundred bytes: a larger file there is not one of ours."""
_MISSING = "missing"
"""What :func:`_inspect` says when there is no library (a build, no warning)."""


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

    The compiler is ``$CC`` (default ``cc``). A cached library is returned only once it
    passed the checks of the module docstring; a damaged one is rebuilt, with a
    RuntimeWarning naming it. ``(None, 0.0)`` with a RuntimeWarning naming ``what``
    (default ``name``) when no compiler works or the cache folder is not private; the
    caller falls back to CasADi's virtual machine. Load a function with
    ``casadi.external(fn.name(), str(path))``.
    """
    job = _Job.of(fns, name, flags, what)
    try:
        refused = _refusal(job.lib.parent)
        if refused is not None:
            message = _refusal_warning(job, refused)
            if message is not None:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
            return None, 0.0
        damage = job.lookup()
        if damage is None:
            return job.lib, 0.0
        if damage != _MISSING:
            warnings.warn(job.damage_message(damage), RuntimeWarning, stacklevel=3)
        return job.lib, job.build()
    except (OSError, subprocess.CalledProcessError) as exc:
        warnings.warn(job.fallback_message(exc), RuntimeWarning, stacklevel=3)
        return None, 0.0


class BackgroundBuild:
    """A library that :func:`compile_in_background` builds in the background.

    :meth:`done` says whether the build is over (a cached library: at once);
    :meth:`result` waits for it and gives what :func:`compile_functions` gives:
    ``(path, seconds compiling)``, or ``(None, 0.0)`` with the RuntimeWarning (issued in
    the thread that asks for the result) when the compiler failed or the cache folder is
    refused. The library is checked again (as in the module docstring) before its path
    is given. In a process forked while the build ran (the builder thread stays in the
    parent), it is done: the library if the parent has put it in the cache by then, else
    ``(None, 0.0)``.
    """

    def __init__(self, job: _Job, future: Future[float]) -> None:
        self._job, self._future, self._pid = job, future, os.getpid()

    def done(self) -> bool:
        return self._pid != os.getpid() or self._future.done()

    def result(self, timeout: float | None = None) -> tuple[Path | None, float]:
        """``(path, seconds)``; ``TimeoutError`` if not built within ``timeout`` s."""
        job = self._job
        try:
            forked = self._pid != os.getpid()  # then no builder thread here
            seconds = 0.0 if forked else self._future.result(timeout)
            refused = _refusal(job.lib.parent)  # as it is now, also in a forked child
            if refused is not None:
                raise _CacheRefusedError(refused)
            damage = job.lookup()
        except _CacheRefusedError as exc:
            message = _refusal_warning(job, exc.reason)
            if message is not None:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
            return None, 0.0
        except (OSError, subprocess.CalledProcessError) as exc:
            warnings.warn(job.fallback_message(exc), RuntimeWarning, stacklevel=3)
            return None, 0.0
        if damage is None:
            return job.lib, seconds
        if damage != _MISSING:  # damaged after the build: not loaded, the VM this time
            message = f"{job.damage_message(damage, rebuild=False)}; {_VM}"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        return None, 0.0


_VM = "using CasADi's virtual machine (several times slower)"

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
    called from the background); a valid library already in the cache, no compiler on
    the ``PATH`` or a refused cache folder give a build that is already done (a damaged
    library is warned about here and rebuilt). Otherwise a small helper process runs
    ``$CC`` at the lowest CPU priority (``nice 19``: it does not slow down the caller's
    work, a control loop with deadlines, on a busy machine) and moves the library and its
    sidecar into the cache itself; a daemon thread waits for it. So the interpreter never
    waits for the compiler at exit, and the library reaches the cache even when the
    process ends (or is interrupted) first. Builds of the same library in one process
    share one compiler run.
    """
    job = _Job.of(fns, name, flags, what)
    future: Future[float]
    with _BUILDS_LOCK:
        running = _BUILDS.get(job.lib)
        if running is not None:
            return BackgroundBuild(job, running)
        future = Future()
        try:
            refused = _refusal(job.lib.parent)
            damage = _MISSING if refused is not None else job.lookup()
        except OSError as exc:
            future.set_exception(exc)
            return BackgroundBuild(job, future)
        if refused is not None:
            future.set_exception(_CacheRefusedError(refused))
            return BackgroundBuild(job, future)
        if damage is None:
            future.set_result(0.0)
            return BackgroundBuild(job, future)
        if damage != _MISSING:
            warnings.warn(job.damage_message(damage), RuntimeWarning, stacklevel=3)
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


class _CacheRefusedError(Exception):
    """The cache folder is not private (``reason`` says how): nothing is built there."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_REFUSED_WARNED: set[Path] = set()
"""Cache folders already refused with a warning in this process (warned once each)."""


def _refusal_warning(job: _Job, reason: str) -> str | None:
    """The warning for a refused cache folder, or None if this process gave it already."""
    folder = job.lib.parent
    with _BUILDS_LOCK:
        if folder in _REFUSED_WARNED:
            return None
        _REFUSED_WARNED.add(folder)
    return (
        f"{job.what}: JIT cache folder {folder} {reason}, so another user could put code "
        f"there under a library's name: not loading or building anything there; {_VM}. "
        f"Make it private (chmod 700, owned by you) or set BPCONTROL_JIT_CACHE to a private "
        "folder"
    )


def _refusal(cache: Path) -> str | None:
    """Create ``cache`` (``0o700``, and its missing parents) if need be; why it may not be
    used (not a folder, someone else's, writable by group or others), or None.

    Raises OSError when it cannot be created."""
    missing = [folder for folder in (cache, *cache.parents) if not folder.exists()]
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
    info = os.stat(cache)
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        return f"is owned by user id {info.st_uid}, not by you ({os.geteuid()})"
    if info.st_mode & 0o022:
        return f"is writable by group or others (mode {stat.filemode(info.st_mode)})"
    return None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (check or install an entry in it).

    Best effort: where the file system has no such locks (some network ones), it goes on
    without; installs stay atomic, only a reader may then see a half-installed entry,
    which fails the check and is rebuilt."""
    if sys.platform == "win32":
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sidecar(lib: Path) -> Path:
    """The record beside ``lib``: ``<lib name>.json``."""
    return lib.with_name(lib.name + ".json")


_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK
"""Open what is in the cache without following a symbolic link or blocking on a FIFO."""


def _open_private(path: Path, what: str) -> tuple[int | None, str]:
    """Open ``path`` for reading if it is a regular file of this user that group and
    others cannot write: ``(fd, "")``, else ``(None, why not)``; ``(None, _MISSING)`` if
    there is nothing."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None, _MISSING
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, f"{what} is a symbolic link"
        return None, f"{what} cannot be opened ({exc.strerror})"
    info = os.fstat(fd)
    why = ""
    if not stat.S_ISREG(info.st_mode):
        why = f"{what} is not a regular file"
    elif hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        why = f"{what} is owned by user id {info.st_uid}, not by you"
    elif info.st_mode & 0o022:
        why = f"{what} is writable by group or others (mode {stat.filemode(info.st_mode)})"
    if why:
        os.close(fd)
        return None, why
    return fd, ""


def _sha256(fd: int) -> str:
    """SHA-256 (hex) of the open file ``fd``, read from its start."""
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, 1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def _inspect(lib: Path, meta: dict[str, Any]) -> str | None:
    """None if ``lib`` may be loaded: its sidecar agrees with ``meta`` (what it is to be
    built from) and the library file with the size and SHA-256 the sidecar records.
    Else the reason (``_MISSING`` when there is no library). Reads, never ``dlopen``-s."""
    fd, why = _open_private(lib, "the library")
    if fd is None:
        return why
    try:
        side = _sidecar(lib)
        side_fd, why = _open_private(side, f"its sidecar {side.name}")
        if side_fd is None:
            return f"it has no sidecar {side.name}" if why == _MISSING else why
        try:
            raw = os.read(side_fd, _SIDECAR_MAX_BYTES + 1)
        finally:
            os.close(side_fd)
        try:
            record = json.loads(raw) if len(raw) <= _SIDECAR_MAX_BYTES else None
        except ValueError:
            record = None
        if not isinstance(record, dict):
            return f"its sidecar {side.name} is not a sidecar of this cache"
        for field, value in meta.items():
            if record.get(field) != value:
                return f"its sidecar {side.name} records another {field}"
        size = os.fstat(fd).st_size
        if size != record.get("library_size"):
            return (
                f"it has {size} bytes, its sidecar {side.name} records "
                f"{record.get('library_size')} (truncated or replaced)"
            )
        if _sha256(fd) != record.get("library_sha256"):
            return f"its SHA-256 is not the one its sidecar {side.name} records (replaced?)"
        return None
    finally:
        os.close(fd)


def _install(built: Path, lib: Path, meta: dict[str, Any]) -> None:
    """Move the library ``built`` (in a build folder of the cache) in as ``lib``, with
    its sidecar (``meta`` plus the library's size and SHA-256), unless a valid entry is
    there already (a concurrent builder was first: it stays, ``built`` is left).

    Used by both build paths: :meth:`_Job.build` and the background helper (:func:`_main`).
    Both files are moved with ``os.replace`` (atomic), the sidecar first, under the lock
    that readers take: never a library of one build with the sidecar of another."""
    os.chmod(built, 0o700)  # whatever the umask: not writable by group or others
    fd = os.open(built, os.O_RDONLY | os.O_CLOEXEC)
    try:
        record = dict(meta, library_size=os.fstat(fd).st_size, library_sha256=_sha256(fd))
    finally:
        os.close(fd)
    staged = built.with_name(built.name + ".json")
    out = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(out, "w", encoding="utf-8") as file:
        json.dump(record, file, indent=1, sort_keys=True)
    with _locked(lib.parent):
        if _inspect(lib, meta) is None:
            return
        os.replace(staged, _sidecar(lib))
        os.replace(built, lib)


def _main(argv: Sequence[str]) -> int:
    """The background helper (this file run as a script by :meth:`_Job.start_detached`):
    argv = build folder, library, sidecar fields (JSON), compiler command. Compiles at
    nice 19 into ``<folder>/lib.so`` (output in ``<folder>/cc.log``), installs it with
    :func:`_install` and removes the folder; exit status 0 once the library is in."""
    folder, lib, meta, cmd = Path(argv[0]), Path(argv[1]), json.loads(argv[2]), argv[3:]
    with contextlib.suppress(AttributeError, OSError):
        os.nice(19)
    with open(folder / "cc.log", "wb") as log:
        status = subprocess.call(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if status == 0:
            try:
                _install(folder / "lib.so", lib, meta)
            except OSError as exc:
                log.write(f"could not install {lib}: {exc}".encode())
                status = 1
    if status == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return status


class _Job:
    """One library to build: the generated C, where it goes, compiler and flags, and the
    sidecar fields (``meta``) that say so."""

    def __init__(
        self,
        source: bytes,
        lib: Path,
        compiler: str,
        flags: Sequence[str],
        what: str,
        meta: dict[str, Any],
    ) -> None:
        self.source, self.lib, self.compiler, self.flags = source, lib, compiler, tuple(flags)
        self.what, self.meta = what, meta

    @classmethod
    def of(cls, fns: Sequence[ca.Function], name: str, flags: Sequence[str], what: str) -> _Job:
        """Generate the C of ``fns`` and name its library by hash (in the cache folder)."""
        import casadi as ca

        compiler = os.environ.get("CC", "cc")
        with tempfile.TemporaryDirectory() as tmp:
            gen = ca.CodeGenerator(f"{name}.c", {"with_header": False})
            for fn in fns:
                gen.add(fn)
            gen.generate(tmp + os.sep)
            source = (Path(tmp) / f"{name}.c").read_bytes()
        version = ca.CasadiMeta.version()
        parts = [source, version.encode(), compiler.encode(), *map(str.encode, flags)]
        key = hashlib.sha256(b"\n".join(parts)).hexdigest()
        lib = jit_cache_dir() / f"{name}_{key[:24]}.so"
        meta = {
            "format": _SIDECAR_FORMAT,
            "library": lib.name,
            "key": key,
            "source_sha256": hashlib.sha256(source).hexdigest(),
            "casadi": version,
            "compiler": compiler,
            "flags": list(flags),
        }
        return cls(source, lib, compiler, flags, what or name, meta)

    def lookup(self) -> str | None:
        """None if the cached library may be loaded; ``_MISSING`` if there is none; else
        why it is damaged (then it and its sidecar are deleted: never loaded, rebuilt)."""
        if not self.lib.exists() and not self.lib.is_symlink():
            return _MISSING  # the common cold start: no lock, nothing created
        with _locked(self.lib.parent):
            damage = _inspect(self.lib, self.meta)
            if damage not in (None, _MISSING):
                for path in (self.lib, _sidecar(self.lib)):
                    with contextlib.suppress(OSError):
                        path.unlink()
        return damage

    def damage_message(self, reason: str, *, rebuild: bool = True) -> str:
        then = "not loaded, rebuilding it" if rebuild else "not loaded"
        return f"{self.what}: cached library {self.lib} is damaged ({reason}); {then}"

    def build(self) -> float:
        """Compile into the cache: seconds the compiler took. Raises OSError or
        CalledProcessError when there is no working compiler."""
        if shutil.which(self.compiler) is None:
            raise OSError(f"no C compiler {self.compiler!r} on PATH")
        with tempfile.TemporaryDirectory(dir=self.lib.parent) as tmp:  # private: 0o700
            src, out = Path(tmp) / f"{self.lib.stem}.c", Path(tmp) / "lib.so"
            src.write_bytes(self.source)
            t0 = time.perf_counter()
            subprocess.run(
                [self.compiler, *self.flags, str(src), "-o", str(out), "-lm"],
                check=True,
                capture_output=True,
            )
            seconds = time.perf_counter() - t0
            _install(out, self.lib, self.meta)  # atomic: concurrent builders cannot clash
        return seconds

    def start_detached(self) -> Callable[[], float]:
        """Start :meth:`build` in a helper process of its own (session, priority nice 19)
        that installs the library (this file run as a script, :func:`_main`); returns
        ``wait()``: seconds until it is in the cache (raises as :meth:`build` does)."""
        if shutil.which(self.compiler) is None:
            raise OSError(f"no C compiler {self.compiler!r} on PATH")
        script = Path(__file__)
        if not sys.executable or not script.is_file():
            return self.build
        folder = Path(tempfile.mkdtemp(dir=self.lib.parent))  # private: 0o700
        src = folder / f"{self.lib.stem}.c"
        src.write_bytes(self.source)
        cmd = [self.compiler, *self.flags, str(src), "-o", str(folder / "lib.so"), "-lm"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-S",
                str(script.resolve()),
                str(folder),
                str(self.lib),
                json.dumps(self.meta),
                *cmd,
            ],
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
            f"{_VM}"
        )


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
