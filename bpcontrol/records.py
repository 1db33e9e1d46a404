"""Typed records of the loop and their vocabulary: each record maps to a historian measurement.

Every record carries its process time ``t_h`` (hours since the batch started, the loop's
clock) and is a frozen value, so it can be queued, written later and compared in tests.
Field names become historian fields; ``source``, ``kind`` and the run identity become tags.

The words records use are enums, not free strings: :class:`PlanStatus` (how a control step's
plan went), :class:`SetpointSource` (where applied setpoints came from), :class:`EventKind`
(what happened) and :class:`Mode` (who drives the setpoints). The first three are
``StrEnum``\\s, so a stored value is the same text as before (``"solved"``, ``"fallback"``)
and files written before read back; a record built with the plain text (``"fallback"``) is
converted to the enum member, and unknown text is refused with the allowed values.

:class:`RunIdentity` names the run (site, reactor, batch, run id, start time); every record
has an optional keyword field ``run`` that the loop stamps with it (see
:class:`bpcontrol.loop.ControlLoop`), so a historian can tag records by site, reactor and
batch.
"""

from __future__ import annotations

import enum
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import TypeVar

__all__ = [
    "USABLE_PLAN_STATUSES",
    "AuditRecord",
    "EstimateRecord",
    "EventKind",
    "EventRecord",
    "MeasurementRecord",
    "Mode",
    "PlanRecord",
    "PlanStatus",
    "Record",
    "RunIdentity",
    "SetpointRecord",
    "SetpointSource",
    "storable_text",
]


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------


class Mode(enum.Enum):
    """Who drives the setpoints (the supervisor's mode; see :mod:`bpcontrol.supervisor`)."""

    AUTO = "auto"
    """The NMPC plan (or the recipe while the recipe phase forbids the controller)."""
    MANUAL = "manual"
    """The operator setpoints."""
    HOLD = "hold"
    """The applied values, frozen."""
    FALLBACK = "fallback"
    """The recipe profile (entered automatically when the controller cannot be trusted)."""


class PlanStatus(enum.StrEnum):
    """How one control step's plan went (``PlanRecord.status``).

    The first five are the controller's own solve statuses
    (:class:`bpcontrol.nmpc.SolveStatus`, same values); the rest are the loop's, for a step
    in which the controller gave no plan the loop could use.
    """

    SOLVED = "solved"
    """The solver converged."""
    SOLVED_INACCURATE = "solved-inaccurate"
    """The solver stopped at an acceptable but not optimal point."""
    TIME_LIMIT = "time-limit"
    """The solver hit its time limit; the plan is the previous one shifted."""
    INFEASIBLE_SOFTENED = "infeasible-softened"
    """Only a solution violating soft bounds (slack > 0) exists; it is used."""
    FAILED = "failed"
    """The solver failed; the plan is the previous one shifted."""
    BUSY = "busy"
    """The previous solve was still running: no new solve was started."""
    NO_ESTIMATE = "no-estimate"
    """The estimator had not produced an estimate yet."""
    LATE = "late"
    """No plan within the loop's wall-time deadline."""
    RAISED = "raised"
    """The controller raised an exception (the message names it)."""
    GARBAGE = "garbage"
    """The controller returned something that is not a readable plan."""

    @property
    def usable(self) -> bool:
        """True when the plan came from this step's solve (``SolveStatus.usable``)."""
        return self in USABLE_PLAN_STATUSES


USABLE_PLAN_STATUSES: frozenset[PlanStatus] = frozenset(
    {PlanStatus.SOLVED, PlanStatus.SOLVED_INACCURATE, PlanStatus.INFEASIBLE_SOFTENED}
)
"""Plan statuses whose plan came from that step's solve (``SolveStatus.usable``).

Members are ``StrEnum``\\s, so ``"solved" in USABLE_PLAN_STATUSES`` holds too.
"""


class SetpointSource(enum.StrEnum):
    """Where applied setpoints came from before clamping (``SetpointRecord.source``)."""

    NMPC = "nmpc"
    """The controller's plan (mode AUTO)."""
    OPERATOR = "operator"
    """The operator setpoints (mode MANUAL)."""
    FALLBACK = "fallback"
    """The recipe profile because the controller could not be trusted (mode FALLBACK)."""
    HOLD = "hold"
    """The values applied before, frozen (mode HOLD)."""
    RECIPE = "recipe"
    """The recipe profile because the recipe phase forbids the controller (mode AUTO)."""
    INTERLOCK = "interlock"
    """An interlock tripped on a raw measurement and cut inputs (any mode)."""


