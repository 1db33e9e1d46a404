"""The embedded historian: every record of a run in one SQLite file in the run folder.

It needs no server, so the closed loop, a HIL run and a test all keep a complete record of
what happened (``runs/<id>/records.sqlite``), which reports and parameter fits read back.

Layout of the file (SQLite, ``PRAGMA user_version = 1``; WAL journal while a historian
writes it, so readers and the writer do not block each other, and a rollback journal again
after :meth:`EmbeddedHistorian.close`, so that a finished run is one self-contained file):

- one table per record type: ``measurement``, ``estimate``, ``plan``, ``setpoint``,
  ``event``, ``audit``;
- every table has ``seq`` (INTEGER PRIMARY KEY: the order in which the records were
  written, one counter over all tables, so a run can be replayed in order; numbered inside
  the transaction that stores them, so two writers on one file never collide) and ``t_h``
  (REAL, process time in hours, indexed);
- scalar fields and tags are typed columns named like the record's fields (``sensor``,
  ``value``, ``status``, ``source``, ``kind``, ...); booleans are 0/1 integers; the enums
  (``status``, ``kind``, ``source`` of a setpoint) are stored as their text value and read
  back as the enum members (:mod:`bpcontrol.records`);
- the run identity (:class:`bpcontrol.records.RunIdentity`) is stored once per run in the
  table ``run`` (``key`` INTEGER PRIMARY KEY, ``site``, ``reactor``, ``batch_id``,
  ``run_id``, ``started_utc``; unique over the five), and every record table has a
  ``run`` column (INTEGER, the key; NULL for a record without an identity). Records read
  back carry their identity again. The ``run`` table and columns are an additive change
  within schema version 1: files written before have neither, read back with
  ``run=None``, and get them when a historian appends to them; code that predates them
  reads new files and ignores them;
- mappings and tuples (``x``, ``x_sigma``, ``values``, ``x_pred``, ``t_nodes_h``,
  ``clamped``, ...) are JSON text. JSON has no NaN or infinity, so a non-finite float is
  written as the JSON string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``; finite floats
  are written with Python's shortest round-trip ``repr`` and so read back bit for bit.
  SQLite stores a float NaN in a REAL column as NULL; the reader turns NULL back into NaN.
  It also stores -0.0 in a REAL column as 0.0 (equal as floats; JSON text keeps the sign).

Writing never blocks the loop: :meth:`EmbeddedHistorian.write` checks the record, puts it
on an in-memory queue and returns (about a microsecond). A daemon thread takes records off
the queue and inserts them in batches, one transaction per batch. When a batch fails (disk
full, database locked by another process, file removed) the thread keeps the batch, waits
(exponential backoff) and tries again; nothing accepted is dropped, and each record is
stored once (a batch is one transaction: it is stored whole or not at all). Every second
(``checkpoint_interval_s``) the committed batches are checkpointed into the main file, so
that the file alone is never far behind its ``-wal`` side file (after SIGKILL, say); a
store that keeps failing shows in :meth:`EmbeddedHistorian.failing_for_s`, and
:meth:`EmbeddedHistorian.abandon` gives up on it after a bounded :meth:`close`.
:attr:`EmbeddedHistorian.pending` and :attr:`EmbeddedHistorian.last_error` show the state
to a health check.

The reader (:func:`read_records`, :func:`load_frame`) opens the file read-only and works
while a run writes (WAL readers see the last committed batch and do not block the writer).
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

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
from bpcontrol.run_status import process_alive
from services.historian._batching import STOP, WAKE, Retry, gather
from services.historian._validation import RUN_FIELDS
from services.historian._validation import validate as _validate

__all__ = [
    "TABLES",
    "EmbeddedHistorian",
    "HistorianClosedError",
    "HistorianError",
    "load_frame",
    "read_records",
]

SCHEMA_VERSION: Final = 1
"""``PRAGMA user_version`` of files this module writes and reads."""

Row = tuple[Any, ...]


class HistorianError(RuntimeError):
    """The historian could not open its file or could not store what it accepted in time."""


class HistorianClosedError(HistorianError):
    """A record was written to a historian after :meth:`EmbeddedHistorian.close`."""


# --------------------------------------------------------------------------------------
# Encoding: record <-> row
# --------------------------------------------------------------------------------------

_NONFINITE_TEXT: Final = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _staging_path(path: Path, pid: int | str) -> Path:
    """Where process ``pid`` builds a new ``path`` before linking it into place."""
    return path.with_name(f".{path.name}.{pid}.creating")


def _remove_dead_staging(path: Path) -> None:
    """Remove the staging files (:func:`_staging_path`) next to ``path`` whose creator
    process is gone (killed mid-creation); a live creator's file is left alone."""
    pattern = _staging_path(path, "*").name
    head, _, tail = pattern.rpartition("*")  # the pid's star is the last one
    for stale in path.parent.glob(pattern):
        pid = stale.name[len(head) : len(stale.name) - len(tail)]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _json_float(v: float) -> float | str:
    """A float as a JSON value: itself when finite, else ``"NaN"``/``"Infinity"``/...."""
    return v if math.isfinite(v) else _NONFINITE_TEXT[repr(v)]


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _enc_floats(values: Mapping[str, float]) -> str:
    """A name -> float mapping as a JSON object (non-finite values as strings)."""
    try:
        return _dumps({k: float(v) for k, v in values.items()})
    except ValueError:  # a NaN or an infinity: JSON has neither
        return _dumps({k: _json_float(float(v)) for k, v in values.items()})


