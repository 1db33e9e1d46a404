"""The run spec: one serialisable value that says everything about a run of the loop.

A :class:`RunSpec` holds the run's identity (site, reactor, batch, run id, UTC start),
the process pack as documents (model, overrides, instruments, recipe, estimator and
controller configuration, supervision), which controller and estimator to use, and the
seed. It is written to and read from TOML (``run.toml`` in every run folder), so a run
can be repeated from its folder alone: ``bpcontrol run --spec runs/<id>/run.toml``.

:func:`resolve` checks every part against the model and returns the objects the
assembly (:func:`bpcontrol.assembly.build_loop`) wires; every problem is one line
naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import tomli_w

from bpcontrol.control_spec import (
    ControlSpec,
    ControlSpecError,
    control_period_h,
    nmpc_config,
    parse_control,
)
from bpcontrol.nmpc import NMPCConfig
from bpcontrol.pack import (
    Instrument,
    KpiSpec,
    PackError,
    ProcessPack,
    builtin_pack_dir,
    load_pack,
    model_with_overrides,
    parse_instruments,
    parse_kpis,
)
from bpcontrol.recipe import Recipe, parse_recipe
from bpcontrol.records import RunIdentity
from bpcontrol.tomlfile import read_toml
from estimators import (
    EKFConfig,
    EstimatorConfigError,
    MHEConfig,
    Sensor,
    parse_ekf_config,
    parse_mhe_config,
)
from models import Model

__all__ = [
    "DEFAULT_DEADLINE_S",
    "ResolvedRun",
    "RunSpec",
    "RunSpecError",
    "ekf_sensors",
    "load_run_spec",
    "resolve",
    "spec_for",
]

DEFAULT_DEADLINE_S = 2.0
"""Controller deadline (s) of a recipe-only run (no solve is ever waited for)."""

ControllerKind = Literal["nmpc", "recipe"]
EstimatorKind = Literal["compiled", "jax", "mhe"]
ESTIMATOR_KINDS: tuple[EstimatorKind, ...] = ("compiled", "jax", "mhe")


class RunSpecError(ValueError):
    """A run spec that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """Everything that defines a run (see the module docstring).

    ``controller``: ``"nmpc"`` (AUTO with the pack's controller) or ``"recipe"``
    (FALLBACK for the whole batch); ``estimator``: the EKF compiled to C (``"compiled"``)
    or in JAX (``"jax"``, the same estimates), or moving-horizon estimation (``"mhe"``,
    tuned by the ``[mhe]`` table of the pack's ``ekf.toml``, the same sensors).
    """

    identity: RunIdentity
    pack: ProcessPack
    seed: int = 1
    controller: ControllerKind = "nmpc"
    estimator: EstimatorKind = "compiled"

    def to_toml(self) -> str:
        """The spec as TOML text that :func:`load_run_spec` reads back to an equal run."""
        ident = self.identity
        doc = {
            "seed": self.seed,
            "controller": self.controller,
            "estimator": self.estimator,
            "identity": {
                "site": ident.site,
                "reactor": ident.reactor,
                "batch_id": ident.batch_id,
                "run_id": ident.run_id,
                "started_utc": ident.started_utc,
            },
            "pack": self.pack.documents(),
        }
        head = "# bpcontrol run spec: `bpcontrol run --spec FILE` repeats this run\n"
        return head + tomli_w.dumps(doc)


def spec_for(
    pack: ProcessPack | str | Path,
    *,
    identity: RunIdentity | None = None,
    seed: int = 1,
    controller: ControllerKind = "nmpc",
    estimator: EstimatorKind = "compiled",
) -> RunSpec:
    """A run spec for a pack (a folder, a built-in model's name, or a loaded pack)."""
    if not isinstance(pack, ProcessPack):
        text = str(pack)
        folder = Path(text)
        pack = load_pack(folder if folder.is_dir() else builtin_pack_dir(text))
    if identity is None:
        identity = RunIdentity.start(site="local", reactor="R1", batch_id=pack.name)
    return RunSpec(
        identity=identity, pack=pack, seed=seed, controller=controller, estimator=estimator
    )


