"""Records as InfluxDB line protocol, in a schema that keeps to the InfluxDB 3.x rules.

One client on the v1 write API (``POST /write?db=&precision=ns``) reaches InfluxDB 1.x,
2.x (v1 compatibility) and 3.x, so the schema follows the strictest of them: every
measurement has a fixed tag set, no tag shares its name with a field, tag values are never
empty. The schema (see ``docs/historian.md`` for the reasons):

- ``measurement`` [site, reactor, batch, sensor]: value (absent when NaN, then
  ``value_nan=true``), t_h, t_sample_h, run_id;
- ``estimate`` [site, reactor, batch]: ``x.<state>``, ``x_sigma.<state>``,
  ``parameters.<name>``, ``parameter_sigma.<name>``, nis (absent when NaN), dof, healthy,
  t_h, run_id;
- ``plan`` [site, reactor, batch, status]: solve_time_s (absent when NaN), n_nodes,
  horizon_h, message, t_h, run_id;
- ``plan_prediction`` [site, reactor, batch, k]: one point per node k of a plan, at the
  node's time: ``x.<state>``, ``u.<input>`` (k < N), plan_t_h (when it was planned), t_h
  (the node's process time), run_id;
- ``setpoint`` [site, reactor, batch, source]: ``values.<input>``, clamped (JSON list),
  t_h, run_id;
- ``event`` [site, reactor, batch, kind, source]: message, t_h, run_id;
- ``audit`` [site, reactor, batch]: who, why, action, accepted, reason, t_h, run_id;
- ``run`` [site, reactor, batch]: run_id, started_utc, t_h = 0, one point at the run's
  start the first time a run identity is seen.

Timestamps are UTC: the run's start (``RunIdentity.started_utc``) plus the process time,
in nanoseconds (``precision=ns``), rounded to the microsecond; a ``measurement`` point is
stamped at its *sample* time, a ``plan_prediction`` point at its node's (future) time, the
others at ``t_h``. The process time is kept exactly as the field ``t_h`` (and
``t_sample_h``, ``plan_t_h``). Two consecutive points of one series (same measurement and
tags) at the same microsecond get 1 ns, 2 ns, ... added, so that neither overwrites the
other; the encoded line is what the buffer keeps, so a re-sent point has the very same
series and timestamp and overwrites itself (idempotent).

:meth:`LineEncoder.encode` refuses (:class:`RecordRefusedError`) what the line protocol
cannot carry or what would be stored wrong: NaN or infinity where a number is required
(states, sigmas, setpoints, predictions, node times), an empty tag, a tag value with a
line break or ending in a backslash (1.x cannot parse it), a non-finite or out-of-range
time, a record without a run identity when the encoder has none to stamp.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import repeat
from typing import Final, cast

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    Record,
    RunIdentity,
    SetpointRecord,
)
from services.historian._validation import validate

__all__ = [
    "MEASUREMENTS",
    "LineEncoder",
    "RecordRefusedError",
    "escape_field_key",
    "escape_string",
    "escape_tag",
]

MEASUREMENTS: Final = (
    "measurement",
    "estimate",
    "plan",
    "plan_prediction",
    "setpoint",
    "event",
    "audit",
    "run",
)
"""Every measurement this schema writes."""

TAG_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    "measurement": ("batch", "reactor", "sensor", "site"),
    "estimate": ("batch", "reactor", "site"),
    "plan": ("batch", "reactor", "site", "status"),
    "plan_prediction": ("batch", "k", "reactor", "site"),
    "setpoint": ("batch", "reactor", "site", "source"),
    "event": ("batch", "kind", "reactor", "site", "source"),
    "audit": ("batch", "reactor", "site"),
    "run": ("batch", "reactor", "site"),
}
"""The fixed tag set of each measurement (sorted, as InfluxDB prefers them)."""

_NS_PER_H: Final = 3_600_000_000_000
_US_PER_H: Final = 3_600_000_000
_TS_MIN: Final = -9_223_372_036_854_775_806  # InfluxDB's valid nanosecond range
_TS_MAX: Final = 9_223_372_036_854_775_806

_TAG_SPECIAL = re.compile(r"[ ,=\\\n\r]")
_KEY_ESC = re.compile(r"([ ,=])")
_STR_ESC = re.compile(r'(["\\])')
_BAD_KEY = re.compile(r"[\n\r]|\\$")


_RECORD_TYPES: Final = frozenset(
    {MeasurementRecord, EstimateRecord, PlanRecord, SetpointRecord, EventRecord, AuditRecord}
)


class RecordRefusedError(ValueError):
    """A record the InfluxDB historian cannot store as it is; nothing of it was buffered."""


def escape_tag(value: str, what: str = "tag") -> str:
    """A tag key or value for the line protocol (comma, equals sign and space escaped).

    Raises:
        RecordRefusedError: empty (InfluxDB drops an empty tag), a line break, or a trailing
            backslash (InfluxDB 1.x cannot parse it before the next separator).
    """
    if not value or not value.strip():
        raise RecordRefusedError(f"{what} is empty (InfluxDB stores no empty tag)")
    if _TAG_SPECIAL.search(value) is None:
        return value
    if _BAD_KEY.search(value):
        raise RecordRefusedError(
            f"{what} {value!r} has a line break or ends in a backslash (not storable as a tag)"
        )
    return _KEY_ESC.sub(r"\\\1", value)


def escape_field_key(name: str, what: str = "field") -> str:
    """A field key for the line protocol (same rules as a tag key)."""
    return escape_tag(name, what)


def escape_string(value: str) -> str:
    """A string field value, quoted (double quote and backslash escaped)."""
    if '"' in value or "\\" in value:
        value = _STR_ESC.sub(r"\\\1", value)
    return f'"{value}"'


def _start_ns(run: RunIdentity) -> int:
    """The run's start as nanoseconds since the Unix epoch (UTC)."""
    when = datetime.fromisoformat(run.started_utc)
    seconds = int(when.timestamp())
    return seconds * 1_000_000_000 + when.microsecond * 1000


