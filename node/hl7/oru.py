"""ORU^R01 (HL7 v2.5.1) of one analysed study: the numbers of ``result.json`` as coded OBX segments.

Layout (one message per job):

* ``MSH`` … ``ORU^R01^ORU_R01``, control ID unique per job, charset UTF-8;
* ``PID``: PID-3 the study's PatientID (type MR), the key the receiving system matches on;
* ``ORC``/``OBR``: the accession number (ORC-3/OBR-3, filler order number), OBR-4
  ``L3METRICS^Body composition metrics at L3^99BODYCOMP``, OBR-7 the study date, OBR-25 ``F``
  (``C`` for a result that supersedes an earlier one);
* ``OBX`` per value, with the codes of the SR (:mod:`workers.encode.codes`): for each tissue a
  group sharing a sub-ID (OBX-4 = the tissue's SEG segment number): a CWE ``Finding site`` naming
  the tissue (SNOMED CT), then NM area (cm2), mean and SD of attenuation ([hnsf'U]); then SMI
  (cm2/m2), BMI, VAT/SAT, IMAT %, waist, body height (LOINC 8302-2, m) and weight (LOINC
  29463-7, kg) as NM; low skeletal muscle mass and myosteatosis as CWE Present/Absent/Undetermined
  (SNOMED CT), the source of height and weight and the Study Instance UID as ST, the QC verdict
  as CWE. Units in OBX-6 are UCUM. A value that could not be computed has no OBX.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from highdicom.sr import CodedConcept

from workers.encode import codes as c
from workers.encode.report_items import Quantity, report_items
from workers.result import MeasuredResult

#: OBR-4: what the report is.
REPORT_CODE = c.DERIVED_METRICS
STUDY_UID_CODE = CodedConcept("110180", "DCM", "Study Instance UID")
INPUT_SOURCE_CODE = c.private("INPUTSRC", "Source of height, weight and sex")


@dataclass(frozen=True)
class OruContext:
    """Who and what the message is about (from the index and the study's instances)."""

    control_id: str
    patient_id: str
    accession: str
    study_uid: str
    study_date: str
    """``YYYYMMDD`` or empty."""
    corrected: bool = False
    """This result supersedes one sent before (OBR-25 and OBX-11 ``C``)."""


def escape(text: str) -> str:
    r"""Text for an HL7 field with the standard escapes (``\F\ \S\ \T\ \R\ \E\``), no line breaks."""
    out = text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
    out = out.replace("&", "\\T\\").replace("~", "\\R\\")
    return out.replace("\r", " ").replace("\n", " ")


def coded(concept: CodedConcept) -> str:
    """A CWE/CE value: ``code^meaning^system``."""
    return f"{escape(concept.value)}^{escape(concept.meaning)}^{escape(concept.scheme_designator)}"


def number(value: float) -> str:
    """An NM value: Python's shortest exact text (the same float when parsed back)."""
    return repr(float(value))


def build_oru(result: MeasuredResult, context: OruContext, now: float | None = None) -> str:
    """The ORU^R01 message, segments separated by CR."""
    items = report_items(result)
    stamp = dt.datetime.fromtimestamp(dt.datetime.now().timestamp() if now is None else now)
    when = stamp.strftime("%Y%m%d%H%M%S")
    status = "C" if context.corrected else "F"
    accession = escape(context.accession)
    segments = [
        f"MSH|^~\\&|BODYCOMP||||{when}||ORU^R01^ORU_R01|{escape(context.control_id)}|P|2.5.1"
        "|||AL|NE||UNICODE UTF-8",
        f"PID|1||{escape(context.patient_id)}^^^^MR",
        f"ORC|RE||{accession}",
        f"OBR|1||{accession}|{coded(REPORT_CODE)}|||{escape(context.study_date)}"
        + "|" * 15
        + f"{when}|||{status}",
    ]
    obx: list[str] = []

    def add(value_type: str, concept: CodedConcept, sub_id: str, value: str, unit: str = "") -> None:
        obx.append(
            f"OBX|{len(obx) + 1}|{value_type}|{coded(concept)}|{sub_id}|{value}|{unit}|||||{status}|||{when}"
        )

    def quantity(q: Quantity, sub_id: str = "") -> None:
        add("NM", q.concept, sub_id, number(q.value), coded(q.unit))

    for tissue in items.tissues:
        sub_id = str(tissue.tissue.label)
        add("CWE", c.FINDING_SITE, sub_id, coded(tissue.tissue.type))
        quantity(tissue.area, sub_id)
        for extra in (tissue.mean_hu, tissue.sd_hu):
            if extra is not None:
                quantity(extra, sub_id)
    for q in items.quantities:
        quantity(q)
    for verdict in items.verdicts:
        add("CWE", verdict.concept, "", coded(verdict.value))
    add("ST", INPUT_SOURCE_CODE, "", escape(items.input_source))
    add("CWE", c.QC_VERDICT, "", coded(c.QC_OK if items.qc_status == "ok" else c.QC_REVIEW))
    add("ST", STUDY_UID_CODE, "", escape(context.study_uid))
    return "\r".join(segments + obx)
