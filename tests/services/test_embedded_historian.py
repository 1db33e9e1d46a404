"""The embedded historian stores every accepted record once, in order, and reads it back.

Records read back must equal what was written (NaN compares equal to NaN here only), while
a run writes and after; a locked database must delay storage, never lose or duplicate.
"""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpcontrol.interfaces import Historian
from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventKind,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    PlanStatus,
    Record,
    RunIdentity,
    SetpointRecord,
    SetpointSource,
)
from services.historian import (
    TABLES,
    EmbeddedHistorian,
    HistorianClosedError,
    HistorianError,
    load_frame,
    read_records,
)

NAN, INF = math.nan, math.inf

RUN = RunIdentity("basel", "R-101", "B-2025-007", "run-1", "2025-03-01T08:00:00+00:00")
RUNS = {
    "a": RunIdentity("basel", "R-101", "B-1", "run-a", "2025-03-01T08:00:00Z"),
    "b": RunIdentity("basel", "R-102", "B-2", "run-b", "2025-03-01T08:00:05+00:00"),
}
SHARED_RUN = RunIdentity("basel", "R-1xx", "B-0", "run-s", "2025-03-01T07:00:00+00:00")


def canonical(value: Any) -> Any:
    """A form of a record in which NaN equals NaN (and an int equals the same float)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple(canonical(getattr(value, f.name)) for f in dataclasses.fields(value)),
        )
    if isinstance(value, Mapping):
        return ("map", tuple((k, canonical(v)) for k, v in value.items()))
    if isinstance(value, tuple | list):
        return ("seq", tuple(canonical(v) for v in value))
    if isinstance(value, float | int) and not isinstance(value, bool):
        return ("nan",) if math.isnan(value) else ("float", float(value))
    return value


def assert_same(got: Sequence[Record], want: Sequence[Record]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert type(g) is type(w)
        assert canonical(g) == canonical(w), (g, w)


def every_kind() -> list[Record]:
    """One or more records of every type, with NaN, infinities, empty mappings, unicode."""
    return [
        MeasurementRecord(0.0, "DO_probe", 31.25, 0.0),
        MeasurementRecord(0.1, "X_off", NAN, -0.4),  # garbage value, late sample
        MeasurementRecord(0.1, "pH", -0.0, 0.1),
        EstimateRecord(
            0.1,
            {"X": 0.1 + 0.2, "S": 1e-300, "V": 2.5},
            {"X": INF, "S": 0.0, "V": 5e-324},
            {"mu_max": 0.6},
            {"mu_max": NAN},
            nis=NAN,
            dof=4,
            healthy=False,
        ),
        EstimateRecord(0.2, {}, {}),  # empty mappings, defaults
        PlanRecord(
            0.2,
            "solved",
            0.1234,
            (0.2, 0.3, 0.4),
            {"X": (1.0, 1.1, -INF), "S": (NAN, 0.0, 1.0)},
            {"F": (0.01, 0.02)},
            "Optimal Solution Found.",
        ),
        PlanRecord(0.3, "late", NAN, message="Regler zu spät: 12 s > 10 s ⏱ 反应器"),
        SetpointRecord(0.3, {"F": 0.02, "T": 37, "N_stir": 1.2e3}, "nmpc", ("F",)),
        SetpointRecord(0.4, {}, "hold"),
        EventRecord(0.4, "fallback", "NMPC failed; recipe feed applied.\nZeile 2 \x00 ok", "sup"),
        EventRecord(0.5, "mode-change", "", "operator"),
        AuditRecord(0.5, "ana@site", "DO dropping", "setpoint F = 0.2", True),
        AuditRecord(0.6, "bob", "test", "limits T <= 45", False, "above the hard limit 42 °C"),
    ]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "run-1" / "records.sqlite"


def test_is_a_historian(db: Path) -> None:
    with EmbeddedHistorian(db) as historian:
        assert isinstance(historian, Historian)


def test_every_record_type_round_trips(db: Path) -> None:
    records = every_kind()
    historian = EmbeddedHistorian(db)
    for record in records:
        historian.write(record)
    assert historian.flush(timeout_s=10.0)
    assert historian.pending == 0
    assert_same(read_records(db), records)  # while open (WAL)
    historian.close()
    assert_same(read_records(db), records)  # after close
    assert historian.last_error is None
    # Per kind, by name and by class, in write order.
    for name, table in TABLES.items():
        want = [r for r in records if type(r) is table.record_type]
        assert_same(read_records(db, kind=name), want)
        assert_same(read_records(db, kind=table.record_type), want)
    # A finished run is one self-contained file.
    assert sorted(p.name for p in db.parent.iterdir()) == ["records.sqlite"]


def test_time_window_and_kind_list(db: Path) -> None:
    records = every_kind()
    with EmbeddedHistorian(db) as historian:
        for record in records:
            historian.write(record)
    got = read_records(db, kind=["event", AuditRecord], t_from=0.4, t_to=0.5)
    want = [r for r in records if isinstance(r, EventRecord | AuditRecord) and 0.4 <= r.t_h <= 0.5]
    assert_same(got, want)
    assert len(want) == 3


def test_reader_errors_are_clear(db: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no historian file"):
        read_records(tmp_path / "missing.sqlite")
    with EmbeddedHistorian(db):
        pass
    with pytest.raises(ValueError, match="unknown record kind"):
        read_records(db, kind="measurements")
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database")
    with pytest.raises(HistorianError):
        read_records(junk)
    with pytest.raises(HistorianError, match="cannot open"):
        EmbeddedHistorian(junk)


def test_reopen_appends_in_order(db: Path) -> None:
    records = every_kind()
    with EmbeddedHistorian(db) as historian:
        for record in records[:5]:
            historian.write(record)
    with EmbeddedHistorian(db) as historian:  # a resumed run
        for record in records[5:]:
            historian.write(record)
    assert_same(read_records(db), records)


def test_load_frame_flattens_mappings(db: Path) -> None:
    records = every_kind()
    with EmbeddedHistorian(db) as historian:
        for record in records:
            historian.write(record)
    est = load_frame(db, "estimate")
    assert list(est["t_h"]) == [0.1, 0.2]
    assert est["x.X"][0] == 0.1 + 0.2 and math.isnan(est["x.X"][1])
    assert est["x_sigma.X"][0] == INF
    assert {"parameters.mu_max", "parameter_sigma.mu_max", "nis", "dof", "healthy"} <= set(
        est.columns
    )
    sp = load_frame(db, SetpointRecord)
    assert list(sp["values.T"][:1]) == [37.0]
    assert list(sp["source"]) == ["nmpc", "hold"]
    meas = load_frame(db, "measurement")
    assert list(meas["sensor"]) == ["DO_probe", "X_off", "pH"]
    assert math.isnan(meas["value"][1])
    empty = load_frame(db, "plan").iloc[0:0]
    assert "x_pred" in empty.columns
    empty_db = db.parent / "empty.sqlite"
    EmbeddedHistorian(empty_db).close()
    assert list(load_frame(empty_db, "audit").columns) == [
        "t_h",
        "who",
        "why",
        "action",
        "accepted",
        "reason",
        *("wall_utc", "old_value", "new_value", "result", "chain_seq", "prev_hash", "hash"),
    ]


# --- property round-trips ----------------------------------------------------------------

text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
floats = st.floats(allow_nan=True, allow_infinity=True)
times = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)

measurements = st.builds(MeasurementRecord, times, text, floats, times)
setpoints = st.builds(
    SetpointRecord,
    times,
    st.dictionaries(st.text(max_size=8), floats | st.integers(-(2**53), 2**53), max_size=5),
    st.sampled_from(["nmpc", "operator", "fallback", "hold"]),
    st.lists(text, max_size=3).map(tuple),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(measurements | setpoints, min_size=1, max_size=15))
def test_property_round_trip(records: list[Record]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.sqlite"
        with EmbeddedHistorian(path, batch_interval_s=0.0) as historian:
            for record in records:
                historian.write(record)
        assert_same(read_records(path), records)


# --- volume, concurrency, failure --------------------------------------------------------


def loop_records(n: int) -> list[Record]:
    """``n`` records as a loop writes them: mostly measurements, each step all kinds."""
    out: list[Record] = []
    step = 0
    while len(out) < n:
        t = step / 60
        for s in ("DO_probe", "y_O2", "y_CO2", "V_meas"):
            out.append(MeasurementRecord(t, s, 30.0 + step % 7, t))
        out.append(EstimateRecord(t, {"X": t, "S": 1.0}, {"X": 0.1, "S": 0.2}, nis=1.0, dof=4))
        out.append(PlanRecord(t, "solved", 0.05, (t, t + 0.1), {"X": (t, t)}, {"F": (0.1,)}))
        out.append(SetpointRecord(t, {"F": 0.1}, "nmpc"))
        if step % 10 == 0:
            out.append(EventRecord(t, EventKind.PHASE, f"step {step}", "supervisor"))
            out.append(AuditRecord(t, "op", "check", "none", True))
        step += 1
    return out[:n]


def test_fifty_thousand_records_from_a_loop(db: Path) -> None:
    records = loop_records(50_000)
    historian = EmbeddedHistorian(db)
    t0 = time.perf_counter()
    for record in records:
        historian.write(record)
    write_s = time.perf_counter() - t0
    historian.close()
    assert historian.pending == 0 and historian.stored == 50_000
    assert historian.last_error is None
    # Generous bound for a loaded 2-core machine: enqueueing must be microseconds each.
    assert write_s / len(records) < 200e-6
    for table in TABLES.values():
        want = [r for r in records if type(r) is table.record_type]
        assert read_records(db, kind=table.name) == want  # no NaN here: plain equality
    with sqlite3.connect(db) as conn:
        seqs = [row[0] for t in TABLES for row in conn.execute(f'SELECT seq FROM "{t}"')]
    assert sorted(seqs) == list(range(1, 50_001))


def test_reading_while_writing(db: Path) -> None:
    records = loop_records(6_000)
    historian = EmbeddedHistorian(db, batch_interval_s=0.01)
    done = threading.Event()

    def produce() -> None:
        for i, record in enumerate(records):
            historian.write(record)
            if i % 200 == 0:
                time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    sizes: list[int] = []
    try:
        while not done.is_set() or len(sizes) < 3:
            got = read_records(db)
            # A snapshot of committed batches: always a prefix of what was written.
            assert got == records[: len(got)]
            sizes.append(len(got))
            time.sleep(0.002)
    finally:
        thread.join()
        historian.close()
    assert sizes == sorted(sizes)
    assert any(0 < s < len(records) for s in sizes), sizes  # really read mid-run
    assert read_records(db) == records


def test_a_new_file_appears_only_with_its_schema(tmp_path: Path) -> None:
    """A reader polling for the file (a resume, a live report) never finds it without its
    schema: the writer creates it under a staging name and links it into place."""
    paths = [tmp_path / f"run-{i}" / "records.sqlite" for i in range(12)]
    seen: list[int] = []
    done = threading.Event()

    def create() -> None:
        for path in paths:
            EmbeddedHistorian(path).close()
        done.set()

    thread = threading.Thread(target=create)
    thread.start()
    try:
        while not done.is_set():
            for path in paths:
                if path.exists():
                    read_records(path)  # raises on a file without its schema (version 0)
                    seen.append(1)
    finally:
        thread.join()
    assert seen, "the poller never saw a file"
    assert not list(tmp_path.glob("*/.*creating"))  # no staging file left behind


def test_a_writer_stopped_while_creating_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creation that fails half-way (here: the schema step raises, as a kill would stop it)
    leaves no ``records.sqlite``, so a later resume says "no historian file", not "schema
    version 0"."""
    import services.historian.embedded as embedded

    def broken(conn: sqlite3.Connection, synchronous: str) -> None:
        conn.execute("CREATE TABLE half (x)")
        raise sqlite3.OperationalError("disk I/O error (injected)")

    monkeypatch.setattr(embedded, "_prepare", broken)
    path = tmp_path / "run" / "records.sqlite"
    with pytest.raises(HistorianError, match="disk I/O error"):
        EmbeddedHistorian(path)
    assert not path.exists()
    assert not list(path.parent.glob(".*creating"))
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="no historian file"):
        read_records(path)


