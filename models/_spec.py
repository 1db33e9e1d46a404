"""Declaration of a kinetic model: named, unit-carrying variables and one right-hand side.

A :class:`Model` is pure data plus two functions written against a
:class:`~models._math.MathNamespace`: ``rhs(m, x, u, p)`` returns the time derivative
of every state (per hour) and ``measure(m, x, u, p)`` returns every measured output.
Construction validates everything a process engineer can get wrong and raises
:class:`ModelError` with one line that says what and where.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models._math import NUMPY, MathNamespace


class ModelError(ValueError):
    """A model declaration is malformed; the message names the model and the culprit."""


@dataclass(frozen=True, kw_only=True)
class State:
    """A differential state: ``nominal`` is the default initial value."""

    name: str
    unit: str
    lower: float
    upper: float
    nominal: float
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Input:
    """A manipulated input (setpoint), held piecewise constant; ``nominal`` is its default."""

    name: str
    unit: str
    lower: float
    upper: float
    nominal: float
    description: str = ""


@dataclass(frozen=True, kw_only=True)
class Parameter:
    """A kinetic or physical constant with its literature ``source``; bounds: plausible range."""

    name: str
    unit: str
    value: float
    lower: float
    upper: float
    source: str
    description: str = ""

    @classmethod
    def of(
        cls,
        name: str,
        unit: str,
        value: float,
        lower: float,
        upper: float,
        source: str,
        description: str = "",
    ) -> Parameter:
        """Positional shorthand for long parameter tables in model files."""
        return cls(
            name=name,
            unit=unit,
            value=value,
            lower=lower,
            upper=upper,
            source=source,
            description=description,
        )


@dataclass(frozen=True, kw_only=True)
class Output:
    """A measured output; ``lower``/``upper`` are the physically possible range of a reading.

    ``derived=True`` marks a quantity computed from the state that no instrument reads
    (total product ``P * V`` in g, say): objectives, KPIs and reports can name it, but it
    is never a sensor of the estimator or of a simulated plant.
    """

    name: str
    unit: str
    lower: float = -math.inf
    upper: float = math.inf
    description: str = ""
    derived: bool = False


class Values(Mapping[str, Any]):
    """Named view of a vector (NumPy, JAX or CasADi): ``x.X`` or ``x["X"]``."""

    __slots__ = ("_items",)

    def __init__(self, names: tuple[str, ...], elements: list[Any]) -> None:
        object.__setattr__(self, "_items", dict(zip(names, elements, strict=True)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(
                f"no variable named {name!r}; known: {', '.join(self._items)}"
            ) from None

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


RhsFunction = Callable[[MathNamespace, Values, Values, Values], Mapping[str, Any]]


@dataclass(frozen=True, kw_only=True)
class Model:
    """A kinetic model declared once; compile it with ``to_casadi()`` or ``to_jax()``.

    Time is in hours throughout: ``rhs`` returns d(state)/dt per hour.
    """

    name: str
    description: str
    states: tuple[State, ...]
    inputs: tuple[Input, ...]
    parameters: tuple[Parameter, ...]
    outputs: tuple[Output, ...]
    rhs: RhsFunction
    measure: RhsFunction
    references: tuple[str, ...] = ()
    _index: dict[str, tuple[str, int]] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate_declaration(self)
        groups: tuple[tuple[str, tuple[Any, ...]], ...] = (
            ("state", self.states),
            ("input", self.inputs),
            ("parameter", self.parameters),
            ("output", self.outputs),
        )
        for group, items in groups:
            for i, item in enumerate(items):
                self._index[item.name] = (group, i)
        _validate_functions(self)

    # --- names and nominal vectors -------------------------------------------------
    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(u.name for u in self.inputs)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(y.name for y in self.outputs)

    @property
    def sensor_names(self) -> tuple[str, ...]:
        """Outputs an instrument can read (every output not marked ``derived``)."""
        return tuple(y.name for y in self.outputs if not y.derived)

    @property
    def derived_names(self) -> tuple[str, ...]:
        """Outputs computed from the state only (objectives, KPIs), never measured."""
        return tuple(y.name for y in self.outputs if y.derived)

    @property
    def nx(self) -> int:
        return len(self.states)

    @property
    def nu(self) -> int:
        return len(self.inputs)

    @property
    def n_p(self) -> int:
        return len(self.parameters)

    @property
    def ny(self) -> int:
        return len(self.outputs)

    @property
    def x0(self) -> np.ndarray:
        """Nominal initial state."""
        return np.array([s.nominal for s in self.states], dtype=float)

    @property
    def u0(self) -> np.ndarray:
        """Nominal inputs."""
        return np.array([u.nominal for u in self.inputs], dtype=float)

    @property
    def p0(self) -> np.ndarray:
        """Nominal (literature) parameter values."""
        return np.array([p.value for p in self.parameters], dtype=float)

    def bounds(self, group: str) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) arrays of a group: states, inputs, parameters or outputs."""
        items = getattr(self, group)
        return (
            np.array([v.lower for v in items], dtype=float),
            np.array([v.upper for v in items], dtype=float),
        )

    def index(self, name: str) -> int:
        """Position of a named state, input, parameter or output in its vector."""
        try:
            return self._index[name][1]
        except KeyError:
            raise KeyError(f"model {self.name!r} has no variable named {name!r}") from None

    def kind(self, name: str) -> str:
        """``"state"``, ``"input"``, ``"parameter"`` or ``"output"`` for a variable name."""
        try:
            return self._index[name][0]
        except KeyError:
            raise KeyError(f"model {self.name!r} has no variable named {name!r}") from None

    def parameters_with(self, **overrides: float) -> np.ndarray:
        """Nominal parameter vector with some values replaced by name (unknown names raise)."""
        return self._with("parameter", self.p0, overrides)

    def states_with(self, **overrides: float) -> np.ndarray:
        """Nominal initial state with some values replaced by name (unknown names raise)."""
        return self._with("state", self.x0, overrides)

    def _with(self, group: str, nominal: np.ndarray, overrides: Mapping[str, float]) -> np.ndarray:
        out = nominal.copy()
        for name, value in overrides.items():
            if self._index.get(name, ("", 0))[0] != group:
                raise KeyError(f"model {self.name!r} has no {group} named {name!r}")
            out[self.index(name)] = float(value)
        return out

    # --- evaluation with any backend -------------------------------------------------
    def named(self, x: Any, u: Any, p: Any) -> tuple[Values, Values, Values]:
        """Named views of state, input and parameter vectors, as ``rhs`` receives them."""
        return (
            Values(self.state_names, list(x)),
            Values(self.input_names, list(u)),
            Values(self.parameter_names, list(p)),
        )

    def evaluate(
        self, m: MathNamespace, x: list[Any], u: list[Any], p: list[Any]
    ) -> tuple[list[Any], list[Any]]:
        """Right-hand side and outputs as ordered lists of backend expressions."""
        xs, us, ps = self.named(x, u, p)
        dx = _ordered(self, "rhs", self.rhs(m, xs, us, ps), self.state_names)
        y = _ordered(self, "measure", self.measure(m, xs, us, ps), self.output_names)
        return dx, y

    def to_casadi(self) -> Any:
        """CasADi twin (see :class:`models.CasadiModel`), traced once and cached."""
        if "_casadi" not in self.__dict__:
            from models._casadi import CasadiModel

            self.__dict__["_casadi"] = CasadiModel(self)  # frozen: cache beside the fields
        return self.__dict__["_casadi"]

    def to_jax(self) -> Any:
        """JAX twin (see :class:`models.JaxModel`), built once and cached."""
        if "_jax" not in self.__dict__:
            from models._jax import JaxModel

            self.__dict__["_jax"] = JaxModel(self)
        return self.__dict__["_jax"]


