"""The durable work queue of the node, in SQLite: one row per received series and its state, so that a restart (or
a kill -9) resumes every unfinished series and keeps failures for ``serve retry``."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    folder TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,               -- receiving, ready, working, sending, uploading, done, failed
    instances INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    result_dir TEXT NOT NULL DEFAULT '',
    finished REAL
);
"""
#: Work that is not finished: what a restart picks up.
OPEN_STATES = ("receiving", "ready", "working", "sending", "uploading")


class SeriesQueue:
    """All state changes go through here, each in one transaction; safe to call from the receiver's threads and
    the workers at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed state survives power loss, not only a crash
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, params=()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def record_instance(self, series_uid: str, study_uid: str, folder: Path, calling_ae: str, now: float | None = None) -> None:
        """One instance is safely in the spool. A series already finished that gets more instances is received
        again from the start (a PACS re-sending it), and will be worked again."""
        now = time.time() if now is None else now
        self._write(
            """INSERT INTO series (series_uid, study_uid, folder, calling_ae, state, instances, first_received, last_received)
               VALUES (?, ?, ?, ?, 'receiving', 1, ?, ?)
               ON CONFLICT(series_uid) DO UPDATE SET
                 instances = instances + 1, last_received = excluded.last_received,
                 state = CASE WHEN state IN ('done', 'failed', 'ready') THEN 'receiving' ELSE state END,
                 attempts = CASE WHEN state IN ('done', 'failed') THEN 0 ELSE attempts END,
                 error = CASE WHEN state IN ('done', 'failed') THEN '' ELSE error END""",
            (series_uid, study_uid, str(folder), calling_ae, now, now))

    def complete(self, series_uids, now: float | None = None) -> list[str]:
        """The sender released its association: these series are complete."""
        done = []
        for uid in series_uids:
            if self._write("UPDATE series SET state='ready', next_try=0 WHERE series_uid=? AND state='receiving'", (uid,)).rowcount:
                done.append(uid)
        return done

    def promote_quiet(self, quiet_seconds: float, now: float | None = None) -> list[str]:
        """Series that received nothing for ``quiet_seconds`` are complete."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("SELECT series_uid FROM series WHERE state='receiving' AND last_received <= ?",
                                    (now - quiet_seconds,)).fetchall()
            for row in rows:
                self._db.execute("UPDATE series SET state='ready', next_try=0 WHERE series_uid=? AND state='receiving'", (row[0],))
        return [r[0] for r in rows]

    def claim(self, now: float | None = None) -> sqlite3.Row | None:
        """The oldest series due for work (synthesis, or sending a result already made), now marked as taken."""
        now = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    """SELECT * FROM series WHERE state IN ('ready', 'sending') AND next_try <= ?
                       ORDER BY last_received LIMIT 1""", (now,)).fetchone()
                if row is not None:
                    taken = "working" if row["state"] == "ready" else "uploading"
                    self._db.execute("UPDATE series SET state=? WHERE series_uid=?", (taken, row["series_uid"]))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return row

    def synthesized(self, series_uid: str, result_dir: Path) -> None:
        self._write("UPDATE series SET state='sending', result_dir=?, next_try=0 WHERE series_uid=?", (str(result_dir), series_uid))

    def done(self, series_uid: str, now: float | None = None) -> None:
        self._write("UPDATE series SET state='done', error='', finished=? WHERE series_uid=?", (time.time() if now is None else now, series_uid))

    def failed(self, series_uid: str, error: str, retry: bool, max_attempts: int, backoff_seconds: float,
               now: float | None = None) -> str:
        """Record a failure; a retryable one goes back to its queue after an exponential backoff until
        ``max_attempts``. Returns the new state."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("SELECT attempts, result_dir FROM series WHERE series_uid=?", (series_uid,)).fetchone()
            attempts = row["attempts"] + 1
            if retry and attempts < max_attempts:
                state, next_try = ("sending" if row["result_dir"] else "ready"), now + backoff_seconds * 2 ** (attempts - 1)
            else:
                state, next_try = "failed", 0
            self._db.execute("UPDATE series SET state=?, attempts=?, next_try=?, error=? WHERE series_uid=?",
                             (state, attempts, next_try, error, series_uid))
        return state

    def put_back(self, series_uid: str) -> None:
        """Work interrupted by shutdown: due again at once."""
        self._write("""UPDATE series SET state = CASE WHEN result_dir != '' THEN 'sending' ELSE 'ready' END, next_try=0
                       WHERE series_uid=?""", (series_uid,))

    def recover(self) -> list[str]:
        """After a restart: series being synthesised start again; those being sent are sent again."""
        with self._lock:
            rows = self._db.execute("SELECT series_uid FROM series WHERE state IN ('working', 'uploading')").fetchall()
            self._db.execute("UPDATE series SET state='ready', result_dir='', next_try=0 WHERE state='working'")
            self._db.execute("UPDATE series SET state='sending', next_try=0 WHERE state='uploading'")
        return [r[0] for r in rows]

    def retry_failed(self) -> int:
        return self._write("""UPDATE series SET state = CASE WHEN result_dir != '' THEN 'sending' ELSE 'ready' END,
                              attempts=0, next_try=0 WHERE state='failed'""").rowcount

    def known_folders(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT folder FROM series").fetchall()}

    def rows(self) -> list[sqlite3.Row]:
        return self._db.execute("SELECT * FROM series ORDER BY last_received").fetchall()
