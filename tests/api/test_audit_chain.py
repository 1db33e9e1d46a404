"""The audit file's hash chain: every kind of tampering is found and named, and the CLI says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpcontrol.cli import app
from bpcontrol.records import AuditRecord, RunIdentity
from services.api.audit import AuditChain, verify_audit_file

RUN = RunIdentity("basel", "R-101", "B-7", "run-1", "2026-12-02T08:00:00+00:00")


def _chain(path: Path, n: int = 5) -> AuditChain:
    chain = AuditChain(path)
    for k in range(n):
        chain.append(
            AuditRecord(
                0.1 * k,
                "ana",
                f"reason {k} é",
                f"setpoint F = {k / 10}",
                k % 2 == 0,
                "" if k % 2 == 0 else "outside the limits",
                run=RUN,
                wall_utc="2026-12-02T08:00:00.000000+00:00",
                old_value="0.0",
                new_value=str(k / 10),
                result="accepted" if k % 2 == 0 else "refused (422)",
            )
        )
    return chain


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


def _verify_cli(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", "verify", str(path)])
    return result.exit_code, result.output


def test_an_intact_chain_verifies_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    chain = _chain(path)
    assert verify_audit_file(path) == []
    assert _verify_cli(path) == (0, f"{path}: OK\n")
    entries = chain.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == "" and entries[1].prev_hash == entries[0].hash
    assert entries[3].run == RUN and entries[3].result == "refused (422)"
    assert chain.head == f"5:{entries[-1].hash}"
    again = AuditChain(path)  # resumes the chain
    again.append(AuditRecord(1.0, "bo", "why", "mode AUTO -> HOLD", True))
    assert verify_audit_file(path) == [] and again.head.startswith("6:")


def test_one_changed_byte_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _chain(path)
    raw = bytearray(path.read_bytes())
    third = raw.index(b'"seq":3')
    at = raw.index(b"reason 2", max(0, third - 400))  # the reason text of entry 3
    raw[at + 7] = ord("9")
    path.write_bytes(bytes(raw))
    problems = verify_audit_file(path)
    assert [(p.kind, p.seq, p.line) for p in problems] == [("modified", 3, 3)]
    code, out = _verify_cli(path)
    assert code == 1 and "modified: entry seq 3 (line 3)" in out


def test_a_rehashed_change_breaks_the_next_link(tmp_path: Path) -> None:
    from services.api.audit import entry_hash

    path = tmp_path / "audit.jsonl"
    _chain(path)
    lines = _lines(path)
    entry = json.loads(lines[1])
    entry["new_value"] = "0.9"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(lines), encoding="utf-8")
    problems = verify_audit_file(path)
    assert [(p.kind, p.seq, p.line) for p in problems] == [("modified", 2, 2)]
    assert "entry seq 3 (line 3) links to another hash" in problems[0].detail


def test_a_deleted_entry_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _chain(path)
    lines = _lines(path)
    del lines[2]
    path.write_text("".join(lines), encoding="utf-8")
    problems = verify_audit_file(path)
    assert [(p.kind, p.seq) for p in problems] == [("deleted", 3)]
    code, out = _verify_cli(path)
    assert code == 1 and "deleted: entry seq 3" in out and "after entry seq 2" in out


def test_a_deleted_last_entry_shows_against_the_recorded_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    head = _chain(path).head
    path.write_text("".join(_lines(path)[:-1]), encoding="utf-8")
    assert verify_audit_file(path) == []  # without a key or head the tail cannot be known
    problems = verify_audit_file(path, head=head)
    assert [(p.kind, p.seq) for p in problems] == [("deleted", 5)]
    result = CliRunner().invoke(app, ["audit", "verify", str(path), "--head", head])
    assert result.exit_code == 1 and "deleted: entry seq 5" in result.output


def test_two_reordered_entries_are_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _chain(path)
    lines = _lines(path)
    lines[1], lines[2] = lines[2], lines[1]
    path.write_text("".join(lines), encoding="utf-8")
    problems = verify_audit_file(path)
    assert [(p.kind, p.seq, p.line) for p in problems] == [("reordered", 2, 3)]
    assert "after entry seq 3 (line 2)" in problems[0].detail
    code, out = _verify_cli(path)
    assert code == 1 and "reordered: entry seq 2 (line 3)" in out


@pytest.mark.parametrize("how", ["copy", "forged", "bare"])
def test_an_inserted_entry_is_named(tmp_path: Path, how: str) -> None:
    from services.api.audit import entry_hash

    path = tmp_path / "audit.jsonl"
    _chain(path)
    lines = _lines(path)
    if how == "copy":  # a genuine entry repeated elsewhere
        extra = lines[0]
    elif how == "forged":  # a well-formed entry claiming seq 3, linked to entry 2
        entry = json.loads(lines[2])
        entry.update(who="mallory", why="cover-up")
        entry["hash"] = entry_hash(entry)
        extra = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
    else:  # a line without chain fields
        extra = json.dumps({"who": "mallory", "action": "mode AUTO -> MANUAL"}) + "\n"
    lines.insert(3, extra)
    path.write_text("".join(lines), encoding="utf-8")
    problems = verify_audit_file(path)
    assert ("inserted", 4) in [(p.kind, p.line) for p in problems]
    code, out = _verify_cli(path)
    assert code == 1 and "inserted:" in out and "(line 4)" in out


def test_a_chain_that_does_not_verify_is_not_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _chain(path)
    path.write_text("".join(_lines(path)[1:]), encoding="utf-8")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="does not verify: deleted: entry seq 1"):
        AuditChain(path)
    assert path.read_bytes() == before


def test_an_unreadable_file_is_one_error_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["audit", "verify", str(tmp_path / "missing.jsonl")])
    assert result.exit_code == 2
