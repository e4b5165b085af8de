"""A height (or weight) that arrives after a study's results were sent: find the patient's done
studies whose result had none, and ask for a superseding result.

Why: the EHR often records height at admission, after the CT was read; the node must not leave
SMI blank for good. The HL7 listener calls :func:`supersede_for_patient` after it stored a
message's values. For each done study of that patient whose ``result.json`` has no usable height
(or weight) and for which the feed now has one observed within ``hl7_max_age_days`` of the study
date (:func:`node.patients.sources.hl7_values`), :func:`node.schedule.corrections.request_correction`
queues a correction with those values (source ``HL7``): the metrics are recomputed from the
stored masks (no new segmentation) and a superseding SR (Predecessor Documents Sequence) goes to
the destinations like any result, and a corrected ORU to the HL7 destinations.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from node.config import NodeSettings
from node.patients.sources import HL7_SOURCE, StudyIdentity, hl7_values, study_time
from node.schedule.corrections import Correction, CorrectionError, request_correction
from node.store.index import Index
from workers.job import OUT
from workers.result import NOT_FOUND, ResultFileError, read_result

log = logging.getLogger("bodycomp.late_height")


@dataclass(frozen=True)
class LateValues:
    """A done study that lacks a value the feed now has."""

    study_uid: str
    height_m: float | None
    weight_kg: float | None


def _missing(result_path: Path) -> tuple[bool, bool] | None:
    """(height missing, weight missing) in a result, None when there is no usable result (none,
    unreadable: logged, or L3 not found: no metrics a height could complete)."""
    if not result_path.exists():
        return None
    try:
        result = read_result(result_path)
    except ResultFileError as exc:
        log.warning("event=late_height_result_unreadable reason=%s", exc)
        return None
    if result["status"] == NOT_FOUND:
        return None
    inputs = result["patient_inputs"]
    return inputs["height_m"]["value"] is None, inputs["weight_kg"]["value"] is None


def studies_needing_values(index: Index, settings: NodeSettings, patient_id: str) -> list[LateValues]:
    """The patient's done studies whose result lacks height (or weight) that the HL7 feed has."""
    found: dict[str, LateValues] = {}
    for job in index.done_jobs_of_patient(patient_id):
        missing = _missing(settings.data_dir / job["result_dir"] / OUT / "result.json")
        if missing is None or not any(missing):
            continue
        who = StudyIdentity(patient_id, "", study_time(str(job["study_date"]), float(job["created"])))
        values = hl7_values(index, who, settings.hl7_max_age_days)
        if values is None:
            continue
        height = values.height_m if missing[0] else None
        weight = values.weight_kg if missing[1] else None
        if height is None and weight is None:
            continue
        found[str(job["study_uid"])] = LateValues(str(job["study_uid"]), height, weight)
    return list(found.values())


def supersede_for_patient(index: Index, settings: NodeSettings, patient_id: str) -> int:
    """Queue a superseding result for each study of :func:`studies_needing_values`; return how many."""
    queued = 0
    for late in studies_needing_values(index, settings, patient_id):
        try:
            job_id = request_correction(
                index,
                settings,
                late.study_uid,
                Correction(
                    height_m=late.height_m,
                    weight_kg=late.weight_kg,
                    reason="height or weight received from the HL7 feed after the result",
                    source=HL7_SOURCE,
                ),
            )
        except CorrectionError as exc:
            log.warning("event=late_height_not_applied study=%s reason=%s", late.study_uid, exc)
            continue
        log.info("event=late_height_correction study=%s job=%d", late.study_uid, job_id)
        queued += 1
    return queued
