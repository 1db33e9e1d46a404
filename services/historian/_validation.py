"""Record validation shared by the historians: bad input gets a clear error, nothing stored.

:func:`validate` checks that a record can be stored and read back as it is (types of its
fields, valid Unicode text, a proper run identity). The embedded SQLite historian
(:mod:`services.historian.embedded`) runs it in ``write()``; the InfluxDB historian
(:mod:`services.historian.influx`) runs it and then its own stricter checks (no NaN where
the line protocol needs a number, no empty tag), before a record reaches its buffer.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Final

import numpy as np

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    RunIdentity,
    SetpointRecord,
)

__all__ = ["RUN_FIELDS", "validate"]

RUN_FIELDS: Final = ("site", "reactor", "batch_id", "run_id", "started_utc")
"""The fields of :class:`bpcontrol.records.RunIdentity`, in order."""


def _check_text(record: object, name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(
            f"{type(record).__name__}.{name} must be str, got {type(value).__name__} {value!r}"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{type(record).__name__}.{name} is not valid Unicode text "
                f"(a lone surrogate at index {exc.start}): {value!r}"
            ) from None


def _check_real(record: object, name: str, value: object) -> None:
    if type(value) is float or type(value) is int:
        return
    if not isinstance(value, numbers.Real):
        raise TypeError(
            f"{type(record).__name__}.{name} must be a real number, "
            f"got {type(value).__name__} {value!r}"
        )


def _check_int(record: object, name: str, value: object) -> None:
    if not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{type(record).__name__}.{name} must be an integer, "
            f"got {type(value).__name__} {value!r}"
        )


def _check_bool(record: object, name: str, value: object) -> None:
    if not isinstance(value, bool | numbers.Integral | np.bool_):
        raise TypeError(
            f"{type(record).__name__}.{name} must be a bool, got {type(value).__name__} {value!r}"
        )


def _check_mapping(record: object, name: str, values: object) -> None:
    if not isinstance(values, Mapping):
        raise TypeError(f"{type(record).__name__}.{name} must be a mapping of name -> number")
    for k, v in values.items():
        if not isinstance(k, str):
            raise TypeError(f"{type(record).__name__}.{name} has a non-str key {k!r}")
        _check_real(record, f"{name}[{k!r}]", v)


def validate(record: object, *, check_run: bool = True) -> None:
    """Raise TypeError/ValueError when ``record`` cannot be stored and read back as it is.

    ``check_run=False`` skips the run identity (a caller that checked that very object).
    """
    run = getattr(record, "run", None)
    if run is not None and check_run:
        if not isinstance(run, RunIdentity):
            raise TypeError(
                f"{type(record).__name__}.run must be a RunIdentity or None, got "
                f"{type(run).__name__} {run!r}"
            )
        for name in RUN_FIELDS:
            _check_text(record, f"run.{name}", getattr(run, name))
    if isinstance(record, MeasurementRecord):
        _check_text(record, "sensor", record.sensor)
        _check_real(record, "value", record.value)
    elif isinstance(record, EstimateRecord):
        # Mappings were frozen to str -> float by the record itself.
        _check_real(record, "nis", record.nis)
        _check_int(record, "dof", record.dof)
        _check_bool(record, "healthy", record.healthy)
    elif isinstance(record, PlanRecord):
        _check_text(record, "status", record.status)
        _check_real(record, "solve_time_s", record.solve_time_s)
        _check_text(record, "message", record.message)
    elif isinstance(record, SetpointRecord):
        _check_mapping(record, "values", record.values)
        _check_text(record, "source", record.source)
        for i, name in enumerate(record.clamped):
            _check_text(record, f"clamped[{i}]", name)
    elif isinstance(record, EventRecord):
        _check_text(record, "kind", record.kind)
        _check_text(record, "message", record.message)
        _check_text(record, "source", record.source)
    elif isinstance(record, AuditRecord):
        for name in ("who", "why", "action", "reason"):
            _check_text(record, name, getattr(record, name))
        _check_bool(record, "accepted", record.accepted)
