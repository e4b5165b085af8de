"""Worker outcomes into the index and the outbox; re-publishing jobs a dead worker dropped.

Workers report through files in each job folder (``started.json``, then ``outcome.json``, see
:mod:`workers.tasks`) rather than writing to SQLite, which must not be shared across hosts. The
node's scheduler calls :func:`collect` every tick: a started job becomes ``running``, a finished
one ``done`` or ``failed`` (with the reason, shown by ``bodycomp status``), and the DICOM files of
a done job enter the outbox once per destination.

:func:`republish` is the safety net under the broker: a job that never reached the broker, or
that started and never finished within the time limit (its worker died holding the message on a
transport that cannot give it back), is published again. Tasks are idempotent, so a duplicate
message costs a look at ``outcome.json``.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pydicom

from node.config import NodeSettings
from node.dispatch import Publish, enqueue
from node.index import Index
from workers.tasks import INPUT, JOB, OUTCOME, STARTED, read_json

log = logging.getLogger("bodycomp.results")


def destinations_for(settings: NodeSettings, calling_ae: str) -> list[str]:
    """The sending AE when it is a configured destination (``return_to_sender``), else all."""
    destinations = settings.destination_list()
    if settings.return_to_sender:
        back = [d for d in destinations if d.ae_title == calling_ae]
        if back:
            return [str(back[0])]
    return [str(d) for d in destinations]


def result_items(job_dir: Path, outputs: list[str]) -> list[tuple[str, str, str]]:
    """(path, SOP Instance UID, SOP Class UID) of each DICOM result file."""
    items = []
    for rel in outputs:
        path = job_dir / rel
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            items.append((str(path), str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
        except Exception as exc:
            log.error("event=result_unreadable path=%s reason=%s", path, exc)
    return items


def record_outcome(index: Index, settings: NodeSettings, job: sqlite3.Row, outcome: dict[str, Any]) -> None:
    job_dir = settings.data_dir / job["result_dir"]
    state = "done" if outcome.get("state") == "done" else "failed"
    index.update_job(
        job["id"],
        state=state,
        reason=str(outcome.get("reason", "")),
        attempts=int(outcome.get("attempts", 0)),
        finished=float(outcome.get("finished", time.time())),
    )
    if state == "done":
        items = result_items(job_dir, list(outcome.get("outputs", [])))
        destinations = destinations_for(settings, job["calling_ae"])
        added = index.add_outbox(job["id"], job["study_uid"], items, destinations)
        log.info(
            "event=job_done study=%s series=%s job=%d results=%d deliveries=%d",
            job["study_uid"],
            job["series_uid"],
            job["id"],
            len(items),
            added,
        )
    else:
        log.warning(
            "event=job_failed study=%s series=%s job=%d reason=%s",
            job["study_uid"],
            job["series_uid"],
            job["id"],
            outcome.get("reason", ""),
        )
    # The input links kept the job's instances alive; the spool still has them.
    shutil.rmtree(job_dir / INPUT, ignore_errors=True)
    index.refresh_study_state(job["study_uid"])


def collect(index: Index, settings: NodeSettings) -> int:
    """Record the outcomes of finished jobs and mark started ones running; return how many changed."""
    changed = 0
    for job in index.open_jobs():
        job_dir = settings.data_dir / job["result_dir"]
        outcome = read_json(job_dir / OUTCOME)
        if outcome is not None:
            record_outcome(index, settings, job, outcome)
            changed += 1
            continue
        started = read_json(job_dir / STARTED)
        if started is not None and (
            job["state"] != "running" or int(started.get("attempts", 0)) != job["attempts"]
        ):
            index.update_job(
                job["id"],
                state="running",
                attempts=int(started.get("attempts", 0)),
                started=float(started.get("time", time.time())),
            )
            index.refresh_study_state(job["study_uid"])
            changed += 1
    return changed


def republish(
    index: Index, settings: NodeSettings, publish: Publish, everything: bool = False, now: float | None = None
) -> int:
    """Publish again the jobs the broker may have lost (see module docstring).

    ``everything``: every open job (at start-up with the embedded broker, whose only worker is
    the node's own child and so cannot be running anything yet).
    """
    now = time.time() if now is None else now
    lease = settings.task_time_limit + 300
    count = 0
    for job in index.open_jobs():
        lost = job["enqueued"] is None or (
            job["state"] == "running"
            and job["started"] is not None
            and now - max(job["started"], job["enqueued"]) > lease
        )
        if not (lost or everything):
            continue
        spec = read_json(settings.data_dir / job["result_dir"] / JOB)
        if spec is None:
            index.update_job(job["id"], state="failed", reason="job folder missing")
            continue
        if enqueue(index, job["id"], spec, publish):
            log.info("event=job_republished job=%d", job["id"])
            count += 1
    return count
