"""Open-loop simulation of a model under a piecewise-constant input schedule.

>>> from models import load_model, simulate, InputProfile
>>> model = load_model("dompc_batch_reactor")
>>> traj = simulate(model, 10.0, InputProfile.constant(model), dt_out_h=0.5)
>>> traj.to_frame().columns[:3].tolist()
['t_h', 'X_s', 'S_s']

Inputs are held constant between breakpoints; the integrator is restarted at every
output time and every breakpoint, so a step in an input is resolved exactly in time.
Two backends integrate the same declaration:

- ``"casadi"``: SUNDIALS CVODES (BDF, adaptive), tolerances ``rtol``/``atol`` (1e-10).
  This is the reference: it copes with the stiff phases of fed-batch models (oxygen
  limitation, substrate depletion).
- ``"jax"``: one jitted ``lax.scan`` of fixed-step RK4 with substeps no longer than
  ``max_step_h`` (1e-3 h). Each output interval is also integrated with steps twice as
  long from the same start, and the step-doubling error estimate is checked. Explicit
  RK4 is only stable for steps below about 2.8 over the fastest rate of the dynamics
  (the DO balance of an O2-limited culture reaches ~1e5 1/h); such a phase gives
  non-finite states or a large error estimate and raises :class:`SimulationError`
  saying so, instead of returning a wrong trajectory.

State bounds are *not* enforced: a trajectory that leaves them is returned as computed
(callers report violations, nothing is clipped).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt

from models._spec import Model

Progress = Callable[[float, float], None]
"""Called as ``progress(t_done_h, t_end_h)`` while a simulation advances."""

BACKENDS = ("casadi", "jax")
MAX_OUTPUT_STEPS = 1_000_000
RK4_CHECK_TOL = 1e-5
"""Largest accepted RK4 step-doubling error estimate, relative to ``1 + |x|``."""
TIME_COLUMN = "t_h"


class SimulationError(RuntimeError):
    """The integrator failed on valid input (the dynamics blew up or are too stiff)."""


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _float_array(value: Any, what: str) -> np.ndarray:
    try:
        return np.array(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numbers: {exc}") from None


@dataclass(frozen=True, eq=False, init=False)
class InputProfile:
    """Piecewise-constant input schedule.

    ``values[i]`` (one value per input, in the order of ``names``) holds from
    ``times[i]`` (hours) until ``times[i + 1]``; the last row holds to the end, and the
    first row also applies before ``times[0]``. Times are finite, at least 0 and
    strictly increasing; values are finite. Arrays are stored read-only.
    """

    times: np.ndarray
    values: np.ndarray
    names: tuple[str, ...]

    def __init__(self, times: npt.ArrayLike, values: npt.ArrayLike, names: Sequence[str]) -> None:
        names = tuple(names)
        if not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"InputProfile names must be non-empty strings, got {names!r}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"InputProfile names repeat: {', '.join(dupes)}")
        times = _float_array(times, "InputProfile times")
        values = _float_array(values, "InputProfile values")
        if times.ndim != 1 or times.size == 0:
            raise ValueError(
                f"InputProfile times must be a non-empty 1-D sequence, got shape {times.shape}"
            )
        expected = (times.size, len(names))
        if values.shape != expected:
            raise ValueError(
                f"InputProfile values have shape {values.shape}, expected {expected} "
                f"({times.size} times x inputs {', '.join(names) or '(none)'})"
            )
        if not np.all(np.isfinite(times)):
            raise ValueError("InputProfile times must be finite")
        if times[0] < 0.0:
            raise ValueError(f"InputProfile times must start at 0 h or later, got {times[0]:g} h")
        steps = np.diff(times)
        if np.any(steps <= 0.0):
            i = int(np.argmax(steps <= 0.0)) + 1
            raise ValueError(
                "InputProfile times must be strictly increasing: "
                f"times[{i}] = {times[i]:g} h follows {times[i - 1]:g} h"
            )
        bad = ~np.isfinite(values)
        if np.any(bad):
            row, col = (int(k) for k in np.argwhere(bad)[0])
            raise ValueError(
                f"InputProfile value of {names[col]!r} at {times[row]:g} h is {values[row, col]}"
            )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "times", _readonly(times))
        object.__setattr__(self, "values", _readonly(values))

    @classmethod
    def constant(cls, model: Model) -> InputProfile:
        """Every input at its nominal value for the whole run."""
        return cls(np.zeros(1), model.u0.reshape(1, model.nu), model.input_names)

    @classmethod
    def from_steps(
        cls, model: Model, steps: Mapping[str, float | Sequence[tuple[float, float]]]
    ) -> InputProfile:
        """Merge per-input step lists ``{"F": [(0.0, 0.0), (8.0, 0.05)], "N_stir": 800}``.

        A number means that value from 0 h on. An input not named stays at its nominal
        value, and so does a named one before its first step time. Times of one input
        must be strictly increasing. Bounds are checked by :meth:`for_model`.
        """
        unknown = [n for n in steps if n not in model.input_names]
        if unknown:
            raise ValueError(
                f"unknown input {unknown[0]!r} for model {model.name!r} "
                f"(known: {', '.join(model.input_names)})"
            )
        series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, spec in steps.items():
            if _is_real(spec):
                pts = np.array([[0.0, spec]], dtype=float)
            else:
                pts = _float_array(spec, f"steps of input {name!r}")
                if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
                    raise ValueError(
                        f"steps of input {name!r} must be a non-empty list of (t_h, value) pairs"
                    )
            t, v = pts[:, 0], pts[:, 1]
            if not np.all(np.isfinite(pts)):
                raise ValueError(f"steps of input {name!r} must be finite numbers")
            if t[0] < 0.0:
                raise ValueError(f"input {name!r}: step time {t[0]:g} h is negative")
            if np.any(np.diff(t) <= 0.0):
                i = int(np.argmax(np.diff(t) <= 0.0)) + 1
                raise ValueError(
                    f"input {name!r}: step times must be strictly increasing "
                    f"({t[i]:g} h follows {t[i - 1]:g} h)"
                )
            series[name] = (t, v)
        grid = np.unique(np.concatenate([[0.0], *(t for t, _ in series.values())]))
        values = np.tile(model.u0, (grid.size, 1))
        for name, (t, v) in series.items():
            j = model.index(name)
            k = np.searchsorted(t, grid, side="right") - 1
            values[:, j] = np.where(k >= 0, v[np.clip(k, 0, None)], model.u0[j])
        return cls(grid, values, model.input_names)

    def value_at(self, t_h: float) -> np.ndarray:
        """Inputs in effect at time ``t_h`` (a copy, in the order of ``names``)."""
        i = int(np.searchsorted(self.times, t_h, side="right")) - 1
        return self.values[max(i, 0)].copy()

    def values_at(self, t_h: npt.ArrayLike) -> np.ndarray:
        """Inputs in effect at each time of ``t_h``: shape ``(len(t_h), len(names))``."""
        i = np.searchsorted(self.times, np.asarray(t_h, dtype=float).reshape(-1), side="right")
        return self.values[np.clip(i - 1, 0, None)]

    def for_model(self, model: Model) -> InputProfile:
        """This profile with columns in the model's input order, checked against bounds."""
        if set(self.names) != set(model.input_names) or len(self.names) != model.nu:
            missing = [n for n in model.input_names if n not in self.names]
            extra = [n for n in self.names if n not in model.input_names]
            parts = []
            if missing:
                parts.append(f"missing {', '.join(missing)}")
            if extra:
                parts.append(f"unknown {', '.join(extra)}")
            raise ValueError(
                f"input profile does not match model {model.name!r} ({'; '.join(parts)}); "
                f"inputs are {', '.join(model.input_names) or '(none)'}"
            )
        order = [self.names.index(n) for n in model.input_names]
        values = self.values[:, order]
        lo, hi = model.bounds("inputs")
        outside = (values < lo) | (values > hi)
        if np.any(outside):
            row, col = (int(k) for k in np.argwhere(outside)[0])
            inp = model.inputs[col]
            raise ValueError(
                f"input {inp.name!r} = {values[row, col]:g} {inp.unit} at {self.times[row]:g} h "
                f"is outside its bounds [{inp.lower:g}, {inp.upper:g}]"
            )
        if order == list(range(model.nu)):
            return self
        return InputProfile(self.times, values, model.input_names)


