"""Corrections: a new result set for a study, superseding the previous one (issue #23).

Three ways in, one way out. ``bodycomp reanalyze`` (another slice, other patient values), a
reader's SR marking the L3 slice in the viewer and a reader's edited SEG (both routed here by the
PACS, :mod:`node.schedule.reader_objects`) all call :func:`request_correction`, a plain function (no CLI,
no sockets) that other parts of the node can call too (a new height from the hospital's feed).

It creates a job like any other (:mod:`node.schedule.dispatch`): a row in the index, a job folder with the
series' instances linked into ``input/`` and ``job.json``, which carries the correction
(:class:`workers.revision.CorrectionSpec`). The node's scheduler publishes it
(:func:`node.schedule.dispatch.publish_waiting`, every tick), the worker runs it, and its outputs go to the
destinations through the outbox like any result. The job's input hash is the series' hash mixed
with the correction's key, so the same correction asked twice (a reader SR routed twice) is one
job, and the new job supersedes the study's previous one for that series
(:meth:`node.store.index.Index.create_job`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pydicom

from node.config import ConfigError, NodeSettings
from node.schedule.dispatch import job_dir_for, job_flags, patient_fallbacks, prepare_job_dir
from node.store.index import Index, input_hash
from workers.job import OUT, JobSpec, JobState, read_outcome
from workers.revision import LEVEL, OUTLINE, PATIENT, CorrectionSpec

log = logging.getLogger("bodycomp.corrections")

#: Where a correction's extra input (the reader's SEG) is kept in its job folder.
CORRECTION_DIR = "correction"
EDITED_SEG = "edited_seg.dcm"


class CorrectionError(ValueError):
    """The correction cannot be made (no such study, nothing analysed, contradictory values)."""


@dataclass(frozen=True)
class Correction:
    """What to correct in a study's result. Give at most one of ``slice_sop_uid``, ``z_mm`` and
    ``edited_seg``; patient values may come with any of them or alone.

    With only patient values the metrics are recomputed from the stored masks of the current
    result (no new segmentation) when there is one; otherwise the series is analysed again.
    """

    slice_sop_uid: str | None = None
    """Analyse this CT instance (method ``manual``)."""
    z_mm: float | None = None
    """Analyse the slice nearest this patient z (mm, as ``status`` shows it; method ``manual``)."""
    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    edited_seg: Path | None = None
    """A reader's SEG of the analysed slice: its masks replace the segmentation."""
    reason: str = ""
    """Why, in the words of whoever asked (kept in the SR and the result)."""
    source: str = "bodycomp reanalyze"
    """Who asked: ``bodycomp reanalyze``, ``reader SR``, ``reader SEG``, ``HL7 ADT``..."""
    source_instance_uid: str = ""
    """The reader's SR or SEG SOP Instance UID, when the correction came from one."""
    series_uid: str | None = None
    """The series to correct; default the series of the study's current (or last) analysis."""

    @property
    def kinds(self) -> tuple[str, ...]:
        kinds = []
        if self.slice_sop_uid is not None or self.z_mm is not None:
            kinds.append(LEVEL)
        if self.edited_seg is not None:
            kinds.append(OUTLINE)
        if self.height_m is not None or self.weight_kg is not None or self.sex is not None:
            kinds.append(PATIENT)
        return tuple(kinds)

    def check(self) -> None:
        chosen = [v for v in (self.slice_sop_uid, self.z_mm, self.edited_seg) if v is not None]
        if len(chosen) > 1:
            raise CorrectionError("give at most one of a slice UID, a z position and an edited SEG")
        if not self.kinds:
            raise CorrectionError("nothing to correct: give a slice, a z, an edited SEG or patient values")
        if self.sex is not None and self.sex.upper() not in ("M", "F"):
            raise CorrectionError(f"sex must be M or F, not {self.sex!r}")

    @property
    def key(self) -> str:
        """Identifies this correction: the same one asked twice is the same job."""
        seg = ""
        if self.edited_seg is not None:
            seg = hashlib.sha256(self.edited_seg.read_bytes()).hexdigest()
        parts = [
            self.slice_sop_uid,
            self.z_mm,
            self.height_m,
            self.weight_kg,
            self.sex and self.sex.upper(),
            seg,
            self.source_instance_uid,
        ]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def current_job(index: Index, study_uid: str, series_uid: str | None = None) -> sqlite3.Row | None:
    """The study's job a correction starts from: its current (not superseded) job of the series,
    else its last job (a study whose analysis failed has a failed one)."""
    rows = index.jobs_of(study_uid)
    if series_uid is not None:
        rows = [r for r in rows if r["series_uid"] == series_uid]
    current = [r for r in rows if r["state"] != JobState.SUPERSEDED]
    chosen = current or rows
    return chosen[-1] if chosen else None


