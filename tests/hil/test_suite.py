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


def _fault(body: str) -> tuple[str, str]:
    """A change to GOOD that adds one [[scenario.fault]] with ``body``."""
    return ("[scenario.criteria]", f"[[scenario.fault]]\n{body}\n[scenario.criteria]")


def _table(body: str) -> tuple[str, str]:
    """A change to GOOD that adds the scenario table(s) in ``body``."""
    return ("[scenario.criteria]", f"{body}\n[scenario.criteria]")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_smoke_suite_loads_with_defaults_merged() -> None:
    suite = load_suite(SUITES / "smoke.toml")
    assert len(suite.scenarios) == 4
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
        (_fault('kind = "probe_stuck"\nsensor = "pH_probe"\nstart_h = 3'), "fault[0]: sensor"),
        (_fault('kind = "probe_drift"\nstart_h = 3'), "fault[0]: rate_per_h"),
        (_fault('kind = "spikes"\nsize = 5\nprobability = 2\nstart_h = 3'), "probability"),
        (_fault('kind = "offgas_outage"\nsensors = ["y_O2_out"]\nstart_h = 3'), "sensors"),
        (_fault('kind = "pump_failure"\ninput = "Q_air"\nstart_h = 3'), "fault[0]: input"),
        (_fault('kind = "pump_blockage"\nfraction = 1.5\nstart_h = 3'), "fraction"),
        (_fault('kind = "cooling_loss"\nfraction = 0.5\nstart_h = 3'), "base_layer"),
        (_fault('kind = "feed_concentration"\nstart_h = 3'), "fault[0]: factor"),
        (_fault('kind = "growth_change"\nfactor = 5.0\nstart_h = 3'), "Y_xs_ox"),
        (_fault('kind = "growth_change"\nparameter = "mu_x"\nfactor = 1.1'), "parameter"),
        (_table("[scenario.sensors.DO_probe]\nlag = 0.1"), "sensors.DO_probe: unknown keys"),
        (_table("[scenario.sensors.T_probe]\nnoise = 0.1"), "sensors.T_probe"),
        (_table("[scenario.sensors.DO_probe]\ndropout = 1.0"), "sensors.DO_probe.dropout"),
        (_table("[scenario.actuators.F]\ndead_time_h = -1"), "actuators.F.dead_time_h"),
        (_table("[scenario.actuators.F]\nmin = 1\nmax = 0.5"), "actuators.F"),
        (_table("[scenario.actuators.T_set]\nmax = 30"), "actuators.T_set"),
        (_table("[scenario.base_layer]\nheater = 1"), "base_layer: unknown keys"),
        (_table("[scenario.base_layer]\ncooling_W = 100"), "base_layer: needs"),
        (_table('[scenario.base_layer]\ndo_input = "kLa"'), "base_layer: do_input"),
        (_table("[scenario.base_layer]\ndo_percent = 120"), "base_layer: do_percent"),
        (
            _table('[scenario.base_layer]\ndo_percent = 30\ndo_input = "F_air"'),
            "base_layer.do_input",
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


def test_rig_keys_parsed_with_defaults(tmp_path: Path) -> None:
    text = GOOD.replace(
        "[scenario.criteria]",
        "[scenario.sensors.DO_probe]\nlag_h = 0.05\nquantum = 0.5\n"
        "[scenario.actuators.F]\ndead_time_h = 0.02\nmax = 0.3\n"
        "[scenario.base_layer]\ntemperature_C = 30\ndo_percent = 30\n"
        '[[scenario.fault]]\nkind = "offgas_outage"\nstart_h = 3\nend_h = 3.5\n'
        '[[scenario.fault]]\nkind = "growth_change"\nfactor = 0.9\nstart_h = 3\n'
        '[[scenario.fault]]\nkind = "cooling_loss"\nfraction = 0.2\nstart_h = 3\n'
        "[scenario.criteria]",
        1,
    )
    (spec,) = load_suite(_write(tmp_path, text)).scenarios
    assert spec.sensors["DO_probe"].lag_h == 0.05 and spec.sensors["DO_probe"].quantum == 0.5
    assert spec.actuators["F"].dead_time_h == 0.02 and spec.actuators["F"].max == 0.3
    assert spec.base_layer == {"temperature_C": 30.0, "do_percent": 30.0, "do_input": "kLa"}
    outage, growth, _ = spec.faults
    assert outage.options["sensors"] == ("OUR", "CER")  # the pack's off-gas instruments
    assert growth.options["parameter"] == "Y_xs_ox"  # the yeast model's default
    assert spec.fault_start_h() == 3.0 and spec.fault_end_h() == 3.5


def test_cooling_loss_refused_for_a_model_with_its_own_temperature(tmp_path: Path) -> None:
    text = GOOD.replace('pack = "yeast_fedbatch"', 'pack = "penicillin_fedbatch"').replace(
        "[scenario.criteria]",
        '[[scenario.fault]]\nkind = "cooling_loss"\nfraction = 0.2\nstart_h = 3\n'
        "[scenario.criteria]",
        1,
    )
    with pytest.raises(SuiteError, match="own temperature state"):
        load_suite(_write(tmp_path, text))
