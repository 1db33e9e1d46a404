"""The store-and-forward buffer: line-protocol batches kept in a SQLite file until acknowledged.

One file (WAL journal, ``synchronous=NORMAL``: a committed batch survives a crash of the
process), two tables:

- ``pending`` (``id`` INTEGER PRIMARY KEY AUTOINCREMENT, ``points``, ``nbytes``,
  ``body``: the lines joined by newlines, as they are sent; ``lengths``: NULL, or a JSON
  list of the line lengths when a string field holds a line break, so that the lines can
  be told apart again): what was accepted and not yet acknowledged by the server, in the
  order it was written (ids are never reused, so ``ORDER BY id`` is the write order even
  across restarts);
- ``dead_letter`` (``id``, ``t_utc``, ``status``, ``reason``, ``points``, ``lines``): lines
  the server refused with a 4xx, set aside so that they do not block the rest; an operator
  can look at them (``sqlite3 buffer.sqlite 'select * from dead_letter'``) and re-send.

Each thread opens its own :class:`ForwardBuffer` on the file (the historian's writer
thread appends, its forwarder reads, removes and sets aside); WAL lets them work at once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

__all__ = ["ForwardBuffer", "ForwardBufferError"]

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "points INTEGER NOT NULL, nbytes INTEGER NOT NULL, body TEXT NOT NULL, lengths TEXT)",
    "CREATE TABLE IF NOT EXISTS dead_letter (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "t_utc TEXT NOT NULL, status INTEGER NOT NULL, reason TEXT NOT NULL, "
    "points INTEGER NOT NULL, lines TEXT NOT NULL)",
)


class ForwardBufferError(RuntimeError):
    """The buffer file cannot be opened or is not a buffer file."""


@dataclass(frozen=True)
class Batch:
    """One buffered batch: its id, points, bytes and body (lines joined by newlines)."""

    id: int
    points: int
    nbytes: int
    body: str
    lengths: str | None = None

    def lines(self) -> list[str]:
        """The batch's lines again (a line break inside a string field kept)."""
        if self.lengths is None:
            return self.body.split("\n")
        out, at = [], 0
        for n in json.loads(self.lengths):
            out.append(self.body[at : at + n])
            at += n + 1
        return out


class ForwardBuffer:
    """One connection to the buffer file ``path`` (created with its tables when missing)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ForwardBufferError(
                    f"{self.path}: could not switch to WAL journal (got {mode!r})"
                )
            self._conn.execute("PRAGMA synchronous=NORMAL")
            for sql in _SCHEMA:
                self._conn.execute(sql)
        except (sqlite3.Error, OSError) as exc:
            raise ForwardBufferError(f"cannot open the buffer file {self.path}: {exc}") from exc

    def append(self, lines: Sequence[str]) -> int:
        """Commit ``lines`` as one batch (one transaction); returns its size in bytes."""
        body = "\n".join(lines)
        lengths = None
        if body.count("\n") != len(lines) - 1:  # a string field with a line break
            lengths = json.dumps([len(line) for line in lines])
        nbytes = len(body.encode("utf-8"))
        self._conn.execute(
            "INSERT INTO pending (points, nbytes, body, lengths) VALUES (?, ?, ?, ?)",
            (len(lines), nbytes, body, lengths),
        )
        return nbytes

    def oldest(self, max_points: int) -> list[Batch]:
        """The oldest batches, together up to ``max_points`` lines (at least one batch)."""
        out: list[Batch] = []
        total = 0
        cur = self._conn.execute(
            "SELECT id, points, nbytes, body, lengths FROM pending ORDER BY id"
        )
        try:
            for row_id, points, size, body, lengths in cur:
                if out and total + points > max_points:
                    break
                out.append(Batch(row_id, points, size, body, lengths))
                total += points
        finally:
            cur.close()
        return out

    def remove(
        self, ids: Sequence[int], refused: Sequence[tuple[Sequence[str], int, str]] = ()
    ) -> None:
        """Delete the acknowledged batches ``ids`` and set aside the ``refused`` lines
        (lines, HTTP status, the server's reason), in one transaction."""
        if not ids and not refused:
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for lines, status, reason in refused:
                self.set_aside(lines, status, reason)
            self._conn.executemany("DELETE FROM pending WHERE id = ?", [(i,) for i in ids])
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def set_aside(self, lines: Sequence[str], status: int, reason: str) -> None:
        """Keep ``lines`` the server refused (``status``, its ``reason``) in ``dead_letter``."""
        self._conn.execute(
            "INSERT INTO dead_letter (t_utc, status, reason, points, lines) VALUES (?, ?, ?, ?, ?)",
            (
                datetime.now(UTC).isoformat(timespec="milliseconds"),
                int(status),
                reason,
                len(lines),
                json.dumps(list(lines), ensure_ascii=False),
            ),
        )

    def totals(self) -> tuple[int, int]:
        """(points, bytes) waiting in ``pending``."""
        row = self._conn.execute(
            "SELECT coalesce(sum(points), 0), coalesce(sum(nbytes), 0) FROM pending"
        ).fetchone()
        return int(row[0]), int(row[1])

    def dead_letters(self) -> list[tuple[int, str, list[str]]]:
        """What was set aside: (status, reason, lines) per refused batch, oldest first."""
        rows = self._conn.execute(
            "SELECT status, reason, lines FROM dead_letter ORDER BY id"
        ).fetchall()
        return [(int(s), str(r), list(json.loads(t))) for s, r, t in rows]

    def close(self) -> None:
        """Close the connection (the data stays in the file)."""
        self._conn.close()
