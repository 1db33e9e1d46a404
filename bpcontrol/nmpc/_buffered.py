"""CasADi functions called in place on NumPy arrays: the real-time path's calls cost
about a microsecond instead of the 50-100 us of converting arguments and results to and
from ``casadi.DM``."""

from __future__ import annotations

from typing import Any

import casadi as ca
import numpy as np


class BufferedFunction:
    """A CasADi function evaluated in place on preallocated NumPy arrays (nonzeros, in
    CasADi's column-major sparse order): no ``DM`` is made per call.

    ``res`` holds the outputs after a call (overwritten by the next one: copy what is
    kept); :meth:`bind_arg` shares an array as an input (another function's output).
    """

    def __init__(self, fn: ca.Function) -> None:
        self.fn = fn
        self._buf, self._eval = fn.buffer()
        self._names = list(fn.name_in())
        self.args = [np.zeros(fn.nnz_in(i)) for i in range(fn.n_in())]
        self.res = [np.zeros(fn.nnz_out(i)) for i in range(fn.n_out())]
        for i, a in enumerate(self.args):
            self._set_arg(i, a)
        for i, r in enumerate(self.res):
            # CasADi's stub asks for the size too; the Python binding takes it from the view
            self._buf.set_res(i, r.data)  # type: ignore[call-arg]

    def bind_arg(self, name: str, array: np.ndarray) -> None:
        """Read input ``name`` from ``array`` (shared, not copied: float64, contiguous)."""
        i = self._names.index(name)
        if array.dtype != np.float64 or not array.flags.c_contiguous:
            raise ValueError(f"{self.fn.name()}: input {name!r} needs a contiguous float64 array")
        if array.size != self.fn.nnz_in(i):
            raise ValueError(f"{self.fn.name()}: input {name!r} needs {self.fn.nnz_in(i)} values")
        self.args[i] = array
        self._set_arg(i, array)

    def _set_arg(self, i: int, array: np.ndarray) -> None:
        # CasADi's stub asks for the size too; the Python binding takes it from the view
        self._buf.set_arg(i, array.data)  # type: ignore[call-arg]

    def set_arg(self, name: str, value: Any) -> None:
        """Copy ``value`` (array or scalar) into input ``name``."""
        self.args[self._names.index(name)][...] = value

    def __call__(self, *values: Any) -> list[np.ndarray]:
        """Evaluate with the first inputs set to ``values`` (the rest as they are)."""
        for a, v in zip(self.args, values, strict=False):
            a[...] = v
        self._eval()
        return self.res

    def stats(self) -> dict[str, Any]:
        """The solver statistics of the last call."""
        return dict(self._buf.stats())
