"""The store-and-forward buffer: line-protocol chunks kept in a SQLite file until acknowledged.

One file (WAL journal, ``synchronous=NORMAL``: a committed chunk survives a crash of the
process), two tables:

- ``pending`` (``id`` INTEGER PRIMARY KEY AUTOINCREMENT, ``points``, ``nbytes``,
  ``body``: one *chunk*, the lines of many records joined by newlines as they are sent,
  UTF-8 (a BLOB; files written before were TEXT, read the same); ``lengths``: NULL, or a
  JSON list of the line lengths in characters when a string field holds a line break, so
  that the lines can be told apart again): what was accepted and not yet acknowledged by
  the server, in the order it was written. One row per chunk, not per record or line: a
  commit of a few thousand lines is one ``INSERT`` (see ``docs/historian.md``). Ids are
  never reused, so ``ORDER BY id`` is the write order even across restarts, and an
  acknowledged prefix of it is removed with one ``DELETE ... WHERE id <= ?``;
- ``dead_letter`` (``id``, ``t_utc``, ``status``, ``reason``, ``points``, ``lines``): lines
  the server refused with a 4xx, set aside so that they do not block the rest; an operator
  can look at them (``sqlite3 buffer.sqlite 'select * from dead_letter'``) and re-send.

Each thread opens its own :class:`ForwardBuffer` on the file (the historian's buffer
thread appends, its forwarder reads, acknowledges and sets aside); WAL lets them work at
once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

__all__ = ["Batch", "ForwardBuffer", "ForwardBufferError"]

_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS pending (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "points INTEGER NOT NULL, nbytes INTEGER NOT NULL, body TEXT NOT NULL, lengths TEXT)",
    "CREATE TABLE IF NOT EXISTS dead_letter (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "t_utc TEXT NOT NULL, status INTEGER NOT NULL, reason TEXT NOT NULL, "
    "points INTEGER NOT NULL, lines TEXT NOT NULL)",
)


_PAGE_SIZE: Final = 65536
"""Page size (bytes) of a new buffer file (SQLite's largest)."""


class ForwardBufferError(RuntimeError):
    """The buffer file cannot be opened or is not a buffer file."""


@dataclass(frozen=True, slots=True)
class Batch:
    """One buffered chunk: its id, points (lines), size in bytes and body (UTF-8 lines
    joined by newlines, exactly the bytes sent to ``/write``)."""

    id: int
    points: int
    nbytes: int
    body: bytes
    lengths: str | None = None

    def lines(self) -> list[str]:
        """The chunk's lines again (a line break inside a string field kept)."""
        text = self.body.decode("utf-8")
        if self.lengths is None:
            return text.split("\n")
        out, at = [], 0
        for n in json.loads(self.lengths):
            out.append(text[at : at + n])
            at += n + 1
        return out


def _batch(row_id: int, points: int, nbytes: int, body: bytes | str, lengths: str | None) -> Batch:
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    return Batch(int(row_id), int(points), int(nbytes), data, lengths)


class ForwardBuffer:
    """One connection to the buffer file ``path`` (created with its tables when missing)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            if self._conn.execute("PRAGMA page_count").fetchone()[0] == 0:
                # a new file: 64 KiB pages (a chunk of 1 MB spans 16 overflow pages, not
                # 256: a third of the CPU to insert and to delete it); set before WAL
                self._conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
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

    def append(self, lines: Sequence[str]) -> Batch:
        """Commit ``lines`` as one chunk (one ``INSERT``, its own transaction); the chunk."""
        body = "\n".join(lines).encode("utf-8")
        lengths = None
        if body.count(b"\n") != len(lines) - 1:  # a string field with a line break
            lengths = json.dumps([len(line) for line in lines])
        cur = self._conn.execute(
            "INSERT INTO pending (points, nbytes, body, lengths) VALUES (?, ?, ?, ?)",
            (len(lines), len(body), body, lengths),
        )
        row_id = cur.lastrowid
        assert row_id is not None
        return Batch(row_id, len(lines), len(body), body, lengths)

    def after(self, last_id: int, max_points: int) -> list[Batch]:
        """The oldest chunks with an id above ``last_id``, together up to ``max_points``
        lines (at least one chunk when there is one)."""
        out: list[Batch] = []
        total = 0
        cur = self._conn.execute(
            "SELECT id, points, nbytes, body, lengths FROM pending WHERE id > ? ORDER BY id",
            (last_id,),
        )
        try:
            for row in cur:
                if out and total + row[1] > max_points:
                    break
                out.append(_batch(*row))
                total += row[1]
        finally:
            cur.close()
        return out

    def oldest(self, max_points: int) -> list[Batch]:
        """The oldest chunks, together up to ``max_points`` lines (at least one)."""
        return self.after(-1, max_points)

    def acknowledge(
        self, upto_id: int, refused: Sequence[tuple[Sequence[str], int, str]] = ()
    ) -> None:
        """Delete every chunk up to id ``upto_id`` (acknowledged by the server, or set
        aside) and keep the ``refused`` lines (lines, HTTP status, the server's reason) in
        ``dead_letter``, in one transaction."""
        if not refused:
            self._conn.execute("DELETE FROM pending WHERE id <= ?", (upto_id,))
            return
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for lines, status, reason in refused:
                self.set_aside(lines, status, reason)
            self._conn.execute("DELETE FROM pending WHERE id <= ?", (upto_id,))
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
