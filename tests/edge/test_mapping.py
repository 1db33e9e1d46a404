"""The device mapping file: the example loads; every mistake is one line naming file and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from edge_rig import MAPPING

from models import Model
from services.edge.mapping import MappingError, load_mapping


def _doc() -> dict[str, Any]:
    return tomllib.loads(MAPPING.read_text(encoding="utf-8"))


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    import tomli_w

    path = tmp_path / "device.toml"
    path.write_bytes(tomli_w.dumps(doc).encode())
    return path


def test_example_maps_every_input_with_its_unit_and_scale(model: Model) -> None:
    m = load_mapping(MAPPING, model)
    assert [i.name for i in m.inputs] == list(model.input_names)
    feed = m.input("F")
    # the feed pump speaks mL/h, the model L/h: 0.25 L/h is 250 mL/h and back
    assert feed.to_device(0.25) == pytest.approx(250.0)
    assert feed.to_model(feed.to_device(0.123)) == pytest.approx(0.123)
    assert m.mqtt is not None and m.mqtt.command("F") == "bpcontrol/lab1/r1/F/set"


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

CASES = [
    (
        "inputs.T_set",
        _DELETE,
        "inputs: every input of 'ecoli_fedbatch' must be mapped; missing T_set",
    ),
    (
        "inputs.F.range",
        [0.0, 900.0],
        "inputs.F.range: [0, 900] mL/h is [0, 0.9] in model units, outside",
    ),
    ("inputs.F.safe", 600.0, "inputs.F.safe: 600 is outside the device range [0, 500]"),
    ("inputs.F.scale", 0.0, "inputs.F.scale: must not be 0"),
    (
        "inputs.F.target",
        "FeedPump.TargetValue",
        "inputs.F.target: 'FeedPump.TargetValue' is not an OPC UA node id",
    ),
    (
        "inputs.F.current",
        "ns=2;s=r1.FeedPump.TargetValue",
        "inputs.F.current: node id 'ns=2;s=r1.FeedPump.TargetValue' is also inputs.F.target",
    ),
    ("inputs.F.speed", 3, "inputs.F: unknown keys ['speed']"),
    ("outputs.pH", {"function": "pH"}, "outputs.pH: not an output of 'ecoli_fedbatch'"),
    (
        "device.heartbeat_timeout_s",
        0.8,
        "device.heartbeat_timeout_s: 0.8 s must exceed twice heartbeat_period_s",
    ),
    (
        "device.confirm_timeout_s",
        "2 s",
        "device.confirm_timeout_s: must be a finite number, got '2 s'",
    ),
    ("mqtt.site", "lab/1", "mqtt.site: 'lab/1' must be one topic level"),
    (
        "device.model",
        "other_model",
        "device.model: the mapping is for 'other_model', the run's model is 'ecoli_fedbatch'",
    ),
]


@pytest.mark.parametrize(("key", "value", "message"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_mapping_names_the_file_and_the_key(
    tmp_path: Path, model: Model, key: str, value: Any, message: str
) -> None:
    doc = _doc()
    _set(doc, key, value)
    path = _write(tmp_path, doc)
    with pytest.raises(MappingError) as err:
        load_mapping(path, model)
    text = str(err.value)
    assert text.startswith(f"{path}: ")
    assert message in text
    assert "\n" not in text


def test_unreadable_and_invalid_toml_are_one_line(tmp_path: Path, model: Model) -> None:
    with pytest.raises(MappingError, match="cannot read device mapping"):
        load_mapping(tmp_path / "missing.toml", model)
    bad = tmp_path / "bad.toml"
    bad.write_text("[device\nname = 1", encoding="utf-8")
    with pytest.raises(MappingError, match=r"bad.toml: not valid TOML"):
        load_mapping(bad, model)
