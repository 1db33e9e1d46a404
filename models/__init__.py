"""Kinetic fermentation models, declared once and evaluated by CasADi and by JAX.

>>> from models import load_model
>>> model = load_model("ecoli_fedbatch")
>>> cas, jx = model.to_casadi(), model.to_jax()
"""

from typing import TYPE_CHECKING, Any

from models._casadi import CasadiModel
from models._jit import BackgroundBuild, compile_functions, compile_in_background
from models._math import (
    CASADI,
    JAX,
    NUMPY,
    MathNamespace,
    OneSidedSmoothCasadiMath,
    SmoothCasadiMath,
    smooth_casadi_math,
)
from models._registry import available_models, load_model
from models._simulate import InputProfile, SimulationError, Trajectory, simulate
from models._spec import Input, Model, ModelError, Output, Parameter, State, Values

if TYPE_CHECKING:
    from models._jax import JaxModel


def __getattr__(name: str) -> Any:
    """The JAX twin on first use: importing JAX costs 1-2 s a CasADi-only run avoids."""
    if name == "JaxModel":
        from models._jax import JaxModel

        return JaxModel
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "CASADI",
    "JAX",
    "NUMPY",
    "BackgroundBuild",
    "CasadiModel",
    "Input",
    "InputProfile",
    "JaxModel",
    "MathNamespace",
    "Model",
    "ModelError",
    "OneSidedSmoothCasadiMath",
    "Output",
    "Parameter",
    "SimulationError",
    "SmoothCasadiMath",
    "State",
    "Trajectory",
    "Values",
    "available_models",
    "compile_functions",
    "compile_in_background",
    "load_model",
    "simulate",
    "smooth_casadi_math",
]
