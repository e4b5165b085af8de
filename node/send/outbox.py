"""Which result files go to which destinations: the outbox rows of a finished job.

Used when a job finishes (:mod:`node.schedule.results`) and when a study whose results exist is received
again or re-sent by hand (:mod:`node.schedule.dispatch`, ``bodycomp resend --study``): results then go to
every configured destination that has not had them, once (the outbox holds one row per result
and destination), without analysing again.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pydicom

from node.config import NodeSettings
from node.store.index import Index
from workers.job import Outcome, read_outcome

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


def queue_results(
    index: Index,
    settings: NodeSettings,
    job: sqlite3.Row,
    calling_ae: str,
    outcome: Outcome | None = None,
    destinations: list[str] | None = None,
) -> int:
    """Queue a done job's DICOM results for ``destinations`` (default: :func:`destinations_for`
    the calling AE); rows that exist are kept as they are. Returns the rows added."""
    job_dir = settings.data_dir / job["result_dir"]
    outcome = outcome if outcome is not None else read_outcome(job_dir)
    items = result_items(job_dir, list(outcome.outputs)) if outcome is not None else []
    targets = destinations if destinations is not None else destinations_for(settings, calling_ae)
    return index.add_outbox(job["id"], job["study_uid"], items, targets)
