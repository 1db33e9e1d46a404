"""bpcontrol: real-time monitoring and nonlinear model-predictive control of fed-batch
fermentations.

The names a script needs, in one place (imported on first use, so ``import bpcontrol``
and the command line start at once)::

    import bpcontrol as bp

    model = bp.load_model("ecoli_fedbatch")              # or a .py model file
    spec = bp.spec_for("ecoli_fedbatch", seed=7)          # a built-in pack, or a folder
    run = bp.resolve(spec)                                # every file checked
    loop = bp.build_loop(run, plant=..., historian=..., clock=bp.PacedClock(60.0)).loop
    summary = loop.run()

Layers (see ``docs/architecture.md``): :mod:`models` <- :mod:`estimators` <- ``bpcontrol``
(ports, records, recipe, NMPC, supervisor, loop, run spec, packs, assembly) <-
:mod:`services` <- :mod:`hil`; the command line (``bpcontrol --help``) is the composition
root.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # models and estimators (the layers below)
    "Model": "models",
    "load_model": "models",
    "simulate": "models",
    "CompiledEKF": "estimators",
    "EKFConfig": "estimators",
    "ExtendedKalmanFilter": "estimators",
    "OnlineEstimator": "estimators",
    "Reading": "estimators",
    "Sensor": "estimators",
    "load_ekf_config": "estimators",
    # controller and supervisor
    "NMPC": "bpcontrol.nmpc",
    "NMPCConfig": "bpcontrol.nmpc",
    "Objective": "bpcontrol.nmpc",
    "SoftBound": "bpcontrol.nmpc",
    "StateEstimate": "bpcontrol.nmpc",
    "Mode": "bpcontrol.supervisor",
    "SetpointLimits": "bpcontrol.supervisor",
    "Supervisor": "bpcontrol.supervisor",
    "SupervisorConfig": "bpcontrol.supervisor",
    # the loop, its ports and records
    "ControlLoop": "bpcontrol.loop",
    "LoopEstimator": "bpcontrol.adapters",
    "NMPCController": "bpcontrol.adapters",
    "PacedClock": "bpcontrol.clock",
    "Clock": "bpcontrol.interfaces",
    "Controller": "bpcontrol.interfaces",
    "Estimator": "bpcontrol.interfaces",
    "Historian": "bpcontrol.interfaces",
    "Plant": "bpcontrol.interfaces",
    "PlantError": "bpcontrol.interfaces",
    "RunIdentity": "bpcontrol.records",
    "SetLimits": "bpcontrol.commands",
    "SetMode": "bpcontrol.commands",
    "SetSetpoint": "bpcontrol.commands",
    "Recipe": "bpcontrol.recipe",
    "load_recipe": "bpcontrol.recipe",
    # run spec, packs, assembly
    "ProcessPack": "bpcontrol.pack",
    "load_pack": "bpcontrol.pack",
    "RunSpec": "bpcontrol.runspec",
    "load_run_spec": "bpcontrol.runspec",
    "resolve": "bpcontrol.runspec",
    "spec_for": "bpcontrol.runspec",
    "assemble": "bpcontrol.assembly",
    "build_loop": "bpcontrol.assembly",
}

__all__ = [
    "NMPC",
    "Clock",
    "CompiledEKF",
    "ControlLoop",
    "Controller",
    "EKFConfig",
    "Estimator",
    "ExtendedKalmanFilter",
    "Historian",
    "LoopEstimator",
    "Mode",
    "Model",
    "NMPCConfig",
    "NMPCController",
    "Objective",
    "OnlineEstimator",
    "PacedClock",
    "Plant",
    "PlantError",
    "ProcessPack",
    "Reading",
    "Recipe",
    "RunIdentity",
    "RunSpec",
    "Sensor",
    "SetLimits",
    "SetMode",
    "SetSetpoint",
    "SetpointLimits",
    "SoftBound",
    "StateEstimate",
    "Supervisor",
    "SupervisorConfig",
    "__version__",
    "assemble",
    "build_loop",
    "load_ekf_config",
    "load_model",
    "load_pack",
    "load_recipe",
    "load_run_spec",
    "resolve",
    "simulate",
    "spec_for",
]


def __getattr__(name: str) -> Any:
    """Import a public name on first use (keeps ``import bpcontrol`` light)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bpcontrol' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # the same names, for type checkers and IDEs
    from bpcontrol.adapters import LoopEstimator, NMPCController
    from bpcontrol.assembly import assemble, build_loop
    from bpcontrol.clock import PacedClock
    from bpcontrol.commands import SetLimits, SetMode, SetSetpoint
    from bpcontrol.interfaces import Clock, Controller, Estimator, Historian, Plant, PlantError
    from bpcontrol.loop import ControlLoop
    from bpcontrol.nmpc import NMPC, NMPCConfig, Objective, SoftBound, StateEstimate
    from bpcontrol.pack import ProcessPack, load_pack
    from bpcontrol.recipe import Recipe, load_recipe
    from bpcontrol.records import RunIdentity
    from bpcontrol.runspec import RunSpec, load_run_spec, resolve, spec_for
    from bpcontrol.supervisor import Mode, SetpointLimits, Supervisor, SupervisorConfig
    from estimators import (
        CompiledEKF,
        EKFConfig,
        ExtendedKalmanFilter,
        OnlineEstimator,
        Reading,
        Sensor,
        load_ekf_config,
    )
    from models import Model, load_model, simulate
