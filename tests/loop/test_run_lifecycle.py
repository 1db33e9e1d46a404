"""A run survives its own faults (issue 16): signals, SIGKILL, a full disk, a dead plant.

Each case runs the real main job (``bpcontrol run``) in a subprocess, or ``run_batch``
in-process, and asserts the exit status, the single line it prints, the folder's
``status.json`` and what the records file holds afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from bpcontrol.interfaces import Plant
from bpcontrol.run_status import process_alive, read_status, write_status
from bpcontrol.runspec import spec_for
from estimators import Reading
from hil.faults import FlakyPlant
from hil.runner import RunResult, run_batch
from services.historian import read_records

SPEED = 3600.0  # process s per wall s: the 30 h batch takes 30 s of wall time


def _start(out: Path, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "bpcontrol.cli", "run", "--out", str(out), "--json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_dir(out: Path) -> Path:
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
    assert len(dirs) <= 1
    return dirs[0] if dirs else out / "missing"


def _stored_up_to_h(db: Path) -> float:
    """Latest measurement time (h) in ``db``, opened as it is (with any side files)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        value = conn.execute("SELECT max(t_h) FROM measurement").fetchone()[0]
    return float(value or 0.0)


def _wait_for_process_time(out: Path, t_h: float, proc: subprocess.Popen[str]) -> Path:
    """Wait until the run's records reach ``t_h`` (h); its folder."""
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        run = _run_dir(out)
        db = run / "records.sqlite"
        if db.exists():
            try:
                if _stored_up_to_h(db) >= t_h:
                    return run
            except sqlite3.Error:
                pass  # the file is being created
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach {t_h} h")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_and_keeps_records_kpis_and_report(
    tmp_path: Path, sig: signal.Signals
) -> None:
    out = tmp_path / "runs"
    proc = _start(out, "--speed-up", str(SPEED))
    run = _wait_for_process_time(out, 5.0, proc)
    assert read_status(run)["state"] == "running"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert f"interrupted by {sig.name}" in lines[0] and str(run) in lines[0]
    status = read_status(run)
    assert status["state"] == "interrupted" and status["reason"] == f"interrupted by {sig.name}"
    t_stop = status["t_end_h"]
    assert 5.0 <= t_stop < 30.0
    kpis = json.loads((run / "kpis.json").read_text())
    assert kpis["duration_h"] == pytest.approx(t_stop)
    assert (run / "report.html").stat().st_size > 10_000
    # the main file alone (the historian closed it: no side files) holds every record
    assert not (run / "records.sqlite-wal").exists()
    records = read_records(run / "records.sqlite")
    assert max(r.t_h for r in records) == pytest.approx(t_stop)
    stops = [r for r in records if getattr(r, "kind", None) == "stopped"]
    assert len(stops) == 1 and sig.name in stops[0].message
    assert json.loads(stdout)["duration_h"] == pytest.approx(t_stop)


def test_after_sigkill_the_main_file_alone_is_at_most_one_checkpoint_behind(
    tmp_path: Path,
) -> None:
    out = tmp_path / "runs"
    proc = _start(out, "--speed-up", str(SPEED))
    run = _wait_for_process_time(out, 8.0, proc)
    time.sleep(0.5)
    proc.kill()
    proc.communicate(timeout=30)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(run / "records.sqlite", alone / "records.sqlite")  # without -wal and -shm
    assert (run / "records.sqlite-wal").exists()  # the kill left the WAL behind
    t_main = _stored_up_to_h(alone / "records.sqlite")
    t_all = _stored_up_to_h(run / "records.sqlite")  # main file plus its WAL
    # checkpoints every 1 s of wall time, batches every 0.1 s, 0.4 s of scheduling slack
    # on a loaded 2-core machine: at 3600x that is 1.5 h of process time
    assert t_all >= 8.0
    assert t_all - t_main <= (1.0 + 0.1 + 0.4) * SPEED / 3600.0, (t_main, t_all)
    assert read_status(run)["state"] == "running"  # the process died: nothing said otherwise


