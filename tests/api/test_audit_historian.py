"""``bpcontrol audit verify FILE --historian records.sqlite``: the historian keeps every
audit record too, so a deleted last entry (which leaves an intact chain) and a forged entry
with the whole chain rehashed are both found and named without a recorded head.

The audit file and the historian come from a real run: one loop behind the live API on
loopback, writes over real HTTP (accepted and refused by the loop, refused by the API).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from services.api.app import PREFIX
from services.api.audit import AuditChain, cross_check_historian, verify_audit_file
from services.historian import read_records
from tests.api.conftest import login, make_settings, served_reactor, start_server, stop_server


@dataclass(frozen=True)
class Trail:
    """The audit file and the reactor's historian file of a finished run."""

    audit: Path
    records: Path


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trail]:
    root = tmp_path_factory.mktemp("trail")
    served = served_reactor(root, "R1", speed_up=600.0)
    server, thread, base = start_server([served], root / "audit.jsonl", make_settings())
    served.start()
    try:
        token = login(base, "operator")
        with httpx.Client(
            base_url=base + PREFIX, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as op:
            writes = [
                op.post("/reactors/R1/mode", json={"mode": "manual", "reason": "feed test"}),
                op.put("/reactors/R1/setpoints/F", json={"value": 5.0, "reason": "typo"}),
                op.put("/reactors/R1/setpoints/Q", json={"value": 1.0, "reason": "no such"}),
                op.put("/reactors/R1/setpoints/F", json={"value": 0.02, "reason": "feed"}),
            ]
        assert [w.status_code for w in writes] == [200, 422, 404, 200]
    finally:
        stop_server(server, thread)
        served.stop("test over")  # closes (and so flushes) the historian
    assert served.handle.records_path is not None
    yield Trail(root / "audit.jsonl", served.handle.records_path)


def _verify(audit: Path, records: Path) -> tuple[int, list[str]]:
    result = CliRunner().invoke(app, ["audit", "verify", str(audit), "--historian", str(records)])
    return result.exit_code, result.output.splitlines()


def _copy_without(trail: Trail, tmp_path: Path, drop: int) -> Path:
    lines = trail.audit.read_text(encoding="utf-8").splitlines(keepends=True)
    out = tmp_path / "audit.jsonl"
    out.write_text("".join(line for k, line in enumerate(lines) if k != drop), encoding="utf-8")
    return out


def test_an_intact_file_agrees_with_the_historian(trail: Trail) -> None:
    assert verify_audit_file(trail.audit) == []
    assert cross_check_historian(trail.audit, [trail.records]) == []
    assert _verify(trail.audit, trail.records) == (0, [f"{trail.audit}: OK"])
    # the historian holds all four: the loop's records of the three it carried out, the
    # API's chained copy of the one it refused itself (404, with its seq)
    audits = read_records(trail.records, "audit")
    assert len(audits) == 4
    assert [a.seq for a in audits] == [0, 0, 3, 0]  # type: ignore[attr-defined]


def test_a_deleted_last_entry_is_named_from_the_historian(trail: Trail, tmp_path: Path) -> None:
    cut = _copy_without(trail, tmp_path, drop=3)  # the last of four
    assert verify_audit_file(cut) == []  # the chain alone cannot tell
    code, lines = _verify(cut, trail.records)
    assert code == 1, lines
    (finding,) = [line for line in lines if ": deleted: " in line]
    assert "'setpoint F = 0.02' (accepted), why 'feed'" in finding
    assert "after entry seq 3" in finding  # the file's last entry, so a cut tail
    assert lines[-1] == f"{cut}: TAMPERED (1 finding(s))"


def test_a_deleted_middle_entry_is_named_by_the_chain_and_the_historian(
    trail: Trail, tmp_path: Path
) -> None:
    cut = _copy_without(trail, tmp_path, drop=2)  # the API's 404 refusal, seq 3
    problems = cross_check_historian(cut, [trail.records])
    assert [(p.kind, p.seq) for p in problems] == [("deleted", 3)]
    assert "'PUT /api/v1/reactors/R1/setpoints/Q'" in problems[0].detail
    assert "after entry seq 2" in problems[0].detail
    assert any(p.kind == "deleted" and p.seq == 3 for p in verify_audit_file(cut))


def test_a_forged_entry_in_a_rehashed_chain_is_not_in_the_historian(
    trail: Trail, tmp_path: Path
) -> None:
    entries = [json.loads(line) for line in trail.audit.read_text().splitlines()]
    chain = AuditChain(tmp_path / "forged.jsonl")
    from services.api.audit import record_from_entry

    records = [record_from_entry(e) for e in entries]
    forged = replace(records[1], why="approved by QA", accepted=True, reason="", action="x")
    for record in [records[0], forged, *records[1:]]:
        chain.append(replace(record, seq=0, prev_hash="", hash=""))
    assert verify_audit_file(chain.path) == []  # a consistent, rewritten chain
    problems = cross_check_historian(chain.path, [trail.records])
    assert [(p.kind, p.seq, p.line) for p in problems] == [("inserted", 2, 2)]
    assert "why 'approved by QA'" in problems[0].detail


def test_an_unreadable_historian_is_one_error_line(trail: Trail, tmp_path: Path) -> None:
    code, lines = _verify(trail.audit, tmp_path / "none.sqlite")
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --historian")
