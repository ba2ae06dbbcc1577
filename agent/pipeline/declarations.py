"""Declarations: the technician's and operator's word that a point (a detector out for
calibration) or an interlock (a bypass under a permit) is stopped on purpose, and when it was
restored.

They live in their own small SQLite file beside the store (`declarations.db`), written by
`hazgate declare` whether or not the agent runs, and read by the agent, which turns each new
one into a `declaration` event (agent/pipeline/checks/) and marks it announced. The file keeps a
rollback journal, not a WAL, and is handed to the data directory's owner when root writes it,
so the service's user can always write it too.

Announcing is at least once: a crash between storing the event and marking the row announced
announces it again on the next start, under the same event id.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "declarations.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS declarations(
    id INTEGER PRIMARY KEY,
    subject TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('stop', 'restore')),
    reason TEXT NOT NULL DEFAULT '',
    by TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    until_ms INTEGER,
    note TEXT NOT NULL DEFAULT '',
    announced INTEGER NOT NULL DEFAULT 0
);
"""


class DeclarationError(ValueError):
    """A declaration that cannot be made (already stopped, not stopped)."""


@dataclass(frozen=True)
class Declaration:
    """One row: a stop, or the restore that ends one (`since_ms` is then the stop's time)."""

    id: int
    subject: str
    action: str  # stop | restore
    reason: str
    by: str
    at_ms: int
    until_ms: int | None
    note: str
    since_ms: int  # when the stop began
    announced: bool

    @property
    def state(self) -> str:
        return "stopped" if self.action == "stop" else "restored"


def in_force(rows: list[Declaration]) -> dict[str, Declaration]:
    """subject -> its stop, for every subject the rows leave stopped."""
    now: dict[str, Declaration] = {}
    for d in rows:
        if d.action == "stop":
            now[d.subject] = d
        else:
            now.pop(d.subject, None)
    return now


class Ledger:
    """The declarations file of one data directory. Short transactions; safe beside the agent."""

    def __init__(self, data_dir: Path, create: bool = True):
        self.path = data_dir / DB_NAME
        if not create and not self.path.exists():
            self.db: sqlite3.Connection | None = None
            return
        data_dir.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        self.db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=DELETE")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        if new and os.geteuid() == 0:  # root made it: the service's user must write it too
            st = data_dir.stat()
            os.chown(self.path, st.st_uid, st.st_gid)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()

    def changed_at(self) -> int:
        """A figure that changes whenever the file does (cheap: one stat)."""
        try:
            st = self.path.stat()
        except OSError:
            return 0
        return st.st_mtime_ns ^ st.st_size

    def rows(self) -> list[Declaration]:
        """Every declaration, oldest first, each restore with the time of the stop it ends."""
        if self.db is None:
            return []
        out: list[Declaration] = []
        since: dict[str, int] = {}
        for rid, subject, action, reason, by, at_ms, until_ms, note, announced in self.db.execute(
                "SELECT id, subject, action, reason, by, at_ms, until_ms, note, announced "
                "FROM declarations ORDER BY id"):
            if action == "stop":
                since[subject] = at_ms
            start = since.pop(subject, at_ms) if action == "restore" else at_ms
            out.append(Declaration(rid, subject, action, reason, by, at_ms, until_ms, note, start, bool(announced)))
        return out

    def active(self) -> dict[str, Declaration]:
        """subject -> its stop, for every subject stopped now."""
        return in_force(self.rows())

    def stop(self, subject: str, reason: str, by: str, at_ms: int, until_ms: int | None) -> Declaration:
        assert self.db is not None
        with self._tx():
            current = self.active().get(subject)
            if current is not None:
                raise DeclarationError(f"{subject} is already declared stopped since its declaration "
                                       f"#{current.id} by {current.by}; restore it first")
            cur = self.db.execute("INSERT INTO declarations(subject, action, reason, by, at_ms, until_ms) "
                                  "VALUES (?, 'stop', ?, ?, ?, ?)", (subject, reason, by, at_ms, until_ms))
        return self._row(cur.lastrowid)

    def restore(self, subject: str, by: str, note: str, at_ms: int) -> Declaration:
        assert self.db is not None
        with self._tx():
            if subject not in self.active():
                raise DeclarationError(f"{subject} is not declared stopped; `hazgate declare list` shows "
                                       "what is")
            cur = self.db.execute("INSERT INTO declarations(subject, action, by, at_ms, note) "
                                  "VALUES (?, 'restore', ?, ?, ?)", (subject, by, at_ms, note))
        return self._row(cur.lastrowid)

    def mark_announced(self, ids: list[int]) -> None:
        if self.db is not None and ids:
            with self._tx():
                self.db.executemany("UPDATE declarations SET announced = 1 WHERE id = ?", [(i,) for i in ids])

    def _row(self, rid: int | None) -> Declaration:
        return next(d for d in self.rows() if d.id == rid)

    def _tx(self) -> _Tx:
        assert self.db is not None
        return _Tx(self.db)


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): two writers never interleave."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
