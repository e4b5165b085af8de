"""The node's memory: an embedded SQLite index of what was received, analysed and sent.

Tables: ``studies``, ``series``, ``instances`` (every received instance, its spool path and a
SHA-256 of its bytes), ``jobs`` (one analysis of one series at one input hash) and ``outbox``
(one result file × one destination, with its delivery attempts).

Why SQLite: a PACS administrator gets one file to back up and inspect, transactions make "the
instance is on disk *and* recorded" one step that survives a crash, and nothing needs a server.
The database runs in WAL mode with ``synchronous=FULL`` (a commit is on disk before the SCP answers
Success) and a busy timeout, so ``bodycomp status`` in another process can read while the node
writes. Only the node's processes write (the node and, with ``receivers`` > 1, its receiving
processes, one machine; workers hand their outcomes back through files in the results folder,
see :mod:`node.schedule.results`), so SQLite is never shared over a network file system.

Idempotence lives here: a re-sent identical instance (same SOP Instance UID, same bytes) changes
nothing, not even the study's stable timer, so it cannot change an input hash, start an analysis
or hold one back; a job is unique per (study, series, input hash); an outbox row is unique per (SOP Instance
UID, destination), so a task that runs twice still yields one delivery per result.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from workers.job import JobState, StudyState

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    patient_id TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    changed INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL DEFAULT 'received',
    reason TEXT NOT NULL DEFAULT '',
    input_hash TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    series_number TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (study_uid, series_uid)
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received REAL NOT NULL,
    patient_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(study_uid, series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    result_dir TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    enqueued REAL,
    started REAL,
    finished REAL,
    UNIQUE (study_uid, series_uid, input_hash)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    created REAL NOT NULL,
    delivered REAL,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (sop_uid, destination)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_try);
CREATE TABLE IF NOT EXISTS patient_observations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id TEXT NOT NULL,
    accession TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL,
    value REAL NOT NULL,
    observed REAL NOT NULL,
    received REAL NOT NULL,
    source TEXT NOT NULL,
    control_id TEXT NOT NULL DEFAULT '',
    UNIQUE (source, control_id, kind)
);
CREATE INDEX IF NOT EXISTS patient_observations_patient ON patient_observations(patient_id, kind);
CREATE TABLE IF NOT EXISTS hl7_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs(id),
    study_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    control_id TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    created REAL NOT NULL,
    delivered REAL,
    last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (control_id, destination)
);
CREATE INDEX IF NOT EXISTS hl7_outbox_due ON hl7_outbox(state, next_try);
CREATE TABLE IF NOT EXISTS journal_segments (
    name TEXT PRIMARY KEY,
    synced INTEGER NOT NULL
);
"""

#: The tables with a ``state`` column (:meth:`Index.state_counts`).
STATE_TABLES = frozenset({"studies", "jobs", "outbox", "hl7_outbox"})

#: ``PRAGMA user_version`` of the schema above. 1: a series is identified by (study, series) -- a
#: Series Instance UID re-used in another study (buggy modalities and anonymisers do this) is another
#: series -- and each instance keeps its PatientID, so that a series mixing patients is refused.
SCHEMA_VERSION = 1

#: Version 0 -> 1, run once on an index written by an earlier node (foreign keys off meanwhile).
MIGRATE_0_TO_1 = """
CREATE TABLE series_v1 (
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    series_number TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (study_uid, series_uid)
);
INSERT OR IGNORE INTO series_v1 (study_uid, series_uid, modality, series_number, description)
    SELECT DISTINCT i.study_uid, i.series_uid, COALESCE(s.modality, ''), COALESCE(s.series_number, ''),
           COALESCE(s.description, '')
    FROM instances i LEFT JOIN series s ON s.series_uid = i.series_uid;
INSERT OR IGNORE INTO series_v1 (study_uid, series_uid, modality, series_number, description)
    SELECT study_uid, series_uid, modality, series_number, description FROM series;
DROP TABLE series;
ALTER TABLE series_v1 RENAME TO series;
CREATE TABLE instances_v1 (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received REAL NOT NULL,
    patient_id TEXT NOT NULL DEFAULT ''
);
INSERT INTO instances_v1 (sop_uid, series_uid, study_uid, sop_class_uid, path, size, digest, calling_ae,
        received, patient_id)
    SELECT i.sop_uid, i.series_uid, i.study_uid, i.sop_class_uid, i.path, i.size, i.digest, i.calling_ae,
           i.received, COALESCE(st.patient_id, '')
    FROM instances i LEFT JOIN studies st ON st.study_uid = i.study_uid;
DROP TABLE instances;
ALTER TABLE instances_v1 RENAME TO instances;
CREATE INDEX instances_series ON instances(study_uid, series_uid);
CREATE INDEX instances_study ON instances(study_uid);
CREATE TABLE jobs_v1 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    result_dir TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    enqueued REAL,
    started REAL,
    finished REAL,
    UNIQUE (study_uid, series_uid, input_hash)
);
INSERT INTO jobs_v1 SELECT id, study_uid, series_uid, input_hash, state, reason, attempts, result_dir,
        calling_ae, created, enqueued, started, finished FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v1 RENAME TO jobs;
CREATE INDEX jobs_state ON jobs(state);
"""

