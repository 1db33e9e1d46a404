"""Bad paths and absurd numbers on the command line (issue 16): one line, exit 2, nothing made.

The rule of every command: a problem with a path or a number is ONE line on stderr that
starts ``error:`` and names the option (``--out``, ``--hours`` ...) or the file and key
(``recipe.toml: duration_h``), the exit status is 2, no traceback, and nothing is created:
no run folder, no output file. Each case runs the CLI in a subprocess in a fresh folder
and compares the folder's listing (every path below it) before and after; every case is
refused before anything is simulated, so each takes about the CLI's start-up time.

Unwritable outputs are made in ways that stop root too (the tests run as root, whom
permission bits do not stop): a path below a regular file, an existing regular file where
a folder goes (a folder where a file goes), and paths on ``/proc``, where no one can create
anything. A failed ``--oracle`` after the batch keeps the batch's KPIs and report and exits
1 with one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpcontrol.cli_common import check_output_file, check_output_folder
from bpcontrol.recipe import ExponentialProfile

PACKS = Path(__file__).resolve().parents[1] / "bpcontrol" / "data" / "packs"
CLI = (sys.executable, "-m", "bpcontrol.cli")

DATA_HEADER = "t_h,sensor,value,t_sample_h\n"
INPUTS = "t_h,F,Q_air,N_stir,T_set\n0,0,20,1200,37\n"


def _listing(root: Path) -> set[str]:
    """Every path below ``root`` (folders and files), relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _cli(args: tuple[str, ...] | list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def assert_refused(args: tuple[str, ...] | list[str], cwd: Path, *fragments: str) -> str:
    """Run the CLI in ``cwd``: exit 2, one ``error:`` line naming ``fragments``, nothing
    created in ``cwd``; returns the line."""
    before = _listing(cwd)
    proc = _cli(args, cwd)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert _listing(cwd) == before, sorted(_listing(cwd) - before)
    return lines[0]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A working folder with a regular file ``afile``, a folder ``adir.csv``, an E. coli
    pack ``pack/``, its recipe and controller files, and a short recorded run."""
    (tmp_path / "afile").write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "adir.csv").mkdir()
    shutil.copytree(PACKS / "ecoli_fedbatch", tmp_path / "pack")
    shutil.copy(PACKS / "ecoli_fedbatch" / "recipe.toml", tmp_path / "recipe.toml")
    shutil.copy(PACKS / "ecoli_fedbatch" / "control.toml", tmp_path / "control.toml")
    (tmp_path / "data.csv").write_text(
        DATA_HEADER + "0.016666666666666666,DO_probe,99.6,0.016666666666666666\n",
        encoding="utf-8",
    )
    (tmp_path / "data_inputs.csv").write_text(INPUTS, encoding="utf-8")
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# --- output paths ------------------------------------------------------------------------

# each command with options that would make a run short if a bad --out slipped through
FOLDER_COMMANDS = {
    "run": ("run", "--controller", "recipe", "--duration", "0.05"),
    "simulate": ("simulate", "-m", "ecoli_fedbatch", "--hours", "0.1"),
    "estimate": ("estimate", "-m", "ecoli_fedbatch", "--data", "data.csv"),
}
BAD_FOLDERS = (
    ("afile/run", "afile is not a folder"),  # parent is a regular file
    ("afile/deep/er/run", "afile is not a folder"),
    ("afile", "afile exists and is not a folder"),  # an existing regular file
    ("/proc/bpcontrol-test", "cannot create a folder in /proc"),  # refused even to root
    ("/proc/bpcontrol-test/deep/er", "cannot create a folder in /proc"),
)


@pytest.mark.parametrize("out,reason", BAD_FOLDERS)
@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_an_unusable_out_folder_is_one_line(
    command: str, out: str, reason: str, work: Path
) -> None:
    line = assert_refused([*FOLDER_COMMANDS[command], "--out", out], work, f"--out {out}")
    assert reason in line


@pytest.mark.parametrize(
    "out,reason",
    [
        ("afile/run.csv", "afile exists and is not a folder"),
        ("afile/deep/run.csv", "afile is not a folder"),
        ("adir.csv", "is a folder, not a file"),  # a folder where the file goes
        ("/proc/bpcontrol-test.csv", "cannot create a folder in /proc"),
        ("/proc/bpcontrol-test/deep/run.csv", "cannot create a folder in /proc"),
    ],
)
def test_an_unusable_synth_out_file_is_one_line(out: str, reason: str, work: Path) -> None:
    line = assert_refused(["synth", "--hours", "0.1", "--out", out], work, f"--out {out}")
    assert reason in line


def test_synth_refuses_an_existing_file_without_force(work: Path) -> None:
    (work / "run.csv").write_text(DATA_HEADER, encoding="utf-8")
    assert_refused(["synth", "--hours", "0.1", "--out", "run.csv"], work, "run.csv", "--force")


def test_a_deep_new_folder_is_accepted_and_the_check_creates_nothing(tmp_path: Path) -> None:
    check_output_folder(tmp_path / "a" / "b" / "c", "--out")
    check_output_file(tmp_path / "a" / "b" / "run.csv", "--out")
    check_output_folder(tmp_path, "--out")  # an existing folder
    assert _listing(tmp_path) == set()


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root")
def test_a_read_only_folder_is_refused_for_a_user(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ValueError, match="cannot create a folder in"):
            check_output_folder(locked / "runs", "--out")
    finally:
        locked.chmod(0o700)


# --- numbers that pass the finiteness checks but overflow ------------------------------


@pytest.mark.parametrize(
    "old,new,fragments",
    [
        ("duration_h = 30.0", "duration_h = 1e308", ("duration_h", "at most 100000 h")),
        ("duration_h = 30.0", "duration_h = 100001.0", ("duration_h", "at most 100000 h")),
        (
            "measurement_period_min = 1.0 ",
            "measurement_period_min = 0.0001 ",
            ("measurement_period_min", "at most 1,000,000"),
        ),
        (
            "measurement_period_min = 1.0 ",
            "measurement_period_min = 1e-300 ",
            ("measurement_period_min", "at most 1,000,000"),
        ),
        (
            "control_period_min = 10.0",
            "control_period_min = 1e308",
            ("control_period_min", "longer than the batch"),
        ),
    ],
)
def test_an_absurd_recipe_number_names_the_file_and_key(
    old: str, new: str, fragments: tuple[str, ...], work: Path
) -> None:
    _edit(work / "recipe.toml", old, new)
    assert_refused(["run", "--recipe", "recipe.toml"], work, "recipe.toml", *fragments)
    _edit(work / "pack" / "recipe.toml", old, new)
    assert_refused(["run", "--pack", "pack"], work, "recipe.toml", *fragments)


@pytest.mark.parametrize("value", ["1e308", "1e5", "inf", "nan", "0.001", "-1", "0"])
def test_an_absurd_run_duration_is_one_line(value: str, work: Path) -> None:
    assert_refused(["run", "--duration", value], work, "--duration")


@pytest.mark.parametrize(
    "args,fragments",
    [
        (("--hours", "1e308"), ("--hours", "at most 100000 h")),
        (("--hours", "inf"), ("--hours",)),
        (("--hours", "1", "--dt", "1e-300"), ("--hours", "--dt", "at most 1,000,000")),
        (("--hours", "1", "--dt", "0"), ("--dt",)),
        (("--hours", "1", "--dt", "nan"), ("--dt",)),
    ],
)
def test_an_absurd_simulate_number_is_one_line(
    args: tuple[str, ...], fragments: tuple[str, ...], work: Path
) -> None:
    assert_refused(["simulate", "-m", "ecoli_fedbatch", *args, "--out", "sim"], work, *fragments)


@pytest.mark.parametrize(
    "hours,fragment",
    [
        ("1e308", "at most 100000 h"),
        ("20000", "at most 1,000,000"),  # 1.2 million one-minute sensor periods
        ("0.001", "whole number of minutes"),
        ("-1", "> 0"),
    ],
)
def test_an_absurd_synth_duration_is_one_line(hours: str, fragment: str, work: Path) -> None:
    assert_refused(["synth", "--hours", hours, "--out", "run.csv"], work, "--hours", fragment)


@pytest.mark.parametrize(
    "t_h,fragment",
    [
        ("1e308", "at most 100000 h"),  # a reading 1e308 h after the one before
        ("50000", "filter steps of max_step_h"),  # 3 million steps of one minute
    ],
)
def test_a_reading_absurdly_late_is_one_line(t_h: str, fragment: str, work: Path) -> None:
    with (work / "data.csv").open("a", encoding="utf-8") as fh:
        fh.write(f"{t_h},DO_probe,99.6,{t_h}\n")
    assert_refused(
        ["estimate", "-m", "ecoli_fedbatch", "--data", "data.csv", "--out", "est"],
        work,
        "data.csv",
        "t_h",
        fragment,
    )


def test_an_overflowing_exponential_feed_stays_at_its_max() -> None:
    feed = ExponentialProfile(initial=0.02, growth_per_h=1e300, max=0.06)
    assert feed.at(0.0) == pytest.approx(0.02)
    assert feed.at(1.0) == 0.06  # e^(1e300) would raise OverflowError


# --- the controller's deadline and period ------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-1.0", "0.0", "1e308"])
def test_a_bad_controller_deadline_names_the_file_and_key(value: str, work: Path) -> None:
    old, new = "deadline_s = 2.0 ", f"deadline_s = {value} "
    _edit(work / "control.toml", old, new)
    assert_refused(["run", "--control", "control.toml"], work, "control.toml", "deadline_s")
    _edit(work / "pack" / "control.toml", old, new)
    assert_refused(["run", "--pack", "pack"], work, "control.toml", "deadline_s")


@pytest.mark.parametrize("value", ["1e300", "1e-300", "inf"])
def test_a_bad_control_period_names_the_file_and_key(value: str, work: Path) -> None:
    _edit(work / "control.toml", "horizon = ", f"control_period_min = {value}\nhorizon = ")
    assert_refused(["run", "--control", "control.toml"], work, "control.toml", "control_period_min")


# --- a failed oracle after the batch -------------------------------------------------------


def test_a_failed_oracle_keeps_the_batch_kpis_and_report(tmp_path: Path) -> None:
    """The do-mpc pack with a hard bound its start violates (V_s starts at 120): the loop
    runs its recipe (``--controller recipe``, about 5 s), the oracle's whole-batch problem
    is infeasible. KPIs and report stay, one line says the oracle failed, exit 1."""
    pack = tmp_path / "pack"
    shutil.copytree(PACKS / "dompc_batch_reactor", pack)
    _edit(pack / "control.toml", "[state_bounds.V_s]\n", "[state_bounds.V_s]\nupper = 100.0\n")
    proc = _cli(
        ["run", "--pack", "pack", "--controller", "recipe", "--oracle", "--out", "runs", "--json"],
        tmp_path,
    )
    assert proc.returncode == 1, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --oracle failed"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert str(run_dir.relative_to(tmp_path)) in lines[0]
    printed = json.loads(proc.stdout)
    stored = json.loads((run_dir / "kpis.json").read_text(encoding="utf-8"))
    assert printed == stored
    assert stored["final_product"] > 0 and "oracle_product" not in stored
    assert "Infeasible" in stored["oracle_error"]
    assert (run_dir / "report.html").is_file()
    assert (run_dir / "records.sqlite").is_file()


def test_oracle_without_a_controller_file_is_refused_before_the_run(tmp_path: Path) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(PACKS / "dompc_batch_reactor", pack)
    (pack / "control.toml").unlink()
    assert_refused(
        ["run", "--pack", "pack", "--controller", "recipe", "--oracle", "--out", "runs"],
        tmp_path,
        "--oracle",
        "control.toml",
    )


def test_an_unknown_estimator_lists_the_known_ones(work: Path) -> None:
    line = assert_refused(["run", "--estimator", "kalman"], work, "--estimator")
    assert "compiled, jax, mhe" in line


# --- resume ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--resume", "adir.csv"), "--resume continues a run on a device (--plant URL)"),
        (
            ("--resume", "adir.csv", "--model", "ecoli_fedbatch", "--plant", "opcua://127.0.0.1:9"),
            "drop --model",
        ),
        (
            ("--resume", "nowhere", "--plant", "opcua://127.0.0.1:9"),
            "--resume nowhere: no such run folder",
        ),
        (("--resume", "adir.csv", "--plant", "opcua://127.0.0.1:9"), "no run.toml"),
    ],
)
def test_a_bad_resume_is_one_line(args: tuple[str, ...], fragment: str, work: Path) -> None:
    assert_refused(("run", *args), work, fragment)


def test_resume_refuses_a_completed_run_and_one_still_running(tmp_path: Path) -> None:
    """A folder that completed, or whose process is alive, is not resumed; a process that
    died mid-run (status ``running``, its pid gone) is what --resume is for."""
    from bpcontrol.cli_run import check_resume_folder
    from bpcontrol.run_status import write_status

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.toml").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no records\.sqlite"):
        check_resume_folder(folder)
    (folder / "records.sqlite").write_bytes(b"")
    write_status(folder, "completed")
    with pytest.raises(ValueError, match="the run completed; nothing to resume"):
        check_resume_folder(folder)
    write_status(folder, "running", pid=os.getppid())  # alive: the test's parent
    with pytest.raises(ValueError, match=f"still running \\(pid {os.getppid()}\\)"):
        check_resume_folder(folder)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_status(folder, "running", pid=dead.pid)
    assert check_resume_folder(folder) == folder
    write_status(folder, "failed", "the historian stored nothing")
    assert check_resume_folder(folder) == folder
