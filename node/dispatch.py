"""A stable study becomes analysis jobs: choose the series, prepare each job, enqueue it.

The series are chosen by the same documented rules as ``bodycomp inspect``
(:mod:`workers.series_selection`): one result set per study by default, or every eligible CT
series with ``all_series``. A study with nothing to analyse (non-CT, reports, localisers only) is
accepted and ignored, with one log line saying why.

A job is identified by (series, input hash), the hash of its instances' SOP Instance UIDs and
contents: a study re-sent unchanged maps to the job that already exists and nothing runs again;
a late instance gives a new hash, a new job, new result UIDs, and supersedes the older job.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.config import NodeSettings
from node.index import Index, input_hash
from node.stability import StableStudy
from workers.dicom_scan import scan_dicom
from workers.errors import BodycompError
from workers.series_selection import SelectionPolicy, select_series
from workers.tasks import INPUT, JOB, write_json

log = logging.getLogger("bodycomp.dispatch")

Publish = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Plan:
    """What to do with a stable study: the series to analyse, or why nothing."""

    series: tuple[str, ...]
    ignored_reason: str = ""


def plan_study(study_dir: Path, policy: SelectionPolicy, all_series: bool) -> Plan:
    """Choose the series of the study in ``study_dir`` to analyse (a plain function)."""
    scan = scan_dicom(study_dir)
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


def job_dir_for(study_uid: str, series_uid: str, digest: str) -> str:
    """Job folder relative to the data directory (UIDs were checked by the spool)."""
    return f"results/{study_uid}/{series_uid}/{digest[:16]}"


def prepare_job_dir(job_dir: Path, paths: list[str], spec: dict[str, Any]) -> None:
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
    write_json(job_dir / JOB, spec)


def dispatch_study(
    study: StableStudy, index: Index, settings: NodeSettings, policy: SelectionPolicy, publish: Publish
) -> list[int]:
    """Create and enqueue the jobs of a stable study; return the ids of new jobs."""
    plan = plan_study(settings.spool_dir / "studies" / study.study_uid, policy, settings.all_series)
    if not plan.series:
        log.info("event=study_ignored study=%s reason=%s", study.study_uid, plan.ignored_reason)
        index.set_study_state(study.study_uid, "ignored", plan.ignored_reason)
        if not settings.keep_ignored:
            shutil.rmtree(settings.spool_dir / "studies" / study.study_uid, ignore_errors=True)
        return []
    new_jobs = []
    for series_uid in plan.series:
        rows = index.query("SELECT sop_uid, digest, path FROM instances WHERE series_uid=?", (series_uid,))
        digest = input_hash((r["sop_uid"], r["digest"]) for r in rows)
        rel_dir = job_dir_for(study.study_uid, series_uid, digest)
        job_id, created = index.create_job(study.study_uid, series_uid, digest, rel_dir, study.calling_ae)
        if not created:
            log.info(
                "event=job_exists study=%s series=%s job=%d (same input: not analysed again)",
                study.study_uid,
                series_uid,
                job_id,
            )
            continue
        spec = {
            "job_id": job_id,
            "study_uid": study.study_uid,
            "series_uid": series_uid,
            "input_hash": digest,
            "job_dir": rel_dir,
            "instances": len(rows),
        }
        prepare_job_dir(settings.data_dir / rel_dir, [r["path"] for r in rows], spec)
        log.info(
            "event=job_created study=%s series=%s job=%d instances=%d hash=%s",
            study.study_uid,
            series_uid,
            job_id,
            len(rows),
            digest[:16],
        )
        enqueue(index, job_id, spec, publish)
        new_jobs.append(job_id)
    index.set_study_state(study.study_uid, "queued")
    index.refresh_study_state(study.study_uid)
    return new_jobs


def enqueue(index: Index, job_id: int, spec: dict[str, Any], publish: Publish) -> bool:
    """Publish a job to the broker; a broker that is down leaves it for the next round."""
    try:
        publish(spec)
    except Exception as exc:  # kombu raises many types for an unreachable broker
        log.error("event=enqueue_failed job=%d reason=%s: %s", job_id, type(exc).__name__, exc)
        return False
    index.mark_enqueued(job_id)
    return True
