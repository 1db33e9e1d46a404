"""schemathesis (4.x) against the running server's OpenAPI schema: no 5xx from any input,
and no write bypasses the limits (the loops' applied setpoints are checked afterwards)."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from bpcontrol.records import AuditRecord, SetpointRecord
from services.api.app import PREFIX
from services.historian import read_records
from tests.api.conftest import Live

pytestmark = pytest.mark.slow

EXAMPLES = 25
"""Cases per operation and generation mode."""

_LIMITS = re.compile(r"^limits (\w+) = \[(\S+), (\S+)\], rate (\S+)/h$")


def _fuzz(operation: Any, live: Live, mode: GenerationMode, problems: list[str]) -> int:
    """Send ``operation`` the cases hypothesis draws (``mode``: valid or invalid input)."""
    role = "admin" if "audit" in operation.path else "engineer"
    headers = {"Authorization": f"Bearer {live.tokens[role]}"}
    sent = [0]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: Any) -> None:
        response = case.call(base_url=live.base, headers=headers, timeout=30)
        sent[0] += 1
        if response.status_code >= 500:
            problems.append(f"{case.method} {case.formatted_path}: {response.status_code}")

    try:
        run()
    except Unsatisfiable:  # no invalid input exists (an operation without parameters)
        assert mode is GenerationMode.NEGATIVE, operation.path
    return sent[0]


def test_no_input_gives_a_server_error(live: Live) -> None:
    """Every operation (the stream aside: it never ends) with valid and invalid input."""
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    problems: list[str] = []
    sent = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.endswith("/stream"):
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            sent += _fuzz(operation, live, mode, problems)
    assert problems == []
    assert sent > 200


def test_no_write_bypassed_the_limits(live: Live) -> None:
    """Runs after the fuzzing (same module): every applied setpoint of every reactor lies
    inside the limits in force when it was applied, and moved no faster than their rate."""
    checked = 0
    for served in live.served:
        handle = served.handle
        assert handle.tee.flush(10.0)
        cfg = handle.loop.supervisor.config
        limits = {n: (lim.lower, lim.upper, lim.rate_per_h) for n, lim in cfg.limits.items()}
        assert handle.records_path is not None
        last: SetpointRecord | None = None
        for rec in read_records(handle.records_path, ["setpoint", "audit"]):
            if isinstance(rec, AuditRecord) and rec.accepted:
                m = _LIMITS.match(rec.action)
                if m:
                    limits[m[1]] = (float(m[2]), float(m[3]), float(m[4]))
            elif isinstance(rec, SetpointRecord):
                for name, value in rec.values.items():
                    lo, hi, rate = limits[name]
                    assert lo - 1e-12 <= value <= hi + 1e-12, (name, value, lo, hi, rec.t_h)
                    if last is not None and math.isfinite(rate):
                        step = abs(value - last.values[name])
                        assert step <= rate * (rec.t_h - last.t_h) + 1e-9, (name, step, rec.t_h)
                    checked += 1
                last = rec
        applied = handle.loop.snapshot().applied
        for name, lim in handle.limits().items():
            assert lim.lower <= applied[name] <= lim.upper
    assert checked > 10
    with live.client("admin") as c:
        trail = c.get(f"{PREFIX}/audit".removeprefix(PREFIX), params={"limit": 1000}).json()
    assert len(trail) > 10  # the fuzzer's writes were audited