def test_locked_database_delays_but_loses_and_duplicates_nothing(db: Path) -> None:
    records = loop_records(3_000)
    historian = EmbeddedHistorian(db, batch_interval_s=0.01, busy_timeout_s=0.02, max_backoff_s=0.1)
    for record in records[:1_000]:
        historian.write(record)
    assert historian.flush(timeout_s=10.0)

    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        for record in records[1_000:2_000]:
            historian.write(record)
        assert historian.flush(timeout_s=0.5) is False
        assert historian.pending == 1_000
        assert isinstance(historian.last_error, sqlite3.OperationalError)
        assert "locked" in str(historian.last_error)
        for record in records[2_000:]:  # writing goes on, returning at once
            historian.write(record)
        assert historian.pending == 2_000
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert historian.flush(timeout_s=10.0)
    assert historian.pending == 0
    historian.close()
    assert read_records(db) == records  # all of them, once, in order


def test_close_waits_for_a_locked_database_or_says_why(db: Path) -> None:
    historian = EmbeddedHistorian(db, busy_timeout_s=0.02, max_backoff_s=0.05)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    historian.write(EventRecord(1.0, EventKind.BATCH_END, "batch done", "supervisor"))
    with pytest.raises(HistorianError, match="1 records not yet stored"):
        historian.close(timeout_s=0.3)
    with pytest.raises(HistorianClosedError):
        historian.write(EventRecord(1.1, EventKind.PHASE, "", "supervisor"))
    blocker.execute("ROLLBACK")
    blocker.close()
    historian.close(timeout_s=10.0)
    assert [r.kind for r in read_records(db)] == [EventKind.BATCH_END]  # type: ignore[union-attr]


