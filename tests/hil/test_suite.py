"""Suite files: the shipped suites load; bad input gives one line naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from hil.suite import FAULT_KINDS, SuiteError, load_suite

SUITES = Path(__file__).resolve().parents[2] / "hil" / "suites"

GOOD = """
name = "t"
[defaults]
pack = "yeast_fedbatch"
duration_h = 4.0
[defaults.criteria]
records_lost = { max = 0 }
[[scenario]]
name = "a"
[scenario.criteria]
do_min_percent = { min = 20 }
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_smoke_suite_loads_with_defaults_merged() -> None:
    suite = load_suite(SUITES / "smoke.toml")
    assert len(suite.scenarios) == 3
    by_name = {s.name: s for s in suite.scenarios}
    raises = by_name["yeast-controller-raises"]
    assert raises.duration_h == 4.5 and raises.seed == 7
    names = {c.name for c in raises.criteria}
    assert {"records_lost", "fallback_entered", "recovery_time_h"} <= names  # merged
    assert raises.fault_end_h() == 3.5 and raises.fault_start_h() == 3.2


def test_acceptance_suite_covers_packs_mismatch_and_every_fault() -> None:
    suite = load_suite(SUITES / "acceptance.toml")
    assert len(suite.scenarios) >= 12
    packs = {s.pack for s in suite.scenarios}
    assert {"ecoli_fedbatch", "yeast_fedbatch", "penicillin_fedbatch"} <= packs
    for pack in ("ecoli_fedbatch", "yeast_fedbatch", "penicillin_fedbatch"):
        factors = [s.plant.parameter_factors for s in suite.scenarios if s.pack == pack]
        assert {} in factors, f"{pack}: no nominal scenario"
        values = {v for f in factors for v in f.values()}
        assert {0.8, 1.2} <= values, f"{pack}: no +-20 % mismatch"
    kinds = {f.kind for s in suite.scenarios for f in s.faults}
    assert kinds == set(FAULT_KINDS)


def test_good_minimal_suite(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, GOOD))
    (spec,) = suite.scenarios
    assert spec.pack == "yeast_fedbatch" and spec.seed == 1
    assert [c.name for c in spec.criteria] == ["records_lost", "do_min_percent"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('[[scenario]]\nname = "a"', '[[scenario]]\nname = "a"\ncolour = 1'), "colour"),
        (('name = "a"', 'name = "a b"'), "name"),
        (("duration_h = 4.0", "duration_h = 40.0"), "duration_h"),
        (("duration_h = 4.0", "duration_h = -1"), "duration_h"),
        (("duration_h = 4.0", "duration_h = 4.0\nspeed_up = 0"), "speed_up"),
        (('pack = "yeast_fedbatch"', 'pack = "no_such_pack"'), "pack"),
        (("do_min_percent = { min = 20 }", "do_best = { min = 20 }"), "criteria.do_best"),
        (("do_min_percent = { min = 20 }", "do_min_percent = { least = 20 }"), "do_min_percent"),
        (("do_min_percent = { min = 20 }", "product_vs_oracle = { min = 0.9 }"), "oracle"),
        (
            ("[scenario.criteria]", '[[scenario.fault]]\nkind = "meteor"\n[scenario.criteria]'),
            "fault[0]: kind",
        ),
        (
            (
                "[scenario.criteria]",
                '[[scenario.fault]]\nkind = "sensor_garbage"\nsensor = "pH"\n'
                "start_h = 1\nend_h = 2\n[scenario.criteria]",
            ),
            "fault[0]: sensor",
        ),
        (
            (
                "[scenario.criteria]",
                '[[scenario.fault]]\nkind = "controller_raise"\nstart_h = 2\nend_h = 1\n'
                "[scenario.criteria]",
            ),
            "start_h < end_h",
        ),
        (
            (
                "[scenario.criteria]",
                '[scenario.broken]\nkind = "ignore_do"\ninputs = ["Q_air"]\n[scenario.criteria]',
            ),
            "broken",
        ),
        (
            (
                "[scenario.criteria]",
                "[scenario.plant]\nparameter_factors = { mu_x = 0.8 }\n[scenario.criteria]",
            ),
            "parameter_factors.mu_x",
        ),
    ],
)
def test_bad_suite_one_line_naming_file_and_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = _write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(SuiteError) as err:
        load_suite(path)
    text = str(err.value)
    assert "\n" not in text
    assert str(path) in text and message in text


def test_duplicate_names_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD + '[[scenario]]\nname = "a"\n')
    with pytest.raises(SuiteError, match="used twice"):
        load_suite(path)


def test_cli_bad_suite_exit_2_nothing_written(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("duration_h = 4.0", "duration_h = 40.0"))
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["hil", "run", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert "error:" in result.output and "duration_h" in result.output
    assert not out.exists()


def test_cli_unknown_executor_and_only(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    runner = CliRunner()
    result = runner.invoke(app, ["hil", "run", str(path), "--executor", "spark"])
    assert result.exit_code == 2 and "--executor" in result.output
    result = runner.invoke(app, ["hil", "run", str(path), "--only", "zzz"])
    assert result.exit_code == 2 and "--only zzz" in result.output
