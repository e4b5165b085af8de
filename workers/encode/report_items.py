"""The numbers of a ``result.json`` as typed, coded items, for the encoders that are not DICOM
(HL7 ORU^R01 in :mod:`node.hl7.oru`, FHIR in :mod:`workers.encode.fhir`).

Why one list: the ORU, the FHIR resources and the SR must say the same thing with the same codes
(:mod:`workers.encode.codes`); each encoder only chooses the syntax. A value that is null in
``result.json`` (not computable) is left out here; its reason stays in result.json and the SR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from highdicom.sr import CodedConcept

import workers.encode.codes as c
from workers.result import DeterminationKey, MeasuredResult, NumberMetric


@dataclass(frozen=True)
class Quantity:
    """One number with its concept and UCUM unit."""

    key: str
    """Where it is in result.json (``metrics.smi_cm2_m2``, ``tissues.vat.area_cm2``)."""
    concept: CodedConcept
    value: float
    unit: CodedConcept


@dataclass(frozen=True)
class TissueValues:
    """Area, mean and SD of attenuation of one tissue at L3."""

    tissue: c.TissueCodes
    area: Quantity
    mean_hu: Quantity | None
    sd_hu: Quantity | None


@dataclass(frozen=True)
class Verdict:
    """A determination (low skeletal muscle mass, myosteatosis): Present, Absent or Undetermined."""

    key: str
    concept: CodedConcept
    value: CodedConcept
    rule_set: str
    reason: str


@dataclass(frozen=True)
class ReportItems:
    tissues: tuple[TissueValues, ...]
    quantities: tuple[Quantity, ...]
    verdicts: tuple[Verdict, ...]
    input_source: str
    """Where height, weight and sex came from (``HL7``, ``DICOM header``, ``site table``...)."""
    qc_status: str


#: Derived metrics reported, with their concept and unit (result.json ``metrics`` keys).
METRICS: tuple[tuple[NumberMetric, CodedConcept, CodedConcept], ...] = (
    ("smi_cm2_m2", c.SMI, c.UNIT_CM2_PER_M2),
    ("bmi", c.BMI, c.UNIT_KG_PER_M2),
    ("vat_sat_ratio", c.VAT_SAT_RATIO, c.UNIT_RATIO),
    ("imat_percent", c.IMAT_PERCENT, c.UNIT_PERCENT),
    ("waist_circumference_cm", c.WAIST, c.UNIT_CM),
)
VERDICTS: tuple[tuple[DeterminationKey, CodedConcept], ...] = (
    ("lsmm", c.LSMM),
    ("myosteatosis", c.MYOSTEATOSIS),
)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def report_items(result: MeasuredResult) -> ReportItems:
    """The reported values of ``result`` (a done analysis' ``result.json``)."""
    tissues_json = result["tissues"]
    tissues = []
    for tissue in c.TISSUES:
        entry = tissues_json[tissue.key]
        area = _number(entry["area_cm2"])
        if area is None:
            continue
        mean, sd = _number(entry["mean_hu"]), _number(entry["sd_hu"])
        prefix = f"tissues.{tissue.key}"
        tissues.append(
            TissueValues(
                tissue=tissue,
                area=Quantity(f"{prefix}.area_cm2", c.AREA, area, c.UNIT_CM2),
                mean_hu=None if mean is None else Quantity(f"{prefix}.mean_hu", c.MEAN, mean, c.UNIT_HU),
                sd_hu=None
                if sd is None
                else Quantity(f"{prefix}.sd_hu", c.STANDARD_DEVIATION, sd, c.UNIT_HU),
            )
        )
    metrics = result["metrics"]
    quantities = [
        Quantity(f"metrics.{key}", concept, value, unit)
        for key, concept, unit in METRICS
        if (value := _number(metrics[key])) is not None
    ]
    inputs = result["patient_inputs"]
    sources = []
    for key, given, concept, unit in (
        ("height_m", inputs["height_m"], c.BODY_HEIGHT, c.UNIT_M),
        ("weight_kg", inputs["weight_kg"], c.BODY_WEIGHT, c.UNIT_KG),
    ):
        value = _number(given["value"])
        if value is not None:
            quantities.append(Quantity(f"patient_inputs.{key}.value", concept, value, unit))
            sources.append(str(given["source"]))
    verdicts = []
    for key, concept in VERDICTS:
        determination = metrics[key]
        flag = determination["value"]
        answer = c.UNDETERMINED if flag is None else c.PRESENT if flag else c.ABSENT
        verdicts.append(
            Verdict(key, concept, answer, str(determination["rule_set"]), str(determination["reason"] or ""))
        )
    return ReportItems(
        tissues=tuple(tissues),
        quantities=tuple(quantities),
        verdicts=tuple(verdicts),
        input_source=", ".join(sorted(set(sources))) or "none",
        qc_status=str(result["qc"]["status"]),
    )
