"""Height and weight for a job, from the sources after the DICOM header, in the documented order:
DICOM header (the worker reads it) → HL7 feed (:mod:`node.hl7.listener`) → site table
(:mod:`node.patients.site_table`) → a reader's entry (``bodycomp reanalyze --height-m``).

At dispatch, :func:`fallbacks_for` writes into the job the values each source has for the study's
patient; the worker uses them in that order only where the header has no plausible value
(:attr:`workers.pipeline.AnalysisOptions.fallbacks`), and records the source of each value used.

"Too old": an HL7 observation is used for a study only when it was observed within
``hl7_max_age_days`` of the study's date (before or after); of those, the one observed nearest
the study date.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

import pydicom

from node.config import NodeSettings
from node.patients.site_table import SOURCE as SITE_SOURCE
from node.patients.site_table import SiteTable
from node.store.index import Index
from workers.job import PatientValues

log = logging.getLogger("bodycomp.patient_sources")

#: The ``source`` recorded for values from the HL7 feed (result.json, SR, export).
HL7_SOURCE = "HL7"


@dataclass(frozen=True)
class StudyIdentity:
    """Who and when a study is, read from one of its stored instances."""

    patient_id: str
    accession: str
    study_time: float
    """Epoch seconds of StudyDate (local midnight); the time of receipt when it has none."""


def study_time(study_date: str, default: float) -> float:
    """StudyDate ``YYYYMMDD`` as epoch seconds (local midnight), ``default`` when absent or bad."""
    try:
        return dt.datetime.strptime(study_date.strip()[:8], "%Y%m%d").timestamp()
    except ValueError:
        return default


def study_identity(path: str) -> StudyIdentity:
    """PatientID, AccessionNumber and StudyDate of the instance at ``path``."""
    ds = pydicom.dcmread(
        path, stop_before_pixels=True, specific_tags=["PatientID", "AccessionNumber", "StudyDate"]
    )
    return StudyIdentity(
        patient_id=str(ds.get("PatientID", "") or ""),
        accession=str(ds.get("AccessionNumber", "") or ""),
        study_time=study_time(str(ds.get("StudyDate", "") or ""), time.time()),
    )


def hl7_values(index: Index, who: StudyIdentity, max_age_days: float) -> PatientValues | None:
    """The HL7 height and weight nearest the study date within ``max_age_days``; None if neither."""
    chosen: dict[str, float] = {}
    best: dict[str, float] = {}
    for row in index.observations_for(who.patient_id, who.accession):
        distance = abs(float(row["observed"]) - who.study_time)
        if distance > max_age_days * 86400:
            continue
        kind = str(row["kind"])
        if kind not in best or distance < best[kind]:
            best[kind], chosen[kind] = distance, float(row["value"])
    if not chosen:
        return None
    return PatientValues(HL7_SOURCE, chosen.get("height_m"), chosen.get("weight_kg"))


#: One site table per path, kept between dispatches so that it is read again only when it changes.
_tables: dict[tuple[str, str], SiteTable] = {}


def site_values(settings: NodeSettings, who: StudyIdentity) -> PatientValues | None:
    if settings.site_table is None:
        return None
    key = (str(settings.site_table), settings.site_table_key)
    if key not in _tables:
        _tables[key] = SiteTable(settings.site_table, settings.site_table_key)
    values = _tables[key].lookup(who.patient_id, who.accession)
    if values is None or (values.height_m is None and values.weight_kg is None):
        return None
    return PatientValues(SITE_SOURCE, values.height_m, values.weight_kg)


def fallbacks_for(index: Index, settings: NodeSettings, instance_path: str) -> list[PatientValues]:
    """The sources after the header that have a value for the study of ``instance_path``, in order."""
    try:
        who = study_identity(instance_path)
    except Exception as exc:  # an unreadable instance fails the analysis with its own reason
        log.warning("event=patient_sources_unreadable reason=%s", type(exc).__name__)
        return []
    found = [hl7_values(index, who, settings.hl7_max_age_days), site_values(settings, who)]
    return [f for f in found if f is not None]
