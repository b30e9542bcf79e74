"""The durable work queue of the node, in SQLite: one row per received series and its state, the SOP instances each
series has acknowledged, and each worker's heartbeat, so that a restart (or a kill -9) resumes every unfinished
series and keeps failures for ``serve retry``.

States: receiving -> ready (released, or quiet) -> working (a worker synthesises) -> uploading (a worker sends) -> done.
A failure goes back to ready or sending (retry after a backoff), or to failed. Instances that arrive while a worker
holds the series (working, uploading) do not disturb it: the series is marked to reopen, and when the worker is done
its result is superseded and the series is received again with every instance. A series is never done with fewer
instances than were acknowledged.
"""

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
CREATE TABLE IF NOT EXISTS instances (
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    PRIMARY KEY (series_uid, sop_uid)
);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    pid INTEGER NOT NULL,
    state TEXT NOT NULL,               -- idle, working, uploading, stopped, dead
    series_uid TEXT NOT NULL DEFAULT '',
    heartbeat REAL NOT NULL,
    error TEXT NOT NULL DEFAULT ''
);
"""
#: Columns added after the first release; a spool made by an older node gains them on open.
ADDED_COLUMNS = {
    # What the series becomes when the worker that holds it finishes: '' (nothing arrived meanwhile), 'receiving'
    # (late instances), or 'ready' (late instances and their association was released).
    "reopen": "TEXT NOT NULL DEFAULT ''",
    # Why the series may be incomplete (an aborted association); failed at its quiet time unless a release clears it.
    "incomplete": "TEXT NOT NULL DEFAULT ''",
    "patient_id": "TEXT NOT NULL DEFAULT ''",
    "accession": "TEXT NOT NULL DEFAULT ''",
    "purged": "REAL",
}
#: Work that is not finished: what a restart picks up.
OPEN_STATES = ("receiving", "ready", "working", "sending", "uploading")
#: A worker holds the series: new instances reopen it afterwards instead of changing it now.
HELD_STATES = ("working", "uploading")


class QueueError(Exception):
    """The queue's database cannot be used (corrupt, full disk): not a problem of one series, so the node stops."""