def _num(record: object, name: str, v: float) -> str:
    """A required float field; refused when not finite."""
    f = float(v)
    if not math.isfinite(f):
        raise RecordRefusedError(
            f"{type(record).__name__}.{name} is {f!r}; a finite number is required"
        )
    return repr(f)


class LineEncoder:
    """Turns records into line-protocol lines (see the module docstring for the schema).

    Args:
        identity: the run identity used for records that carry none (the loop stamps its
            records; a record without one is refused when this is None too).

    Not thread-safe: one encoder per writing thread (the historian's ``write()``).
    """

    def __init__(self, identity: RunIdentity | None = None) -> None:
        self.identity = identity
        self._starts: dict[RunIdentity, int] = {}
        self._prefix: dict[tuple[object, ...], str] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._last: dict[str, tuple[int, int]] = {}  # series -> (last us, its offset ns)
        self._undo: list[tuple[str, tuple[int, int] | None]] = []
        self._last_run: RunIdentity | None = None  # the identity object of the last record
        self._last_start = 0
        self._last_rid = ""
        self._head_cache: dict[tuple[str, tuple[str, ...]], tuple[str, ...]] = {}
        self._sensor_run: RunIdentity | None = None
        self._sensors: dict[str, str] = {}  # measurement series of _sensor_run by sensor
        self._pred_run: RunIdentity | None = None
        self._preds: list[str] = []  # plan_prediction series of _pred_run by node

    # -- helpers -----------------------------------------------------------------------

    def _run(self, record: Record) -> tuple[RunIdentity, int, list[str]]:
        """(identity, start ns, extra lines: the ``run`` point of a new identity)."""
        run = record.run if record.run is not None else self.identity
        if run is None:
            raise RecordRefusedError(
                f"{type(record).__name__} at t_h={record.t_h!r} h has no run identity "
                "(site, reactor, batch) and the historian has none to stamp"
            )
        start = self._starts.get(run)
        extra: list[str] = []
        if start is None:
            start = _start_ns(run)
            prefix = self._series("run", run, ())
            extra.append(
                f"{prefix} run_id={escape_string(run.run_id)},"
                f"started_utc={escape_string(run.started_utc)},t_h=0.0 {start}"
            )
        return run, start, extra

    def _series(self, measurement: str, run: RunIdentity, tags: tuple[tuple[str, str], ...]) -> str:
        """``measurement,batch=..,reactor=..,site=..`` with ``tags`` merged in, cached."""
        key = (measurement, run.site, run.reactor, run.batch_id, tags)
        found = self._prefix.get(key)
        if found is None:
            every = dict(tags)
            every.update(site=run.site, reactor=run.reactor, batch=run.batch_id)
            parts = [measurement]
            for k in TAG_KEYS[measurement]:
                parts.append(f"{k}={escape_tag(every[k], f'{measurement} tag {k}')}")
            found = ",".join(parts)
            self._prefix[key] = found
        return found

    def _key(self, group: str, name: str) -> str:
        """Field key ``<group>.<name>`` escaped, cached."""
        found = self._keys.get((group, name))
        if found is None:
            found = escape_field_key(f"{group}.{name}", f"field {group}.{name}")
            self._keys[(group, name)] = found
        return found

    def _stamp(self, record: object, series: str, start: int, t_h: float) -> int:
        """Timestamp (ns) of process time ``t_h`` (h) in ``series``; see the module docstring."""
        if not math.isfinite(t_h):
            raise RecordRefusedError(
                f"{type(record).__name__}: time {t_h!r} h is not a finite process time"
            )
        us = round(t_h * _US_PER_H)
        ts = start + us * 1000
        if not _TS_MIN <= ts <= _TS_MAX - 1000:
            raise RecordRefusedError(
                f"{type(record).__name__}: time {t_h!r} h after the run start is outside "
                "the timestamps InfluxDB stores (years 1677-2262)"
            )
        last = self._last.get(series)
        self._undo.append((series, last))
        offset = last[1] + 1 if last is not None and last[0] == us else 0
        if offset >= 1000:
            raise RecordRefusedError(
                f"{type(record).__name__}: over 1000 points of one series at t_h={t_h!r} h"
            )
        self._last[series] = (us, offset)
        return ts + offset

    def _heads(self, group: str, names: tuple[str, ...]) -> tuple[str, ...]:
        """``<group>.<name>=`` per name, escaped, cached per group and name set."""
        found = self._head_cache.get((group, names))
        if found is None:
            found = tuple(f"{self._key(group, k)}=" for k in names)
            self._head_cache[(group, names)] = found
        return found

    def _floats(self, record: object, group: str, values: Mapping[str, float]) -> list[str]:
        """``<group>.<name>=<value>`` fields of a name -> float mapping (all finite)."""
        numbers = tuple(values.values())
        names = tuple(values)
        if not all(map(math.isfinite, numbers)):
            _finite(record, group, names, numbers)
        return list(map(str.__add__, self._heads(group, names), map(repr, numbers)))

    # -- the records -------------------------------------------------------------------

    def encode(self, record: Record) -> list[str]:
        """The lines of ``record`` (one per point, no newline); refused as a whole or not.

        A refused record leaves the encoder as it was (no timestamp offset used up).

        Raises:
            RecordRefusedError: see the module docstring; also the type and text checks of
                :func:`services.historian._validation.validate` (as this error).
        """
        if type(record) is MeasurementRecord:
            line = self._known_measurement(record)
            if line is not None:
                return [line]
        undo: list[tuple[str, tuple[int, int] | None]] = []
        self._undo = undo
        try:
            lines, new_run = self._encode(record)
        except RecordRefusedError:
            for series, last in reversed(undo):
                if last is None:
                    self._last.pop(series, None)
                else:
                    self._last[series] = last
            raise
        if new_run is not None:
            self._starts[new_run[0]] = new_run[1]
        run = record.run
        if run is not None and run is not self._last_run:  # checked and seen: the fast path
            self._last_run, self._last_start = run, self._starts[run]
            self._last_rid = escape_string(run.run_id)
        return lines

    def _encode(self, record: Record) -> tuple[list[str], tuple[RunIdentity, int] | None]:
        """(lines, the new run identity and its start when this record is its first)."""
        if type(record) not in _RECORD_TYPES:
            raise RecordRefusedError(
                f"not a bpcontrol.records record: {type(record).__name__} {record!r:.80}"
            )
        known = record.run is not None and record.run is self._last_run
        try:
            validate(record, check_run=not known)
        except (TypeError, ValueError) as exc:
            raise RecordRefusedError(str(exc)) from None
        # A record's own t_h check can be bypassed (object.__setattr__): check it again.
        t_h = float(record.t_h)
        if not math.isfinite(t_h):
            raise RecordRefusedError(
                f"{type(record).__name__}.t_h is {t_h!r}; a finite process time is required"
            )
        if known:
            run = cast(RunIdentity, record.run)
            start, rid, new_run = self._last_start, self._last_rid, None
            lines: list[str] = []
        else:
            run, start, lines = self._run(record)
            new_run = (run, start) if lines else None
            rid = escape_string(run.run_id)
        if isinstance(record, MeasurementRecord):
            lines += self._measurement(record, run, start, rid)
        elif isinstance(record, EstimateRecord):
            series = self._series("estimate", run, ())
            fields = self._floats(record, "x", record.x)
            fields += self._floats(record, "x_sigma", record.x_sigma)
            fields += self._floats(record, "parameters", record.parameters)
            fields += self._floats(record, "parameter_sigma", record.parameter_sigma)
            nis = float(record.nis)
            if not math.isnan(nis):
                fields.append(f"nis={_num(record, 'nis', nis)}")
            fields.append(f"dof={int(record.dof)}i")
            fields.append(f"healthy={'true' if record.healthy else 'false'}")
            ts = self._stamp(record, series, start, t_h)
            lines.append(f"{series} {','.join(fields)},t_h={t_h!r},run_id={rid} {ts}")
        elif isinstance(record, PlanRecord):
            lines += self._plan(record, run, start, rid)
        elif isinstance(record, SetpointRecord):
            series = self._series("setpoint", run, (("source", str(record.source)),))
            fields = self._floats(record, "values", record.values)
            clamped = escape_string(json.dumps(list(record.clamped), ensure_ascii=False))
            ts = self._stamp(record, series, start, t_h)
            lines.append(
                f"{series} {','.join(fields)},clamped={clamped},t_h={t_h!r},run_id={rid} {ts}"
            )
        elif isinstance(record, EventRecord):
            tags = (("kind", str(record.kind)), ("source", record.source))
            series = self._series("event", run, tags)
            ts = self._stamp(record, series, start, t_h)
            lines.append(
                f"{series} message={escape_string(record.message)},t_h={t_h!r},run_id={rid} {ts}"
            )
        elif isinstance(record, AuditRecord):
            series = self._series("audit", run, ())
            ts = self._stamp(record, series, start, t_h)
            lines.append(
                f"{series} who={escape_string(record.who)},why={escape_string(record.why)},"
                f"action={escape_string(record.action)},"
                f"accepted={'true' if record.accepted else 'false'},"
                f"reason={escape_string(record.reason)},"
                f"wall_utc={escape_string(record.wall_utc)},"
                f"old_value={escape_string(record.old_value)},"
                f"new_value={escape_string(record.new_value)},"
                f"result={escape_string(record.result)},seq={int(record.seq)}i,"
                f"prev_hash={escape_string(record.prev_hash)},hash={escape_string(record.hash)},"
                f"t_h={t_h!r},run_id={rid} {ts}"
            )
        else:  # pragma: no cover - validate() refuses other types
            raise RecordRefusedError(f"not a record: {type(record).__name__}")
        return lines, new_run

    def _known_measurement(self, record: MeasurementRecord) -> str | None:
        """The line of a reading of a sensor already seen in the run seen last, when it
        passes every check at once (plain floats, ASCII sensor name, finite times, a new
        microsecond of its series): the same line as :meth:`_measurement` writes, at a
        third of the cost. None: anything else, for the general path (which also says
        what is wrong)."""
        run = record.run
        if run is None or run is not self._last_run or run is not self._sensor_run:
            return None
        sensor, value, t_h, ts_h = record.sensor, record.value, record.t_h, record.t_sample_h
        if not (
            type(sensor) is str
            and type(value) is float
            and type(t_h) is float
            and type(ts_h) is float
            and sensor.isascii()
        ):
            return None
        series = self._sensors.get(sensor)
        if series is None or not (math.isfinite(t_h) and math.isfinite(ts_h)):
            return None
        us = round(ts_h * _US_PER_H)
        ts = self._last_start + us * 1000
        prev = self._last.get(series)
        if not _TS_MIN <= ts <= _TS_MAX - 1000 or (prev is not None and prev[0] == us):
            return None
        if math.isfinite(value):
            head = f"value={value!r}"
        elif math.isnan(value):
            head = "value_nan=true"
        else:
            return None  # infinite: refused by the general path
        self._last[series] = (us, 0)
        return f"{series} {head},t_h={t_h!r},t_sample_h={ts_h!r},run_id={self._last_rid} {ts}"

    def _measurement(
        self, record: MeasurementRecord, run: RunIdentity, start: int, rid: str
    ) -> list[str]:
        if run is not self._sensor_run:
            self._sensor_run, self._sensors = run, {}
        series = self._sensors.get(record.sensor)
        if series is None:
            series = self._series("measurement", run, (("sensor", record.sensor),))
            self._sensors[record.sensor] = series
        ts_h = float(record.t_sample_h)
        value = float(record.value)
        if math.isfinite(value):
            head = f"value={value!r}"
        elif math.isnan(value):
            head = "value_nan=true"
        else:
            head = f"value={_num(record, 'value', value)}"  # refused: infinite
        ts = self._stamp(record, series, start, ts_h)
        return [f"{series} {head},t_h={float(record.t_h)!r},t_sample_h={ts_h!r},run_id={rid} {ts}"]

    def _plan(self, record: PlanRecord, run: RunIdentity, start: int, rid: str) -> list[str]:
        t_h = float(record.t_h)
        nodes = record.t_nodes_h
        n = len(nodes)
        isfinite = math.isfinite
        if not all(map(isfinite, nodes)):
            _finite(record, "t_nodes_h", None, nodes)
        for name, xs in record.x_pred.items():
            if len(xs) != n:
                raise RecordRefusedError(
                    f"PlanRecord.x_pred[{name!r}] has {len(xs)} values for {n} node times"
                )
            if not all(map(isfinite, xs)):
                _finite(record, f"x_pred[{name!r}]", None, xs)
        for name, us in record.u_plan.items():
            if n == 0 or len(us) != n - 1:
                raise RecordRefusedError(
                    f"PlanRecord.u_plan[{name!r}] has {len(us)} values for {n} node times "
                    f"(expected {max(n - 1, 0)})"
                )
            if not all(map(isfinite, us)):
                _finite(record, f"u_plan[{name!r}]", None, us)
        # one column of "key=value" texts per state and input, joined row-wise per node:
        # node k's fields are its states, its inputs (k < N), t_h (its time) and the tail
        x_heads = self._heads("x", tuple(record.x_pred))
        u_heads = self._heads("u", tuple(record.u_plan))
        xcols = [
            list(map(head.__add__, map(repr, xs)))
            for head, xs in zip(x_heads, record.x_pred.values(), strict=True)
        ]
        ucols = [
            list(map(head.__add__, map(repr, us)))
            for head, us in zip(u_heads, record.u_plan.values(), strict=True)
        ]
        tcol = list(map("t_h=".__add__, map(repr, nodes)))
        tail = f",plan_t_h={t_h!r},run_id={rid} "
        if ucols:  # nodes 0 .. N-1 with inputs (zip stops at the shorter input columns)
            rows = list(map(",".join, zip(*xcols, *ucols, tcol, strict=False)))
            rows.append(",".join([*(c[-1] for c in xcols), tcol[-1]]))
        else:
            rows = list(map(",".join, zip(*xcols, tcol, strict=True)))
        # timestamps: as _stamp, for all nodes at once (the node times are finite)
        us_all = [round(node * _US_PER_H) for node in nodes]
        if n and not (
            _TS_MIN <= start + min(us_all) * 1000 and start + max(us_all) * 1000 <= _TS_MAX - 1000
        ):
            raise RecordRefusedError(
                f"PlanRecord: a node time after the run start is outside the timestamps "
                f"InfluxDB stores (years 1677-2262): t_nodes_h from {min(nodes)!r} to "
                f"{max(nodes)!r} h"
            )
        preds = self._pred_list(run, n)[:n]
        last = self._last
        prevs = list(map(last.get, preds))
        for prev, node_us in zip(prevs, us_all, strict=True):
            if prev is not None and prev[0] == node_us:
                break  # a node at the same microsecond as that series' last point
        else:  # the usual case: no offsets, every node at once
            self._undo.extend(zip(preds, prevs, strict=True))
            last.update(zip(preds, zip(us_all, repeat(0)), strict=False))
            lines = [
                f"{series} {row}{tail}{start + node_us * 1000}"
                for series, row, node_us in zip(preds, rows, us_all, strict=True)
            ]
            return [self._plan_point(record, run, start, rid, t_h, nodes), *lines]
        undo = self._undo
        lines = []
        for series, node_us, row in zip(preds, us_all, rows, strict=True):
            prev = last.get(series)
            undo.append((series, prev))
            if prev is not None and prev[0] == node_us:
                offset = prev[1] + 1
                if offset >= 1000:
                    raise RecordRefusedError(
                        "PlanRecord: over 1000 points of one series at "
                        f"t_h={node_us / _US_PER_H!r} h"
                    )
            else:
                offset = 0
            last[series] = (node_us, offset)
            lines.append(f"{series} {row}{tail}{start + node_us * 1000 + offset}")
        return [self._plan_point(record, run, start, rid, t_h, nodes), *lines]

    def _plan_point(
        self,
        record: PlanRecord,
        run: RunIdentity,
        start: int,
        rid: str,
        t_h: float,
        nodes: Sequence[float],
    ) -> str:
        """The ``plan`` point of a plan (its status, solve time, horizon, message)."""
        n = len(nodes)
        series = self._series("plan", run, (("status", str(record.status)),))
        fields = []
        solve = float(record.solve_time_s)
        if not math.isnan(solve):
            fields.append(f"solve_time_s={_num(record, 'solve_time_s', solve)}")
        horizon = float(nodes[-1]) - float(nodes[0]) if n else 0.0
        fields.append(f"n_nodes={n}i,horizon_h={horizon!r}")
        fields.append(f"message={escape_string(record.message)}")
        ts = self._stamp(record, series, start, t_h)
        # the plan's own point goes first: its status is the step's outcome
        return f"{series} {','.join(fields)},t_h={t_h!r},run_id={rid} {ts}"

    def _pred_list(self, run: RunIdentity, n: int) -> list[str]:
        """The ``plan_prediction`` series of nodes 0 .. n-1 of ``run``'s plans, cached."""
        if run is not self._pred_run:
            self._pred_run, self._preds = run, []
        preds = self._preds
        while len(preds) < n:
            preds.append(self._series("plan_prediction", run, (("k", str(len(preds))),)))
        return preds


def _finite(
    record: object, what: str, names: Sequence[str] | None, values: Sequence[float]
) -> None:
    """Refuse ``record`` when one of ``values`` is NaN or infinite (names them)."""
    if all(map(math.isfinite, values)):
        return
    for i, v in enumerate(values):
        if not math.isfinite(v):
            where = f"{what}[{names[i]!r}]" if names is not None else f"{what}[{i}]"
            if names is not None and names[i].startswith("["):
                where = f"{what}{names[i]}"
            raise RecordRefusedError(
                f"{type(record).__name__}.{where} is {float(v)!r}; a finite number is required"
            )