def _ordered(model: Model, fn: str, result: Any, names: tuple[str, ...]) -> list[Any]:
    if not isinstance(result, Mapping):
        raise ModelError(
            f"model {model.name!r}: {fn}() must return a mapping name -> expression, "
            f"got {type(result).__name__}"
        )
    missing = [n for n in names if n not in result]
    extra = [k for k in result if k not in names]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unknown {', '.join(map(str, extra))}")
        raise ModelError(f"model {model.name!r}: {fn}() returned wrong names ({'; '.join(parts)})")
    return [result[n] for n in names]


def _validate_declaration(model: Model) -> None:
    where = f"model {model.name!r}"
    if not model.name or not model.name.isidentifier():
        raise ModelError(f"model name {model.name!r} must be a Python identifier")
    if not model.states:
        raise ModelError(f"{where}: declares no states")
    seen: dict[str, str] = {}
    groups: tuple[tuple[str, tuple[Any, ...], Any], ...] = (
        ("state", model.states, State),
        ("input", model.inputs, Input),
        ("parameter", model.parameters, Parameter),
        ("output", model.outputs, Output),
    )
    for group, items, cls in groups:
        if not isinstance(items, tuple):
            raise ModelError(f"{where}: {group}s must be a tuple of {cls.__name__}")
        item: Any
        for item in items:
            if not isinstance(item, cls):
                raise ModelError(f"{where}: {group}s holds {item!r}, not a {cls.__name__}")
            name = item.name
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise ModelError(f"{where}: {group} name {name!r} is not a valid identifier")
            if name in seen:
                raise ModelError(
                    f"{where}: name clash: {name!r} is declared as {seen[name]} and as {group}"
                )
            seen[name] = group
            if not isinstance(item.unit, str) or not item.unit.strip():
                raise ModelError(
                    f"{where}: {group} {name!r} has no unit (use '-' for dimensionless)"
                )
            lo, hi = float(item.lower), float(item.upper)
            if math.isnan(lo) or math.isnan(hi) or lo > hi:
                raise ModelError(f"{where}: {group} {name!r} has bounds [{lo}, {hi}]")
            if group in ("state", "input"):
                _check_inside(where, group, name, "nominal", item.nominal, lo, hi)
            if group == "parameter":
                _check_inside(where, group, name, "value", item.value, lo, hi)
                if not isinstance(item.source, str) or not item.source.strip():
                    raise ModelError(f"{where}: parameter {name!r} has no literature source")