class SeriesQueue:
    """All state changes go through here, each in one transaction; safe to call from the receiver's threads and
    the workers at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a committed state survives power loss, not only a crash
            self._db.executescript(SCHEMA)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(series)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE series ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as exc:
            raise QueueError(f"{self.path}: the node's queue database cannot be used ({exc}); move it aside to start "
                             "an empty queue (the spooled instances are recovered from the spool folder)") from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _write(self, sql: str, params=()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, params)

    def _transaction(self, body):
        """Run ``body(db)`` in one immediate transaction under the lock; its return value is returned."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return result

    # --- receiving ------------------------------------------------------------------------------------------------

    def record_instance(self, series_uid: str, study_uid: str, folder: Path, calling_ae: str, sop_uid: str,
                        now: float | None = None, patient_id: str = "", accession: str = "") -> None:
        """One instance is safely in the spool. A finished series that gets more instances is received again (a PACS
        re-sending it, or late instances); one a worker holds is marked to reopen when that worker is done."""
        now = time.time() if now is None else now

        def body(db):
            db.execute("INSERT OR IGNORE INTO instances (series_uid, sop_uid) VALUES (?, ?)", (series_uid, sop_uid))
            db.execute(
                """INSERT INTO series (series_uid, study_uid, folder, calling_ae, state, instances, first_received, last_received,
                                       patient_id, accession)
                   VALUES (?, ?, ?, ?, 'receiving', 1, ?, ?, ?, ?)
                   ON CONFLICT(series_uid) DO UPDATE SET
                     last_received = excluded.last_received, purged = NULL,
                     patient_id = CASE WHEN excluded.patient_id != '' THEN excluded.patient_id ELSE patient_id END,
                     accession = CASE WHEN excluded.accession != '' THEN excluded.accession ELSE accession END,
                     reopen = CASE WHEN state IN ('working', 'uploading') THEN 'receiving' ELSE reopen END,
                     result_dir = CASE WHEN state IN ('done', 'failed', 'ready', 'sending') THEN '' ELSE result_dir END,
                     attempts = CASE WHEN state IN ('done', 'failed') THEN 0 ELSE attempts END,
                     error = CASE WHEN state IN ('done', 'failed') THEN '' ELSE error END,
                     state = CASE WHEN state IN ('done', 'failed', 'ready', 'sending') THEN 'receiving' ELSE state END""",
                (series_uid, study_uid, str(folder), calling_ae, now, now, patient_id, accession))
            db.execute("UPDATE series SET instances = (SELECT COUNT(*) FROM instances WHERE series_uid = ?) WHERE series_uid = ?",
                       (series_uid, series_uid))

        self._transaction(body)

    def complete(self, series_uids, now: float | None = None) -> list[str]:
        """The sender released its association: these series are complete (and no longer suspect, if an earlier
        association of theirs was aborted)."""
        done = []
        for uid in series_uids:
            changed = self._write("""UPDATE series SET state='ready', next_try=0, incomplete=''
                                     WHERE series_uid=? AND state='receiving'""", (uid,)).rowcount
            self._write("UPDATE series SET reopen='ready', incomplete='' WHERE series_uid=? AND reopen='receiving'", (uid,))
            if changed:
                done.append(uid)
        return done

    def mark_incomplete(self, series_uids, reason: str) -> None:
        """An association ended without a release: what it sent may be only part of the series."""
        for uid in series_uids:
            self._write("UPDATE series SET incomplete=? WHERE series_uid=?", (reason, uid))
            self._write("UPDATE series SET reopen='receiving' WHERE series_uid=? AND reopen='ready'", (uid,))

    def promote_quiet(self, quiet_seconds: float, now: float | None = None,
                      send_incomplete: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
        """Series that received nothing for ``quiet_seconds`` are complete, or, if an association of theirs was
        aborted and nothing released them since, failed with that reason; with ``send_incomplete`` they are ready
        instead, keeping the reason, so their result is sent marked incomplete. Returns (ready uids, [(uid, reason)])."""
        now = time.time() if now is None else now

        def body(db):
            rows = db.execute("SELECT series_uid, incomplete FROM series WHERE state='receiving' AND last_received <= ?",
                              (now - quiet_seconds,)).fetchall()
            ready, failed = [], []
            for row in rows:
                if row["incomplete"] and not send_incomplete:
                    db.execute("UPDATE series SET state='failed', error=?, next_try=0 WHERE series_uid=?",
                               (f"incomplete: {row['incomplete']}; send the whole series again", row["series_uid"]))
                    failed.append((row["series_uid"], row["incomplete"]))
                else:
                    db.execute("UPDATE series SET state='ready', next_try=0 WHERE series_uid=?", (row["series_uid"],))
                    ready.append(row["series_uid"])
            return ready, failed

        return self._transaction(body)

    def instance_uids(self, series_uid: str) -> set[str]:
        """Every SOP Instance UID acknowledged for the series."""
        return {r[0] for r in self._db.execute("SELECT sop_uid FROM instances WHERE series_uid=?", (series_uid,))}

    # --- working --------------------------------------------------------------------------------------------------

    def claim(self, now: float | None = None) -> sqlite3.Row | None:
        """The oldest series due for work (synthesis, or sending a result already made), now marked as taken. The
        attempt is counted here, before any work, so a crash during the work counts too."""
        now = time.time() if now is None else now

        def body(db):
            row = db.execute("""SELECT * FROM series WHERE state IN ('ready', 'sending') AND next_try <= ?
                                ORDER BY last_received LIMIT 1""", (now,)).fetchone()
            if row is not None:
                taken = "working" if row["state"] == "ready" else "uploading"
                db.execute("UPDATE series SET state=?, attempts=attempts+1, reopen='' WHERE series_uid=?",
                           (taken, row["series_uid"]))
                row = db.execute("SELECT * FROM series WHERE series_uid=?", (row["series_uid"],)).fetchone()
            return row

        return self._transaction(body)

    def _reopened(self, db, series_uid: str) -> bool:
        """If instances arrived while a worker held the series, hand it back to receiving (or ready): the work is
        superseded. True when that happened."""
        row = db.execute("SELECT reopen FROM series WHERE series_uid=?", (series_uid,)).fetchone()
        if row is None or not row["reopen"]:
            return False
        db.execute("""UPDATE series SET state=reopen, reopen='', result_dir='', next_try=0, attempts=0, error=''
                      WHERE series_uid=?""", (series_uid,))
        return True

    def synthesized(self, series_uid: str, result_dir: Path) -> bool:
        """The result is written and the same worker sends it now (state uploading). False: instances arrived during
        the synthesis, the result is superseded and the series is received again."""
        def body(db):
            if self._reopened(db, series_uid):
                return False
            db.execute("UPDATE series SET state='uploading', result_dir=?, next_try=0 WHERE series_uid=?",
                       (str(result_dir), series_uid))
            return True

        return self._transaction(body)

    def done(self, series_uid: str, now: float | None = None) -> bool:
        """The result was sent. False: instances arrived meanwhile, so the series is received again, not done."""
        def body(db):
            if self._reopened(db, series_uid):
                return False
            db.execute("UPDATE series SET state='done', error='', finished=? WHERE series_uid=?",
                       (time.time() if now is None else now, series_uid))
            return True

        return self._transaction(body)

    def failed(self, series_uid: str, error: str, retry: bool, max_attempts: int, backoff_seconds: float,
               now: float | None = None) -> str:
        """Record a failure; a retryable one goes back to its queue after an exponential backoff until
        ``max_attempts`` (counted by ``claim``). Returns the new state ('receiving' or 'ready' when late
        instances reopened the series: the failure was of a series that is no longer the one to make)."""
        now = time.time() if now is None else now

        def body(db):
            if self._reopened(db, series_uid):
                return db.execute("SELECT state FROM series WHERE series_uid=?", (series_uid,)).fetchone()["state"]
            row = db.execute("SELECT attempts, result_dir FROM series WHERE series_uid=?", (series_uid,)).fetchone()
            attempts = max(row["attempts"], 1)
            if retry and attempts < max_attempts:
                state, next_try = ("sending" if row["result_dir"] else "ready"), now + backoff_seconds * 2 ** (attempts - 1)
            else:
                state, next_try = "failed", 0
            db.execute("UPDATE series SET state=?, attempts=?, next_try=?, error=? WHERE series_uid=?",
                       (state, attempts, next_try, error, series_uid))
            return state

        return self._transaction(body)

    def put_back(self, series_uid: str) -> None:
        """Work interrupted by shutdown: due again at once, and the attempt does not count (nothing was wrong)."""
        def body(db):
            if not self._reopened(db, series_uid):
                db.execute("""UPDATE series SET state = CASE WHEN result_dir != '' THEN 'sending' ELSE 'ready' END,
                              next_try=0, attempts=MAX(attempts-1, 0) WHERE series_uid=?""", (series_uid,))

        self._transaction(body)

    def recover(self, max_attempts: int | None = None) -> tuple[list[str], list[str]]:
        """After a restart: series being synthesised start again and those being sent are sent again, unless they
        were already taken ``max_attempts`` times: a series that kills the node (out of memory) must not kill it on
        every restart. Returns (resumed, failed as poison)."""
        def body(db):
            rows = db.execute("SELECT series_uid, state, attempts, reopen FROM series WHERE state IN ('working', 'uploading')").fetchall()
            resumed, poison = [], []
            for row in rows:
                uid = row["series_uid"]
                if row["reopen"]:
                    self._reopened(db, uid)
                    resumed.append(uid)
                elif max_attempts is not None and row["attempts"] >= max_attempts:
                    db.execute("UPDATE series SET state='failed', error=? WHERE series_uid=?",
                               (f"the node stopped while working on this series {row['attempts']} times (killed, out of "
                                "memory or crashed); kept for 'serve retry'", uid))
                    poison.append(uid)
                elif row["state"] == "working":
                    db.execute("UPDATE series SET state='ready', result_dir='', next_try=0 WHERE series_uid=?", (uid,))
                    resumed.append(uid)
                else:
                    db.execute("UPDATE series SET state='sending', next_try=0 WHERE series_uid=?", (uid,))
                    resumed.append(uid)
            db.execute("UPDATE workers SET state='stopped', series_uid='' WHERE state != 'stopped'")
            return resumed, poison

        return self._transaction(body)

    def retry_failed(self) -> int:
        return self._write("""UPDATE series SET state = CASE WHEN result_dir != '' THEN 'sending' ELSE 'ready' END,
                              attempts=0, next_try=0, incomplete='' WHERE state='failed'""").rowcount

    # --- retention and views --------------------------------------------------------------------------------------

    def expired(self, older_than: float) -> list[sqlite3.Row]:
        """Done series, sent before ``older_than`` and not yet purged: what retention may delete."""
        return self._db.execute("""SELECT * FROM series WHERE state='done' AND purged IS NULL AND finished < ?
                                   ORDER BY finished""", (older_than,)).fetchall()

    def purged(self, series_uid: str, now: float | None = None) -> None:
        self._write("UPDATE series SET purged=? WHERE series_uid=? AND state='done'", (time.time() if now is None else now, series_uid))

    def heartbeat(self, name: str, device: str, pid: int, state: str, series_uid: str = "", error: str = "",
                  now: float | None = None) -> None:
        self._write("""INSERT INTO workers (name, device, pid, state, series_uid, heartbeat, error) VALUES (?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(name) DO UPDATE SET device=excluded.device, pid=excluded.pid, state=excluded.state,
                         series_uid=excluded.series_uid, heartbeat=excluded.heartbeat, error=excluded.error""",
                    (name, device, pid, state, series_uid, time.time() if now is None else now, error))

    def workers(self) -> list[sqlite3.Row]:
        return self._db.execute("SELECT * FROM workers ORDER BY name").fetchall()

    def known_folders(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT folder FROM series").fetchall()}

    def rows(self) -> list[sqlite3.Row]:
        return self._db.execute("SELECT * FROM series ORDER BY last_received").fetchall()
