"""The tamper-evident audit file: JSON lines, each entry chained to the one before by SHA-256.

Every write attempt on the live API (accepted or refused) becomes one
:class:`bpcontrol.records.AuditRecord`, and :class:`AuditChain` appends it as one line of
canonical JSON (sorted keys, no spaces, UTF-8) with three chain fields:

- ``seq``: 1, 2, 3, ... in the order written;
- ``prev_hash``: the ``hash`` of the entry before ("" for the first);
- ``hash``: SHA-256 (hex) of ``prev_hash`` followed by the canonical JSON of the entry
  without its ``hash`` field.

So changing a byte of an entry breaks its own hash, and deleting, inserting or reordering
entries breaks the ``seq`` numbering and the ``prev_hash`` links; :func:`verify_audit_file`
finds each and names the entry (``bpcontrol audit verify FILE``). A chain without a secret
key shows tampering by anyone who does not rewrite every later entry; a deleted last entry
shows only against a recorded head (``--head``, the last ``seq:hash`` the service logged)
or against the historian, which keeps every audit record too: :func:`cross_check_historian`
(``--historian records.sqlite``) names each operator audit record of the historian that is
missing from the file (the last one included) and each file entry of the historian's run
that the historian does not hold. The file is only ever appended to (opened in append
mode, flushed and fsynced per entry).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from bpcontrol.records import AuditRecord, RunIdentity

__all__ = [
    "AuditChain",
    "AuditProblem",
    "audit_entry",
    "canonical_json",
    "cross_check_historian",
    "entry_hash",
    "record_from_entry",
    "verify_audit_file",
]

_CHAIN_FIELDS = ("seq", "prev_hash", "hash")


def _plain(value: object) -> object:
    """``value`` as JSON-ready data (a non-finite float as its text, a run as a table)."""
    if isinstance(value, RunIdentity):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def audit_entry(record: AuditRecord) -> dict[str, Any]:
    """The JSON object of one audit record (every field, the run identity as a table)."""
    return {f.name: _plain(getattr(record, f.name)) for f in fields(record)}


def canonical_json(entry: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, non-ASCII kept: the same bytes for the same entry."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of ``prev_hash`` + the canonical JSON of ``entry`` without ``hash``."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = str(entry.get("prev_hash", "")) + canonical_json(body)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def record_from_entry(entry: Mapping[str, Any]) -> AuditRecord:
    """The :class:`AuditRecord` of one parsed entry (raises ValueError/TypeError if it is not
    one)."""
    values = dict(entry)
    run = values.pop("run", None)
    known = {f.name for f in fields(AuditRecord)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown fields {unknown}")
    values["t_h"] = float(values["t_h"])
    return AuditRecord(**values, run=None if run is None else RunIdentity(**run))


class AuditChain:
    """Append-only writer of the audit file (thread-safe; resumes the chain of an existing
    file, refusing one that does not verify).

    Args:
        path: the JSON-lines file (created with its folder when missing).

    Raises:
        ValueError: the existing file fails :func:`verify_audit_file` (names the entry).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seq = 0
        self._head = ""
        if self.path.exists() and self.path.stat().st_size > 0:
            problems = verify_audit_file(self.path)
            if problems:
                raise ValueError(f"{self.path}: audit file does not verify: {problems[0]}")
            last = _last_entry(self.path)
            self._seq, self._head = int(last["seq"]), str(last["hash"])
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def head(self) -> str:
        """``seq:hash`` of the last entry ("0:" when empty): record it to detect truncation."""
        with self._lock:
            return f"{self._seq}:{self._head}"

    def append(self, record: AuditRecord) -> AuditRecord:
        """Chain ``record`` (its ``seq``, ``prev_hash`` and ``hash`` are set) and append it
        as one line, flushed to disk; return the chained record."""
        with self._lock:
            chained = replace(record, seq=self._seq + 1, prev_hash=self._head, hash="")
            entry = audit_entry(chained)
            entry["hash"] = digest = entry_hash(entry)
            line = canonical_json(entry) + "\n"
            with self.path.open("a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
            self._seq, self._head = chained.seq, digest
            return replace(chained, hash=digest)

    def entries(self) -> list[AuditRecord]:
        """Every entry of the file, in order (for the API's audit read-back)."""
        with self._lock:
            if not self.path.exists():
                return []
            return [record_from_entry(e) for _, e, _ in _lines(self.path) if e is not None]


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, parsed object or None, why not parsed) for every non-empty line."""
    with path.open("r", encoding="utf-8", errors="surrogateescape") as lines:
        for number, raw in enumerate(lines, start=1):
            text = raw.rstrip("\n")
            if not text:
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, None, f"not JSON ({exc.msg})"
                continue
            if not isinstance(obj, dict):
                yield number, None, "not a JSON object"
                continue
            yield number, obj, ""


def _last_entry(path: Path) -> dict[str, Any]:
    last: dict[str, Any] = {}
    for _, entry, _ in _lines(path):
        if entry is not None:
            last = entry
    return last


@dataclass(frozen=True)
class AuditProblem:
    """One finding of :func:`verify_audit_file`: its kind, the line and entry it names."""

    kind: str  # "modified", "inserted", "deleted", "reordered", "truncated"
    line: int  # line number in the file (0 when the entry is missing)
    seq: int | None  # the entry's seq (the missing one for "deleted")
    detail: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "no line"
        entry = f"entry seq {self.seq}" if self.seq is not None else "an entry"
        return f"{self.kind}: {entry} ({where}): {self.detail}"


@dataclass
class _Line:
    line: int
    seq: int
    entry: dict[str, Any]


def verify_audit_file(path: str | Path, *, head: str | None = None) -> list[AuditProblem]:
    """Check the chain of an audit file; return every problem found (empty: intact).

    ``head`` (``"seq:hash"``, from :attr:`AuditChain.head`) also checks that the file ends
    at that entry (a deleted last entry shows only so).

    Raises:
        FileNotFoundError: no file at ``path``.
    """
    path = Path(path)
    problems: list[AuditProblem] = []
    chained: list[_Line] = []
    for number, entry, why in _lines(path):
        if entry is None:
            problems.append(AuditProblem("modified", number, None, why))
            continue
        seq = entry.get("seq")
        if (
            isinstance(seq, bool)
            or not isinstance(seq, int)
            or not all(isinstance(entry.get(k), str) for k in ("prev_hash", "hash"))
        ):
            problems.append(AuditProblem("inserted", number, None, "no chain fields"))
            continue
        if entry_hash(entry) != entry["hash"]:
            problems.append(
                AuditProblem("modified", number, seq, "its content does not match its hash")
            )
        else:
            try:
                record_from_entry(entry)
            except (TypeError, ValueError, KeyError) as exc:
                detail = f"not an audit record ({type(exc).__name__}: {exc})"
                problems.append(AuditProblem("modified", number, seq, detail))
        chained.append(_Line(number, seq, entry))
    genuine = _drop_inserted(chained, problems)
    _check_order(genuine, problems)
    _check_links(genuine, problems)
    if head is not None:
        _check_head(genuine, head, problems)
    problems.sort(key=lambda p: (p.line or 10**12, p.kind))
    return problems


def _drop_inserted(chained: list[_Line], problems: list[AuditProblem]) -> list[_Line]:
    """The entries left after naming those whose seq another entry holds and that no later
    entry links to (inserted), in file order."""
    by_seq: dict[int, list[_Line]] = {}
    for item in chained:
        by_seq.setdefault(item.seq, []).append(item)
    referenced = {str(item.entry["prev_hash"]) for item in chained}
    inserted: set[int] = set()
    last_seq = max(by_seq, default=0)
    for seq, items in by_seq.items():
        if len(items) < 2:
            continue
        linked = [i for i in items if i.entry["hash"] in referenced or seq == last_seq]
        keep = linked[0] if linked else items[0]
        for item in items:
            if item is not keep:
                inserted.add(item.line)
                detail = f"seq {seq} is also held by line {keep.line}, the one the chain links"
                problems.append(AuditProblem("inserted", item.line, seq, detail))
    return [item for item in chained if item.line not in inserted]


def _check_order(genuine: list[_Line], problems: list[AuditProblem]) -> None:
    """Name entries out of order and the seq numbers missing from 1..max."""
    for before, after in itertools.pairwise(genuine):
        if after.seq < before.seq:
            detail = f"comes after entry seq {before.seq} (line {before.line})"
            problems.append(AuditProblem("reordered", after.line, after.seq, detail))
    present = {item.seq for item in genuine}
    lines = sorted(genuine, key=lambda i: i.seq)
    for seq in range(1, max(present, default=0) + 1):
        if seq not in present:
            prev = max((i for i in lines if i.seq < seq), key=lambda i: i.seq, default=None)
            where = f"after entry seq {prev.seq} (line {prev.line})" if prev else "at the start"
            problems.append(AuditProblem("deleted", 0, seq, f"missing {where}"))


def _check_links(genuine: list[_Line], problems: list[AuditProblem]) -> None:
    """Name entries whose ``prev_hash`` is not the hash of the entry numbered before them
    (when no other finding already explains it)."""
    by_seq = {item.seq: item for item in genuine}
    named = {(p.line, p.seq) for p in problems}
    for item in genuine:
        before = by_seq.get(item.seq - 1)
        expected = "" if item.seq == 1 else (None if before is None else before.entry["hash"])
        if expected is None or item.entry["prev_hash"] == expected:
            continue
        if (item.line, item.seq) in named:
            continue
        if before is not None and (before.line, before.seq) in named:
            continue
        if before is None:
            detail = "its prev_hash should be empty (the first entry)"
            problems.append(AuditProblem("modified", item.line, item.seq, detail))
            continue
        detail = (
            f"changed and rehashed: entry seq {item.seq} (line {item.line}) links to another hash"
        )
        problems.append(AuditProblem("modified", before.line, before.seq, detail))


def _check_head(genuine: list[_Line], head: str, problems: list[AuditProblem]) -> None:
    seq_text, _, digest = head.partition(":")
    try:
        seq = int(seq_text)
    except ValueError:
        problems.append(AuditProblem("truncated", 0, None, f"--head {head!r} is not SEQ:HASH"))
        return
    match = [i for i in genuine if i.seq == seq]
    if not match or match[0].entry["hash"] != digest:
        last = max((i.seq for i in genuine), default=0)
        detail = f"the recorded head is entry seq {seq}; the file ends at seq {last}"
        problems.append(AuditProblem("deleted" if seq > last else "modified", 0, seq, detail))


SUPERVISOR_WHO = "supervisor"
"""``who`` of the supervisor's own decisions (auto-resume): in the historian, never in the
file (the file holds the API's write attempts)."""

_Key = tuple[str, str, float, str, str, str, bool, str]


def _key(record: AuditRecord) -> _Key:
    """What identifies one write attempt in both the file and a historian: its run, process
    time and the loop's fields (the file adds wall time, old/new value, result and the
    chain; the loop's own historian record has none of them)."""
    run = record.run
    return (
        run.run_id if run else "",
        run.reactor if run else "",
        float(record.t_h),
        record.who,
        record.why,
        record.action,
        bool(record.accepted),
        record.reason,
    )


def _describe(record: AuditRecord) -> str:
    verdict = "accepted" if record.accepted else f"refused: {record.reason}"
    where = f"reactor {record.run.reactor}, " if record.run else ""
    return (
        f"{where}t {record.t_h:.4f} h, {record.who}: {record.action!r} ({verdict}), "
        f"why {record.why!r}"
    )


def cross_check_historian(path: str | Path, historians: Iterable[str | Path]) -> list[AuditProblem]:
    """Compare the audit file with the audit records the historians keep; return every
    entry one has and the other lacks (empty: they agree).

    Each historian (an embedded historian file, a reactor's ``records.sqlite``) holds an
    audit record of every write attempt on its reactor: the loop's own for the commands it
    carried out, the API's chained copy for those it refused itself. A record is matched
    to a file entry by run, process time, who, why, action, verdict and reason (so the
    loop's record, which has no wall time or chain, matches its file entry). Findings:

    - ``deleted``: a historian record with no file entry (the supervisor's own decisions,
      ``who="supervisor"``, are not API writes and are skipped), named by its content and
      the file entry it follows (``seq`` too when the historian kept the chain's);
    - ``inserted``: a file entry of a run one of the historians holds, which that historian
      does not have.

    Raises:
        FileNotFoundError: no audit file or no historian file at a path.
        services.historian.HistorianError: a file that is not a historian file.
    """
    from services.historian import read_records

    path = Path(path)
    entries: list[tuple[int, AuditRecord]] = []
    for number, entry, _ in _lines(path):
        if entry is None:
            continue
        try:
            entries.append((number, record_from_entry(entry)))
        except (TypeError, ValueError, KeyError):
            continue  # verify_audit_file names it
    in_file = Counter(_key(r) for _, r in entries)
    seq_of: dict[_Key, int] = {}
    for _, r in entries:
        seq_of.setdefault(_key(r), r.seq)
    problems: list[AuditProblem] = []
    runs: set[str] = set()
    in_historians: Counter[_Key] = Counter()
    for historian in historians:
        historian = Path(historian)
        if not historian.is_file():
            raise FileNotFoundError(f"{historian}: no historian file")
        records = read_records(historian, ["audit", "event"])
        runs |= {r.run.run_id for r in records if r.run is not None}
        left = Counter(in_file)
        after = "at the start"
        for record in records:
            if not isinstance(record, AuditRecord) or record.who == SUPERVISOR_WHO:
                continue
            key = _key(record)
            in_historians[key] += 1
            if left[key] > 0:
                left[key] -= 1
                after = f"after entry seq {seq_of[key]}"
                continue
            seq = record.seq or None
            detail = f"{historian} holds {_describe(record)}; the file has no such entry ({after})"
            problems.append(AuditProblem("deleted", 0, seq, detail))
    for number, record in entries:
        key = _key(record)
        if not key[0] or key[0] not in runs:
            continue  # a write on no reactor, or on a run whose historian was not given
        if in_historians[key] > 0:
            in_historians[key] -= 1
            continue
        detail = f"not in the historian of its run: {_describe(record)}"
        problems.append(AuditProblem("inserted", number, record.seq, detail))
    return problems