def last_done_job(index: Index, data_dir: Path, study_uid: str, series_uid: str) -> sqlite3.Row | None:
    """The series' most recent job that produced results (its SR is the predecessor): ``done``, or
    ``superseded`` after it was done (a correction still running superseded it)."""
    done = [
        r
        for r in index.jobs_of(study_uid)
        if r["series_uid"] == series_uid
        and r["state"] in (JobState.DONE, JobState.SUPERSEDED)
        and (outcome := read_outcome(data_dir / r["result_dir"])) is not None
        and outcome.state == JobState.DONE
    ]
    return done[-1] if done else None


def _sr_uids(job_dir: Path) -> tuple[str, str, str, str] | None:
    path = job_dir / OUT / "dicom" / "sr.dcm"
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, pydicom.errors.InvalidDicomError):
        return None
    return (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID))


def request_correction(index: Index, settings: NodeSettings, study_uid: str, correction: Correction) -> int:
    """Queue a correction of ``study_uid``'s result; return the job id (an existing one when the
    same correction was asked before). The running node publishes it at its next tick.

    Raises :class:`CorrectionError` when the study is unknown, was never analysed or the
    correction is contradictory.
    """
    correction.check()
    if index.study(study_uid) is None:
        raise CorrectionError(f"no study {study_uid} in the node's index")
    base = current_job(index, study_uid, correction.series_uid)
    if base is None:
        raise CorrectionError(f"study {study_uid} has no analysis to correct (no CT series was chosen)")
    series_uid = str(base["series_uid"])
    rows = index.series_instances(study_uid, series_uid)
    if not rows:
        raise CorrectionError(f"the instances of series {series_uid} are no longer in the spool")
    if correction.slice_sop_uid is not None and correction.slice_sop_uid not in {r["sop_uid"] for r in rows}:
        # (checked here, before the current result is superseded by a job that could only fail)
        raise CorrectionError(f"instance {correction.slice_sop_uid} is not a slice of the analysed series")
    previous = last_done_job(index, settings.data_dir, study_uid, series_uid)
    key = correction.key
    digest = hashlib.sha256(
        f"{input_hash((r['sop_uid'], r['digest']) for r in rows)}|correction|{key}".encode()
    ).hexdigest()
    rel_dir = job_dir_for(study_uid, series_uid, digest)
    job_dir = settings.data_dir / rel_dir
    edited = None
    if correction.edited_seg is not None:
        edited = f"{CORRECTION_DIR}/{EDITED_SEG}"
    spec_correction = CorrectionSpec(
        kinds=correction.kinds,
        key=key,
        source=correction.source,
        reason=correction.reason,
        source_instance_uid=correction.source_instance_uid,
        slice_sop_uid=correction.slice_sop_uid,
        z_mm=correction.z_mm,
        height_m=correction.height_m,
        weight_kg=correction.weight_kg,
        sex=correction.sex.upper() if correction.sex else None,
        edited_seg=edited,
        previous_job_dir=None if previous is None else str(previous["result_dir"]),
        previous_sr_uids=None if previous is None else _sr_uids(settings.data_dir / previous["result_dir"]),
    )
    flags = tuple(job_flags(index, study_uid, series_uid))
    fallbacks = patient_fallbacks(index, settings, rows)

    def prepare(job_id: int) -> None:
        if correction.edited_seg is not None:
            (job_dir / CORRECTION_DIR).mkdir(parents=True, exist_ok=True)
            shutil.copy2(correction.edited_seg, job_dir / CORRECTION_DIR / EDITED_SEG)
        spec = JobSpec(
            job_id=job_id,
            study_uid=study_uid,
            series_uid=series_uid,
            input_hash=digest,
            job_dir=rel_dir,
            instances=len(rows),
            flags=flags,
            patient_fallbacks=fallbacks,
            correction=spec_correction,
        )
        prepare_job_dir(job_dir, [r["path"] for r in rows], spec)

    # the job and its folder together: the running node must not see one without the other
    job_id, created = index.create_job(
        study_uid, series_uid, digest, rel_dir, str(base["calling_ae"]), prepare=prepare
    )
    if not created:
        log.info(
            "event=correction_exists study=%s job=%d (the same correction: not queued again)",
            study_uid,
            job_id,
        )
        return job_id
    index.reopen_for_correction(study_uid)
    log.info(
        "event=correction_queued study=%s series=%s job=%d kinds=%s source=%s supersedes=%s",
        study_uid,
        series_uid,
        job_id,
        ",".join(correction.kinds),
        correction.source,
        "-" if previous is None else previous["id"],
    )
    return job_id


def reanalyze(node: NodeSettings, study_uid: str, correction: Correction) -> tuple[int, bool]:
    """``bodycomp reanalyze``: :func:`request_correction` on the node's index (the running node
    publishes the job); returns the job id and whether it is new (the same correction asked before
    is its earlier job). Raises :class:`ConfigError` (exit 2) for what the operator must fix."""
    if not node.index_path.exists():
        raise ConfigError(f"no node index at {node.index_path} (wrong --data-dir?)")
    index = Index(node.index_path)
    try:
        before = {int(r["id"]) for r in index.jobs_of(study_uid)}
        job_id = request_correction(index, node, study_uid, correction)
        return job_id, job_id not in before
    except CorrectionError as exc:
        raise ConfigError(str(exc)) from exc
    finally:
        index.close()