@pytest.fixture
def full_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1.5 MB tmpfs (the default run's records need about 2.4 MB); root only."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_ends_the_run_with_one_line_within_bounded_time(full_disk: Path) -> None:
    out = full_disk / "runs"
    t0 = time.monotonic()
    proc = _start(out)
    _, stderr = proc.communicate(timeout=120)
    wall = time.monotonic() - t0
    assert proc.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "disk is full" in lines[0] and "records stored, up to" in lines[0]
    run = _run_dir(out)
    status = read_status(run)
    assert status["state"] == "failed" and "disk is full" in status["reason"]
    assert 0 < status["records_up_to_h"] < 30.0
    # the flat-out batch (~15-25 s here), then at most the 10 s store timeout, plus start-up
    assert wall < 60.0
    assert not (run / "kpis.json").exists() or json.loads((run / "kpis.json").read_text())


def _recipe_run_with_flaky_reads(run_dir: Path, *, end_h: float, fail_every: int) -> RunResult:
    """A 2 h recipe-only batch whose plant reads fail every ``fail_every``-th time before
    ``end_h`` (h)."""
    return run_batch(
        spec_for("ecoli_fedbatch", controller="recipe"),
        run_dir=run_dir,
        duration_h=2.0,
        wrap_plant=lambda p: FlakyPlant(p, start_h=0.0, end_h=end_h, read_fail_every=fail_every),
        report=False,
    )


def test_a_plant_that_never_answers_fails_the_run_and_says_so(tmp_path: Path) -> None:
    res = _recipe_run_with_flaky_reads(tmp_path / "run", end_h=1e9, fail_every=1)
    assert res.state == "failed" and res.exit_code == 1
    assert "no measurement ever arrived" in res.reason
    ticks = res.summary.ticks
    assert res.kpis["plant_reads_failed"] == ticks
    assert res.kpis["plant_reads_failed_percent"] == pytest.approx(100.0)
    assert read_status(tmp_path / "run")["state"] == "failed"


def test_failing_reads_are_counted_in_the_kpis(tmp_path: Path) -> None:
    res = _recipe_run_with_flaky_reads(tmp_path / "run", end_h=1.0, fail_every=3)
    assert res.state == "completed" and res.exit_code == 0
    # ticks at 0, 1, ..., 59 min of the first hour are in the window: every third fails
    assert res.kpis["plant_reads_failed"] == 20
    assert res.kpis["plant_reads_failed_percent"] == pytest.approx(100 * 20 / res.summary.ticks)


def test_status_is_replaced_whole_and_checked(tmp_path: Path) -> None:
    write_status(tmp_path, "running", pid=1)
    write_status(tmp_path, "completed", "", t_end_h=30.0)
    status = read_status(tmp_path)
    assert status["state"] == "completed" and status["t_end_h"] == 30.0 and "pid" not in status
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]  # no temporary left
    with pytest.raises(ValueError, match="state must be one of"):
        write_status(tmp_path, "done")  # type: ignore[arg-type]
    assert read_status(tmp_path)["state"] == "completed"  # unchanged by the refusal


class _NoisyPlant:
    """A plant whose device driver makes CasADi complain on every read (a real warning:
    an NLP whose constraint is NaN at the start point), as solvers and integrators do."""

    def __init__(self, inner: Plant) -> None:
        import casadi as ca

        x = ca.SX.sym("x")
        nlp = {"x": x, "f": (x - 1) ** 2, "g": ca.log(x)}
        opts = {"ipopt.print_level": 0, "ipopt.sb": "yes", "print_time": False}
        self._solver = ca.nlpsol("noisy", "ipopt", nlp, opts)
        self.inner = inner

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.inner.input_names)

    def read(self, t_h: float) -> Sequence[Reading]:
        self._solver(x0=-1.0, lbg=-10.0, ubg=10.0)
        return self.inner.read(t_h)

    def apply(self, t_h: float, setpoints: Mapping[str, float]) -> Mapping[str, float]:
        return self.inner.apply(t_h, setpoints)


def test_solver_messages_become_events_not_terminal_noise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_for("ecoli_fedbatch", controller="recipe")
    res = run_batch(
        spec, run_dir=tmp_path / "run", duration_h=1.0, wrap_plant=_NoisyPlant, report=False
    )
    assert res.state == "completed"
    assert "NaN detected" not in capsys.readouterr().err
    events = [r for r in read_records(tmp_path / "run" / "records.sqlite", "event")]
    noise = [e for e in events if e.kind == "solver-output"]
    # 61 reads (0..60 min) print the same warning up to its time stamp: one event per
    # distinct line, repeats counted, nothing lost in the log
    assert noise and all("NaN detected" in e.message for e in noise)
    assert len(noise) <= 2 * 61
    log = (tmp_path / "run" / "stderr.log").read_text().splitlines()
    assert len([ln for ln in log if "NaN detected" in ln]) == 61


def test_concurrent_starts_into_one_folder_get_distinct_run_folders(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from hil.runner import new_run_dir

    with ThreadPoolExecutor(8) as pool:  # the same second, label and seed: names collide
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path, "ecoli_fedbatch", 1), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(d.name for d in dirs)


def test_two_runs_started_together_into_one_out_both_complete(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    extra = ("--controller", "recipe", "--duration", "1")
    procs = [_start(out, *extra) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    runs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(runs) == 2
    assert all(read_status(r)["state"] == "completed" for r in runs)


def test_a_line_flushed_in_pieces_is_one_event() -> None:
    import sys

    from bpcontrol.stderr_capture import StderrToEvents

    lines: list[str] = []
    with StderrToEvents(lines.append):
        sys.stderr.write("CVODES: step ")
        sys.stderr.flush()
        sys.stderr.write("failed\nunfinished")
    assert lines == ["CVODES: step failed", "unfinished"]


def test_process_alive_tells_a_live_process_from_a_dead_one() -> None:
    """This process is alive; a child that has exited and been reaped is not; a pid too
    large for the system is no process at all."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process (until the system reuses it)
    assert process_alive(os.getpid())
    assert not process_alive(child.pid)
    assert not process_alive(2**70)
