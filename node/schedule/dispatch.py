"""A stable study becomes analysis jobs: choose the series, prepare each job, enqueue it.

The series are chosen by the same documented rules as ``bodycomp inspect``
(:mod:`workers.load.selection`): one result set per study by default, or every eligible CT
series with ``all_series``. A study with nothing to analyse (non-CT, reports, localisers only) is
accepted and ignored, with one log line saying why.

A job is identified by (study, series, input hash), the hash of its instances' SOP Instance UIDs and
contents: a study re-sent unchanged maps to the job that already exists and nothing runs again;
a late instance gives a new hash, a new job, new result UIDs, and supersedes the older job.

A study is the unit of identity: a series is only ever this study's instances under that Series
Instance UID. A UID that another study uses too (buggy modalities and anonymisers re-use them) is
analysed from this study's instances alone and flagged ``series_uid_shared`` in the log and the
result; a series whose instances carry more than one PatientID is not analysed at all.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import NodeSettings
from node.patients.sources import fallbacks_for
from node.schedule.fairness import admission_order, published_per_sender
from node.schedule.stability import StableStudy
from node.send.outbox import queue_results
from node.store.index import Index, input_hash
from workers.errors import BodycompError
from workers.job import INPUT, JOB, JobSpec, JobState, PatientValues, StudyState, read_job_spec
from workers.jsonfile import write_json
from workers.load.deflate import DEFAULT_MAX_INFLATED_BYTES
from workers.load.scan import scan_dicom
from workers.load.selection import SelectionPolicy, select_series

log = logging.getLogger("bodycomp.dispatch")

Publish = Callable[[dict[str, Any]], None]

#: Job flag: the series' UID is also used by another study (see :meth:`Index.series_instances`).
SERIES_UID_SHARED = "series_uid_shared"


@dataclass(frozen=True)
class Plan:
    """What to do with a stable study: the series to analyse, or why nothing."""

    series: tuple[str, ...]
    ignored_reason: str = ""


def plan_study(
    study_dir: Path,
    policy: SelectionPolicy,
    all_series: bool,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> Plan:
    """Choose the series of the study in ``study_dir`` to analyse (a plain function)."""
    scan = scan_dicom(study_dir, max_inflated_bytes)
    if not scan.files:
        return Plan((), "no DICOM instances in the spool")
    try:
        chosen, candidates = select_series(scan.files, policy)
    except BodycompError as exc:
        return Plan((), str(exc))
    if not all_series:
        return Plan((chosen.series_instance_uid,))
    eligible = [c.series_instance_uid for c in candidates if c.status != "rejected"]
    return Plan(tuple(eligible))


def job_flags(index: Index, study_uid: str, series_uid: str) -> list[str]:
    """What the node knows about a series' input that the result must say (see module docstring)."""
    return [SERIES_UID_SHARED] if index.studies_sharing_series(study_uid, series_uid) else []


def patient_fallbacks(
    index: Index, settings: NodeSettings, rows: list[sqlite3.Row]
) -> tuple[PatientValues, ...]:
    """Height/weight of the sources after the DICOM header, for ``job.json``
    (:mod:`node.patients.sources`)."""
    return tuple(fallbacks_for(index, settings, str(rows[0]["path"]))) if rows else ()


def job_dir_for(study_uid: str, series_uid: str, digest: str) -> str:
    """Job folder relative to the data directory (UIDs were checked by the spool)."""
    return f"results/{study_uid}/{series_uid}/{digest[:16]}"


def prepare_job_dir(job_dir: Path, paths: list[str], spec: JobSpec) -> None:
    """Link the job's exact input instances into ``job_dir/input`` and write ``job.json``."""
    inputs = job_dir / INPUT
    inputs.mkdir(parents=True, exist_ok=True)
    for source in map(Path, paths):
        target = inputs / source.name
        if target.exists():
            continue
        try:
            os.link(source, target)
        except OSError:  # another file system, or no hard links: copy instead
            shutil.copy2(source, target)
    write_json(job_dir / JOB, spec.to_json())