def _enc_seq(values: Sequence[float]) -> str:
    try:
        return _dumps([float(v) for v in values])
    except ValueError:
        return _dumps([_json_float(float(v)) for v in values])


def _enc_seqs(values: Mapping[str, Sequence[float]]) -> str:
    try:
        return _dumps({k: [float(v) for v in vs] for k, vs in values.items()})
    except ValueError:
        return _dumps({k: [_json_float(float(v)) for v in vs] for k, vs in values.items()})


def _dec_floats(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in json.loads(text).items()}


def _dec_seq(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in json.loads(text))


def _dec_seqs(text: str) -> dict[str, tuple[float, ...]]:
    return {k: tuple(float(v) for v in vs) for k, vs in json.loads(text).items()}


def _real(v: float | None) -> float:
    """A REAL column back to a float (SQLite stored NaN as NULL)."""
    return math.nan if v is None else float(v)


@dataclass(frozen=True)
class _Table:
    """How one record type maps to one table."""

    name: str
    record_type: type
    columns: tuple[tuple[str, str], ...]  # (column, SQL type) after seq and t_h
    encode: Callable[[Any], Row]  # record -> values of ``columns`` (without seq, t_h)
    decode: Callable[[Row, RunIdentity | None], Record]  # (t_h, *columns), run -> record
    flat: tuple[str, ...] = ()  # JSON name -> float columns that load_frame flattens
    added: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Column -> SQL default literal of the columns added after the table's first schema:
    an older file gets them when opened for writing and reads them as their default."""

    @property
    def insert_sql(self) -> str:
        names = ", ".join(f'"{c}"' for c, _ in self.columns)
        marks = ", ".join("?" for _ in range(len(self.columns) + 3))
        return f'INSERT INTO "{self.name}" (seq, t_h, {names}, run) VALUES ({marks})'

    @property
    def create_sql(self) -> tuple[str, ...]:
        cols = ", ".join(f'"{c}" {t}' for c, t in self.columns)
        return (
            f'CREATE TABLE IF NOT EXISTS "{self.name}" '
            f"(seq INTEGER PRIMARY KEY, t_h REAL NOT NULL, {cols}, {_RUN_COLUMN})",
            f'CREATE INDEX IF NOT EXISTS "{self.name}_t_h" ON "{self.name}" (t_h)',
        )

    def select_sql(self, *, has_run: bool, present: Collection[str] | None = None) -> str:
        """Rows as (seq, t_h, *columns, run key); NULL run keys for a file without them, and
        the default of every :attr:`added` column missing from ``present``."""
        names = ", ".join(
            f'{self.added[c]} AS "{c}"'
            if present is not None and c in self.added and c not in present
            else f'"{c}"'
            for c, _ in self.columns
        )
        run = "run" if has_run else "NULL"
        return f'SELECT seq, t_h, {names}, {run} FROM "{self.name}"'


_RUN_COLUMN: Final = "run INTEGER REFERENCES run(key)"
"""The column of every record table that names its run (NULL: no identity)."""

_RUN_FIELDS: Final = RUN_FIELDS

_RUN_TABLE_SQL: Final = (
    "CREATE TABLE IF NOT EXISTS run (key INTEGER PRIMARY KEY, "
    + ", ".join(f"{f} TEXT NOT NULL" for f in _RUN_FIELDS)
    + f", UNIQUE ({', '.join(_RUN_FIELDS)}))"
)


def _opt_real(v: float) -> float | None:
    f = float(v)
    return None if math.isnan(f) else f


def _audit_row(r: AuditRecord) -> Row:
    return (
        *(r.who, r.why, r.action, int(bool(r.accepted)), r.reason, r.wall_utc),
        *(r.old_value, r.new_value, r.result, int(r.seq), r.prev_hash, r.hash),
    )


def _audit_record(row: Row, run: RunIdentity | None) -> AuditRecord:
    t_h, who, why, action, accepted, reason, wall, old, new, result, seq, prev, h = row
    return AuditRecord(
        *(t_h, who, why, action, bool(accepted), reason),
        run=run,
        wall_utc=wall,
        old_value=old,
        new_value=new,
        result=result,
        seq=int(seq),
        prev_hash=prev,
        hash=h,
    )


_AUDIT_ADDED: Final = (
    *("wall_utc", "old_value", "new_value", "result", "chain_seq", "prev_hash", "hash"),
)
"""The audit table's columns added with the live API's audit trail (issue 21; the record's
``seq`` is ``chain_seq``: every table's ``seq`` is the file's write order)."""

TABLES: Final[Mapping[str, _Table]] = {
    t.name: t
    for t in (
        _Table(
            "measurement",
            MeasurementRecord,
            (("sensor", "TEXT NOT NULL"), ("value", "REAL"), ("t_sample_h", "REAL NOT NULL")),
            lambda r: (r.sensor, _opt_real(r.value), float(r.t_sample_h)),
            lambda row, run: MeasurementRecord(row[0], row[1], _real(row[2]), row[3], run=run),
        ),
        _Table(
            "estimate",
            EstimateRecord,
            (
                ("x", "TEXT NOT NULL"),
                ("x_sigma", "TEXT NOT NULL"),
                ("parameters", "TEXT NOT NULL"),
                ("parameter_sigma", "TEXT NOT NULL"),
                ("nis", "REAL"),
                ("dof", "INTEGER NOT NULL"),
                ("healthy", "INTEGER NOT NULL"),
            ),
            lambda r: (
                _enc_floats(r.x),
                _enc_floats(r.x_sigma),
                _enc_floats(r.parameters),
                _enc_floats(r.parameter_sigma),
                _opt_real(r.nis),
                int(r.dof),
                int(bool(r.healthy)),
            ),
            lambda row, run: EstimateRecord(
                row[0],
                _dec_floats(row[1]),
                _dec_floats(row[2]),
                _dec_floats(row[3]),
                _dec_floats(row[4]),
                _real(row[5]),
                row[6],
                bool(row[7]),
                run=run,
            ),
            flat=("x", "x_sigma", "parameters", "parameter_sigma"),
        ),
        _Table(
            "plan",
            PlanRecord,
            (
                ("status", "TEXT NOT NULL"),
                ("solve_time_s", "REAL"),
                ("t_nodes_h", "TEXT NOT NULL"),
                ("x_pred", "TEXT NOT NULL"),
                ("u_plan", "TEXT NOT NULL"),
                ("message", "TEXT NOT NULL"),
            ),
            lambda r: (
                str(r.status),
                _opt_real(r.solve_time_s),
                _enc_seq(r.t_nodes_h),
                _enc_seqs(r.x_pred),
                _enc_seqs(r.u_plan),
                r.message,
            ),
            lambda row, run: PlanRecord(
                row[0],
                row[1],
                _real(row[2]),
                _dec_seq(row[3]),
                _dec_seqs(row[4]),
                _dec_seqs(row[5]),
                row[6],
                run=run,
            ),
        ),
        _Table(
            "setpoint",
            SetpointRecord,
            (
                ("values", "TEXT NOT NULL"),
                ("source", "TEXT NOT NULL"),
                ("clamped", "TEXT NOT NULL"),
            ),
            lambda r: (_enc_floats(r.values), str(r.source), _dumps(list(r.clamped))),
            lambda row, run: SetpointRecord(
                row[0], _dec_floats(row[1]), row[2], tuple(json.loads(row[3])), run=run
            ),
            flat=("values",),
        ),
        _Table(
            "event",
            EventRecord,
            (("kind", "TEXT NOT NULL"), ("message", "TEXT NOT NULL"), ("source", "TEXT NOT NULL")),
            lambda r: (str(r.kind), r.message, r.source),
            lambda row, run: EventRecord(row[0], row[1], row[2], row[3], run=run),
        ),
        _Table(
            "audit",
            AuditRecord,
            (
                ("who", "TEXT NOT NULL"),
                ("why", "TEXT NOT NULL"),
                ("action", "TEXT NOT NULL"),
                ("accepted", "INTEGER NOT NULL"),
                ("reason", "TEXT NOT NULL"),
                *(
                    (
                        c,
                        "INTEGER NOT NULL DEFAULT 0"
                        if c == "chain_seq"
                        else "TEXT NOT NULL DEFAULT ''",
                    )
                    for c in _AUDIT_ADDED
                ),
            ),
            _audit_row,
            _audit_record,
            added={c: ("0" if c == "chain_seq" else "''") for c in _AUDIT_ADDED},
        ),
    )
}
"""Table name -> mapping of its record type (also the ``kind`` names of :func:`read_records`)."""

_TABLE_OF_TYPE: Final[dict[type, _Table]] = {t.record_type: t for t in TABLES.values()}


# --------------------------------------------------------------------------------------
# The file
# --------------------------------------------------------------------------------------


def _prepare(conn: sqlite3.Connection, synchronous: str) -> None:
    """Pragmas and schema of a writing connection (idempotent)."""
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise HistorianError(f"could not switch the database to WAL journal (got {mode!r})")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise HistorianError(
            f"the file has historian schema version {version}; this code reads and writes "
            f"version {SCHEMA_VERSION}"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_RUN_TABLE_SQL)
        for table in TABLES.values():
            for sql in table.create_sql:
                conn.execute(sql)
            if not _has_run_column(conn, table.name):  # a file written before run identity
                conn.execute(f'ALTER TABLE "{table.name}" ADD COLUMN {_RUN_COLUMN}')
            present = _column_names(conn, table.name)
            for column, sql_type in table.columns:  # columns newer than the file
                if column in table.added and column not in present:
                    conn.execute(f'ALTER TABLE "{table.name}" ADD COLUMN "{column}" {sql_type}')
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _column_names(conn: sqlite3.Connection, table: str) -> set[str]:
    """The columns ``table`` has in this file."""
    return {str(row[1]) for row in conn.execute(f'PRAGMA table_info("{table}")')}


def _has_run_column(conn: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` has the ``run`` column (files written before it lack it)."""
    return "run" in _column_names(conn, table)


