"""The non-DICOM results of a done job: ``fhir.json`` (FHIR R4 Bundle) and ``oru.hl7`` (ORU^R01)
written into its result folder, and the ORU queued for each HL7 destination (``hl7_destinations``,
delivered by :mod:`node.send.hl7`).

Called by :func:`node.schedule.results.record_outcome` when a job is done, in the node process: the node
knows the study's PatientID and accession number (from the index and the stored instances),
which the ORU's PID and OBR and the FHIR subject need. A job that corrects an earlier result
(``correction`` in its ``job.json``) gives a corrected ORU (OBR-25 ``C``) and amended resources.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from node.config import NodeSettings
from node.hl7.oru import OruContext, build_oru
from node.patients.sources import study_identity
from node.store.index import Index
from workers.encode.fhir import FhirContext, build_fhir
from workers.job import JOB, OUT
from workers.jsonfile import read_json, write_json
from workers.result import NOT_FOUND, ResultFileError, read_result

log = logging.getLogger("bodycomp.report_out")

FHIR_FILE = "fhir.json"
ORU_FILE = "oru.hl7"


def control_id(job_id: int) -> str:
    """The ORU's MSH-10: unique per job (and so per result version) on this node."""
    return f"BODYCOMP{job_id}"


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def write_reports(index: Index, settings: NodeSettings, job: sqlite3.Row) -> int:
    """Write ``fhir.json`` and ``oru.hl7`` of a done job and queue the ORU; return rows queued."""
    job_dir = settings.data_dir / job["result_dir"]
    try:
        result = read_result(job_dir / OUT / "result.json")
    except ResultFileError as exc:
        log.warning("event=reports_skipped job=%d reason=%s", job["id"], exc)
        return 0
    if result["status"] == NOT_FOUND or result["status"] == "failed":
        return 0
    spec = read_json(job_dir / JOB)
    corrected = spec is not None and "correction" in spec
    patient = index.study_patient(job["study_uid"])
    patient_id, study_date = patient if patient is not None else ("", "")
    rows = index.series_instances(job["study_uid"], job["series_uid"])
    accession = ""
    if rows:
        try:
            accession = study_identity(str(rows[0]["path"])).accession
        except Exception as exc:  # the ORU goes without an accession number rather than not at all
            log.warning("event=accession_unreadable job=%d reason=%s", job["id"], type(exc).__name__)
    bundle = build_fhir(result, FhirContext(patient_id, job["study_uid"], study_date, corrected))
    write_json(job_dir / OUT / FHIR_FILE, bundle)
    context = OruContext(
        control_id(int(job["id"])), patient_id, accession, job["study_uid"], study_date, corrected
    )
    oru_path = job_dir / OUT / ORU_FILE
    _write_private(oru_path, build_oru(result, context))
    added = index.add_hl7_outbox(
        int(job["id"]), job["study_uid"], str(oru_path), context.control_id, settings.hl7_destinations
    )
    log.info(
        "event=reports_written job=%d fhir=%s oru=%s hl7_deliveries=%d",
        job["id"],
        FHIR_FILE,
        context.control_id,
        added,
    )
    return added