class EventKind(enum.StrEnum):
    """What an :class:`EventRecord` reports (short, machine-readable, a historian tag)."""

    FALLBACK = "fallback"
    """The supervisor left AUTO for the recipe (the message names every cause)."""
    FALLBACK_RECIPE_INVALID = "fallback-recipe-invalid"
    """The recipe profile could not be evaluated; the applied setpoints are held."""
    MODE_CHANGE = "mode-change"
    """The mode changed by an operator's request or the supervisor's auto-resume."""
    LIMITS_CHANGE = "limits-change"
    """An operator changed the limits of one input."""
    PHASE = "phase"
    """A recipe phase began."""
    INTERLOCK = "interlock"
    """An interlock tripped (inputs cut) or was released (:mod:`bpcontrol.interlocks`)."""
    RESUMED = "resumed"
    """A restarted loop resumed the run from its historian's last state (:mod:`bpcontrol.
    resume`)."""
    BATCH_END = "batch-end"
    """The batch reached its end."""
    STOPPED = "stopped"
    """The run was stopped before the batch end (a signal, a failing store); says why."""
    SOLVER_OUTPUT = "solver-output"
    """A line a solver or integrator printed (CasADi, IPOPT, CVODES), kept as a record."""
    PLANT_READ_FAILED = "plant-read-failed"
    """Reading the plant failed; the step went on without measurements."""
    SETPOINT_WRITE_FAILED = "setpoint-write-failed"
    """Applying setpoints failed; the plant keeps what it held."""
    SETPOINT_NOT_HELD = "setpoint-not-held"
    """The plant confirmed other values than asked (a device clamp, a late confirmation)."""
    ESTIMATOR_FAILED = "estimator-failed"
    """The estimator raised; its estimate is unhealthy until it recovers."""
    ESTIMATOR_REJECTED = "estimator-rejected"
    """The filter rejected a reading (not physical, unknown sensor)."""
    ESTIMATOR_GATED = "estimator-gated"
    """The filter's chi-square gate refused a reading."""
    ESTIMATOR_LATE_FUSED = "estimator-late_fused"
    """A late sample (an offline assay) was fused at its sampling time."""
    ESTIMATOR_TOO_LATE = "estimator-too_late"
    """A sample came too late for the filter's history and was dropped."""
    ESTIMATOR_RESET = "estimator-reset"
    """The filter's covariance degenerated and was reset to its prior."""
    ESTIMATE_INCONSISTENT = "estimate-inconsistent"
    """A trusted sensor's readings failed the gate several times in a row: the filter
    inflated the covariance of the states it observes and fused the reading (the message
    names the sensor and the states)."""
    ESTIMATOR_OTHER = "estimator-other"
    """A filter event of a kind this enum does not know (the message names it)."""
    HISTORIAN = "historian"
    """A mirror historian's news (InfluxDB down or back, buffer high or full, a record
    refused or set aside): the message starts with its kind."""

    @classmethod
    def of_filter_event(cls, filter_kind: str) -> EventKind:
        """The kind of a filter event (``estimators.FilterEvent.kind``, e.g. ``"gated"``).

        Unknown filter kinds map to :attr:`ESTIMATOR_OTHER` rather than failing, so a new
        filter event never stops the loop.
        """
        if filter_kind == "inconsistent":
            return cls.ESTIMATE_INCONSISTENT
        try:
            return cls(f"estimator-{filter_kind}")
        except ValueError:
            return cls.ESTIMATOR_OTHER


_E = TypeVar("_E", bound=enum.Enum)


def _member(enum_type: type[_E], value: object, what: str) -> _E:
    """``value`` as a member of ``enum_type`` (its text is accepted); ValueError if unknown."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum_type)
        raise ValueError(f"unknown {what} {value!r}; use one of {allowed}") from None


def storable_text(value: object) -> str:
    """``value`` as text every historian can store: itself when it is valid Unicode text,
    else its ``ascii()`` form (a lone surrogate, or something that is not text at all).

    Used where the loop records what an outsider sent (an operator command's who, why and
    values), so that a malformed command is audited instead of failing the write.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ascii(value)
        return value
    return ascii(value)


