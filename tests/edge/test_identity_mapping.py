"""The identity device mapping: any model's inputs and measured outputs under their own
names, in model units, checked by parse_mapping; a file to start from (TOML and CLI)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from models import Model, Output, available_models, load_model
from services.edge.mapping import (
    CONFIRM_TIMEOUT_S,
    HEARTBEAT_PERIOD_S,
    HEARTBEAT_TIMEOUT_S,
    WIDE_RANGE,
    MappingError,
    _finite_range,
    identity_mapping,
    identity_toml,
    parse_mapping,
)


@pytest.fixture(scope="module", params=available_models())
def model(request: pytest.FixtureRequest) -> Model:
    """Every shipped model (yeast, penicillin, E. coli, the do-mpc batch reactor)."""
    return load_model(request.param)


def _mid(model: Model) -> list[float]:
    """Safe setpoints halfway between each input's bounds (model units)."""
    return [0.5 * (u.lower + u.upper) for u in model.inputs]


def test_every_input_and_measured_output_under_its_own_name(model: Model) -> None:
    safe = _mid(model)
    m = identity_mapping(model, safe, name="rx")
    assert m.model == model.name and m.name == "rx"
    assert [i.name for i in m.inputs] == list(model.input_names)
    for i, u, s in zip(m.inputs, model.inputs, safe, strict=True):
        assert i.function == u.name and i.unit == u.unit
        assert i.target == f"ns=2;s=rx.{u.name}.TargetValue"
        assert i.current == f"ns=2;s=rx.{u.name}.CurrentValue"
        assert (i.scale, i.offset, i.lower, i.upper) == (1.0, 0.0, u.lower, u.upper)
        assert i.safe == pytest.approx(s)
    assert m.safe_setpoints() == pytest.approx(dict(zip(model.input_names, safe, strict=True)))
    assert [o.name for o in m.outputs] == list(model.sensor_names)  # derived ones left out
    for o in m.outputs:
        y = model.outputs[model.index(o.name)]
        assert o.function == o.name and o.unit == y.unit
        assert o.value == f"ns=2;s=rx.{o.name}.SensorValue"
        assert o.sample_time == f"ns=2;s=rx.{o.name}.SampleTime"
        assert (o.scale, o.offset, o.lower, o.upper) == (1.0, 0.0, y.lower, y.upper)
    assert m.mqtt is not None and m.mqtt.base == "bpcontrol/hil/rx"
    assert (m.heartbeat_period_s, m.heartbeat_timeout_s, m.confirm_timeout_s) == (
        HEARTBEAT_PERIOD_S,
        HEARTBEAT_TIMEOUT_S,
        CONFIRM_TIMEOUT_S,
    )


def test_the_toml_file_reads_back_as_the_same_mapping(model: Model) -> None:
    text = identity_toml(model, _mid(model))
    assert text.startswith("# Device mapping of model")
    back = parse_mapping(tomllib.loads(text), source="file.toml", model=model)
    direct = identity_mapping(model, _mid(model))
    assert dataclasses.replace(back, source=direct.source) == direct


def test_a_safe_setpoint_outside_the_bounds_is_one_line_naming_the_key(model: Model) -> None:
    u = model.inputs[0]
    safe = _mid(model)
    safe[0] = u.upper + 1.0
    with pytest.raises(MappingError) as err:
        identity_mapping(model, safe, source="my.toml")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"my.toml: inputs.{u.name}.safe: ")
    assert "outside the device range" in message


@pytest.mark.parametrize(
    ("safe", "match"),
    [
        (
            [math.nan, 100.0],
            r"^identity mapping of yeast_fedbatch: inputs\.F\.safe: must be a finite",
        ),
        ([0.0], r"^identity mapping of yeast_fedbatch: safe: 1 values for the 2 inputs"),
        ({"F": 0.0}, r"^identity mapping of yeast_fedbatch: safe: needs every input .*missing kLa"),
        (
            {"F": 0.0, "kLa": 1.0, "G": 2.0},
            r"^identity mapping of yeast_fedbatch: safe: .*unknown G$",
        ),
    ],
)
def test_bad_safe_setpoints_are_one_line(safe: object, match: str) -> None:
    with pytest.raises(MappingError, match=match):
        identity_mapping(load_model("yeast_fedbatch"), safe)


def test_an_unbounded_output_gets_a_wide_finite_range() -> None:
    yeast = load_model("yeast_fedbatch")
    outputs = list(yeast.outputs)
    outputs[0] = dataclasses.replace(outputs[0], lower=-math.inf, upper=math.inf)
    outputs[1] = dataclasses.replace(outputs[1], lower=-math.inf)
    outputs[2] = dataclasses.replace(outputs[2], upper=math.inf)
    model = dataclasses.replace(yeast, outputs=tuple(outputs))
    m = identity_mapping(model, _mid(model))
    by = {o.name: o for o in m.outputs}
    assert (by[outputs[0].name].lower, by[outputs[0].name].upper) == (-WIDE_RANGE, WIDE_RANGE)
    assert (by[outputs[1].name].lower, by[outputs[1].name].upper) == (
        -WIDE_RANGE,
        outputs[1].upper,
    )
    assert (by[outputs[2].name].lower, by[outputs[2].name].upper) == (
        outputs[2].lower,
        WIDE_RANGE,
    )
    assert isinstance(outputs[0], Output)
    # a bound far out keeps the range above zero width
    assert _finite_range(-math.inf, -2 * WIDE_RANGE) == [-3 * WIDE_RANGE, -2 * WIDE_RANGE]
    assert _finite_range(2 * WIDE_RANGE, math.inf) == [2 * WIDE_RANGE, 3 * WIDE_RANGE]


def test_cli_prints_or_writes_the_file(tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["device", "mapping", "--model", "penicillin_fedbatch"])
    assert out.exit_code == 0, out.output
    m = parse_mapping(tomllib.loads(out.output), source="stdout")
    model = load_model("penicillin_fedbatch")
    assert m.safe_setpoints() == pytest.approx({u.name: u.nominal for u in model.inputs})
    path = tmp_path / "reactor.toml"
    args = ["device", "mapping", "--model", "yeast_fedbatch", "--name", "r7"]
    out = runner.invoke(app, [*args, "--safe", "F=0.01", "--output", str(path)])
    assert out.exit_code == 0, out.output
    m = parse_mapping(tomllib.loads(path.read_text(encoding="utf-8")), source=str(path))
    assert m.name == "r7" and m.input("F").safe == 0.01
    out = runner.invoke(app, [*args, "--safe", "F=3"])
    assert out.exit_code != 0
    assert "identity mapping of yeast_fedbatch: inputs.F.safe: 3 is outside" in out.output
