"""FHIR R4 and ORU^R01 encodings of a result (issue #26), checked with maintained libraries:
the FHIR Bundle validates with ``fhir.resources`` (R4B models, which equal R4 for Observation and
DiagnosticReport), the ORU parses back with python-hl7 to the values of ``result.json``."""

from __future__ import annotations

from typing import Any

import hl7
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from node.hl7.oru import OruContext, build_oru
from workers.encode.fhir import FhirContext, build_fhir


def determination(value: bool | None, reason: str) -> dict[str, Any]:
    return {"value": value, "rule_set": "martin2013@1", "reason": reason}


def result(height: float | None = 1.76) -> dict[str, Any]:
    """The parts of a ``result.json`` the encoders read, with the pipeline's keys."""
    return {
        "status": "ok",
        "tissues": {
            "skeletal_muscle": {"area_cm2": 134.1, "mean_hu": 20.62, "sd_hu": 19.72},
            "imat": {"area_cm2": 4.14, "mean_hu": -52.46, "sd_hu": 19.01},
            "vat": {"area_cm2": 132.3, "mean_hu": -91.23, "sd_hu": 20.35},
            "sat": {"area_cm2": 206.19, "mean_hu": -102.17, "sd_hu": 19.99},
        },
        "metrics": {
            "smi_cm2_m2": None if height is None else 43.29,
            "bmi": None if height is None else 26.15,
            "vat_sat_ratio": 0.642,
            "imat_percent": 2.99,
            "waist_circumference_cm": None,
            "lsmm": determination(None if height is None else False, "SMI 43.29 >= 43 (men, BMI >= 25)"),
            "myosteatosis": determination(True, "SM mean HU < 33 HU"),
        },
        "patient_inputs": {
            "height_m": {"value": height, "raw": height, "source": None if height is None else "HL7"},
            "weight_kg": {"value": 81.0, "raw": 81.0, "source": "DICOM header"},
            "sex": {"value": "M", "raw": "M", "source": "DICOM header"},
            "flags": [],
        },
        "qc": {"status": "ok", "flags": [], "reasons": []},
    }


def test_fhir_bundle_validates_with_one_observation_per_measurement() -> None:
    bundle = Bundle.model_validate(build_fhir(result(), FhirContext("P1", "1.2.3.4", "20260105")))
    resources = [entry.resource for entry in bundle.entry]
    observations = [r for r in resources if isinstance(r, Observation)]
    [report] = [r for r in resources if isinstance(r, DiagnosticReport)]
    # 4 tissues + SMI, BMI, VAT/SAT, IMAT %, height, weight + LSMM, myosteatosis (waist: not computed)
    assert len(observations) == 12
    assert len(report.result) == 12 and report.identifier[0].value == "urn:oid:1.2.3.4"
    muscle = next(o for o in observations if o.code.coding[0].code == "127954009")
    assert [float(c.valueQuantity.value) for c in muscle.component] == [134.1, 20.62, 19.72]
    assert {c.valueQuantity.code for c in muscle.component} == {"cm2", "[hnsf'U]"}
    assert muscle.bodySite.coding[0].display == "L3 vertebra"
    height = next(o for o in observations if o.code.coding[0].code == "8302-2")
    assert height.code.coding[0].system == "http://loinc.org" and float(height.valueQuantity.value) == 1.76
    assert "HL7" in height.method.text
    smi = next(o for o in observations if o.code.coding[0].code == "SMI")
    assert float(smi.valueQuantity.value) == 43.29 and smi.valueQuantity.code == "cm2/m2"
    lsmm = next(o for o in observations if o.code.coding[0].code == "LSMM")
    assert lsmm.valueCodeableConcept.coding[0].code == "272519000"  # SNOMED CT Absent
    assert str(muscle.effectiveDateTime) == "2026-01-05"


def test_fhir_without_height_leaves_smi_out_and_says_undetermined() -> None:
    bundle = Bundle.model_validate(build_fhir(result(None), FhirContext("P1", "1.2.3.4", "")))
    codes = [e.resource.code.coding[0].code for e in bundle.entry if isinstance(e.resource, Observation)]
    assert "SMI" not in codes and "8302-2" not in codes
    lsmm = next(e.resource for e in bundle.entry if e.resource.code.coding[0].code == "LSMM")
    assert lsmm.valueCodeableConcept.coding[0].code == "373068000"


def test_corrected_result_is_amended() -> None:
    bundle = Bundle.model_validate(build_fhir(result(), FhirContext("P1", "1.2", "", corrected=True)))
    assert {e.resource.status for e in bundle.entry} == {"amended"}


@pytest.mark.parametrize("corrected", [False, True])
def test_oru_parses_back_to_the_values_of_the_result(corrected: bool) -> None:
    data = result()
    text = build_oru(data, OruContext("BODYCOMP7", "P^1|x", "ACC&1", "1.2.3.4", "20260105", corrected))
    message = hl7.parse(text)
    assert (
        str(message.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(message.segment("MSH")[10]) == "BODYCOMP7"
    )
    # delimiters in an identifier are escaped, not read as structure
    assert str(message.segment("PID")[3]).startswith("P\\S\\1\\F\\x")
    status = "C" if corrected else "F"
    assert str(message.segment("OBR")[25]) == status
    values: dict[tuple[str, str], tuple[str, str, str]] = {}
    for obx in message.segments("OBX"):
        fields = str(obx).split("|")
        values[(fields[3].split("^")[0], fields[4])] = (fields[5], fields[6].split("^")[0], fields[11])
    assert values[("SMI", "")] == ("43.29", "cm2/m2", status)
    assert values[("8302-2", "")] == ("1.76", "m", status)
    assert values[("29463-7", "")] == ("81.0", "kg", status)
    for label, tissue in (("1", "skeletal_muscle"), ("4", "sat")):
        area = data["tissues"][tissue]["area_cm2"]
        assert float(values[("42798000", label)][0]) == area and values[("42798000", label)][1] == "cm2"
        assert float(values[("373098007", label)][0]) == data["tissues"][tissue]["mean_hu"]
    assert values[("363698007", "1")][0] == "127954009^Skeletal muscle^SCT"
    assert values[("LSMM", "")][0] == "272519000^Absent^SCT"
    assert values[("MYOST", "")][0] == "52101004^Present^SCT"
    assert values[("INPUTSRC", "")][0] == "DICOM header, HL7"
    assert ("WAIST", "") not in values, "a value that was not computed has no OBX"