def load_run_spec(path: str | Path) -> RunSpec:
    """Read a run spec TOML file (raises :class:`RunSpecError` naming the key)."""
    path = Path(path)
    doc = read_toml(path, "run spec", RunSpecError)
    src = str(path)
    allowed = ("seed", "controller", "estimator", "identity", "pack")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise RunSpecError(f"{src}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    ident = doc.get("identity")
    if not isinstance(ident, Mapping):
        raise RunSpecError(f"{src}: missing table [identity]")
    try:
        identity = RunIdentity(**{k: ident.get(k, "") for k in RunIdentity.__dataclass_fields__})
    except (TypeError, ValueError) as exc:
        raise RunSpecError(f"{src}: identity: {exc}") from None
    extra = sorted(set(ident) - set(RunIdentity.__dataclass_fields__))
    if extra:
        raise RunSpecError(f"{src}: unknown keys identity.{extra[0]}")
    pack_doc = doc.get("pack")
    if not isinstance(pack_doc, Mapping):
        raise RunSpecError(f"{src}: missing table [pack]")
    pack = _pack_from_doc(pack_doc, src)
    seed = doc.get("seed", 1)
    controller, estimator = doc.get("controller", "nmpc"), doc.get("estimator", "compiled")
    _check_run_options(seed, controller, estimator, src)
    return RunSpec(
        identity=identity, pack=pack, seed=seed, controller=controller, estimator=estimator
    )


def _check_run_options(seed: Any, controller: Any, estimator: Any, src: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0 or seed >= 2**63:
        raise RunSpecError(f"{src}: seed: must be an integer in [0, 2^63), got {seed!r}")
    if controller not in ("nmpc", "recipe"):
        raise RunSpecError(f"{src}: controller: must be 'nmpc' or 'recipe', got {controller!r}")
    if estimator not in ESTIMATOR_KINDS:
        raise RunSpecError(
            f"{src}: estimator: must be 'compiled', 'jax' or 'mhe', got {estimator!r}"
        )


def _pack_from_doc(doc: Mapping[str, Any], src: str) -> ProcessPack:
    allowed = (
        "name",
        "description",
        "model",
        "parameters",
        "bounds",
        "sensors",
        "kpis",
        "recipe",
        "ekf",
        "control",
        "plant",
    )
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise RunSpecError(f"{src}: unknown keys pack.{unknown[0]}; allowed: {', '.join(allowed)}")
    for key in ("model", "recipe"):
        if key not in doc:
            raise RunSpecError(f"{src}: missing pack.{key}")
    tables = {k: doc.get(k, {}) for k in ("parameters", "bounds", "sensors", "kpis", "recipe")}
    for key, value in tables.items():
        if not isinstance(value, Mapping):
            raise RunSpecError(f"{src}: pack.{key} must be a table")
    return ProcessPack(
        name=str(doc.get("name", "")),
        description=str(doc.get("description", "")),
        model=str(doc["model"]),
        parameters=MappingProxyType(dict(tables["parameters"])),
        bounds=MappingProxyType(dict(tables["bounds"])),
        sensors=MappingProxyType(dict(tables["sensors"])),
        kpis=MappingProxyType(dict(tables["kpis"])),
        recipe=dict(tables["recipe"]),
        ekf=doc.get("ekf"),
        control=doc.get("control"),
        plant=doc.get("plant"),
        sources=MappingProxyType(
            {p: f"{src} [pack.{p}]" for p in ("recipe", "ekf", "control", "plant")}
            | {"pack": f"{src} [pack]"}
        ),
    )


@dataclass(frozen=True)
class ResolvedRun:
    """A run spec with every part checked and built (what the assembly wires).

    ``control`` and ``nmpc`` are None for a pack without a controller file (a
    recipe-only run keeps them, for the oracle); ``controller`` is the NMPC config the
    loop runs (None: recipe only); ``deadline_s`` is the wall-time budget per solve.
    """

    spec: RunSpec
    model: Model
    recipe: Recipe
    instruments: tuple[Instrument, ...]
    kpis: KpiSpec
    ekf: EKFConfig
    control: ControlSpec | None
    nmpc: NMPCConfig | None
    deadline_s: float
    auto_resume_after: int | None
    mhe: MHEConfig = field(default_factory=MHEConfig)

    @property
    def controller(self) -> NMPCConfig | None:
        """The NMPC the loop runs, or None for a recipe-only run."""
        return self.nmpc if self.spec.controller == "nmpc" else None


def resolve(spec: RunSpec) -> ResolvedRun:
    """Check and build every part of ``spec`` (raises a ``ValueError`` subclass whose one
    line names the file and the key: :class:`PackError`, :class:`RecipeError`,
    :class:`ControlSpecError`, :class:`EstimatorConfigError`)."""
    pack = spec.pack
    src = pack.source("pack")
    model = model_with_overrides(pack)
    recipe = parse_recipe(pack.recipe, model, source=pack.source("recipe"))
    instruments = parse_instruments(pack.sensors, model, source=src)
    kpis = parse_kpis(pack.kpis, model, source=src)
    ekf, mhe = _ekf_config(pack, model, recipe, instruments)
    control: ControlSpec | None = None
    config: NMPCConfig | None = None
    deadline, resume = DEFAULT_DEADLINE_S, None
    if pack.control is not None:
        control = parse_control(pack.control, model, source=pack.source("control"))
        period = control_period_h(control, recipe)
        if period != recipe.control_period_h:
            recipe = _with_control_period(recipe, period, pack.source("control"))
        config = nmpc_config(control, model, recipe, source=pack.source("control"))
        deadline = config.time_limit_s
        resume = control.auto_resume_after or None
    if spec.controller == "nmpc" and config is None:
        raise PackError(
            f"{src}: the pack has no control.toml, so it can only run its recipe "
            "(controller = 'recipe'); `bpcontrol pack init` writes a controller file"
        )
    return ResolvedRun(
        spec, model, recipe, instruments, kpis, ekf, control, config, deadline, resume, mhe
    )


def _with_control_period(recipe: Recipe, period_h: float, source: str) -> Recipe:
    ratio = period_h / recipe.measurement_period_h
    if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
        raise ControlSpecError(
            f"{source}: control_period_min: {period_h * 60:g} min is not a whole multiple of "
            f"the recipe's measurement period ({recipe.measurement_period_h * 60:g} min)"
        )
    if period_h > recipe.duration_h:
        raise ControlSpecError(
            f"{source}: control_period_min: {period_h * 60:g} min is longer than the batch"
        )
    return replace(recipe, control_period_h=period_h)


def ekf_sensors(
    instruments: tuple[Instrument, ...], measurement_period_h: float
) -> tuple[Sensor, ...]:
    """The estimator's noise model of the pack's instruments (online: every measurement
    period; offline: at their mean sampling interval)."""
    return tuple(
        Sensor(
            output=i.output,
            sigma=i.sigma,
            period_h=measurement_period_h if i.kind == "online" else i.mean_interval_h,
            relative_sigma=i.relative_sigma,
        )
        for i in instruments
    )


def _ekf_config(
    pack: ProcessPack, model: Model, recipe: Recipe, instruments: tuple[Instrument, ...]
) -> tuple[EKFConfig, MHEConfig]:
    """The EKF configuration of ``ekf.toml`` and the MHE's (its optional ``[mhe]`` table;
    without one the defaults with the recipe's measurement period as the step, a window
    of at least 10 steps, checked against the EKF only when an MHE is built, so that an
    EKF run never fails on the MHE's defaults)."""
    doc = dict(pack.ekf or {})
    mhe_doc = doc.pop("mhe", None)
    if "sensors" not in doc:
        doc["sensors"] = {
            s.output: {"sigma": s.sigma, "period_h": s.period_h, "relative_sigma": s.relative_sigma}
            for s in ekf_sensors(instruments, recipe.measurement_period_h)
        }
    source = pack.source("ekf")
    try:
        ekf = parse_ekf_config(doc, model, source=source)
        period = recipe.measurement_period_h
        if mhe_doc is None:  # the defaults, checked only when an MHE is built
            return ekf, MHEConfig(step_h=period, window_h=max(1.0, 10 * period))
        if isinstance(mhe_doc, Mapping) and "step_h" not in mhe_doc:
            mhe_doc = {**mhe_doc, "step_h": period}
        return ekf, parse_mhe_config(mhe_doc, ekf=ekf, source=source)
    except EstimatorConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a malformed table deep inside
        raise EstimatorConfigError(f"{source}: {exc}") from None