# --------------------------------------------------------------------------------------
# Run identity
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunIdentity:
    """Which run a record belongs to: the tags a historian files it under.

    Attributes:
        site: the plant site (e.g. ``"basel"``).
        reactor: the reactor at that site (e.g. ``"R-101"``).
        batch_id: the batch (lot) being produced.
        run_id: this run of the loop (unique; a resumed batch is a new run).
        started_utc: when the run started, ISO-8601 with a zero UTC offset
            (``"2025-03-01T08:00:00+00:00"`` or ``"...Z"``); kept as given.

    Raises:
        ValueError: an empty or non-text field, or a start time that is not ISO-8601 UTC.
    """

    site: str
    reactor: str
    batch_id: str
    run_id: str
    started_utc: str

    def __post_init__(self) -> None:
        for name in ("site", "reactor", "batch_id", "run_id", "started_utc"):
            value = getattr(self, name)
            if not (isinstance(value, str) and value.strip()):
                raise ValueError(f"RunIdentity.{name} must be non-empty text, got {value!r}")
        try:
            when = datetime.fromisoformat(self.started_utc)
        except ValueError:
            when = None
        if when is None or when.utcoffset() != timedelta(0):
            raise ValueError(
                "RunIdentity.started_utc must be an ISO-8601 UTC timestamp such as "
                f"'2025-03-01T08:00:00+00:00', got {self.started_utc!r}"
            )

    @classmethod
    def start(
        cls,
        *,
        site: str,
        reactor: str,
        batch_id: str,
        run_id: str | None = None,
        now: datetime | None = None,
    ) -> RunIdentity:
        """A new run identity started ``now`` (default: the current UTC time, in seconds).

        ``run_id`` defaults to a random UUID (hex).
        """
        when = (now or datetime.now(UTC)).astimezone(UTC)
        return cls(
            site,
            reactor,
            batch_id,
            run_id or uuid.uuid4().hex,
            when.isoformat(timespec="seconds"),
        )

    def tags(self) -> dict[str, str]:
        """The identity as historian tags (``site``, ``reactor``, ``batch``, ``run``)."""
        return {
            "site": self.site,
            "reactor": self.reactor,
            "batch": self.batch_id,
            "run": self.run_id,
        }


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def _check_time(t_h: float) -> None:
    if not math.isfinite(t_h):
        raise ValueError(f"t_h must be a finite process time in hours, got {t_h!r}")


def _check_run(run: object) -> None:
    if run is not None and not isinstance(run, RunIdentity):
        raise TypeError(f"run must be a RunIdentity or None, got {type(run).__name__} {run!r}")


def _frozen(values: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({str(k): float(v) for k, v in values.items()})


@dataclass(frozen=True)
class MeasurementRecord:
    """One sensor value as the loop received it from the plant.

    Attributes:
        t_h: process time (h) at which the loop received it.
        sensor: the model output it measures (e.g. ``"DO_probe"``).
        value: the reading in that output's unit (NaN when the device sent garbage).
        t_sample_h: process time (h) the sample was taken (earlier than ``t_h`` for an
            offline assay that arrives late).
        run: the run it belongs to (stamped by the loop; None when not known).
    """

    t_h: float
    sensor: str
    value: float
    t_sample_h: float
    run: RunIdentity | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        _check_time(self.t_sample_h)
        _check_run(self.run)


@dataclass(frozen=True)
class EstimateRecord:
    """The estimator's output after one step.

    Attributes:
        t_h: process time (h) of the estimate.
        x: state estimate per state name (state units, e.g. g/L, %, L).
        x_sigma: its standard deviation per state name (same units).
        parameters: tracked parameter estimates per name (parameter units).
        parameter_sigma: their standard deviations.
        nis: normalised innovation squared of this step (0 without readings).
        dof: number of scalar readings fused in this step.
        healthy: whether the estimate may drive the controller.
        run: the run it belongs to (stamped by the loop; None when not known).
    """

    t_h: float
    x: Mapping[str, float]
    x_sigma: Mapping[str, float]
    parameters: Mapping[str, float] = field(default_factory=dict)
    parameter_sigma: Mapping[str, float] = field(default_factory=dict)
    nis: float = 0.0
    dof: int = 0
    healthy: bool = True
    run: RunIdentity | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        _check_run(self.run)
        for name in ("x", "x_sigma", "parameters", "parameter_sigma"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))


@dataclass(frozen=True)
class PlanRecord:
    """One control step's plan: what it predicts and how the solve went.

    Attributes:
        t_h: process time (h) the plan was computed for.
        status: how it went (:class:`PlanStatus`; its text, e.g. ``"solved"``, is accepted).
        solve_time_s: wall time of the solve (s); NaN when it never returned.
        t_nodes_h: node times of the prediction (h), length N+1.
        x_pred: predicted state trajectory per state name, at ``t_nodes_h``.
        u_plan: planned inputs per input name, one value per interval (length N).
        message: the controller's own words (solver message, exception).
        run: the run it belongs to (stamped by the loop; None when not known).
    """

    t_h: float
    status: PlanStatus
    solve_time_s: float
    t_nodes_h: tuple[float, ...] = ()
    x_pred: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    u_plan: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    message: str = ""
    run: RunIdentity | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        _check_run(self.run)
        object.__setattr__(self, "status", _member(PlanStatus, self.status, "plan status"))
        object.__setattr__(self, "t_nodes_h", tuple(float(v) for v in self.t_nodes_h))
        for name in ("x_pred", "u_plan"):
            values = {str(k): tuple(float(v) for v in vs) for k, vs in getattr(self, name).items()}
            object.__setattr__(self, name, MappingProxyType(values))


