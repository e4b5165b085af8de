"""FHIR R4 resources of one analysed study: an Observation per measurement and a DiagnosticReport,
in a ``collection`` Bundle (``fhir.json`` in the result folder).

* one Observation per tissue (code: the tissue, SNOMED CT; body site: L3 vertebra) with its
  area, mean and SD of attenuation as ``component``s: they are one measurement of one region;
* one Observation each for SMI, BMI, VAT/SAT ratio, IMAT %, waist, body height (LOINC 8302-2)
  and body weight (LOINC 29463-7) (``valueQuantity``, UCUM), the source of height and weight in
  ``method.text``;
* one Observation each for low skeletal muscle mass and myosteatosis (``valueCodeableConcept``
  Present/Absent/Undetermined, SNOMED CT; the rule set in ``method``, the reason in ``note``);
* a DiagnosticReport referencing them all, identified by the Study Instance UID, with the QC
  verdict in ``conclusion``.

The subject is given by identifier (the PatientID), since the node knows no FHIR server's
Patient resource. Plain JSON (no FHIR library at run time); the tests validate it with
``fhir.resources`` (R4B models, identical to R4 for these two resources). The codes are those of
the SR (:mod:`workers.encode.codes`).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from highdicom.sr import CodedConcept

import workers.encode.codes as c
from workers.encode.report_items import Quantity, report_items
from workers.result import MeasuredResult

#: FHIR code system URIs of the coding schemes used by bodycomp.
SYSTEMS = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UCUM": "http://unitsofmeasure.org",
    c.PRIVATE_SCHEME: "urn:bodycomp:codes",
}
IMAGING = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging",
            "display": "Imaging",
        }
    ]
}


@dataclass(frozen=True)
class FhirContext:
    patient_id: str
    study_uid: str
    study_date: str
    """``YYYYMMDD`` or empty."""
    corrected: bool = False
    """This result supersedes one written before (status ``amended``)."""


def coding(concept: CodedConcept) -> dict[str, Any]:
    return {
        "system": SYSTEMS[concept.scheme_designator],
        "code": concept.value,
        "display": concept.meaning,
    }


def concept_json(concept: CodedConcept, text: str | None = None) -> dict[str, Any]:
    return {"coding": [coding(concept)], "text": text or concept.meaning}


def quantity_json(q: Quantity) -> dict[str, Any]:
    return {"value": q.value, "unit": q.unit.meaning, "system": SYSTEMS["UCUM"], "code": q.unit.value}


def _date(study_date: str) -> str | None:
    try:
        return dt.datetime.strptime(study_date[:8], "%Y%m%d").date().isoformat()
    except ValueError:
        return None


def build_fhir(result: MeasuredResult, context: FhirContext, now: float | None = None) -> dict[str, Any]:
    """The Bundle (a JSON-ready dict)."""
    items = report_items(result)
    issued = dt.datetime.fromtimestamp(
        dt.datetime.now().timestamp() if now is None else now, tz=dt.UTC
    ).isoformat()
    status = "amended" if context.corrected else "final"
    common: dict[str, Any] = {
        "resourceType": "Observation",
        "status": status,
        "category": [IMAGING],
        "subject": {"identifier": {"value": context.patient_id}, "display": "patient of the study"},
        "issued": issued,
    }
    effective = _date(context.study_date)
    if effective is not None:
        common["effectiveDateTime"] = effective
    l3 = concept_json(c.L3_VERTEBRA)
    observations: list[dict[str, Any]] = []
    for tissue in items.tissues:
        components = [
            {
                "code": concept_json(q.concept, f"{tissue.tissue.name}: {q.concept.meaning}"),
                "valueQuantity": quantity_json(q),
            }
            for q in (tissue.area, tissue.mean_hu, tissue.sd_hu)
            if q is not None
        ]
        observations.append(
            {
                **common,
                "code": concept_json(tissue.tissue.type, f"{tissue.tissue.name} at L3"),
                "bodySite": l3,
                "component": components,
            }
        )
    for q in items.quantities:
        entry: dict[str, Any] = {**common, "code": concept_json(q.concept), "valueQuantity": quantity_json(q)}
        if q.concept in (c.BODY_HEIGHT, c.BODY_WEIGHT):
            entry["method"] = {"text": f"from {items.input_source}"}
        else:
            entry["bodySite"] = l3
        observations.append(entry)
    for verdict in items.verdicts:
        entry = {
            **common,
            "code": concept_json(verdict.concept),
            "valueCodeableConcept": concept_json(verdict.value),
            "method": concept_json(c.rule_set_method(verdict.rule_set)),
        }
        if verdict.reason:
            entry["note"] = [{"text": verdict.reason}]
        observations.append(entry)
    urls = [f"urn:uuid:{uuid.uuid4()}" for _ in observations]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": status,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{context.study_uid}"}],
        "category": [concept_json(CodedConcept("CT", "DCM", "Computed Tomography"))],
        "code": concept_json(c.DERIVED_METRICS),
        "subject": common["subject"],
        "issued": issued,
        "result": [{"reference": url} for url in urls],
        "conclusion": f"Automated result check: {items.qc_status}; height and weight from "
        f"{items.input_source}. Automatic measurement for review by a qualified reader.",
    }
    if effective is not None:
        report["effectiveDateTime"] = effective
    entries = [{"fullUrl": url, "resource": obs} for url, obs in zip(urls, observations, strict=True)]
    entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": report})
    return {"resourceType": "Bundle", "type": "collection", "timestamp": issued, "entry": entries}