@dataclass(frozen=True, eq=False)
class Trajectory:
    """States, inputs and outputs of a model at the output times ``t`` (hours).

    Row ``k`` holds ``x(t[k])``, the inputs ``u`` applied from ``t[k]`` on, and the
    outputs ``y = h(x, u, p)`` at ``t[k]``. ``units`` maps every column name of
    :meth:`to_frame` (``t_h`` included) to its unit.
    """

    model_name: str
    backend: str
    t: np.ndarray
    x: np.ndarray
    u: np.ndarray
    y: np.ndarray
    p: np.ndarray
    state_names: tuple[str, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    parameter_names: tuple[str, ...]
    units: Mapping[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        """Column names of :meth:`to_frame`: time, states, inputs, outputs."""
        return (TIME_COLUMN, *self.state_names, *self.input_names, *self.output_names)

    def column(self, name: str) -> np.ndarray:
        """One column by name: ``t_h``, a state, an input or an output."""
        if name == TIME_COLUMN:
            return self.t
        for names, data in (
            (self.state_names, self.x),
            (self.input_names, self.u),
            (self.output_names, self.y),
        ):
            if name in names:
                return data[:, names.index(name)]
        raise KeyError(f"trajectory has no column {name!r}; known: {', '.join(self.columns)}")

    def final_state(self) -> dict[str, float]:
        """State at the last output time, by name."""
        return {n: float(v) for n, v in zip(self.state_names, self.x[-1], strict=True)}

    def to_frame(self) -> Any:
        """A pandas DataFrame with plain column names (see :attr:`columns`).

        Units are in ``frame.attrs["units"]`` (also :attr:`units`), the model name in
        ``frame.attrs["model"]``.
        """
        import pandas as pd

        data = np.column_stack([self.t, self.x, self.u, self.y])
        frame = pd.DataFrame(data, columns=list(self.columns))
        frame.attrs["units"] = dict(self.units)
        frame.attrs["model"] = self.model_name
        return frame


def _as_vector(
    value: npt.ArrayLike | Mapping[str, float] | None,
    nominal: np.ndarray,
    names: tuple[str, ...],
    what: str,
) -> np.ndarray:
    if value is None:
        return nominal.copy()
    if isinstance(value, Mapping):
        out = nominal.copy()
        for name, v in value.items():
            if name not in names:
                raise ValueError(f"unknown {what} {name!r}; known: {', '.join(names)}")
            out[names.index(name)] = float(v)
    else:
        out = _float_array(value, what)
        if out.shape != nominal.shape:
            raise ValueError(
                f"{what} vector has shape {np.shape(value)}, expected ({nominal.size},) "
                f"for {', '.join(names)}"
            )
    if not np.all(np.isfinite(out)):
        bad = names[int(np.argmax(~np.isfinite(out)))]
        raise ValueError(f"{what} {bad!r} is not finite")
    return out


def _is_real(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _output_times(hours: float, dt_out_h: float) -> np.ndarray:
    tol = 1e-9 * max(hours, 1.0)
    n_full = math.floor(hours / dt_out_h + 1e-9)
    if n_full + 1 > MAX_OUTPUT_STEPS:
        raise ValueError(
            f"{hours:g} h at an output step of {dt_out_h:g} h gives {n_full} output steps "
            f"(at most {MAX_OUTPUT_STEPS}); use a larger output step"
        )
    t = dt_out_h * np.arange(n_full + 1, dtype=float)
    if abs(t[-1] - hours) <= tol:
        t[-1] = hours
    else:
        t = np.append(t, hours)
    return t


def _segments(t_out: np.ndarray, breaks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment boundaries (union of output times and breakpoints) and output positions."""
    hours = float(t_out[-1])
    tol = 1e-9 * max(hours, 1.0)
    inner = [b for b in breaks if tol < b < hours - tol]
    extra = [b for b in inner if np.min(np.abs(t_out - b)) > tol]
    bounds = np.union1d(t_out, np.array(extra, dtype=float))
    out_pos = np.searchsorted(bounds, t_out)
    return bounds, out_pos


def simulate(
    model: Model,
    hours: float,
    profile: InputProfile | None = None,
    *,
    x0: npt.ArrayLike | Mapping[str, float] | None = None,
    p: npt.ArrayLike | Mapping[str, float] | None = None,
    dt_out_h: float = 0.1,
    backend: str = "casadi",
    progress: Progress | None = None,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_step_h: float = 1e-3,
) -> Trajectory:
    """Integrate ``model`` from 0 to ``hours`` under ``profile`` (nominal inputs if None).

    Args:
        model: the model to integrate.
        hours: end time in hours (> 0).
        profile: piecewise-constant inputs; its names must be the model's inputs (any
            order) and its values inside the input bounds.
        x0: initial state, a vector or ``{name: value}`` overriding the nominal state.
        p: parameters, a vector or ``{name: value}`` overriding the nominal values.
        dt_out_h: output step in hours; the last step is shorter when ``hours`` is not a
            multiple of it.
        backend: ``"casadi"`` (CVODES, the reference) or ``"jax"`` (jitted RK4).
        progress: optional ``progress(t_done_h, hours)`` callback.
        rtol, atol: CVODES tolerances (casadi backend).
        max_step_h: longest RK4 substep in hours (jax backend).

    Raises:
        ValueError: bad arguments (one line naming the culprit).
        SimulationError: the integration failed or produced non-finite states.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    for label, v in (("hours", hours), ("dt_out_h", dt_out_h), ("max_step_h", max_step_h)):
        if not _is_real(v) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{label} must be a positive finite number, got {v!r}")
    for label, v in (("rtol", rtol), ("atol", atol)):
        if not _is_real(v) or not 0 < v < 1:
            raise ValueError(f"{label} must be in (0, 1), got {v!r}")
    hours, dt_out_h = float(hours), float(dt_out_h)
    prof = (profile or InputProfile.constant(model)).for_model(model)
    x_init = _as_vector(x0, model.x0, model.state_names, "initial state")
    pv = _as_vector(p, model.p0, model.parameter_names, "parameter")

    t_out = _output_times(hours, dt_out_h)
    bounds, out_pos = _segments(t_out, prof.times)
    tol = 1e-9 * max(hours, 1.0)
    # input of a segment is the one in effect just after its start (robust to round-off)
    seg_u = prof.values_at(bounds[:-1] + tol)
    seg_dt = np.diff(bounds)
    u_out = prof.values_at(t_out + tol)

    if backend == "casadi":
        x_all = _run_casadi(model, x_init, seg_u, seg_dt, pv, bounds, hours, progress, rtol, atol)
    else:
        x_all = _run_jax(model, x_init, seg_u, seg_dt, pv, bounds, max_step_h)
        if progress is not None:
            progress(hours, hours)
    x_out = x_all[out_pos]
    y_out = _outputs(model, backend, x_out, u_out, pv)

    units = {TIME_COLUMN: "h"}
    for group in (model.states, model.inputs, model.outputs):
        units.update({v.name: v.unit for v in group})
    return Trajectory(
        model_name=model.name,
        backend=backend,
        t=_readonly(t_out),
        x=_readonly(x_out),
        u=_readonly(u_out),
        y=_readonly(y_out),
        p=_readonly(pv),
        state_names=model.state_names,
        input_names=model.input_names,
        output_names=model.output_names,
        parameter_names=model.parameter_names,
        units=units,
    )


def _nonfinite_error(model: Model, x: np.ndarray, t_h: float, hint: str) -> SimulationError:
    name = model.state_names[int(np.argmax(~np.isfinite(x)))]
    return SimulationError(
        f"model {model.name!r}: state {name!r} became non-finite by t = {t_h:g} h; {hint}"
    )


def _run_casadi(
    model: Model,
    x0: np.ndarray,
    seg_u: np.ndarray,
    seg_dt: np.ndarray,
    p: np.ndarray,
    bounds: np.ndarray,
    hours: float,
    progress: Progress | None,
    rtol: float,
    atol: float,
) -> np.ndarray:
    import casadi as ca

    cm = model.to_casadi()
    # one integrator over [0, 1] for every segment length: d x / d s = dt * f(x, u, p)
    dt = ca.SX.sym("dt_h")
    dae = {"x": cm.x, "p": ca.vertcat(cm.u, cm.p, dt), "ode": dt * cm.xdot}
    opts = {
        "abstol": atol,
        "reltol": rtol,
        "max_num_steps": 100000,
        "show_eval_warnings": False,
        "disable_internal_warnings": True,
    }
    integ = ca.integrator(f"{model.name}_sim", "cvodes", dae, 0.0, 1.0, opts)
    xs = np.empty((seg_dt.size + 1, model.nx))
    xs[0] = x0
    x = x0
    for k, (u, d) in enumerate(zip(seg_u, seg_dt, strict=True)):
        try:
            xf = integ(x0=x, p=np.concatenate([u, p, [d]]))["xf"]
        except RuntimeError as exc:
            flag = re.search(r"CV_[A-Z_]+", str(exc))
            raise SimulationError(
                f"model {model.name!r}: CVODES failed between t = {bounds[k]:g} and "
                f"{bounds[k + 1]:g} h ({flag.group(0) if flag else 'integrator error'}); "
                "the dynamics blow up or are extremely stiff there"
            ) from None
        x = np.asarray(xf, dtype=float).reshape(-1)
        if not np.all(np.isfinite(x)):
            raise _nonfinite_error(model, x, float(bounds[k + 1]), "check the model and inputs")
        xs[k + 1] = x
        if progress is not None:
            progress(float(bounds[k + 1]), hours)
    return xs


@lru_cache(maxsize=16)
def _jax_model(model: Model) -> Any:
    return model.to_jax()


@lru_cache(maxsize=16)
def _jax_runner(model: Model, n_sub: int) -> Callable[..., Any]:
    """Jitted scan over segments: RK4 with ``n_sub`` substeps, and with ``n_sub // 2``
    substeps from the same start for a step-doubling (Richardson) error estimate."""
    import jax
    import jax.numpy as jnp

    jm = _jax_model(model)

    def run(x0: Any, us: Any, dts: Any, p: Any) -> Any:
        def body(x: Any, ud: tuple[Any, Any]) -> tuple[Any, Any]:
            u, d = ud
            fine = jm.rk4(x, u, p, d, n_sub)
            coarse = jm.rk4(x, u, p, d, n_sub // 2)
            return fine, (fine, jnp.abs(fine - coarse) / 15.0)

        _, out = jax.lax.scan(body, x0, (us, dts))
        return out

    return jax.jit(run)


def _run_jax(
    model: Model,
    x0: np.ndarray,
    seg_u: np.ndarray,
    seg_dt: np.ndarray,
    p: np.ndarray,
    bounds: np.ndarray,
    max_step_h: float,
) -> np.ndarray:
    import jax.numpy as jnp

    n_sub = 2 * max(1, math.ceil(float(seg_dt.max()) / (2.0 * max_step_h) - 1e-9))
    h = float(seg_dt.max()) / n_sub
    hint = (
        f"RK4 with steps of {h:.3g} h is inaccurate or unstable there (stiff dynamics): "
        "lower max_step_h or use the casadi backend"
    )
    run = _jax_runner(model, n_sub)
    xs_j, err_j = run(jnp.asarray(x0), jnp.asarray(seg_u), jnp.asarray(seg_dt), jnp.asarray(p))
    xs = np.vstack([x0, np.asarray(xs_j)])
    err = np.asarray(err_j)
    finite = np.all(np.isfinite(xs), axis=1)
    if not np.all(finite):
        k = int(np.argmax(~finite))
        raise _nonfinite_error(model, xs[k], float(bounds[k]), hint)
    scaled = err / (1.0 + np.abs(xs[1:]))
    if np.any(scaled > RK4_CHECK_TOL):
        k, i = (int(v) for v in np.argwhere(scaled > RK4_CHECK_TOL)[0])
        raise SimulationError(
            f"model {model.name!r}: state {model.state_names[i]!r} has an RK4 error estimate of "
            f"{err[k, i]:.3g} between t = {bounds[k]:g} and {bounds[k + 1]:g} h; {hint}"
        )
    return xs


def _outputs(model: Model, backend: str, x: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    if model.ny == 0:
        return np.zeros((n, 0))
    pp = np.tile(p, (n, 1))
    if backend == "jax":
        import jax.numpy as jnp

        jm = _jax_model(model)
        return np.asarray(jm.h_batch(jnp.asarray(x), jnp.asarray(u), jnp.asarray(pp)))
    cm = model.to_casadi()
    return np.asarray(cm.h.map(n)(x.T, u.T, pp.T), dtype=float).T.reshape(n, model.ny)