@dataclass(frozen=True)
class SetpointRecord:
    """The setpoints the supervisor applied at one step.

    Attributes:
        t_h: process time (h) at which the setpoints apply.
        values: setpoint per input name, in that input's unit (the model's input units,
            e.g. feed rate L/h, temperature degC); read-only.
        source: where the values came from before clamping (:class:`SetpointSource`; its
            text is accepted).
        clamped: names of the inputs whose value was changed by the absolute limits or by
            the rate-of-change limit (empty when the source was applied as is).
        run: the run it belongs to (stamped by the loop; None when not known).
    """

    t_h: float
    values: Mapping[str, float]
    source: SetpointSource
    clamped: tuple[str, ...] = field(default=())
    run: RunIdentity | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        _check_run(self.run)
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))
        object.__setattr__(self, "source", _member(SetpointSource, self.source, "source"))
        object.__setattr__(self, "clamped", tuple(self.clamped))


@dataclass(frozen=True)
class EventRecord:
    """Something the loop wants a person to know: a mode change, a fallback, a fault.

    Attributes:
        t_h: process time (h) of the event.
        kind: what happened (:class:`EventKind`; its text, e.g. ``"fallback"``, is
            accepted).
        message: a sentence for the operator, naming the cause and what to do.
        source: who raised it (``"supervisor"`` for automatic decisions, ``"operator"``,
            ``"loop"``, ``"estimator"``).
        run: the run it belongs to (stamped by the loop; None when not known).
    """

    t_h: float
    kind: EventKind
    message: str
    source: str
    run: RunIdentity | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        _check_run(self.run)
        object.__setattr__(self, "kind", _member(EventKind, self.kind, "event kind"))


@dataclass(frozen=True)
class AuditRecord:
    """One operator write (mode change, setpoint, limits), accepted or refused.

    Attributes:
        t_h: process time (h) at which the write was carried out or refused.
        who: the person or system that asked.
        why: their stated reason.
        action: what was asked, in words from the command, e.g. ``"mode AUTO -> MANUAL"``
            or ``"setpoint F = 0.2"``.
        accepted: whether the supervisor carried it out.
        reason: why it was refused (empty when accepted).
        run: the run it belongs to (stamped by the loop; None when not known).
        wall_utc: when it was asked, ISO-8601 UTC wall time (empty when the writer does
            not know it: the loop and the supervisor stamp process time only).
        old_value: the value before the write, as text (e.g. ``"FALLBACK"``, ``"0.1"``).
        new_value: the value asked for, as text.
        result: the outcome in one word with its detail (``"accepted"``, ``"refused
            (422)"``); empty when only ``accepted`` is known.
        seq: the entry's number in a tamper-evident audit file (1, 2, ...; 0 when the
            record is not in one, :mod:`services.api.audit`).
        prev_hash: SHA-256 (hex) of the previous entry of that file ("" for the first).
        hash: SHA-256 (hex) over this entry's canonical JSON and ``prev_hash``.

    The fields after ``run`` are keyword-only with defaults, so writers that predate them
    (the supervisor, the loop, the historians) build and read the same records as before.
    """

    t_h: float
    who: str
    why: str
    action: str
    accepted: bool
    reason: str = ""
    run: RunIdentity | None = field(default=None, kw_only=True)
    wall_utc: str = field(default="", kw_only=True)
    old_value: str = field(default="", kw_only=True)
    new_value: str = field(default="", kw_only=True)
    result: str = field(default="", kw_only=True)
    seq: int = field(default=0, kw_only=True)
    prev_hash: str = field(default="", kw_only=True)
    hash: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        _check_time(self.t_h)
        _check_run(self.run)
        for name in ("wall_utc", "old_value", "new_value", "result", "prev_hash", "hash"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"AuditRecord.{name} must be str, got {getattr(self, name)!r}")
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise ValueError(f"AuditRecord.seq must be an integer >= 0, got {self.seq!r}")


Record = (
    MeasurementRecord | EstimateRecord | PlanRecord | SetpointRecord | EventRecord | AuditRecord
)
"""Any record the loop writes to its historian."""
