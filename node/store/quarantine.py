"""Instances that crash the analysis leave the spool, so that nothing reads them again.

Why: a stored instance can kill whatever reads it (a pixel module or private element that
inflates to gigabytes, a file that crashes a native decoder). Retried, it kills the worker again;
left in the spool, every new job of its series and every re-planning after a restart would read
it again. When an analysis crashed :data:`workers.tasks.CRASHES_BEFORE_QUARANTINE` times
(its process killed while its worker lived on), the worker fails the job with ``quarantine``
in its outcome and the node moves the series' instances here::

    DATA/quarantine/<study>/<series>/job-<id>/   the instances (0600) and quarantine.json

and forgets them in its index: the study is ``failed`` with the reason, no later job includes
them, and nothing is lost. The operator can inspect the files, delete them, or send them again
once the cause is fixed (they are then new instances to the node; the same input maps to the
failed job and is not analysed again unless the series changes). See docs/operations.md.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from node.config import NodeSettings
from node.store.index import Index
from node.store.spool import fsync_dir
from workers.jsonfile import write_json

log = logging.getLogger("bodycomp.quarantine")

QUARANTINE = "quarantine"
MANIFEST = "quarantine.json"


def quarantine_folder(settings: NodeSettings, job: sqlite3.Row) -> Path:
    return settings.data_dir / QUARANTINE / job["study_uid"] / job["series_uid"] / f"job-{job['id']}"


def quarantine_series(index: Index, settings: NodeSettings, job: sqlite3.Row, reason: str) -> Path:
    """Move the instances of the job's series out of the spool and the index; return the folder."""
    folder = quarantine_folder(settings, job)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    moved: list[str] = []
    for row in index.series_instances(job["study_uid"], job["series_uid"]):
        source = Path(row["path"])
        try:
            source.replace(folder / source.name)
        except FileNotFoundError:
            if not (folder / source.name).exists():  # (moved by an earlier, interrupted call: kept)
                log.warning("event=quarantine_missing job=%d file=%s", job["id"], source.name)
                continue
        moved.append(str(row["sop_uid"]))
    fsync_dir(folder)
    write_json(
        folder / MANIFEST,
        {
            "job_id": int(job["id"]),
            "study_uid": job["study_uid"],
            "series_uid": job["series_uid"],
            "input_hash": job["input_hash"],
            "reason": reason,
            "instances": len(moved),
            "time": time.time(),
        },
    )
    index.forget_instances(job["study_uid"], job["series_uid"], moved)
    log.error(
        "event=instances_quarantined study=%s series=%s job=%d instances=%d folder=%s",
        job["study_uid"],
        job["series_uid"],
        job["id"],
        len(moved),
        folder,
    )
    return folder