def test_two_writers_on_one_file_interleave_without_collisions(db: Path) -> None:
    first = EmbeddedHistorian(db, batch_interval_s=0.005)
    second = EmbeddedHistorian(db, batch_interval_s=0.005)

    def produce(historian: EmbeddedHistorian, name: str) -> None:
        for i in range(2_000):
            # each writer its own run, and every 10th record one run both write (the same
            # identity inserted by two writers must end up as one row of the run table)
            run = SHARED_RUN if i % 10 == 0 else RUNS[name]
            historian.write(EventRecord(i / 1000, EventKind.PHASE, str(i), name, run=run))
            if i % 100 == 0:
                time.sleep(0.001)

    threads = [
        threading.Thread(target=produce, args=(h, n)) for h, n in ((first, "a"), (second, "b"))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first.close()
    second.close()
    got = read_records(db)
    assert len(got) == 4_000
    for name in "ab":
        mine = [r for r in got if isinstance(r, EventRecord) and r.source == name]
        assert [r.message for r in mine] == [str(i) for i in range(2_000)]
        assert [r.run for r in mine] == [
            SHARED_RUN if i % 10 == 0 else RUNS[name] for i in range(2_000)
        ]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM run").fetchone()[0] == 3


def test_numpy_scalars_are_stored_as_python_values(db: Path) -> None:
    f32: Any = np.float32(0.25)
    i64: Any = np.int64(900)
    false: Any = np.bool_(False)
    records: list[Record] = [
        MeasurementRecord(np.float64(0.5), np.str_("DO"), f32, 0.5),
        EstimateRecord(0.5, {"X": f32}, {}, nis=np.float64(2.0), dof=i64),
        EstimateRecord(0.6, {}, {}, healthy=false),
        SetpointRecord(0.5, {"F": f32, "N": i64}, "operator"),
        AuditRecord(0.5, "op", "why", "act", false),
    ]
    with EmbeddedHistorian(db) as historian:
        for record in records:
            historian.write(record)
    assert read_records(db) == records


# --- contract: bad input, closed historian ------------------------------------------------


def test_write_after_close_raises_and_close_twice_is_fine(db: Path) -> None:
    historian = EmbeddedHistorian(db)
    historian.write(EventRecord(0.0, EventKind.PHASE, "", "supervisor"))
    historian.close()
    historian.close()
    assert historian.closed
    with pytest.raises(HistorianClosedError, match="closed"):
        historian.write(EventRecord(0.1, EventKind.BATCH_END, "", "supervisor"))
    assert historian.flush(timeout_s=1.0)
    assert len(read_records(db)) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"t_h": 0.0, "sensor": "DO"},
        "MeasurementRecord(0.0, 'DO', 1.0, 0.0)",
        None,
        (0.0, "DO", 1.0, 0.0),
    ],
)
def test_non_record_raises_type_error_and_stores_nothing(db: Path, bad: object) -> None:
    with EmbeddedHistorian(db) as historian:
        with pytest.raises(TypeError, match=r"takes a bpcontrol\.records record"):
            historian.write(bad)  # type: ignore[arg-type]
        assert historian.pending == 0
    assert read_records(db) == []


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (MeasurementRecord(0.0, 7, 1.0, 0.0), TypeError, "sensor must be str"),  # type: ignore[arg-type]
        (MeasurementRecord(0.0, "DO", "31", 0.0), TypeError, "value must be a real"),  # type: ignore[arg-type]
        (SetpointRecord(0.0, {"F": "fast"}, "nmpc"), TypeError, r"values\['F'\]"),  # type: ignore[dict-item]
        (SetpointRecord(0.0, {1: 0.1}, "nmpc"), TypeError, "non-str key"),  # type: ignore[dict-item]
        (EventRecord(0.0, "phase", "bad \ud800 text", "sup"), ValueError, "lone surrogate"),
        (AuditRecord(0.0, "op", "", "act", "yes"), TypeError, "accepted must be a bool"),  # type: ignore[arg-type]
        (EstimateRecord(0.0, {}, {}, dof=1.5), TypeError, "dof must be an integer"),  # type: ignore[arg-type]
        (
            EventRecord(0.0, "phase", "", "loop", run=dataclasses.replace(RUN, site="b\ud800")),
            ValueError,
            "run.site is not valid Unicode",
        ),
    ],
)
def test_bad_field_raises_and_stores_nothing(
    db: Path, bad: Record, error: type[Exception], match: str
) -> None:
    with EmbeddedHistorian(db) as historian:
        with pytest.raises(error, match=match):
            historian.write(bad)
        historian.write(EventRecord(0.0, EventKind.PHASE, "", "sup"))
    assert [type(r) for r in read_records(db)] == [EventRecord]