def dispatch_study(
    study: StableStudy,
    index: Index,
    settings: NodeSettings,
    policy: SelectionPolicy,
    publish: Publish,
    corrections: Callable[[Index, NodeSettings, str], list[int]] | None = None,
) -> list[int]:
    """Create and enqueue the jobs of a stable study; return the ids of new jobs.

    ``corrections(index, settings, study_uid)``: the correction jobs a reader's objects in the
    study ask for (the node passes :func:`node.schedule.reader_objects.reader_corrections`, issue #23;
    a parameter, because that module builds on this one)."""
    plan = plan_study(
        settings.spool_dir / "studies" / study.study_uid,
        policy,
        settings.all_series,
        settings.max_inflated_mb << 20,
    )
    if not plan.series:
        log.info("event=study_ignored study=%s reason=%s", study.study_uid, plan.ignored_reason)
        index.set_study_state(study.study_uid, StudyState.IGNORED, plan.ignored_reason)
        if not settings.keep_ignored:
            shutil.rmtree(settings.spool_dir / "studies" / study.study_uid, ignore_errors=True)
        return []
    new_jobs = []
    refused: list[str] = []
    for series_uid in plan.series:
        rows = index.series_instances(study.study_uid, series_uid)
        patients = {r["patient_id"] for r in rows}
        if len(patients) > 1:
            # one series, several patients: a mis-filed or colliding instance; analysing it could put
            # one patient's image into another's measurement (the IDs stay out of the log)
            log.error(
                "event=series_refused study=%s series=%s reason=instances of %d patients in one series",
                study.study_uid,
                series_uid,
                len(patients),
            )
            refused.append(f"series {series_uid} holds instances of {len(patients)} patients: not analysed")
            continue
        flags = job_flags(index, study.study_uid, series_uid)
        if flags:
            # kept apart (only this study's instances are analysed), and said in the log and the result
            log.warning(
                "event=series_uid_shared study=%s series=%s (another study uses this Series Instance UID; "
                "only this study's instances are analysed)",
                study.study_uid,
                series_uid,
            )
        digest = input_hash((r["sop_uid"], r["digest"]) for r in rows)
        rel_dir = job_dir_for(study.study_uid, series_uid, digest)
        job_id, created = index.create_job(study.study_uid, series_uid, digest, rel_dir, study.calling_ae)
        if not created:
            job = index.job(job_id)
            queued = 0
            if job is not None and job["state"] == JobState.DONE:
                # the same study again: its results go where they have not gone (no new analysis)
                queued = queue_results(index, settings, job, study.calling_ae)
            log.info(
                "event=job_exists study=%s series=%s job=%d results_queued=%d (same input: not analysed)",
                study.study_uid,
                series_uid,
                job_id,
                queued,
            )
            continue
        spec = JobSpec(
            job_id=job_id,
            study_uid=study.study_uid,
            series_uid=series_uid,
            input_hash=digest,
            job_dir=rel_dir,
            instances=len(rows),
            flags=tuple(flags),
            # height/weight after the header: HL7 feed, site table (node.patients.sources)
            patient_fallbacks=patient_fallbacks(index, settings, rows),
        )
        prepare_job_dir(settings.data_dir / rel_dir, [r["path"] for r in rows], spec)
        log.info(
            "event=job_created study=%s series=%s job=%d instances=%d hash=%s",
            study.study_uid,
            series_uid,
            job_id,
            len(rows),
            digest[:16],
        )
        new_jobs.append(job_id)
    if refused and not index.has_current_jobs(study.study_uid):
        index.set_study_state(study.study_uid, StudyState.FAILED, "; ".join(refused))
        return []
    index.set_study_state(study.study_uid, StudyState.QUEUED)
    if corrections is not None:  # a reader's SR marking L3 or edited SEG in the study (issue #23)
        new_jobs += corrections(index, settings, study.study_uid)
    index.refresh_study_state(study.study_uid)
    if new_jobs:
        publish_waiting(index, settings, publish)
    return new_jobs


