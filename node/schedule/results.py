"""Worker outcomes into the index and the outbox; re-publishing jobs a dead worker dropped.

Workers report through files in each job folder (``started.json``, then ``outcome.json``, see
:mod:`workers.tasks`) rather than writing to SQLite, which must not be shared across hosts. The
node's scheduler calls :func:`collect` every tick: a started job becomes ``running``, a finished
one ``done`` or ``failed`` (with the reason, shown by ``bodycomp status``), and the DICOM files of
a done job enter the outbox once per destination.

:func:`republish` is the safety net under the broker: a job that never reached the broker, or
that neither finished nor started again within the time limit and a margin (its worker died
holding the message on a transport that cannot give it back), is published again. Tasks are
idempotent, so a duplicate message costs a look at ``outcome.json`` (and the job's lock).
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time

from node import privacy
from node.config import NodeSettings
from node.schedule.dispatch import BROKER, DiskFullError, Publish, enqueue, job_spec, publish_waiting
from node.schedule.late_height import supersede_for_patient
from node.send.outbox import queue_results
from node.send.report_out import write_reports
from node.store.index import Index
from node.store.quarantine import quarantine_series
from workers.job import INPUT, OUTCOME, STARTED, JobState, Outcome, read_outcome
from workers.jsonfile import read_json

log = logging.getLogger("bodycomp.results")


def record_outcome(index: Index, settings: NodeSettings, job: sqlite3.Row, outcome: Outcome) -> None:
    job_dir = settings.data_dir / job["result_dir"]
    state = outcome.state
    reason = privacy.redact(outcome.reason)  # shown by status: no dataset values
    # a job that ran between two ticks was never seen running: its start comes from its folder
    started = read_json(job_dir / STARTED) if job["started"] is None else None
    index.update_job(
        job["id"],
        state=str(state),
        reason=reason,
        attempts=outcome.attempts,
        finished=outcome.finished,
        **({"started": float(started["time"])} if started and "time" in started else {}),
    )
    if outcome.quarantine:
        folder = quarantine_series(index, settings, job, outcome.reason)
        index.update_job(job["id"], reason=f"{reason} ({folder})")
    if state == JobState.DONE:
        try:  # FHIR and ORU: a failure here must not leave the job unrecorded
            write_reports(index, settings, job)
        except Exception:
            log.exception("event=reports_error job=%d", job["id"])
        added = queue_results(index, settings, job, job["calling_ae"], outcome)
        log.info(
            "event=job_done study=%s series=%s job=%d results=%d deliveries=%d",
            job["study_uid"],
            job["series_uid"],
            job["id"],
            len(outcome.outputs),
            added,
        )
        if settings.hl7_port is not None:
            # a height the HL7 feed received while this study was analysed: a superseding result
            # (its own undelivered results are cancelled by the new job, node.store.index.create_job)
            try:
                patient = index.study_patient(job["study_uid"])
                if patient is not None and patient[0]:
                    supersede_for_patient(index, settings, patient[0])
            except Exception:
                log.exception("event=late_height_error job=%d", job["id"])
    else:
        log.warning(
            "event=job_failed study=%s series=%s job=%d reason=%s",
            job["study_uid"],
            job["series_uid"],
            job["id"],
            outcome.reason,
        )
    # The input links kept the job's instances alive; the spool still has them.
    shutil.rmtree(job_dir / INPUT, ignore_errors=True)
    index.refresh_study_state(job["study_uid"])


def collect(index: Index, settings: NodeSettings) -> int:
    """Record the outcomes of finished jobs and mark started ones running; return how many changed."""
    changed = 0
    for job in index.open_jobs():
        job_dir = settings.data_dir / job["result_dir"]
        outcome = read_outcome(job_dir)
        if outcome is None and (job_dir / OUTCOME).exists():
            # written, but not an outcome this node can read (a bug, a foreign file): say so
            outcome = Outcome(JobState.FAILED, "outcome.json unreadable", 0, time.time(), "")
        if outcome is not None:
            record_outcome(index, settings, job, outcome)
            changed += 1
            continue
        started = read_json(job_dir / STARTED)
        if started is not None and (
            job["state"] != JobState.RUNNING or int(started.get("attempts", 0)) != job["attempts"]
        ):
            index.update_job(
                job["id"],
                state=JobState.RUNNING,
                attempts=int(started.get("attempts", 0)),
                started=float(started.get("time", time.time())),
            )
            index.refresh_study_state(job["study_uid"])
            changed += 1
    return changed


def republish(
    index: Index,
    settings: NodeSettings,
    publish: Publish,
    everything: bool = False,
    now: float | None = None,
    held: bool = False,
) -> int:
    """Publish again the jobs the broker may have lost (see module docstring).

    Jobs that never reached the broker (new, or the broker was down) are published last, in turns
    per sender (:func:`node.schedule.dispatch.publish_waiting`). A published job is lost when it was neither
    finished nor started again within the lease (time limit + 5 min) since it was last published or
    started (its worker died holding the message, or a worker killed between taking the message and
    starting left it nowhere). ``held``: also every job that has started without an outcome, which a
    worker that just died may have been holding (at start-up with the embedded broker, and when the
    node restarts its dead worker). Not every open job: the embedded broker keeps queued messages
    across restarts, and re-publishing them all on every restart piled up copies that each cost a
    worker process (66 copies after 22 restarts in tests/test_fault_process.py). ``everything``:
    every open job. A copy of a job that is done or running is skipped by the worker
    (``outcome.json``, the job lock).
    """
    now = time.time() if now is None else now
    lease = settings.task_time_limit + 300
    count = 0
    for job in index.open_jobs():
        if job["enqueued"] is None:
            continue  # never published: its sender's turn comes in publish_waiting
        lost = now - max(job["started"] or 0.0, job["enqueued"]) > lease
        folder = settings.data_dir / job["result_dir"]
        may_be_held = (
            held
            and (job["state"] == JobState.RUNNING or (folder / STARTED).exists())
            and not (folder / OUTCOME).exists()
        )
        if not (lost or everything or may_be_held):
            continue
        try:
            spec = job_spec(index, settings, job)
        except DiskFullError:
            return count
        if spec is None:
            continue
        if enqueue(index, job["id"], spec, publish):
            log.info("event=job_republished job=%d", job["id"])
            count += 1
        elif BROKER.down_since is not None:
            return count  # the broker is down: the other jobs wait for it too (see BrokerHealth)
    return count + publish_waiting(index, settings, publish)
