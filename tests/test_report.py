"""The HTML run report: built from the records of a real (short) simulated fed-batch."""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from bpcontrol.records import (
    AuditRecord,
    EstimateRecord,
    EventKind,
    EventRecord,
    MeasurementRecord,
    PlanRecord,
    PlanStatus,
    Record,
    SetpointRecord,
    SetpointSource,
)
from bpcontrol.report import _state_of_sensor, write_report
from bpcontrol.supervisor import SetpointLimits
from models import Model, load_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
SCRIPT = "<script>alert('x')</script>"
TRACKED = ("mu_max", "kla_factor")


def simulate_truth(
    model: Model, hours: float, dt_h: float = 1 / 60
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The true trajectory of the plant under constant inputs, one row per ``dt_h``."""
    step = model.to_casadi().integrator(dt_h)
    u = model.u0.copy()
    u[model.index("F")] = 0.05
    u[model.index("N_stir")] = 800.0
    n = round(hours / dt_h)
    X = np.empty((n + 1, model.nx))
    X[0] = model.x0
    for k in range(n):
        X[k + 1] = np.asarray(step(X[k], u, model.p0)).ravel()
    t = np.arange(n + 1) * dt_h
    return t, X, np.tile(u, (n + 1, 1))


def run_records(
    model: Model,
    truth: tuple[np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
    *,
    plan_every: int = 15,
    horizon: int = 60,
) -> list[Record]:
    """Records as the loop would write them around ``truth``: estimates near the truth,
    measurements, plans predicting the truth, setpoints switching nmpc -> fallback -> nmpc,
    events (one carrying HTML) and one audit entry; shuffled, since order must not matter."""
    t, X, U = truth
    n = len(t)
    names, inputs = model.state_names, model.input_names
    p0 = {p: float(model.p0[model.index(p)]) for p in TRACKED}
    records: list[Record] = []
    for k in range(n):
        x = X[k] * (1 + 0.02 * rng.standard_normal(model.nx))
        sigma = 0.03 * np.abs(X[k]) + 0.01
        records.append(
            EstimateRecord(
                t_h=float(t[k]),
                x=dict(zip(names, x, strict=True)),
                x_sigma=dict(zip(names, sigma, strict=True)),
                parameters={p: v * (1 + 0.05 * math.exp(-t[k])) for p, v in p0.items()},
                parameter_sigma={p: 0.1 * v * math.exp(-t[k]) + 0.01 * v for p, v in p0.items()},
                nis=float(rng.chisquare(3)),
                dof=3,
                healthy=not (0.4 * n < k < 0.45 * n),
            )
        )
        for sensor, state in (("DO_probe", "DO"), ("T_probe", "T"), ("V_meas", "V")):
            value = X[k, model.index(state)] + 0.1 * rng.standard_normal()
            records.append(MeasurementRecord(float(t[k]), sensor, float(value), float(t[k])))
        records.append(MeasurementRecord(float(t[k]), "OUR", 10.0, float(t[k])))
        if k % 30 == 0:  # an offline assay every half hour, arriving 20 min late
            value = X[k, model.index("X")] * (1 + 0.05 * rng.standard_normal())
            records.append(MeasurementRecord(float(t[k]) + 1 / 3, "X_off", float(value), t[k]))
    records.append(MeasurementRecord(float(t[1]), "DO_probe", math.nan, float(t[1])))
    control = range(0, n, plan_every)
    for j, k in enumerate(control):
        nodes = list(range(k, min(k + horizon, n - 1) + 1, 5))
        status = PlanStatus.FAILED if j == 3 else PlanStatus.LATE if j == 4 else PlanStatus.SOLVED
        records.append(
            PlanRecord(
                t_h=float(t[k]),
                status=status,
                solve_time_s=math.nan if status is PlanStatus.LATE else 0.05 + 0.01 * j,
                t_nodes_h=tuple(t[nodes]),
                x_pred={s: tuple(X[nodes, i] * 1.01) for i, s in enumerate(names)},
                u_plan={s: tuple(U[nodes[:-1], i]) for i, s in enumerate(inputs)},
                message="" if status is PlanStatus.SOLVED else f"{status} step",
            )
        )
        frac = j / len(control)
        source = SetpointSource.FALLBACK if 0.33 <= frac < 0.66 else SetpointSource.NMPC
        values = dict(zip(inputs, U[k], strict=True))
        values["F"] = 0.05 + (0.02 if source is SetpointSource.FALLBACK else 0.0)
        records.append(
            SetpointRecord(float(t[k]), values, source, clamped=("F",) if j == 1 else ())
        )
    records += [
        EventRecord(1.0, EventKind.FALLBACK, f"plan failed {SCRIPT}", "supervisor"),
        EventRecord(2.0, EventKind.MODE_CHANGE, 'operator asked AUTO & said "go"', "operator"),
    ]
    records.append(AuditRecord(2.0, "ana", "<b>retry</b>", "mode FALLBACK -> AUTO", True))
    order = rng.permutation(len(records))
    return [records[i] for i in order]


@pytest.fixture(scope="module")
def model() -> Model:
    return load_model("ecoli_fedbatch")


@pytest.fixture(scope="module")
def truth(model: Model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return simulate_truth(model, hours=3.0)


def limits(model: Model) -> dict[str, SetpointLimits]:
    return {i.name: SetpointLimits(i.lower, i.upper, math.inf) for i in model.inputs}


def images(text: str) -> list[bytes]:
    """Every embedded PNG of the report, decoded."""
    return [base64.b64decode(m) for m in IMG.findall(text)]


def report(
    tmp_path: Path, model: Model, records: Sequence[Record], **kwargs: object
) -> tuple[Path, str]:
    out = write_report(
        tmp_path / "run.html",
        records=records,
        model=model,
        limits=limits(model),
        kpis={"product [g]": 12.3456789, "fallback steps": 4, "verdict": "pass <ok>"},
        title="E. coli <closed loop>",
        **kwargs,  # type: ignore[arg-type]
    )
    return out, out.read_text(encoding="utf-8")


def test_full_report_embeds_five_png_figures_and_escapes_text(
    tmp_path: Path, model: Model, truth: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    records = run_records(model, truth, np.random.default_rng(1))
    out, text = report(
        tmp_path,
        model,
        records,
        truth=truth,
        true_parameters={"mu_max": 0.65, "kla_factor": 1.0},
        state_bounds={"DO": (30.0, math.inf), "V": (-math.inf, 10.0)},
        notes=("scenario nominal, seed 1", "bpcontrol run --seed 1"),
    )
    assert out.exists() and out.suffix == ".html"
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.count("<table>") == text.count("</table>") == 3  # KPIs, events, audit
    pngs = images(text)
    assert len(pngs) == 5
    assert all(p.startswith(PNG_SIGNATURE) and len(p) > 5000 for p in pngs)
    for name, value in (("product [g]", "12.35"), ("fallback steps", "4")):
        assert f"<td>{name}</td>" in text and f">{value}</td>" in text
    assert "pass &lt;ok&gt;" in text
    assert "E. coli &lt;closed loop&gt;" in text and "<closed loop>" not in text
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "&lt;b&gt;retry&lt;/b&gt;" in text and "<b>retry" not in text
    assert "seed 1" in text
    assert "fallback" in text and "Setpoint steps by source" in text
    assert out.stat().st_size < 3_000_000


def test_report_without_truth_compares_plans_with_estimates(
    tmp_path: Path, model: Model, truth: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    records = run_records(model, truth, np.random.default_rng(2))
    _, text = report(tmp_path, model, records)
    assert len(images(text)) == 5
    assert "against the estimate" in text


def test_run_without_plans_or_estimates_says_what_is_missing(
    tmp_path: Path, model: Model, truth: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    records = [
        r
        for r in run_records(model, truth, np.random.default_rng(3))
        if not isinstance(r, PlanRecord | EstimateRecord)
    ]
    _, text = report(tmp_path, model, records)
    assert len(images(text)) == 2  # states (measurements only) and setpoints
    assert "No usable plan" in text
    assert "No tracked parameters" in text
    assert "No estimates, no plans in this run" in text


def test_recipe_only_steps_are_shaded_and_counted(
    tmp_path: Path, model: Model, truth: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    records = [
        dataclasses.replace(r, source=SetpointSource.RECIPE)
        if isinstance(r, SetpointRecord) and r.t_h < 1.0
        else r
        for r in run_records(model, truth, np.random.default_rng(5))
    ]
    _, text = report(tmp_path, model, records)
    assert len(images(text)) == 5
    assert re.search(r"time per source: nmpc [0-9.]+ h, operator 0.00 h, fallback", text)
    assert re.search(r"recipe [1-9][0-9.]* h", text)  # only named when it happened
    assert re.search(r"Setpoint steps by source: [^<]*recipe [1-9]", text)


def test_empty_run_still_writes_a_report(tmp_path: Path, model: Model) -> None:
    out, text = report(tmp_path, model, [])
    assert out.exists() and images(text) == []
    assert "no records" in text
    assert "No setpoints were applied" in text
    assert "No events." in text


def test_event_table_is_capped(tmp_path: Path, model: Model) -> None:
    events = [EventRecord(i / 60, EventKind.PHASE, f"event {i}", "loop") for i in range(350)]
    _, text = report(tmp_path, model, events)
    assert "event 299<" in text and "event 300<" not in text
    assert "50 more not shown" in text


def test_wrong_truth_shape_and_foreign_records_are_refused(tmp_path: Path, model: Model) -> None:
    t = np.arange(3.0)
    with pytest.raises(ValueError, match="truth must be"):
        report(tmp_path, model, [], truth=(t, np.zeros((3, 2)), np.zeros((3, model.nu))))
    with pytest.raises(TypeError, match="not a run record"):
        report(tmp_path, model, ["measurement"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("sensor", "state"),
    [("X_off", "X"), ("DO_probe", "DO"), ("V_meas", "V"), ("T", "T"), ("OUR", None)],
)
def test_sensors_map_to_the_state_they_measure(model: Model, sensor: str, state: str) -> None:
    assert _state_of_sensor(sensor, model.state_names) == state


def test_a_30_hour_run_renders_quickly_into_a_small_file(tmp_path: Path, model: Model) -> None:
    """1,800 estimates and ~7,300 measurements are thinned: seconds and well under 3 MB."""
    truth = simulate_truth(model, hours=30.0)
    records = run_records(model, truth, np.random.default_rng(4), plan_every=5, horizon=120)
    assert sum(isinstance(r, MeasurementRecord) for r in records) > 7000
    started = time.perf_counter()
    out, text = report(tmp_path, model, records, truth=truth)
    elapsed = time.perf_counter() - started
    assert len(images(text)) == 5
    assert out.stat().st_size < 3_000_000
    assert elapsed < 20.0  # about 2-3 s on a loaded 2-core machine; this only catches blow-ups
