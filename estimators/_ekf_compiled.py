"""The EKF step generated as one CasADi function and compiled to C: one reactor, fast.

:class:`ExtendedKalmanFilter` traces the model on scalars, so one filter step is a few
hundred small XLA kernels, and XLA:CPU pays about a microsecond for each. Here the whole
step (ROS2 prediction with the transition and covariance, then the sequential scalar
Joseph updates with the measurement mask, relative sensor noise, chi-square gating and
NIS) is built once as a CasADi SX expression from the model's CasADi twin
(``model.to_casadi()``), and ``Function.mapaccum`` chains it over many steps. The
generated C is compiled with ``$CC`` (default ``cc``) and cached as a shared library under
``$BPCONTROL_JIT_CACHE`` (default ``~/.cache/bpcontrol/jit``), keyed by a hash of the code,
the compiler and its flags; without a working compiler the same functions run in
CasADi's virtual machine (a warning says so). Arguments and results move through
``Function.buffer()`` on preallocated NumPy arrays, with no conversion per call.

The mathematics is that of :class:`ExtendedKalmanFilter` (same constants, taken from it):
the same ROS2 stages and transition, ``P+ = Phi P Phi' + Q h`` symmetrised, the same
gate and ``R = sigma^2 + (relative_sigma y_hat)^2`` at the prior, the same sequential
Joseph updates all linearised at the prior, the same partially pivoted LU for the ROS2
stage systems. Only the order of evaluation differs, by rounding: the LU works on the
state block (the tracked parameters' rows of ``W`` are identity rows with zero
right-hand sides); symmetric covariances are computed as one triangle and mirrored; the
Joseph form ``(I - K H) P (I - K H)' + R K K'`` is evaluated, symmetrised, with the
rank-one structure of ``I - K H``; a rejected or absent reading gets a zero gain instead
of a selection of the old state, which leaves a symmetric, finite covariance exactly
unchanged. So covariances passed in must be symmetric, as the filter keeps them. On the
E. coli problem the two filters agree to about 1e-15 per step and 1e-13 over 600 steps.

Timing (``benchmarks/bench_ekf.py``, one reactor, E. coli, 9 augmented states): about
5 us per step for a record (``filter_sequence``), about 10-15 us per ``step`` called from
Python; building the library takes ~3-6 s of C compiler (``-O1``: as fast as ``-O3`` here,
at half the compile time), once per configuration and machine. That build runs in the
background by default (a helper process at nice 19, :func:`models.compile_in_background`):
until the library is in the cache, the filter evaluates the same functions in CasADi's
virtual machine (about 18 us per prediction or update instead of 3 us) and switches at
the first call after the build. The C is compiled without FMA contraction
(``-ffp-contract=off``), so both give the same numbers bit for bit and the switch
changes no result.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import casadi as ca
import numpy as np

from estimators._config import EKFConfig
from estimators._filter_base import ROS2_GAMMA, FilterSetup, FilterState, UpdateResult
from models import BackgroundBuild, Model, compile_functions, compile_in_background

if TYPE_CHECKING:
    from estimators._ekf import ExtendedKalmanFilter

JIT_FLAGS = ("-O1", "-ffp-contract=off", "-fPIC", "-shared")  # no FMA: bitwise like the VM
CHUNKS = (512, 64, 8)  # mapaccum lengths compiled for filter_sequence (plus single steps)
# outputs of the update and the step: z, P and the statistics packed in one vector,
# [accepted (ns), gated (ns), innovation (ns), innovation_var (ns), nis, dof, healthy]
_OUT_NAMES = ("z_next", "P_next", "stats")


def _shape(a: Any) -> tuple[int, ...]:
    return a.shape if isinstance(a, np.ndarray) else np.shape(a)


class _Buffered:
    """Zero-copy calls of a CasADi Function on preallocated NumPy arrays.

    ``args[i]`` and ``res[i]`` are the flat (column-major) storage of input and output
    ``i``; fill the first, call, read the second (overwritten by the next call).
    """

    def __init__(self, fn: ca.Function) -> None:
        self.fn = fn
        buf, self._eval = fn.buffer()
        self._buf = cast(Any, buf)  # the stubs' set_arg(i, a, size) is not the runtime's
        self.args = [np.zeros(fn.nnz_in(i)) for i in range(fn.n_in())]
        self.res = [np.zeros(fn.nnz_out(i)) for i in range(fn.n_out())]
        for i, a in enumerate(self.args):
            self._buf.set_arg(i, a.data)
        for i, r in enumerate(self.res):
            self._buf.set_res(i, r.data)
        # input and output 1 (a covariance) as matrices: views of the column-major storage
        n = math.isqrt(self.args[1].size)
        self.mat_in = self.args[1].reshape(n, n).T
        self.mat_out = self.res[1].reshape(-1, n, n).transpose(0, 2, 1)
        if self.mat_out.shape[0] == 1:
            self.mat_out = self.mat_out[0]

    def __call__(self) -> None:
        self._eval()


class _MappedBuffers:
    """Zero-copy evaluation of a Function mapped over N reactors.

    ``args[i]``/``res[i]`` are (N, k) C-order arrays over the (k, N) column-major storage
    of mapped input/output ``i`` (k = its size for one reactor).
    """

    def __init__(self, fn: ca.Function, n: int) -> None:
        buf, self._eval = fn.buffer()
        self._buf = cast(Any, buf)
        self.args = [np.zeros((n, fn.nnz_in(i) // n)) for i in range(fn.n_in())]
        self.res = [np.zeros((n, fn.nnz_out(i) // n)) for i in range(fn.n_out())]
        for i, a in enumerate(self.args):
            self._buf.set_arg(i, a.data)
        for i, r in enumerate(self.res):
            self._buf.set_res(i, r.data)

    def __call__(self) -> None:
        self._eval()


class CompiledEKF(FilterSetup):
    """:class:`ExtendedKalmanFilter` for one reactor, compiled to C (or CasADi's VM).

    Same public single-reactor API (``init``, ``predict``, ``update``,
    ``filter_sequence``, ``estimate``, ``reset_covariance``, ``to_arrays``), so an
    :class:`~estimators.OnlineEstimator` runs on either; states and results hold NumPy
    arrays. ``step(z, P, u, dt, y, mask)`` is one fused prediction and update.
    ``reference`` is the JAX filter with the same constants (batched work, cross-checks).

    ``jit=False`` uses CasADi's virtual machine (no compiler; several times slower). With
    ``jit=True`` a library from the cache is loaded at once; one not built yet is built in
    the background (``background=True``, the default) while the filter runs in the
    virtual machine, bit for bit the same numbers, and is switched to at the first call
    after the build; ``background=False`` waits for the compiler here. :meth:`join` waits
    for a background build. ``backend`` says what runs now: ``"c"`` or ``"vm"``;
    ``compile_s`` how long building the shared library took (0 when it came from the
    cache, or while it is being built). An instance evaluates through preallocated
    buffers: use one per thread.
    """

    def __init__(
        self,
        model: Model,
        config: EKFConfig,
        *,
        p: np.ndarray | None = None,
        jit: bool = True,
        background: bool = True,
    ) -> None:
        super().__init__(model, config, p=p)
        self.ns = len(self.sensor_names)
        self._dt_max = config.max_step_h * (1 + 1e-9)
        fns = _build_functions(self)
        self.compile_s = 0.0
        self.backend = "vm"
        self._building: BackgroundBuild | None = None
        name = f"bpcontrol_ekf_{model.name}"
        if jit and background:
            build = compile_in_background(fns, name, flags=JIT_FLAGS, what="CompiledEKF")
            if build.done():  # from the cache (or no compiler: warned here)
                self._install(fns, *build.result())
            else:
                self._building = build
                self._install(fns, None, 0.0)
        elif jit:
            self._install(fns, *compile_functions(fns, name, flags=JIT_FLAGS, what="CompiledEKF"))
        else:
            self._install(fns, None, 0.0)

    def _install(self, fns: list[ca.Function], lib: Path | None, compile_s: float) -> None:
        """Evaluate ``fns`` (the VM), or their compiled twins from ``lib``, from now on."""
        if lib is not None:
            fns = [ca.external(fn.name(), str(lib)) for fn in fns]
            self.backend = "c"
        self._vm_functions = fns if lib is None else None
        self.compile_s = compile_s
        self._predict = _Buffered(fns[0])
        self._update = _Buffered(fns[1])
        self._step = _Buffered(fns[2])
        self._chunks = {n: _Buffered(fn) for n, fn in zip(CHUNKS, fns[3:], strict=True)}
        self._batched: dict[tuple[int, int], _MappedBuffers] = {}
        for b in (self._predict, self._update, self._step):
            b.args[3][:] = self.p_nominal  # the base parameters: input 3 of all three
        for n, b in self._chunks.items():
            b.args[3][:] = np.tile(self.p_nominal, n)

    def _switch(self, timeout: float | None = None) -> None:
        """Load the library of the background build (``TimeoutError`` if not done)."""
        build, fns = self._building, self._vm_functions
        assert build is not None and fns is not None
        lib, seconds = build.result(timeout)  # a failed build warns and gives None
        self._building = None
        if lib is not None:
            self._install(fns, lib, seconds)

    def join(self, timeout: float | None = None) -> str:
        """Wait for a background build (at most ``timeout`` s) and switch to it: the backend.

        ``"c"`` once the library is loaded; ``"vm"`` without a working compiler, or while
        the build is still running when ``timeout`` runs out.
        """
        if self._building is not None:
            with contextlib.suppress(TimeoutError):
                self._switch(timeout)
        return self.backend

    # --- low level: arrays in, arrays out ---------------------------------------------
    def _load(self, b: _Buffered, z: Any, P: Any, u: Any) -> None:
        """Check shapes (a clear error, nothing evaluated) and fill inputs 0-2 of ``b``."""
        nz, nu = self.nz, self.model.nu
        if _shape(z) != (nz,) or _shape(P) != (nz, nz) or _shape(u) != (nu,):
            raise ValueError(
                f"need z ({nz},), P ({nz}, {nz}) and u ({nu},); got {np.shape(z)}, "
                f"{np.shape(P)} and {np.shape(u)}"
            )
        b.args[0][:] = z
        b.mat_in[...] = P
        b.args[2][:] = u

    def _load_readings(self, b: _Buffered, i: int, y: Any, mask: Any) -> None:
        if _shape(y) != (self.ns,) or _shape(mask) != (self.ns,):
            raise ValueError(
                f"y and mask must have shape ({self.ns},) (sensors {self.sensor_names}); "
                f"got {np.shape(y)} and {np.shape(mask)}"
            )
        b.args[i][:] = y  # non-finite values are mapped as numpy.nan_to_num does, in C
        b.args[i + 1][:] = mask

    def _check_dt(self, dt: float) -> None:
        if not 0.0 <= dt <= self._dt_max:
            raise ValueError(f"dt must be in [0, max_step_h={self.config.max_step_h}] h, got {dt}")

    def _outputs(self, b: _Buffered) -> tuple[np.ndarray, np.ndarray, UpdateResult]:
        ns = self.ns
        st = b.res[2].copy()
        flags = st.astype(bool)
        result = UpdateResult(
            accepted=flags[:ns],
            gated=flags[ns : 2 * ns],
            innovation=st[2 * ns : 3 * ns],
            innovation_var=st[3 * ns : 4 * ns],
            nis=st[4 * ns, ...],  # 0-d arrays, as the JAX filter gives
            dof=st[4 * ns + 1, ...].astype(np.int64),
            healthy=flags[4 * ns + 2, ...],
        )
        return b.res[0].copy(), b.mat_out.copy(), result

    def predict_arrays(
        self, z: np.ndarray, P: np.ndarray, u: np.ndarray, dt: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """One prediction interval of ``dt`` h (at most ``max_step_h``): ``(z, P)``."""
        if self._building is not None and self._building.done():
            self._switch()
        self._check_dt(dt)
        b = self._predict
        self._load(b, z, P, u)
        b.args[4][0] = dt
        b()
        return b.res[0].copy(), b.mat_out.copy()

    def update_arrays(
        self, z: np.ndarray, P: np.ndarray, u: np.ndarray, y: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, UpdateResult]:
        """Fuse ``y`` where ``mask``: ``(z, P, result)`` as ``ExtendedKalmanFilter``."""
        if self._building is not None and self._building.done():
            self._switch()
        b = self._update
        self._load(b, z, P, u)
        self._load_readings(b, 4, y, mask)
        b()
        return self._outputs(b)

    def step(
        self,
        z: np.ndarray,
        P: np.ndarray,
        u: np.ndarray,
        dt: float,
        y: np.ndarray,
        mask: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, UpdateResult]:
        """Predict over ``dt`` h (at most ``max_step_h``) and fuse ``y`` where ``mask``.

        One call of the compiled ``ExtendedKalmanFilter._step_core``: ``(z, P, result)``.
        """
        # inlined checks and copies: this is the per-step path of online use
        if self._building is not None and self._building.done():
            self._switch()
        nz, ns = self.nz, self.ns
        if (
            _shape(z) != (nz,)
            or _shape(P) != (nz, nz)
            or _shape(u) != (self.model.nu,)
            or _shape(y) != (ns,)
            or _shape(mask) != (ns,)
        ):
            self._load(self._step, z, P, u)  # raises for z, P or u
            self._load_readings(self._step, 5, y, mask)  # raises for y or mask
        if not 0.0 <= dt <= self._dt_max:
            self._check_dt(dt)
        a = self._step.args
        a[0][:] = z
        self._step.mat_in[...] = P
        a[2][:] = u
        a[4][0] = dt
        a[5][:] = y
        a[6][:] = mask
        self._step()
        return self._outputs(self._step)

    def step_batch(
        self,
        Z: np.ndarray,
        P: np.ndarray,
        U: np.ndarray,
        dt: np.ndarray | float,
        Y: np.ndarray,
        MASK: np.ndarray,
        *,
        threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`step` for N reactors in one call (the compiled step mapped over reactors).

        ``Z`` (N, nz), ``P`` (N, nz, nz), ``U`` (N, nu), ``dt`` scalar or (N,) h, ``Y`` and
        ``MASK`` (N, sensors). Returns ``(Z, P, stats)``; ``stats`` (N, 4 sensors + 3) packs
        accepted, gated, innovation, innovation variance, then NIS, dof and healthy, as
        :class:`UpdateResult` fields. Maps over reactors on ``threads`` threads (default:
        all cores).
        """
        if self._building is not None and self._building.done():
            self._switch()
        Z = np.asarray(Z, dtype=float)
        n = Z.shape[0] if Z.ndim == 2 else -1
        nz, ns, nu = self.nz, self.ns, self.model.nu
        dts = np.broadcast_to(np.asarray(dt, dtype=float), (max(n, 0),))
        if (
            Z.shape != (n, nz)
            or np.shape(P) != (n, nz, nz)
            or np.shape(U) != (n, nu)
            or np.shape(Y) != (n, ns)
            or np.shape(MASK) != (n, ns)
        ):
            raise ValueError(
                f"need Z (N, {nz}), P (N, {nz}, {nz}), U (N, {nu}), Y and MASK (N, {ns}); got "
                f"{np.shape(Z)}, {np.shape(P)}, {np.shape(U)}, {np.shape(Y)}, {np.shape(MASK)}"
            )
        if not np.all((dts >= 0.0) & (dts <= self._dt_max)):
            raise ValueError(f"dt must be in [0, max_step_h={self.config.max_step_h}] h")
        key = (n, max(1, threads or os.cpu_count() or 1))
        mapped = self._batched.get(key)
        if mapped is None:
            base = self._step.fn
            fn = base.map(n, "thread", key[1]) if key[1] > 1 else base.map(n, "serial")
            mapped = self._batched[key] = _MappedBuffers(fn, n)
            mapped.args[3][:] = np.tile(self.p_nominal, (n, 1))
        a = mapped.args  # C-order (N, k) views of each mapped input's (k, N) storage
        a[0][:] = Z
        a[1][:] = np.transpose(P, (0, 2, 1)).reshape(n, nz * nz)
        a[2][:] = U
        a[4][:, 0] = dts
        a[5][:] = Y
        a[6][:] = MASK
        mapped()
        r = mapped.res
        return r[0].copy(), r[1].reshape(n, nz, nz).transpose(0, 2, 1).copy(), r[2].copy()

    # --- the ExtendedKalmanFilter API --------------------------------------------------
    def init(
        self,
        x0: np.ndarray,
        *,
        t0: float = 0.0,
        theta0: Mapping[str, float] | None = None,
        P0_diag: np.ndarray | None = None,
    ) -> FilterState:
        """Initial state, as :meth:`ExtendedKalmanFilter.init` (NumPy arrays)."""
        z0, P0 = self.initial_arrays(x0, theta0=theta0, P0_diag=P0_diag)
        return FilterState(t=np.asarray(float(t0)), z=z0, P=P0)

    def predict(self, state: FilterState, u: np.ndarray, t: float) -> FilterState:
        """Propagate to time ``t`` (h) with inputs ``u`` held constant."""
        dt_total = float(t) - float(state.t)
        if dt_total < -1e-12:
            raise ValueError(f"cannot predict backwards from t={float(state.t)} to t={t}")
        if dt_total <= 0.0:
            return state
        n = max(1, math.ceil(dt_total / self.config.max_step_h - 1e-9))
        dt = dt_total / n
        z, P = np.asarray(state.z), np.asarray(state.P)
        for _ in range(n):
            z, P = self.predict_arrays(z, P, u, dt)
        return FilterState(t=np.asarray(float(t)), z=z, P=P)

    def update(
        self, state: FilterState, u: np.ndarray, y: np.ndarray, mask: np.ndarray
    ) -> tuple[FilterState, UpdateResult]:
        """Fuse the readings ``y`` where ``mask`` is true (ordered as the sensors)."""
        z, P, res = self.update_arrays(np.asarray(state.z), np.asarray(state.P), u, y, mask)
        return FilterState(t=state.t, z=z, P=P), res

    def filter_sequence(
        self,
        state: FilterState,
        U: np.ndarray,
        DT: np.ndarray,
        Y: np.ndarray,
        M: np.ndarray,
    ) -> tuple[FilterState, np.ndarray, np.ndarray, UpdateResult]:
        """Filter a whole record, as :meth:`ExtendedKalmanFilter.filter_sequence`.

        The record runs through compiled chains of 512, 64 and 8 steps (``mapaccum``) and
        single steps for the rest, so any length costs a handful of calls.
        """
        if self._building is not None and self._building.done():
            self._switch()
        DT = np.asarray(DT, dtype=float)
        K = DT.shape[0] if DT.ndim == 1 else -1
        U = np.asarray(U, dtype=float)
        Y = np.asarray(Y, dtype=float)  # non-finite values: as numpy.nan_to_num, in C
        M = np.asarray(M, dtype=bool)
        if (
            K < 0
            or U.shape != (K, self.model.nu)
            or Y.shape != (K, self.ns)
            or M.shape != (K, self.ns)
        ):
            raise ValueError(
                f"need DT (K,), U (K, {self.model.nu}), Y and M (K, {self.ns}); got DT "
                f"{DT.shape}, U {U.shape}, Y {Y.shape}, M {M.shape}"
            )
        if np.any(DT < 0) or np.any(DT > self.config.max_step_h * (1 + 1e-9)):
            raise ValueError(f"each step must be in [0, max_step_h={self.config.max_step_h}] h")
        z, P = np.asarray(state.z, dtype=float), np.asarray(state.P, dtype=float)
        if z.shape != (self.nz,) or P.shape != (self.nz, self.nz):
            raise ValueError(f"state: need z ({self.nz},) and P ({self.nz}, {self.nz})")
        nz, ns = self.nz, self.ns
        Zs, Ps = np.empty((K, nz)), np.empty((K, nz, nz))
        stats = np.empty((K, 4 * ns + 3))
        Mf = M.astype(float)
        k = 0
        while k < K:
            n = next((c for c in CHUNKS if c <= K - k), 1)
            b = self._chunks[n] if n > 1 else self._step
            sl = slice(k, k + n)
            b.args[0][:] = z
            b.mat_in[...] = P
            b.args[2][:] = U[sl].ravel()
            b.args[4][:] = DT[sl]
            b.args[5][:] = Y[sl].ravel()
            b.args[6][:] = Mf[sl].ravel()
            b()
            r = b.res
            Zs[sl] = r[0].reshape(n, nz)
            Ps[sl] = b.mat_out
            stats[sl] = r[2].reshape(n, 4 * ns + 3)
            z, P = Zs[k + n - 1], Ps[k + n - 1]
            k += n
        flags = stats != 0.0
        res = UpdateResult(
            accepted=flags[:, :ns],
            gated=flags[:, ns : 2 * ns],
            innovation=stats[:, 2 * ns : 3 * ns],
            innovation_var=stats[:, 3 * ns : 4 * ns],
            nis=stats[:, 4 * ns],
            dof=stats[:, 4 * ns + 1].astype(np.int64),
            healthy=flags[:, 4 * ns + 2],
        )
        t_end = float(state.t) + float(DT.sum())
        final = FilterState(t=np.asarray(t_end), z=z.copy(), P=P.copy())
        return final, Zs, Ps, res

    def reset_covariance(self, state: FilterState, fallback: FilterState) -> FilterState:
        """Reinitialise a degenerate covariance to its prior; keep the mean if it is finite."""
        z = np.asarray(state.z)
        z = z if bool(np.all(np.isfinite(z))) else np.asarray(fallback.z)
        return FilterState(t=state.t, z=z, P=np.diag(self.P0_diag))

    @cached_property
    def reference(self) -> ExtendedKalmanFilter:
        """The JAX filter with the same constants (batched work, cross-checks); built, and
        JAX imported, on first use."""
        from estimators._ekf import ExtendedKalmanFilter

        return ExtendedKalmanFilter(self.model, self.config, p=self.p_nominal)


# --- the symbolic filter ------------------------------------------------------------------
class _PivotedLU:
    """LU factorisation with partial pivoting of a symbolic (SX) matrix, as LAPACK's getrf.

    The pivot of each column is chosen at run time (the first entry of largest magnitude)
    with ``if_else``; entries that are structural zeros are never candidates, so the
    identity and diagonal rows of ``W = I - gamma h A`` cost nothing. Pivoting matters:
    ``W`` of a bioprocess model mixes units (DO in %, gas fractions, g/L) and its
    condition number reaches 1e7 or more; CasADi's symbolic QR (Gram-Schmidt) then loses
    up to 1e-8 relative in the ROS2 stages where a pivoted LU keeps 1e-14.
    """

    def __init__(self, W: ca.SX) -> None:
        n = W.shape[0]
        rows = [[W[i, j] for j in range(n)] for i in range(n)]
        # per column k: the candidate rows and their selection flags (None: no choice),
        # then the multipliers l_ik of the rows below
        self.swaps: list[tuple[list[int], list[ca.SX] | None]] = []
        self.multipliers: list[list[tuple[int, ca.SX]]] = []
        for k in range(n):
            cand = [i for i in range(k, n) if not rows[i][k].is_zero()] or [k]
            flags = None
            if cand != [k]:
                best = ca.fabs(rows[cand[0]][k])
                flags = [ca.SX(1.0)]
                for i in cand[1:]:
                    a = ca.fabs(rows[i][k])
                    larger = a > best
                    best = ca.if_else(larger, a, best)
                    flags = [ca.logic_and(f, ca.logic_not(larger)) for f in flags] + [larger]
                rows = _swap(rows, k, cand, flags)
            self.swaps.append((cand, flags))
            pivot, mults = rows[k], []
            for i in range(k + 1, n):
                if rows[i][k].is_zero():
                    continue
                lik = rows[i][k] / pivot[k]
                rows[i] = [rows[i][c] - lik * pivot[c] if c > k else rows[i][c] for c in range(n)]
                mults.append((i, lik))
            self.multipliers.append(mults)
        self.U = rows

    def solve(self, B: ca.SX) -> ca.SX:
        """``W^-1 B``: row swaps and elimination as in the factorisation, back-substitution."""
        n = len(self.U)
        cols = []
        for j in range(B.shape[1]):
            b = [[B[i, j]] for i in range(n)]
            for k in range(n):
                cand, flags = self.swaps[k]
                if flags is not None:
                    b = _swap(b, k, cand, flags)
                for i, lik in self.multipliers[k]:
                    b[i] = [b[i][0] - lik * b[k][0]]
            x: list[ca.SX] = [ca.SX(0.0)] * n
            for i in reversed(range(n)):
                acc = b[i][0]
                for c in range(i + 1, n):
                    acc = acc - self.U[i][c] * x[c]
                x[i] = acc / self.U[i][i]
            cols.append(ca.vertcat(*x))
        return ca.horzcat(*cols)


def _swap(
    rows: list[list[ca.SX]], k: int, cand: list[int], flags: list[ca.SX]
) -> list[list[ca.SX]]:
    """Exchange row ``k`` with the candidate whose flag is set (exactly one is)."""
    width = len(rows[k])
    chosen = list(rows[cand[0]])
    for i, f in zip(cand[1:], flags[1:], strict=True):
        chosen = [ca.if_else(f, rows[i][c], chosen[c]) for c in range(width)]
    out = [list(r) for r in rows]
    for i, f in zip(cand, flags, strict=True):
        if i != k:
            out[i] = [ca.if_else(f, rows[k][c], rows[i][c]) for c in range(width)]
    out[k] = chosen
    return out


def _build_functions(ekf: FilterSetup) -> list[ca.Function]:
    """[predict, update, step, step chained CHUNKS times...] as SX Functions."""
    model, config = ekf.model, ekf.config
    cm = model.to_casadi()
    nx, nz, ns = ekf.nx, ekf.nz, len(ekf.sensor_names)
    par_idx = [int(i) for i in ekf._par_idx]
    out_idx = [int(i) for i in ekf._out_idx]
    u = ca.SX.sym("u", model.nu)
    p = ca.SX.sym("p", model.n_p)

    def params_of(z: ca.SX) -> ca.SX:
        entries = [p[i] for i in range(model.n_p)]
        for j, i in enumerate(par_idx):
            entries[i] = z[nx + j]
        return ca.vertcat(*entries)

    def f_aug(z: ca.SX) -> ca.SX:
        return ca.vertcat(cm.f(z[:nx], u, params_of(z)), ca.SX(nz - nx, 1))

    # f and its Jacobian (parameter rows structurally zero), y and H, as functions of a
    # symbolic z so that they can be applied to expressions (substeps, the fused step)
    zs = ca.SX.sym("z", nz)
    f_A = ca.Function("f_A", [zs, u, p], [f_aug(zs), ca.jacobian(f_aug(zs), zs)])
    y_s = cm.h(zs[:nx], u, params_of(zs))[out_idx]
    h_H = ca.Function("h_H", [zs, u, p], [y_s, ca.jacobian(y_s, zs)])

    def ros2(z: ca.SX, h: ca.SX) -> tuple[ca.SX, ca.SX]:
        f0, A = f_A(z, u, p)
        eye = ca.SX.eye(nz)
        # W = I - gamma h A has identity rows for the parameters, and every right-hand
        # side below has zero parameter rows: factorise and solve the state block only
        lu = _PivotedLU(ca.SX.eye(nx) - ROS2_GAMMA * h * A[:nx, :nx])

        def solve(B: ca.SX) -> ca.SX:
            return ca.vertcat(lu.solve(B[:nx, :]), ca.SX(nz - nx, B.shape[1]))

        S1 = solve(ca.horzcat(f0, A))
        k1, M1 = S1[:, 0], S1[:, 1:]
        f1 = f_aug(z + h * k1)
        S2 = solve(ca.horzcat(f1 - 2.0 * k1, A @ (eye + h * M1) - 2.0 * M1))
        k2, M2 = S2[:, 0], S2[:, 1:]
        return z + h * (1.5 * k1 + 0.5 * k2), eye + h * (1.5 * M1 + 0.5 * M2)

    def symmetric(entry: Any) -> ca.SX:
        """The symmetric matrix with upper triangle ``entry(i, j)``, i <= j."""
        S = ca.SX(nz, nz)
        for j in range(nz):
            for i in range(j + 1):
                S[i, j] = S[j, i] = entry(i, j)
        return S

    def predict(z: ca.SX, P: ca.SX, dt: ca.SX) -> tuple[ca.SX, ca.SX]:
        h = dt / config.n_substeps
        for _ in range(config.n_substeps):
            z, Phi = ros2(z, h)
            G = Phi @ P
            # Phi P Phi' + Q h, symmetric: one triangle computed, mirrored
            P = symmetric(
                lambda i, j, G=G, Phi=Phi: (
                    ca.dot(G[i, :].T, Phi[j, :].T) + (float(ekf.Q[i]) * h if i == j else 0.0)
                )
            )
        return z, P

    def update(z: ca.SX, P: ca.SX, y: ca.SX, mask: ca.SX) -> list[ca.SX]:
        y_hat, H = h_H(z, u, p)
        R = ca.DM(ekf.R) + ca.DM(ekf.R_rel) * y_hat**2
        # readings as numpy.nan_to_num gives them: NaN -> 0, +-inf -> +-largest double
        big = float(np.finfo(float).max)
        y = ca.if_else(ca.fabs(y) < ca.inf, y, ca.if_else(y > 0, big, ca.if_else(y < 0, -big, 0)))
        nu = ca.if_else(mask, y - y_hat, 0.0)
        HP = H @ P
        s_diag = ca.vertcat(*[ca.dot(HP[i, :], H[i, :]) for i in range(ns)]) + R
        gated = ca.logic_and(mask, nu**2 / s_diag > ekf.gate)
        use = ca.logic_and(mask, ca.logic_not(gated))
        zc, Pc, nis = z, P, ca.SX(0.0)
        for i in range(ns):
            Hi = H[i, :].T
            innov = nu[i] - ca.dot(Hi, zc - z)
            b = Pc @ Hi
            hb = ca.dot(Hi, b)
            si = hb + R[i]
            K = ca.if_else(use[i], b / si, 0.0)  # zero gain: nothing changes
            c = b - K * hb  # (I - K H) P H'
            # Joseph form (I - K H) P (I - K H)' + R K K', symmetrised, with the rank-one
            # structure of I - K H: P - (K b' + b K' + K c' + c K')/2 + R K K'
            bc, RK = b + c, R[i] * K
            Pc = symmetric(
                lambda r, q, Pc=Pc, K=K, bc=bc, RK=RK: (
                    Pc[r, q] - 0.5 * (K[r] * bc[q] + bc[r] * K[q]) + RK[r] * K[q]
                )
            )
            zc = zc + K * innov
            nis = nis + ca.if_else(use[i], innov**2 / si, 0.0)
        healthy = ca.SX(1.0)
        for e in ca.vertsplit(ca.vertcat(zc, ca.vec(Pc))):
            healthy = ca.logic_and(healthy, ca.fabs(e) < ca.inf)
        for i in range(nz):
            healthy = ca.logic_and(healthy, Pc[i, i] > 0.0)
        stats = ca.vertcat(use, gated, nu, s_diag, nis, ca.sum1(use), healthy)
        return [zc, Pc, stats]

    z = ca.SX.sym("z", nz)
    P = ca.SX.sym("P", nz, nz)
    dt = ca.SX.sym("dt")
    y = ca.SX.sym("y", ns)
    mask = ca.SX.sym("mask", ns)
    opts = {"cse": True}
    zp, Pp = predict(z, P, dt)
    f_pred = ca.Function(
        "ekf_predict",
        [z, P, u, p, dt],
        [zp, ca.densify(Pp)],
        ["z", "P", "u", "p", "dt"],
        ["z_next", "P_next"],
        opts,
    )
    outs = update(z, P, y, mask)
    f_upd = ca.Function(
        "ekf_update",
        [z, P, u, p, y, mask],
        [ca.densify(o) for o in outs],
        ["z", "P", "u", "p", "y", "mask"],
        list(_OUT_NAMES),
        opts,
    )
    # the fused step calls the two (MX): the generated C holds each body once
    zm, Pm = ca.MX.sym("z", nz), ca.MX.sym("P", nz, nz)
    um, pm = ca.MX.sym("u", model.nu), ca.MX.sym("p", model.n_p)
    dtm, ym, mm = ca.MX.sym("dt"), ca.MX.sym("y", ns), ca.MX.sym("mask", ns)
    mx_in = [zm, Pm, um, pm, dtm, ym, mm]
    z_pred, P_pred = f_pred.call([zm, Pm, um, pm, dtm])
    f_step = ca.Function(
        "ekf_step",
        mx_in,
        f_upd.call([z_pred, P_pred, um, pm, ym, mm]),
        ["z", "P", "u", "p", "dt", "y", "mask"],
        list(_OUT_NAMES),
    )
    chains = [f_step.mapaccum(f"ekf_chain{n}", n, 2) for n in CHUNKS]
    return [f_pred, f_upd, f_step, *chains]