def publish_waiting(index: Index, settings: NodeSettings, publish: Publish) -> int:
    """Publish the jobs that never reached the broker, in turns per sender (:mod:`node.schedule.fairness`).

    Returns how many were published. A broker that is down stops the round (the jobs wait for it,
    see :class:`BrokerHealth`); a job whose folder cannot be prepared again fails with a reason.
    """
    open_jobs = index.open_jobs()
    waiting = [job for job in open_jobs if job["enqueued"] is None]
    if not waiting:
        return 0
    order = admission_order(waiting, published_per_sender(open_jobs), settings.effective_jobs_per_sender)
    count = 0
    for job in order:
        try:
            spec = job_spec(index, settings, job)
        except DiskFullError:
            break
        if spec is None:
            continue
        if not enqueue(index, job["id"], spec, publish):
            break  # the broker is down: the other jobs wait for it too
        count += 1
    if len(order) < len(waiting):
        log.debug("jobs waiting for their sender's turn: %d", len(waiting) - len(order))
    return count


class DiskFullError(Exception):
    """The data disk is full: publishing stops for this round (:class:`DiskGuard` has said so)."""


def job_spec(index: Index, settings: NodeSettings, job: sqlite3.Row) -> JobSpec | None:
    """The job's ``job.json``, its folder prepared again if a dispatch was cut short (or the
    file is not a job spec).

    None when the folder cannot be prepared (its input changed): the job is failed with the
    reason. Raises :class:`DiskFullError`, after pausing analyses, when the disk is full.
    """
    try:
        spec = read_job_spec(settings.data_dir / job["result_dir"])
        spec = spec if spec is not None else rebuild_job_dir(index, settings, job)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        DISK.pause(f"rebuilding job {job['id']}: {exc}", hold=True)
        raise DiskFullError(str(exc)) from exc
    if spec is None:
        index.update_job(job["id"], state=JobState.FAILED, reason="job folder missing")
    return spec