def _run_keys(
    conn: sqlite3.Connection, runs: Iterable[RunIdentity], known: Mapping[RunIdentity, int]
) -> dict[RunIdentity, int]:
    """The ``run`` table keys of ``runs`` not in ``known``, inserting new identities.

    Runs inside the caller's transaction; the unique constraint makes a second writer's
    insert of the same identity a no-op, and both then read the same key.
    """
    keys: dict[RunIdentity, int] = {}
    cols = ", ".join(_RUN_FIELDS)
    where = " AND ".join(f"{f} = ?" for f in _RUN_FIELDS)
    for run in runs:
        if run in known or run in keys:
            continue
        values = tuple(getattr(run, f) for f in _RUN_FIELDS)
        conn.execute(f"INSERT OR IGNORE INTO run ({cols}) VALUES (?, ?, ?, ?, ?)", values)
        keys[run] = conn.execute(f"SELECT key FROM run WHERE {where}", values).fetchone()[0]
    return keys


def _max_seq(conn: sqlite3.Connection) -> int:
    union = " UNION ALL ".join(f'SELECT max(seq) FROM "{t}"' for t in TABLES)
    values = [r[0] for r in conn.execute(union) if r[0] is not None]
    return max(values, default=0)


class EmbeddedHistorian:
    """A :class:`bpcontrol.interfaces.Historian` that stores records in a SQLite file.

    Args:
        path: the database file (e.g. ``runs/<id>/records.sqlite``); its folder is created.
            An existing historian file is appended to (a resumed run).
        batch_interval_s: how long (s) the writer thread gathers records after the first
            one before it commits them as one transaction (a flush or close commits at
            once). Larger batches cost fewer transactions; while the file is writable and
            the writer keeps up, a record waits about this long in memory.
        max_batch: commit as soon as this many records are gathered.
        busy_timeout_s: how long (s) one insert waits for a lock held by another
            connection before the batch counts as failed and is retried with backoff.
        max_backoff_s: the longest wait (s) between retries of a failed batch (the wait
            starts at 0.05 s and doubles).
        synchronous: SQLite ``synchronous`` pragma. ``"NORMAL"`` (WAL): a committed batch
            survives a crash of the process but the last ones may be lost on power loss;
            ``"FULL"``: also on power loss, at an fsync per batch.
        checkpoint_interval_s: at most this long (s of wall time) between WAL checkpoints
            (committed batches copied into the main file), so that the main file alone,
            without its ``-wal`` side file (copied away after a crash, say), is never more
            than about this far behind; 0 checkpoints after every batch.

    Raises:
        HistorianError: when the file cannot be opened or is not a historian file.
        ValueError: for a negative or non-finite time setting, or ``max_batch`` below 1.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_interval_s: float = 0.1,
        max_batch: int = 5000,
        busy_timeout_s: float = 1.0,
        max_backoff_s: float = 2.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        checkpoint_interval_s: float = 1.0,
    ) -> None:
        for name, value in (
            ("batch_interval_s", batch_interval_s),
            ("busy_timeout_s", busy_timeout_s),
            ("max_backoff_s", max_backoff_s),
            ("checkpoint_interval_s", checkpoint_interval_s),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0 (s), got {value!r}")
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        self.path = Path(path)
        self._interval = float(batch_interval_s)
        self._max_batch = max_batch
        self._busy_timeout = float(busy_timeout_s)
        self._max_backoff = float(max_backoff_s)
        self._synchronous = synchronous
        self._checkpoint_interval = float(checkpoint_interval_s)
        self._last_checkpoint = time.monotonic()
        self._retry = Retry(max_backoff_s)  # backoff, and since when storing fails
        self._abandoned = False
        self._run_key: dict[RunIdentity, int] = {}  # run table keys (writer thread only)

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                self._create()
            self._connect().close()
        except (sqlite3.Error, OSError) as exc:
            raise HistorianError(f"cannot open historian file {self.path}: {exc}") from exc

        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()  # write() vs close(): no record after the stop mark
        self._done = threading.Condition()  # the writer's progress, for flush()
        self._accepted = 0
        self._stored = 0
        self._closed = False
        self._last_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"historian:{self.path.name}", daemon=True
        )
        self._thread.start()
        atexit.register(self._close_at_exit)

    # -- public API ------------------------------------------------------------------

    def write(self, record: Record) -> None:
        """Accept ``record`` for storage and return at once (the thread stores it).

        Raises:
            TypeError: ``record`` is not one of the record types, or a field has the wrong
                type (e.g. a non-str sensor); nothing is stored.
            ValueError: a text field is not valid Unicode; nothing is stored.
            HistorianClosedError: the historian was closed.
        """
        if type(record) not in _TABLE_OF_TYPE:
            raise TypeError(
                "EmbeddedHistorian.write takes a bpcontrol.records record "
                "(MeasurementRecord, EstimateRecord, PlanRecord, SetpointRecord, EventRecord, "
                f"AuditRecord), got {type(record).__name__}"
            )
        _validate(record)
        with self._lock:
            if self._closed:
                raise HistorianClosedError(
                    f"historian {self.path} is closed; {type(record).__name__} at "
                    f"t_h={record.t_h} h not stored"
                )
            self._queue.put(record)
            self._accepted += 1

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every record accepted before this call is stored.

        Returns:
            True when they are all stored, False when ``timeout_s`` (s) ran out first (the
            writer keeps trying; see :attr:`pending` and :attr:`last_error`).
        """
        target = self._accepted
        self._queue.put(WAKE)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._done:
            while self._stored < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if not self._thread.is_alive():
                    return False
                self._done.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self, timeout_s: float | None = None) -> None:
        """Refuse further writes, store what is queued and stop the writer (idempotent).

        Args:
            timeout_s: the longest wait (s) for the queued records; None waits until they
                are stored (the writer retries failed batches with backoff).

        Raises:
            HistorianError: when records are still unstored after ``timeout_s``; the writer
                keeps trying in the background and a later ``close()`` waits again.
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(STOP)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise HistorianError(
                f"historian {self.path}: {self.pending} records not yet stored after "
                f"{timeout_s} s (last error: {self._last_error!r}); the writer keeps trying, "
                "call close() again to wait"
            )
        atexit.unregister(self._close_at_exit)

    def abandon(self) -> int:
        """Give up on the records not yet stored (after a :meth:`close` that timed out on a
        store that keeps failing, such as a full disk): the writer stops retrying and
        exits, and interpreter exit does not wait for it. Returns how many were dropped."""
        with self._lock:
            self._closed = True
            self._abandoned = True
            self._queue.put(STOP)
        self._thread.join(self._max_backoff + self._busy_timeout + 1.0)
        atexit.unregister(self._close_at_exit)
        return self.pending

    @property
    def pending(self) -> int:
        """Records accepted but not yet stored (queued, being written, or being retried)."""
        return self._accepted - self._stored

    @property
    def stored(self) -> int:
        """Records this historian has stored since it was opened."""
        return self._stored

    @property
    def last_error(self) -> BaseException | None:
        """The most recent error of a failed batch (kept after later batches succeed)."""
        return self._last_error

    def failing_for_s(self) -> float:
        """How long (s) storing has failed without a success in between; 0 when healthy."""
        return self._retry.failing_for_s()

    @property
    def failure_cause(self) -> BaseException | None:
        """The error that began the current run of failed batches (a full disk, say; later
        retries may fail differently), or None while storing works."""
        return self._retry.failure_cause

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (writes are refused)."""
        return self._closed

    def __enter__(self) -> EmbeddedHistorian:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EmbeddedHistorian({str(self.path)!r}, stored={self._stored}, "
            f"pending={self.pending}, closed={self._closed})"
        )

    # -- the writer thread -----------------------------------------------------------

    def _create(self) -> None:
        """Create the file with its schema under a temporary name, then link it into place,
        so a reader (or a resume after a kill) never finds a file without a schema."""
        _remove_dead_staging(self.path)
        staging = _staging_path(self.path, os.getpid())
        staging.unlink(missing_ok=True)
        try:
            conn = sqlite3.connect(staging, timeout=self._busy_timeout, isolation_level=None)
            try:
                _prepare(conn, self._synchronous)
                conn.execute("PRAGMA journal_mode=DELETE")  # self-contained before linking
            finally:
                conn.close()
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        try:
            os.link(staging, self.path)  # never replaces a file another writer made first
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a rename, unless one appeared
            if not self.path.exists():
                os.replace(staging, self.path)
        finally:
            staging.unlink(missing_ok=True)

    def _connect(self) -> sqlite3.Connection:
        self._run_key.clear()  # a new connection may see a new file: look keys up again
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            _prepare(conn, self._synchronous)
        except BaseException:
            conn.close()
            raise
        return conn

    def _close_at_exit(self) -> None:
        """At interpreter exit, store what is queued (bounded, so exit cannot hang)."""
        with contextlib.suppress(HistorianError):
            self.close(timeout_s=10.0)

    def _gather(self, batch: list[Any], block: bool) -> bool:
        """Move queued records into ``batch`` (:func:`services.historian._batching.gather`:
        up to ``batch_interval_s`` or ``max_batch`` records); True at the stop mark."""
        stop, _ = gather(
            self._queue, batch, block=block, interval_s=self._interval, max_len=self._max_batch
        )
        return stop

    def _store(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        """Insert ``batch`` in one transaction (all or nothing).

        Records are numbered from the file's highest ``seq`` on, read under the write lock,
        so two writers on one file interleave whole batches and never collide.
        """
        tables = [_TABLE_OF_TYPE[type(r)] for r in batch]
        encoded = [
            (table, r.t_h, table.encode(r), r.run) for table, r in zip(tables, batch, strict=True)
        ]
        conn.execute("BEGIN IMMEDIATE")
        try:
            known = self._run_key
            runs = dict.fromkeys(r for *_, r in encoded if r is not None)  # in write order
            new = _run_keys(conn, runs, known)
            rows: dict[_Table, list[Row]] = {}
            for seq, (table, t_h, values, run) in enumerate(encoded, start=_max_seq(conn) + 1):
                key = None if run is None else new.get(run, known.get(run))
                rows.setdefault(table, []).append((seq, t_h, *values, key))
            for table, table_rows in rows.items():
                conn.executemany(table.insert_sql, table_rows)
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back itself (a full disk): keep the original error
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        known.update(new)  # only keys of a committed transaction are remembered

    def _run(self) -> None:
        batch: list[Any] = []
        conn: sqlite3.Connection | None = None
        stop = False
        retry = self._retry
        while True:
            if not stop:
                # Block for work only when nothing is waiting to be retried.
                stop = self._gather(batch, block=not batch)
            if batch:
                try:
                    if conn is None:
                        conn = self._connect()
                    self._store(conn, batch)
                except Exception as exc:  # disk full, locked, file gone: keep and retry
                    self._last_error = exc
                    retry.failed(exc)
                    if conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            conn.close()
                        conn = None
                    if self._abandoned:
                        break
                    retry.wait()  # records keep queueing meanwhile
                    continue
                retry.succeeded()
                with self._done:
                    self._stored += len(batch)
                    self._done.notify_all()
                batch = []
                self._checkpoint(conn)
            if stop and not batch:
                break
        self._finish(conn)

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy committed WAL pages into the main file when the interval has passed
        (PASSIVE: never waits for readers; what a reader still needs is copied later)."""
        now = time.monotonic()
        if now - self._last_checkpoint < self._checkpoint_interval:
            return
        self._last_checkpoint = now
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _finish(self, conn: sqlite3.Connection | None) -> None:
        """Leave a self-contained file: back to a rollback journal (no -wal/-shm files).

        Skipped silently when a reader still has the file open (it stays in WAL mode,
        which is just as valid); the next historian on the file switches to WAL again.
        """
        with contextlib.suppress(sqlite3.Error):
            if conn is None:
                conn = sqlite3.connect(self.path, timeout=0.1, isolation_level=None)
            conn.execute("PRAGMA journal_mode=DELETE")
        if conn is not None:
            conn.close()


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def _tables_for(kind: str | type | Iterable[str | type] | None) -> list[_Table]:
    if kind is None:
        return list(TABLES.values())
    kinds = [kind] if isinstance(kind, str | type) else list(kind)
    out = []
    for k in kinds:
        if isinstance(k, str) and k in TABLES:
            out.append(TABLES[k])
        elif isinstance(k, type) and k in _TABLE_OF_TYPE:
            out.append(_TABLE_OF_TYPE[k])
        else:
            raise ValueError(
                f"unknown record kind {k!r}; use one of {sorted(TABLES)} or a record class"
            )
    return out


def _open_reader(path: str | Path) -> sqlite3.Connection:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no historian file at {p}")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise HistorianError(f"cannot open historian file {p}: {exc}") from exc
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        conn.close()
        raise HistorianError(f"{p} is not a historian file: {exc}") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        raise HistorianError(
            f"{p} has historian schema version {version}; this code reads {SCHEMA_VERSION}"
        )
    return conn


def _runs(conn: sqlite3.Connection) -> dict[int, RunIdentity]:
    """The run identities of a file by key (none in a file written before them)."""
    found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'run'")
    if found.fetchone() is None:
        return {}
    rows = conn.execute(f"SELECT key, {', '.join(_RUN_FIELDS)} FROM run").fetchall()
    return {row[0]: RunIdentity(*row[1:]) for row in rows}


def _select(
    conn: sqlite3.Connection, table: _Table, t_from: float | None, t_to: float | None
) -> list[Any]:
    present = _column_names(conn, table.name)
    sql = table.select_sql(has_run="run" in present, present=present)
    where, args = [], []
    if t_from is not None:
        where.append("t_h >= ?")
        args.append(float(t_from))
    if t_to is not None:
        where.append("t_h <= ?")
        args.append(float(t_to))
    if where:
        sql += " WHERE " + " AND ".join(where)
    return conn.execute(sql + " ORDER BY seq", args).fetchall()


def read_records(
    path: str | Path,
    kind: str | type | Iterable[str | type] | None = None,
    t_from: float | None = None,
    t_to: float | None = None,
) -> list[Record]:
    """The records stored in a historian file, in the order they were written.

    Works while a run is writing the file (a consistent snapshot of the committed batches)
    and after. Records come back equal to what was written (a NaN field reads back as NaN;
    statuses, kinds and sources as their enum members; the run identity, when the record
    had one, as an equal :class:`RunIdentity`). Files written before run identities
    existed read back with ``run=None``.

    Args:
        path: the historian file.
        kind: a table name (``"measurement"``, ``"estimate"``, ``"plan"``, ``"setpoint"``,
            ``"event"``, ``"audit"``), a record class, a list of them, or None for all.
        t_from: keep records with process time ``t_h >= t_from`` (h).
        t_to: keep records with ``t_h <= t_to`` (h).

    Raises:
        FileNotFoundError: no file at ``path``.
        HistorianError: the file is not a historian file of this schema version, or holds a
            value this code cannot read back (e.g. an event kind it does not know).
        ValueError: an unknown ``kind``.
    """
    tables = _tables_for(kind)
    conn = _open_reader(path)
    try:
        conn.execute("BEGIN")  # one snapshot over all tables
        found: list[tuple[int, Record]] = []
        try:
            runs = _runs(conn)
            for table in tables:
                decode = table.decode
                found.extend(
                    (row[0], decode(row[1:-1], None if row[-1] is None else runs[row[-1]]))
                    for row in _select(conn, table, t_from, t_to)
                )
        except (TypeError, ValueError, KeyError) as exc:
            raise HistorianError(
                f"{path}: a stored record cannot be read back ({type(exc).__name__}: {exc})"
            ) from exc
        conn.execute("COMMIT")
    finally:
        conn.close()
    if len(tables) > 1:
        found.sort(key=lambda item: item[0])
    return [record for _, record in found]


def load_frame(path: str | Path, table: str | type) -> Any:
    """One table of a historian file as a ``pandas.DataFrame`` (for reports and fits).

    One row per record, in write order, columns named like the record's fields. Name ->
    number mappings are flattened into one column per name, ``<field>.<name>`` (e.g.
    ``x.X``, ``x_sigma.X``, ``parameters.mu_max``, ``values.F``; NaN where a record lacks
    that name); tuples (``t_nodes_h``, ``x_pred`` entries, ``clamped``) stay as objects;
    enums (``status``, ``kind``, ``source``) are their plain text. Records with a run
    identity add its tags as ``run.site``, ``run.reactor``, ``run.batch_id``, ``run.run_id``
    and ``run.started_utc`` (absent or NaN for records without one).

    Returns:
        ``pandas.DataFrame`` (typed ``Any`` because pandas ships no type information here).
    """
    import pandas as pd

    (tab,) = _tables_for(table)
    names = ["t_h", *(c for c, _ in tab.columns)]
    records = read_records(path, tab.name)
    rows: list[dict[str, Any]] = []
    for record in records:
        row: dict[str, Any] = {}
        for name in names:
            value = getattr(record, name)
            if name in tab.flat:
                for k, v in value.items():
                    row[f"{name}.{k}"] = v
            elif isinstance(value, Mapping):
                row[name] = dict(value)
            elif isinstance(value, enum.Enum):
                row[name] = value.value
            else:
                row[name] = value
        if record.run is not None:
            row.update({f"run.{f}": getattr(record.run, f) for f in _RUN_FIELDS})
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=names)
    return pd.DataFrame.from_records(rows)