def _check_inside(
    where: str, group: str, name: str, what: str, v: float, lo: float, hi: float
) -> None:
    if not math.isfinite(float(v)) or not lo <= float(v) <= hi:
        raise ModelError(f"{where}: {group} {name!r} {what} {v} is not finite inside [{lo}, {hi}]")


def _validate_functions(model: Model) -> None:
    """Evaluate at the nominal point with NumPy: names, scalar shapes and finite values."""
    where = f"model {model.name!r}"
    for fn_name in ("rhs", "measure"):
        if not callable(getattr(model, fn_name)):
            raise ModelError(f"{where}: {fn_name} is not callable")
    x = [np.float64(v) for v in model.x0]
    u = [np.float64(v) for v in model.u0]
    p = [np.float64(v) for v in model.p0]
    try:
        with np.errstate(all="ignore"):
            dx, y = model.evaluate(NUMPY, x, u, p)
    except ModelError:
        raise
    except Exception as exc:  # a user's model file can fail in any way
        raise ModelError(
            f"{where}: evaluating at the nominal point failed: {type(exc).__name__}: {exc}"
        ) from exc
    for label, names, values in (
        ("rhs", model.state_names, dx),
        ("measure", model.output_names, y),
    ):
        for name, value in zip(names, values, strict=True):
            arr = np.asarray(value)
            if arr.shape != ():
                raise ModelError(
                    f"{where}: {label}()[{name!r}] has shape {arr.shape}, expected a scalar"
                )
            if not np.isfinite(arr):
                raise ModelError(
                    f"{where}: {label}()[{name!r}] is {float(arr)} at the nominal point"
                )