def test_bad_settings_are_refused(db: Path) -> None:
    with pytest.raises(ValueError, match="batch_interval_s"):
        EmbeddedHistorian(db, batch_interval_s=-1)
    with pytest.raises(ValueError, match="max_batch"):
        EmbeddedHistorian(db, max_batch=0)
    with pytest.raises(ValueError, match="synchronous"):
        EmbeddedHistorian(db, synchronous="OFF")  # type: ignore[arg-type]
    assert not db.exists()


# --- vocabulary and run identity ---------------------------------------------------------


def test_enums_read_back_as_their_members(db: Path) -> None:
    with EmbeddedHistorian(db) as historian:
        for record in every_kind():
            historian.write(record)
    got = read_records(db)
    plans = [r for r in got if isinstance(r, PlanRecord)]
    assert [r.status for r in plans] == [PlanStatus.SOLVED, PlanStatus.LATE]
    assert all(type(r.status) is PlanStatus for r in plans)
    sources = [r.source for r in got if isinstance(r, SetpointRecord)]
    assert sources == [SetpointSource.NMPC, SetpointSource.HOLD]
    assert all(type(v) is SetpointSource for v in sources)
    kinds = [r.kind for r in got if isinstance(r, EventRecord)]
    assert kinds == [EventKind.FALLBACK, EventKind.MODE_CHANGE]
    assert all(type(k) is EventKind for k in kinds)
    with sqlite3.connect(db) as conn:  # stored as the same text as before the enums
        assert conn.execute("SELECT kind FROM event ORDER BY seq").fetchall() == [
            ("fallback",),
            ("mode-change",),
        ]
        assert conn.execute("SELECT status FROM plan ORDER BY seq").fetchall() == [
            ("solved",),
            ("late",),
        ]