#: Job states, in the order a job goes through them (``superseded``: a newer input or a correction
#: replaced it); the contract with the workers (:mod:`workers.job`).
JOB_STATES = tuple(str(state) for state in JobState)
#: Study states (:class:`workers.job.StudyState`).
STUDY_STATES = tuple(str(state) for state in StudyState)


class OutboxState(StrEnum):
    """The state of one delivery (a row of ``outbox`` or ``hl7_outbox``). Node-only: the workers
    never see deliveries."""

    PENDING = "pending"
    """Waiting for its next try (``next_try``)."""
    DELIVERED = "delivered"
    DEAD = "dead"
    """Out of attempts: a dead letter, sent again only by ``bodycomp resend``."""
    CANCELLED = "cancelled"
    """A newer analysis of the series replaced the result before it was delivered."""


OUTBOX_STATES = tuple(str(state) for state in OutboxState)


@dataclass(frozen=True)
class InstanceRecord:
    """What the SCP knows about one received instance (UIDs, never patient names)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    path: Path
    size: int
    digest: str
    calling_ae: str
    modality: str = ""
    series_number: str = ""
    description: str = ""
    patient_id: str = ""
    study_date: str = ""


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_file(path: Path, offset: int = 0) -> str:
    """SHA-256 of a file from ``offset`` (the dataset after its File Meta Information)."""
    h = hashlib.sha256()
    with path.open("rb") as handle:
        handle.seek(offset)
        for block in iter(lambda: handle.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


def input_hash(pairs: Iterable[tuple[str, str]]) -> str:
    """Hash of a set of (SOP Instance UID, content digest): order-free, changes with any instance."""
    h = hashlib.sha256()
    for sop, digest in sorted(pairs):
        h.update(f"{sop}:{digest}\n".encode())
    return h.hexdigest()


class Index:
    """The SQLite index; one connection guarded by a lock, shared by the node's threads."""

    def __init__(self, path: Path, receive_journal: bool = False) -> None:
        """``receive_journal``: this connection commits received instances whose durability the
        receive journal already holds (:mod:`node.receive.journal`): ``synchronous=NORMAL`` (a commit
        writes the write-ahead log without flushing it; the journal's syncer flushes it with its
        own ``synchronous=FULL`` commit) and no checkpoints of its own (the node's other
        connections do them), so the C-STORE handler waits for no flush here."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # Writers in several processes (the node's receivers) queue on this file lock, which wakes
        # the next one as soon as it is free; SQLite's own busy handler would sleep 1, 2, 5, …
        # milliseconds between retries, a long time next to a ~1 ms commit. Only a shortcut:
        # SQLite's locking keeps the data right without it (a read-only or full disk: no file).
        try:
            self._writer_fd = os.open(
                path.with_name(path.name + ".writer-lock"), os.O_RDWR | os.O_CREAT, 0o600
            )
        except OSError:
            self._writer_fd = -1
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL" if receive_journal else "PRAGMA synchronous=FULL")
        if receive_journal:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()
        with self.transaction() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @classmethod
    def read_only(cls, path: Path) -> Index:
        """The index opened for reading only (``status``, ``export``): no lock file, no schema change,
        nothing written, so an operator's command never alters the node's state.

        Raises :class:`sqlite3.Error` when the file cannot be opened or was written by an older
        node (``bodycomp serve`` migrates it), :class:`OSError` when it is not readable.
        """
        self = cls.__new__(cls)
        self.path = path
        self._lock = threading.RLock()
        self._writer_fd = -1
        # A node that is running keeps a write-ahead log beside the index: read through it. Without
        # one (the node stopped, or a copy on read-only media) the file is all there is, and
        # ``immutable`` keeps SQLite from creating the log and shared-memory files next to it.
        live = path.with_name(path.name + "-wal").exists()
        self._db = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro{'' if live else '&immutable=1'}",
            uri=True,
            timeout=30,
            check_same_thread=False,
        )
        self._db.row_factory = sqlite3.Row
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version < SCHEMA_VERSION:
            self._db.close()
            raise sqlite3.DatabaseError(
                f"index schema {version} is older than this version's {SCHEMA_VERSION}: start "
                "bodycomp serve once to migrate it"
            )
        return self

    def _migrate(self) -> None:
        """Bring an index written by an earlier node to :data:`SCHEMA_VERSION`, in one transaction."""
        with self._lock:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            has_tables = self._db.execute("SELECT 1 FROM sqlite_master WHERE name='instances'").fetchone()
        if version >= SCHEMA_VERSION or has_tables is None:
            return
        # (foreign keys can only be switched outside a transaction; the tables are rebuilt)
        self._db.execute("PRAGMA foreign_keys=OFF")
        try:
            with self.transaction() as db:
                for statement in MIGRATE_0_TO_1.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        finally:
            self._db.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._writer_fd >= 0:
                os.close(self._writer_fd)
                self._writer_fd = -1

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: writers queue here, never deadlock later)."""
        with self._lock:
            if self._writer_fd >= 0:
                fcntl.flock(self._writer_fd, fcntl.LOCK_EX)
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            finally:
                if self._writer_fd >= 0:
                    fcntl.flock(self._writer_fd, fcntl.LOCK_UN)

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, tuple(params)))

    # -- receiving -------------------------------------------------------------------------------

    def record_instance(self, rec: InstanceRecord, now: float | None = None, replay: bool = False) -> str:
        """Record a durably stored instance; return ``new``, ``duplicate``, ``replaced`` or ``conflict``.

        A duplicate (same SOP Instance UID and digest) changes nothing, not even the study's last-
        received time (the stable timer): nothing is analysed again, and a sender repeating
        instances cannot hold a study back; of a study already ``done`` it only asks for the study
        to be looked at again, so that its results reach destinations that lack them. ``replaced``:
        same SOP Instance UID in the same series, different content (a corrected instance re-sent);
        the new content wins and the study is analysed again. ``replay``
        (:func:`node.receive.journal.replay`): a duplicate is one the node recorded before a crash,
        not a re-send: nothing at all changes. ``conflict``: the SOP Instance UID is already recorded
        in *another* study or series; nothing is recorded (the caller refuses it).
        A UID identifies one instance for ever, so a second study claiming it is a UID collision or
        a mis-filed instance, perhaps of another patient: merging it silently could put one
        patient's image into another's analysis.
        """
        now = time.time() if now is None else now
        with self.transaction() as db:
            old = db.execute(
                "SELECT digest, study_uid, series_uid FROM instances WHERE sop_uid=?", (rec.sop_uid,)
            ).fetchone()
            if old is not None and (old["study_uid"], old["series_uid"]) != (rec.study_uid, rec.series_uid):
                return "conflict"  # nothing written: see the docstring
            outcome = "new" if old is None else "duplicate" if old["digest"] == rec.digest else "replaced"
            if outcome == "duplicate" and replay:
                return outcome
            if outcome == "duplicate":
                # nothing changes, not even the study's stable timer: a sender that repeats
                # instances must not keep a study from ever being analysed. A finished study sent
                # again is looked at once more, for delivery only: its results go to destinations
                # that have not had them (a PACS configured after the first receipt)
                db.execute(
                    """UPDATE studies SET changed=1, calling_ae=?, updated=?
                       WHERE study_uid=? AND changed=0 AND state='done'""",
                    (rec.calling_ae, now, rec.study_uid),
                )
                return outcome
            # A new study starts 'received' and changed; a known one becomes so again (one statement).
            db.execute(
                """INSERT INTO studies (study_uid, calling_ae, patient_id, study_date, first_received,
                       last_received, changed, state, updated)
                   VALUES (?, ?, ?, ?, ?, ?, 1, 'received', ?)
                   ON CONFLICT(study_uid) DO UPDATE SET last_received=excluded.last_received,
                       changed=1, state='received', reason='', calling_ae=excluded.calling_ae,
                       updated=excluded.updated""",
                (rec.study_uid, rec.calling_ae, rec.patient_id, rec.study_date, now, now, now),
            )
            db.execute(
                """INSERT INTO series (study_uid, series_uid, modality, series_number, description)
                   VALUES (?, ?, ?, ?, ?) ON CONFLICT(study_uid, series_uid) DO NOTHING""",
                (rec.study_uid, rec.series_uid, rec.modality, rec.series_number, rec.description),
            )
            db.execute(
                """INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid, path, size,
                       digest, calling_ae, received, patient_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(sop_uid) DO UPDATE SET path=excluded.path, size=excluded.size,
                       digest=excluded.digest, calling_ae=excluded.calling_ae, received=excluded.received,
                       patient_id=excluded.patient_id""",
                (
                    rec.sop_uid,
                    rec.series_uid,
                    rec.study_uid,
                    rec.sop_class_uid,
                    str(rec.path),
                    rec.size,
                    rec.digest,
                    rec.calling_ae,
                    now,
                    rec.patient_id,
                ),
            )
        return outcome

    # -- the receive journal (node.receive.journal) --------------------------------------------------------

    def mark_journal_synced(self, marks: dict[str, int]) -> None:
        """Record how far each journal segment is synced (its files and index rows durable). The
        commit flushes the write-ahead log, and with it the receivers' unflushed commits."""
        with self.transaction() as db:
            db.executemany(
                """INSERT INTO journal_segments (name, synced) VALUES (?, ?)
                   ON CONFLICT(name) DO UPDATE SET synced=MAX(synced, excluded.synced)""",
                list(marks.items()),
            )

    def journal_synced(self) -> dict[str, int]:
        return {
            row["name"]: int(row["synced"]) for row in self.query("SELECT name, synced FROM journal_segments")
        }

    def forget_journal_segments(self, names: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM journal_segments WHERE name=?", [(name,) for name in names])

    def recorded_instance(self, sop_uid: str) -> sqlite3.Row | None:
        """The index row of an instance already recorded (study_uid, series_uid, digest, path, size)."""
        rows = self.query(
            "SELECT study_uid, series_uid, digest, path, size FROM instances WHERE sop_uid=?", (sop_uid,)
        )
        return rows[0] if rows else None

    def instance_location(self, sop_uid: str) -> tuple[str, str] | None:
        """(study UID, series UID) of an instance already recorded, or None."""
        rows = self.query("SELECT study_uid, series_uid FROM instances WHERE sop_uid=?", (sop_uid,))
        return (str(rows[0]["study_uid"]), str(rows[0]["series_uid"])) if rows else None

    def study_hash(self, study_uid: str) -> str:
        rows = self.query("SELECT sop_uid, digest FROM instances WHERE study_uid=?", (study_uid,))
        return input_hash((r["sop_uid"], r["digest"]) for r in rows)

    def series_instances(self, study_uid: str, series_uid: str) -> list[sqlite3.Row]:
        """The instances of one series *of one study* (sop_uid, digest, path, patient_id).

        Always by (study, series): a Series Instance UID re-used in another study, perhaps of another
        patient, names another series, and its instances must never join this one's analysis.
        """
        return self.query(
            "SELECT sop_uid, digest, path, patient_id FROM instances WHERE study_uid=? AND series_uid=?",
            (study_uid, series_uid),
        )

    def forget_instances(self, study_uid: str, series_uid: str, sop_uids: list[str]) -> None:
        """Remove these instances of one series of one study from the index (their files were moved
        out of the spool, :mod:`node.store.quarantine`)."""
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM instances WHERE study_uid=? AND series_uid=? AND sop_uid=?",
                [(study_uid, series_uid, uid) for uid in sop_uids],
            )

    def series_hash(self, study_uid: str, series_uid: str) -> str:
        return input_hash((r["sop_uid"], r["digest"]) for r in self.series_instances(study_uid, series_uid))

    def studies_sharing_series(self, study_uid: str, series_uid: str) -> int:
        """How many *other* studies hold instances under this Series Instance UID."""
        rows = self.query(
            "SELECT COUNT(DISTINCT study_uid) AS n FROM instances WHERE series_uid=? AND study_uid<>?",
            (series_uid, study_uid),
        )
        return int(rows[0]["n"])

    def study(self, study_uid: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM studies WHERE study_uid=?", (study_uid,))
        return rows[0] if rows else None

    # -- stability and dispatch ------------------------------------------------------------------

    def changed_studies(self) -> list[sqlite3.Row]:
        """Studies with instances not yet considered by a dispatch decision."""
        return self.query("SELECT * FROM studies WHERE changed=1 ORDER BY last_received")

    def set_study_state(self, study_uid: str, state: str, reason: str = "") -> None:
        """Record a dispatch decision, unless an instance arrived meanwhile (then the study is
        ``received`` again and waits for its next stable period)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE studies SET state=?, reason=?, updated=? WHERE study_uid=? AND changed=0",
                (state, reason, time.time(), study_uid),
            )

    def claim_stable_study(self, study_uid: str, last_received: float) -> str | None:
        """Mark a study ``stable`` if nothing arrived since ``last_received``; return its hash."""
        digest = self.study_hash(study_uid)
        with self.transaction() as db:
            cursor = db.execute(
                """UPDATE studies SET state='stable', changed=0, input_hash=?, updated=?
                   WHERE study_uid=? AND changed=1 AND last_received=?""",
                (digest, time.time(), study_uid, last_received),
            )
            return digest if cursor.rowcount == 1 else None

    def reopen_interrupted_dispatches(self) -> int:
        """At start-up: a study claimed ``stable`` whose dispatch a crash interrupted is looked at
        again (creating its jobs is idempotent, so finishing a half-done dispatch is safe)."""
        with self.transaction() as db:
            cursor = db.execute("UPDATE studies SET changed=1, state='received' WHERE state='stable'")
            return int(cursor.rowcount)

    def reopen_study(self, study_uid: str) -> None:
        """A dispatch that could not finish (disk full) is tried again at the next stable check,
        instead of the study being failed for a reason that has nothing to do with it."""
        with self.transaction() as db:
            db.execute(
                "UPDATE studies SET changed=1, state='received', updated=? WHERE study_uid=? AND changed=0",
                (time.time(), study_uid),
            )

    def create_job(
        self,
        study_uid: str,
        series_uid: str,
        digest: str,
        result_dir: str,
        calling_ae: str,
        prepare: Callable[[int], None] | None = None,
    ) -> tuple[int, bool]:
        """Create the job for (study, series, input hash) unless it exists; return (id, created).

        Older jobs of the same series of the same study are marked ``superseded`` and their
        undelivered results cancelled: the PACS should get the analysis of the complete series, not
        both. A job of another study is never touched, whatever its Series Instance UID.

        ``prepare(job_id)``, for a job created by another process than the node (``bodycomp
        reanalyze``): runs inside the transaction, so the running node sees the job only with its
        folder prepared (a scheduler round in between would fail it as "job folder missing"); when
        it raises, no job is created.
        """
        now = time.time()
        with self.transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE study_uid=? AND series_uid=? AND input_hash=?",
                (study_uid, series_uid, digest),
            ).fetchone()
            if row is not None:
                return int(row["id"]), False
            cursor = db.execute(
                """INSERT INTO jobs (study_uid, series_uid, input_hash, state, result_dir, calling_ae,
                       created) VALUES (?, ?, ?, 'queued', ?, ?, ?)""",
                (study_uid, series_uid, digest, result_dir, calling_ae, now),
            )
            job_id = int(cursor.lastrowid or 0)
            old = [
                int(r["id"])
                for r in db.execute(
                    """SELECT id FROM jobs
                       WHERE study_uid=? AND series_uid=? AND id<>? AND state<>'superseded'""",
                    (study_uid, series_uid, job_id),
                )
            ]
            for old_id in old:
                db.execute(
                    "UPDATE jobs SET state='superseded', reason=? WHERE id=?",
                    (f"superseded by job {job_id}", old_id),
                )
                db.execute(
                    "UPDATE outbox SET state='cancelled', last_error=? WHERE job_id=? AND state='pending'",
                    (f"superseded by job {job_id}", old_id),
                )
            if prepare is not None:
                prepare(job_id)
            return job_id, True

    def jobs_of(self, study_uid: str) -> list[sqlite3.Row]:
        """All the study's jobs, oldest first (superseded ones too: a study's history)."""
        return self.query("SELECT * FROM jobs WHERE study_uid=? ORDER BY id", (study_uid,))

    def study_objects(self, study_uid: str, sop_classes: tuple[str, ...]) -> list[sqlite3.Row]:
        """The study's instances of ``sop_classes`` (reader SRs and SEGs,
        :mod:`node.schedule.reader_objects`)."""
        marks = ", ".join("?" * len(sop_classes))
        return self.query(
            f"SELECT * FROM instances WHERE study_uid=? AND sop_class_uid IN ({marks}) ORDER BY received",
            (study_uid, *sop_classes),
        )

    def is_own_output(self, sop_uid: str) -> bool:
        """Whether the node queued this instance as one of its results (it is in the outbox)."""
        return bool(self.query("SELECT 1 FROM outbox WHERE sop_uid=? LIMIT 1", (sop_uid,)))

    def reopen_for_correction(self, study_uid: str) -> None:
        """A correction job was created: the study (``done`` or ``failed``) is ``queued`` again, unless
        instances are arriving (then its next stable period decides, as for any study)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE studies SET state='queued', reason='', updated=? WHERE study_uid=? AND changed=0",
                (time.time(), study_uid),
            )

    def has_current_jobs(self, study_uid: str) -> bool:
        """Whether the study has a job that is not superseded (queued, running, done or failed)."""
        return bool(self.query("SELECT 1 FROM jobs WHERE study_uid=? AND state<>'superseded'", (study_uid,)))

    def mark_enqueued(self, job_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE jobs SET enqueued=? WHERE id=?", (time.time(), job_id))

    def job(self, job_id: int) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return rows[0] if rows else None

    def open_jobs(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY id")

    def update_job(self, job_id: int, **fields: Any) -> None:
        allowed = {"state", "reason", "attempts", "started", "finished", "enqueued"}
        if not fields or set(fields) - allowed:
            raise ValueError(f"cannot update job fields {sorted(set(fields) - allowed)}")
        names = ", ".join(f"{k}=?" for k in fields)
        with self.transaction() as db:
            db.execute(f"UPDATE jobs SET {names} WHERE id=?", (*fields.values(), job_id))

    def refresh_study_state(self, study_uid: str) -> str:
        """Derive the study's state from its current (not superseded) jobs."""
        rows = self.query(
            "SELECT state, reason FROM jobs WHERE study_uid=? AND state<>'superseded'", (study_uid,)
        )
        study = self.study(study_uid)
        settled = (StudyState.RECEIVED, StudyState.IGNORED)
        if study is None or not rows or study["changed"] or study["state"] in settled:
            return str(study["state"]) if study is not None else ""
        states = {r["state"] for r in rows}
        # the study is as far as its least advanced job: running before queued before failed
        state = next(
            (s for s in (StudyState.RUNNING, StudyState.QUEUED, StudyState.FAILED) if s in states),
            StudyState.DONE,
        )
        reason = "; ".join(r["reason"] for r in rows if r["state"] == JobState.FAILED and r["reason"])
        with self.transaction() as db:
            db.execute(
                "UPDATE studies SET state=?, reason=?, updated=? WHERE study_uid=? AND changed=0",
                (state, reason, time.time(), study_uid),
            )
        return state

    # -- outbox ----------------------------------------------------------------------------------

    def add_outbox(
        self,
        job_id: int,
        study_uid: str,
        items: Iterable[tuple[str, str, str]],
        destinations: Iterable[str],
    ) -> int:
        """Queue each (path, SOP Instance UID, SOP Class UID) for each destination; return new rows."""
        now = time.time()
        added = 0
        dests = list(destinations)
        with self.transaction() as db:
            for path, sop_uid, sop_class in items:
                for dest in dests:
                    cursor = db.execute(
                        """INSERT INTO outbox (job_id, study_uid, path, sop_uid, sop_class_uid,
                               destination, next_try, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                           ON CONFLICT(sop_uid, destination) DO NOTHING""",
                        (job_id, study_uid, path, sop_uid, sop_class, dest, now, now),
                    )
                    added += cursor.rowcount
        return added

    def due_outbox(self, now: float | None = None, limit: int = 500) -> list[sqlite3.Row]:
        return self._due("outbox", now, limit)

    def next_outbox_time(self) -> float | None:
        rows = self.query("SELECT MIN(next_try) AS t FROM outbox WHERE state='pending'")
        return float(rows[0]["t"]) if rows and rows[0]["t"] is not None else None

    def outbox_delivered(self, row_id: int, note: str = "") -> None:
        self._delivered("outbox", row_id, note)

    def outbox_failed(self, row_id: int, error: str, next_try: float | None) -> None:
        """Record a failed attempt; ``next_try`` None dead-letters the row."""
        self._failed("outbox", row_id, error, next_try)

    # Both outboxes (DICOM ``outbox``, HL7 ``hl7_outbox``) share their life cycle. ``table`` is
    # one of those two names, never a caller's value.

    def _due(self, table: str, now: float | None, limit: int) -> list[sqlite3.Row]:
        now = time.time() if now is None else now
        return self.query(
            f"SELECT * FROM {table} WHERE state='pending' AND next_try<=? ORDER BY next_try, id LIMIT ?",
            (now, limit),
        )

    def _delivered(self, table: str, row_id: int, note: str) -> None:
        with self.transaction() as db:
            db.execute(
                f"""UPDATE {table} SET state='delivered', delivered=?, attempts=attempts+1, last_error=?
                    WHERE id=?""",
                (time.time(), note, row_id),
            )

    def _failed(self, table: str, row_id: int, error: str, next_try: float | None) -> None:
        with self.transaction() as db:
            db.execute(
                f"""UPDATE {table} SET state=?, attempts=attempts+1, last_error=?,
                        next_try=COALESCE(?, next_try) WHERE id=? AND state='pending'""",
                (OutboxState.DEAD if next_try is None else OutboxState.PENDING, error, next_try, row_id),
            )

    def requeue_dead(self, study_uid: str | None = None, destination: str | None = None) -> int:
        """Dead letters (of one study, to one destination) back to ``pending``; return how many.

        They are due at once and get a whole new ``send_give_up_hours`` (``created`` and
        ``attempts`` start over); ``last_error`` stays until the next attempt replaces it.
        """
        return self._requeue((OutboxState.DEAD,), study_uid, destination)

    def _requeue(
        self, states: tuple[OutboxState, ...], study_uid: str | None, destination: str | None
    ) -> int:
        """Outbox rows in ``states`` (of one study, to one destination) back to ``pending``, due
        now, with ``attempts`` and the give-up window (``created``) started over."""
        where = [f"state IN ({', '.join('?' * len(states))})"]
        params: list[Any] = list(states)
        for column, value in (("study_uid", study_uid), ("destination", destination)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(value)
        now = time.time()
        sql = "UPDATE outbox SET state='pending', attempts=0, next_try=?, created=? WHERE " + " AND ".join(
            where
        )
        with self.transaction() as db:
            return int(db.execute(sql, (now, now, *params)).rowcount)

    def done_jobs_of(self, study_uid: str) -> list[sqlite3.Row]:
        """The study's current results: its jobs in state ``done`` (superseded ones are not)."""
        return self.query("SELECT * FROM jobs WHERE study_uid=? AND state='done' ORDER BY id", (study_uid,))

    def outbox_destinations(self, study_uid: str) -> list[str]:
        """The destinations the study's results were queued for, in the order first queued."""
        rows = self.query(
            """SELECT destination, MIN(id) AS first FROM outbox WHERE study_uid=?
               GROUP BY destination ORDER BY first""",
            (study_uid,),
        )
        return [str(r["destination"]) for r in rows]

    def requeue_sent(self, study_uid: str, destination: str | None = None) -> int:
        """Delivered and dead results of one study (to one destination) back to ``pending``."""
        return self._requeue((OutboxState.DELIVERED, OutboxState.DEAD), study_uid, destination)

    # -- patient observations (HL7 feed) and the HL7 outbox --------------------------------------

    def add_observations(self, rows: Iterable[tuple[str, str, str, float, float, str, str]]) -> int:
        """Store (patient ID, accession, kind, value, observed time, source, control ID) rows in one
        transaction (a message is stored whole or not at all); a message received twice (same
        source and control ID) is stored once. Returns the rows added."""
        now = time.time()
        added = 0
        with self.transaction() as db:
            for patient_id, accession, kind, value, observed, source, control_id in rows:
                cursor = db.execute(
                    """INSERT INTO patient_observations (patient_id, accession, kind, value, observed,
                           received, source, control_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(source, control_id, kind) DO NOTHING""",
                    (patient_id, accession, kind, value, observed, now, source, control_id),
                )
                added += cursor.rowcount
        return added

    def observations_for(self, patient_id: str, accession: str) -> list[sqlite3.Row]:
        """Observations of this patient (or of this accession number), newest observed first."""
        return self.query(
            """SELECT * FROM patient_observations
               WHERE (patient_id=? AND patient_id<>'') OR (accession=? AND accession<>'')
               ORDER BY observed DESC, id DESC""",
            (patient_id, accession),
        )

    def done_jobs_of_patient(self, patient_id: str) -> list[sqlite3.Row]:
        """The current (done) jobs of a patient's studies, with the study's date (late heights)."""
        return self.query(
            """SELECT jobs.*, studies.study_date FROM jobs JOIN studies USING (study_uid)
               WHERE studies.patient_id=? AND studies.patient_id<>'' AND jobs.state='done'
               ORDER BY jobs.id""",
            (patient_id,),
        )

    def study_patient(self, study_uid: str) -> tuple[str, str] | None:
        """(PatientID, StudyDate) of a study, as the SCP recorded them."""
        rows = self.query("SELECT patient_id, study_date FROM studies WHERE study_uid=?", (study_uid,))
        return (str(rows[0]["patient_id"]), str(rows[0]["study_date"])) if rows else None

    def add_hl7_outbox(
        self, job_id: int, study_uid: str, path: str, control_id: str, destinations: Iterable[str]
    ) -> int:
        """Queue one ORU message file for each HL7 destination; return the rows added."""
        now = time.time()
        added = 0
        with self.transaction() as db:
            for dest in destinations:
                cursor = db.execute(
                    """INSERT INTO hl7_outbox (job_id, study_uid, path, control_id, destination,
                           next_try, created) VALUES (?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(control_id, destination) DO NOTHING""",
                    (job_id, study_uid, path, control_id, dest, now, now),
                )
                added += cursor.rowcount
        return added

    def due_hl7_outbox(self, now: float | None = None, limit: int = 100) -> list[sqlite3.Row]:
        return self._due("hl7_outbox", now, limit)

    def hl7_outbox_delivered(self, row_id: int, note: str = "") -> None:
        self._delivered("hl7_outbox", row_id, note)

    def hl7_outbox_failed(self, row_id: int, error: str, next_try: float | None) -> None:
        """Record a failed attempt; ``next_try`` None dead-letters the row."""
        self._failed("hl7_outbox", row_id, error, next_try)

    def hl7_outbox_rows(self, state: str | None = None, limit: int = 20) -> list[sqlite3.Row]:
        """HL7 outbox rows (in one state), newest first (``bodycomp status``)."""
        if state is None:
            return self.query("SELECT * FROM hl7_outbox ORDER BY id DESC LIMIT ?", (limit,))
        return self.query("SELECT * FROM hl7_outbox WHERE state=? ORDER BY id DESC LIMIT ?", (state, limit))

    def hl7_outbox_counts(self) -> dict[str, int]:
        return self.state_counts("hl7_outbox")

    def state_counts(self, table: str) -> dict[str, int]:
        """Rows by state of one of the tables that have one (``status``, the metrics endpoint)."""
        if table not in STATE_TABLES:
            raise ValueError(f"{table!r} has no state column")
        rows = self.query(f"SELECT state, COUNT(*) AS n FROM {table} GROUP BY state")
        return {str(r["state"]): int(r["n"]) for r in rows}

    def outbox_trouble(self, limit: int = 20) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
        """The newest dead letters, and the newest pending deliveries that failed at least once."""
        dead = self.query("SELECT * FROM outbox WHERE state='dead' ORDER BY id DESC LIMIT ?", (limit,))
        retrying = self.query(
            "SELECT * FROM outbox WHERE state='pending' AND attempts>0 ORDER BY id DESC LIMIT ?", (limit,)
        )
        return dead, retrying

    def outbox_backlog(self, now: float) -> tuple[int, float | None]:
        """Pending deliveries due at ``now``, and when the oldest pending one was created."""
        row = self.query(
            "SELECT SUM(next_try<=?) AS due, MIN(created) AS oldest FROM outbox WHERE state='pending'", (now,)
        )[0]
        return int(row["due"] or 0), None if row["oldest"] is None else float(row["oldest"])

    # -- reporting -------------------------------------------------------------------------------

    def recent_studies(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent studies with their jobs and delivery counts, newest first (for ``status``)."""
        studies = self.query("SELECT * FROM studies ORDER BY last_received DESC LIMIT ?", (limit,))
        out = []
        for s in studies:
            uid = s["study_uid"]
            counts = self.query(
                """SELECT COUNT(*) AS n, COUNT(DISTINCT series_uid) AS series FROM instances
                   WHERE study_uid=?""",
                (uid,),
            )[0]
            jobs = self.query("SELECT * FROM jobs WHERE study_uid=? ORDER BY id", (uid,))
            outbox = self.query(
                "SELECT state, COUNT(*) AS n FROM outbox WHERE study_uid=? GROUP BY state", (uid,)
            )
            per_destination: dict[str, dict[str, int]] = {}
            for r in self.query(
                """SELECT destination, state, COUNT(*) AS n FROM outbox WHERE study_uid=?
                   GROUP BY destination, state ORDER BY destination""",
                (uid,),
            ):
                per_destination.setdefault(r["destination"], {})[r["state"]] = int(r["n"])
            out.append(
                {
                    "study_uid": uid,
                    "calling_ae": s["calling_ae"],
                    "state": s["state"],
                    "reason": s["reason"],
                    "instances": counts["n"],
                    "series": counts["series"],
                    "first_received": s["first_received"],
                    "last_received": s["last_received"],
                    "input_hash": s["input_hash"],
                    "jobs": [
                        {
                            "id": j["id"],
                            "series_uid": j["series_uid"],
                            "state": j["state"],
                            "reason": j["reason"],
                            "attempts": j["attempts"],
                            "input_hash": j["input_hash"],
                            "result_dir": j["result_dir"],
                            "created": j["created"],
                            "started": j["started"],
                            "finished": j["finished"],
                        }
                        for j in jobs
                    ],
                    "outbox": {r["state"]: r["n"] for r in outbox},
                    "deliveries": per_destination,
                }
            )
        return out

    def outbox_rows(self, study_uid: str | None = None) -> list[sqlite3.Row]:
        if study_uid is None:
            return self.query("SELECT * FROM outbox ORDER BY id")
        return self.query("SELECT * FROM outbox WHERE study_uid=? ORDER BY id", (study_uid,))

    def done_jobs(self) -> list[sqlite3.Row]:
        return self.query(
            """SELECT jobs.*, studies.patient_id, studies.study_date FROM jobs
               JOIN studies USING (study_uid) WHERE jobs.state='done' ORDER BY jobs.id"""
        )