class BrokerHealth:
    """Whether the broker took the last message, so that an outage is handled, and logged, once.

    Why: while Redis or RabbitMQ is down every publish fails after the client's own retries
    (seconds each). Trying every unpublished job on every scheduler tick would stall the scheduler
    and write an error per job per second for the whole outage. Instead the first failure logs one
    ``event=broker_unavailable`` line, the jobs stay ``queued`` with no ``enqueued`` time (so
    :func:`publish_waiting` publishes them later), only one publish is tried every
    ``probe_seconds`` until one succeeds, and then one ``event=broker_available`` line says so.
    A job never fails because the broker was away.
    """

    def __init__(self, probe_seconds: float = 5.0) -> None:
        self.probe_seconds = probe_seconds
        self.down_since: float | None = None
        self.next_probe = 0.0
        self.failures = 0

    def may_publish(self, now: float | None = None) -> bool:
        """True when the broker is up as far as we know, or a probe is due."""
        now = time.monotonic() if now is None else now
        return self.down_since is None or now >= self.next_probe

    def failed(self, exc: BaseException, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.failures += 1
        self.next_probe = now + self.probe_seconds
        if self.down_since is None:
            self.down_since = now
            log.error(
                "event=broker_unavailable reason=%s: %s (jobs stay queued and are published when it is back)",
                type(exc).__name__,
                str(exc)[:200],
            )
        else:
            log.debug("broker still unavailable: %s", exc)

    def succeeded(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.down_since is not None:
            log.warning(
                "event=broker_available after_s=%.0f failed_publishes=%d",
                now - self.down_since,
                self.failures,
            )
        self.down_since = None
        self.failures = 0


#: The node's view of its broker (one broker per node process).
BROKER = BrokerHealth()


def enqueue(
    index: Index, job_id: int, spec: JobSpec, publish: Publish, health: BrokerHealth | None = None
) -> bool:
    """Publish a job to the broker; a broker that is down leaves it unpublished for a later round."""
    health = BROKER if health is None else health
    if not health.may_publish():
        return False
    try:
        publish(spec.to_json())
    except Exception as exc:  # kombu raises many types for an unreachable broker
        health.failed(exc)
        return False
    health.succeeded()
    index.mark_enqueued(job_id)
    return True


#: Below this much free space in the data directory no analysis is started (claiming stable
#: studies and re-publishing jobs pause): an analysis writes a few MB of results and one that
#: meets a full disk fails. Independent of ``min_free_mb``, the SCP's reserve, which is there so
#: that the node's own work (analyses, index, outbox) still has room when receiving stops.
ANALYSIS_MIN_FREE_BYTES = 16 * 1024 * 1024


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT from a write, or SQLite's "database or disk is full"."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()


class DiskGuard:
    """Pauses analyses while the data disk is (nearly) full, and says so once, not every tick.

    Why: a study that became stable while the disk was full used to be dispatched anyway; its
    analysis failed on ENOSPC after two quick retries, or the dispatch itself failed, and the study
    ended ``failed`` for good although nothing was wrong with it. Now it waits (``received``) and
    is analysed when space returns; one ``event=analysis_paused`` line and one
    ``event=analysis_resumed`` line tell the operator.
    """

    #: After an ENOSPC met with free space above the floor (quota, inodes), wait this long before
    #: trying again, so that the log does not flap between paused and resumed every tick.
    HOLD_SECONDS = 30.0

    def __init__(self, min_free_bytes: int = ANALYSIS_MIN_FREE_BYTES) -> None:
        self.min_free_bytes = min_free_bytes
        self.paused_since: float | None = None
        self.hold_until = 0.0

    @staticmethod
    def free_bytes(path: Path) -> int:
        stats = os.statvfs(path)
        return stats.f_bavail * stats.f_frsize

    def room(self, path: Path, now: float | None = None) -> bool:
        """True when analyses may start (enough free space under ``path``)."""
        now = time.monotonic() if now is None else now
        try:
            free = self.free_bytes(path)
        except OSError:
            return True  # cannot tell: carry on, a real shortage shows up as ENOSPC
        if free < self.min_free_bytes:
            self.pause(f"{free / 1048576:.1f} MB free, below {self.min_free_bytes / 1048576:.0f} MB", now)
            return False
        if now < self.hold_until:
            return False
        if self.paused_since is not None:
            log.warning(
                "event=analysis_resumed free_mb=%.0f after_s=%.0f", free / 1048576, now - self.paused_since
            )
            self.paused_since = None
        return True

    def pause(self, reason: str, now: float | None = None, hold: bool = False) -> None:
        """Note a full disk (from the free space, or with ``hold`` an ENOSPC met on the way); log
        it once."""
        now = time.monotonic() if now is None else now
        if hold:
            self.hold_until = now + self.HOLD_SECONDS
        if self.paused_since is None:
            self.paused_since = now
            log.error(
                "event=analysis_paused reason=data disk full (%s): stable studies wait and are analysed "
                "when space returns",
                reason,
            )
        else:
            log.debug("data disk still full: %s", reason)


#: The node's view of its data disk (one per node process).
DISK = DiskGuard()


def rebuild_job_dir(index: Index, settings: NodeSettings, job: sqlite3.Row) -> JobSpec | None:
    """Prepare again the folder of a job whose ``job.json`` is missing; return its spec, or None.

    Why: a dispatch cut short after the job's row was committed (disk full while writing
    ``job.json``, a crash) left a job that could never run and was failed as "job folder
    missing". The row has all that is needed, and the index still lists the series' instances:
    when they still hash to the job's input hash the folder is rebuilt; otherwise (the input has
    changed since) None, and the job stays failed. Raises on a full disk (the caller waits).
    """
    rows = index.series_instances(job["study_uid"], job["series_uid"])
    if not rows or input_hash((r["sop_uid"], r["digest"]) for r in rows) != job["input_hash"]:
        return None
    spec = JobSpec(
        job_id=int(job["id"]),
        study_uid=job["study_uid"],
        series_uid=job["series_uid"],
        input_hash=job["input_hash"],
        job_dir=job["result_dir"],
        instances=len(rows),
        flags=tuple(job_flags(index, job["study_uid"], job["series_uid"])),
        patient_fallbacks=patient_fallbacks(index, settings, rows),
    )
    prepare_job_dir(settings.data_dir / job["result_dir"], [r["path"] for r in rows], spec)
    log.warning("event=job_folder_rebuilt job=%d study=%s", job["id"], job["study_uid"])
    return spec