def test_run_identity_round_trips_and_is_stored_once_per_run(db: Path) -> None:
    other = dataclasses.replace(RUN, run_id="run-2")
    records = [dataclasses.replace(r, run=RUN) for r in every_kind()]
    records.insert(3, MeasurementRecord(0.15, "pH", 7.0, 0.15))  # no identity
    records.append(EventRecord(0.7, EventKind.BATCH_END, "done", "loop", run=other))
    with EmbeddedHistorian(db) as historian:
        for record in records:
            historian.write(record)
    got = read_records(db)
    assert_same(got, records)
    assert [r.run for r in got] == [r.run for r in records]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT site, reactor, batch_id, run_id, started_utc FROM run")
        assert sorted(rows.fetchall()) == sorted(
            [dataclasses.astuple(RUN), dataclasses.astuple(other)]
        )
        keys = conn.execute("SELECT DISTINCT run FROM measurement ORDER BY run").fetchall()
        assert keys == [(None,), (1,)]
    meas = load_frame(db, "measurement")
    assert list(meas["run.site"][:1]) == ["basel"]
    assert list(meas["run.batch_id"][:1]) == ["B-2025-007"]
    assert meas["run.site"].isna().sum() == 1  # the record without an identity
    assert list(load_frame(db, "event")["run.run_id"]) == ["run-1", "run-1", "run-2"]
    # a reopened file (a resumed run) finds the identity it already stored
    with EmbeddedHistorian(db) as historian:
        historian.write(EventRecord(0.8, EventKind.PHASE, "again", "loop", run=RUN))
    assert read_records(db)[-1].run == RUN
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM run").fetchone()[0] == 2


def _write_file_from_before_run_identity(path: Path, records: Sequence[Record]) -> None:
    """A historian file as this module wrote it before run identities: no run table and
    no run column, schema version 1."""
    conn = sqlite3.connect(path, isolation_level=None)
    for t in TABLES.values():
        cols = ", ".join(f'"{c}" {sql}' for c, sql in t.columns)
        conn.execute(
            f'CREATE TABLE "{t.name}" (seq INTEGER PRIMARY KEY, t_h REAL NOT NULL, {cols})'
        )
        conn.execute(f'CREATE INDEX "{t.name}_t_h" ON "{t.name}" (t_h)')
    conn.execute("PRAGMA user_version=1")
    for seq, record in enumerate(records, start=1):
        t = next(t for t in TABLES.values() if type(record) is t.record_type)
        marks = ", ".join("?" for _ in range(len(t.columns) + 2))
        names = ", ".join(f'"{c}"' for c, _ in t.columns)
        conn.execute(
            f'INSERT INTO "{t.name}" (seq, t_h, {names}) VALUES ({marks})',
            (seq, record.t_h, *t.encode(record)),
        )
    conn.close()


def test_a_file_written_before_run_identities_reads_back_and_takes_new_records(
    db: Path,
) -> None:
    db.parent.mkdir(parents=True)
    old = every_kind()
    _write_file_from_before_run_identity(db, old)
    got = read_records(db)
    assert_same(got, old)
    assert all(r.run is None for r in got)
    assert "run.site" not in load_frame(db, "event").columns
    new = EventRecord(0.9, EventKind.BATCH_END, "resumed", "loop", run=RUN)
    with EmbeddedHistorian(db) as historian:  # appending adds the table and the columns
        historian.write(new)
    assert_same(read_records(db), [*old, new])
    assert read_records(db)[-1].run == RUN


def test_an_unknown_stored_kind_is_a_clear_error(db: Path) -> None:
    with EmbeddedHistorian(db) as historian:
        historian.write(EventRecord(0.0, EventKind.PHASE, "", "loop"))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE event SET kind = 'tick'")
    with pytest.raises(HistorianError, match="unknown event kind 'tick'"):
        read_records(db)


def test_run_identity_refuses_bad_fields() -> None:
    with pytest.raises(ValueError, match="started_utc must be an ISO-8601 UTC"):
        dataclasses.replace(RUN, started_utc="2025-03-01T08:00:00+01:00")
    with pytest.raises(ValueError, match="started_utc"):
        dataclasses.replace(RUN, started_utc="yesterday")
    with pytest.raises(ValueError, match="site must be non-empty text"):
        dataclasses.replace(RUN, site=" ")
    with pytest.raises(TypeError, match="run must be a RunIdentity"):
        EventRecord(0.0, EventKind.PHASE, "", "loop", run="basel")  # type: ignore[arg-type]
    started = RunIdentity.start(site="basel", reactor="R-1", batch_id="B-1")
    assert started.started_utc.endswith("+00:00") and len(started.run_id) == 32
    assert started.tags() == {
        "site": "basel",
        "reactor": "R-1",
        "batch": "B-1",
        "run": started.run_id,
    }


def test_a_creator_killed_mid_creation_leaves_no_staging_file_for_long(tmp_path: Path) -> None:
    """A process killed while creating (SIGKILL runs no cleanup) leaves its
    ``.records.sqlite.PID.creating``; the next creator removes it, and keeps the staging
    file of a creator that is still alive."""
    import signal
    import subprocess
    import sys

    folder = tmp_path / "run"
    folder.mkdir()
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        dead_file = folder / f".records.sqlite.{killed.pid}.creating"
        live_file = folder / f".records.sqlite.{live.pid}.creating"
        for f in (dead_file, live_file):
            f.write_bytes(b"half a database")
        with EmbeddedHistorian(folder / "records.sqlite"):
            pass
        assert not dead_file.exists()
        assert live_file.exists()
    finally:
        live.kill()
        live.wait(10)
