"""Coded concepts used in bodycomp's DICOM outputs, in one place.

Standard codes come from pydicom's code dictionaries (SNOMED CT, DICOM, UCUM); concepts no
standard has (SMI, IMAT, low skeletal muscle mass, the rule sets) use the private coding scheme
``99BODYCOMP``, declared in every object's Coding Scheme Identification Sequence, as the dcmqi
guide recommends for a designator starting with ``99``.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from workers.result import TissueKey

PRIVATE_SCHEME = "99BODYCOMP"
PRIVATE_SCHEME_NAME = "bodycomp body composition concepts"
PRIVATE_SCHEME_VERSION = "1"
PRIVATE_SCHEME_ORGANIZATION = "bodycomp open-source project"


def private(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


def ucum(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "UCUM", meaning)


def coding_scheme_identification() -> Dataset:
    """The item of (0008,0110) that declares ``99BODYCOMP``."""
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = PRIVATE_SCHEME_NAME
    item.CodingSchemeVersion = PRIVATE_SCHEME_VERSION
    item.CodingSchemeResponsibleOrganization = PRIVATE_SCHEME_ORGANIZATION
    return item


@dataclass(frozen=True)
class TissueCodes:
    """How one tissue is described in SEG and SR."""

    key: TissueKey
    """result.json key: skeletal_muscle, imat, vat, sat."""
    label: int
    """Value in the label image and segment number in the SEG."""
    name: str
    short: str
    category: CodedConcept
    type: CodedConcept
    anatomic_region: CodedConcept | None
    rgb: tuple[int, int, int]


TISSUE = CodedConcept(codes.SCT.Tissue.value, "SCT", codes.SCT.Tissue.meaning)
FAT = CodedConcept(codes.SCT.AdiposeTissue.value, "SCT", codes.SCT.AdiposeTissue.meaning)
SKELETAL_MUSCLE = CodedConcept(codes.SCT.SkeletalMuscle.value, "SCT", codes.SCT.SkeletalMuscle.meaning)
SUBCUTANEOUS_FAT = CodedConcept("67769002", "SCT", "Subcutaneous adipose tissue")
ABDOMINOPELVIC_CAVITY = CodedConcept("818987002", "SCT", "Abdominopelvic cavity")
IMAT = private("IMAT", "Intermuscular adipose tissue")
L3_VERTEBRA = CodedConcept(codes.SCT.L3Vertebra.value, "SCT", codes.SCT.L3Vertebra.meaning)
CT_OF_ABDOMEN = CodedConcept("169070004", "SCT", "CT of abdomen")

#: Okabe–Ito colours, the same as the overlay picture (workers/pictures/overlay.py).
TISSUES: tuple[TissueCodes, ...] = (
    TissueCodes("skeletal_muscle", 1, "Skeletal muscle", "SM", TISSUE, SKELETAL_MUSCLE, None, (213, 94, 0)),
    TissueCodes("imat", 2, "Intermuscular adipose tissue", "IMAT", TISSUE, IMAT, None, (240, 228, 66)),
    TissueCodes(
        "vat", 3, "Visceral adipose tissue", "VAT", TISSUE, FAT, ABDOMINOPELVIC_CAVITY, (0, 158, 115)
    ),
    TissueCodes(
        "sat", 4, "Subcutaneous adipose tissue", "SAT", TISSUE, SUBCUTANEOUS_FAT, None, (86, 180, 233)
    ),
)

AREA = CodedConcept(codes.SCT.Area.value, "SCT", codes.SCT.Area.meaning)
LENGTH = CodedConcept(codes.SCT.Length.value, "SCT", codes.SCT.Length.meaning)
ATTENUATION = CodedConcept(
    codes.DCM.AttenuationCoefficient.value, "DCM", codes.DCM.AttenuationCoefficient.meaning
)
MEAN = CodedConcept(codes.SCT.Mean.value, "SCT", codes.SCT.Mean.meaning)
STANDARD_DEVIATION = CodedConcept(
    codes.SCT.StandardDeviation.value, "SCT", codes.SCT.StandardDeviation.meaning
)
BMI = CodedConcept("60621009", "SCT", "Body mass index")
BODY_HEIGHT = CodedConcept("8302-2", "LN", "Body height")
BODY_WEIGHT = CodedConcept("29463-7", "LN", "Body weight")
PRESENT = CodedConcept("52101004", "SCT", "Present")
ABSENT = CodedConcept("272519000", "SCT", "Absent")
UNDETERMINED = CodedConcept("373068000", "SCT", "Undetermined")
VALUE_UNKNOWN = CodedConcept("114010", "DCM", "Value unknown")

#: The document-level qualitative evaluations of TID 1500 (row "Qualitative Evaluations"): what a
#: reader must know to trust the numbers, for readers of the SR alone (workers/encode/sr.py).
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
FINDING_SITE = CodedConcept("363698007", "SCT", "Finding site")
QC_VERDICT = private("QCVERDICT", "Automated result check")
QC_REVIEW = private("QCREVIEW", "Review recommended before use")
QC_OK = private("QCOK", "No reason for review found")
QC_REASON = private("QCREASON", "Reason for review")
LEVEL_METHOD = private("L3METHOD", "How the L3 level was found")
LEVEL_CONFIDENCE = private("L3CONF", "Confidence in the L3 level (0-1)")
SLICE_ANALYSED = private("L3SLICE", "Slice analysed")

SMI = private("SMI", "Skeletal muscle index")
VAT_SAT_RATIO = private("VSR", "Visceral to subcutaneous fat area ratio")
IMAT_PERCENT = private("IMATPCT", "Intermuscular fat percentage of muscle area")
WAIST = private("WAIST", "Body perimeter at L3")
LSMM = private("LSMM", "Low skeletal muscle mass")
MYOSTEATOSIS = private("MYOST", "Myosteatosis")
PERITONEAL_LINE = private("PERITLINE", "Peritoneal line at L3")
DERIVED_METRICS = private("L3METRICS", "Body composition metrics at L3")


def not_computable(reason: str) -> CodedConcept:
    """A value for 'this measurement could not be computed', with the reason in its meaning."""
    slug = "".join(ch for ch in reason.upper() if ch.isalnum())[:13]
    return private(f"NC{slug}", f"Not computable: {reason}")


def rule_set_method(rule_set_id: str) -> CodedConcept:
    """A method code naming the cut-off rule set and its version, e.g. ``martin2013@1``."""
    return private(rule_set_id.upper().replace("@", "V"), f"Cut-off rule set {rule_set_id}")


UNIT_CM2 = ucum("cm2", "square centimeter")
UNIT_HU = ucum("[hnsf'U]", "Hounsfield unit")
UNIT_CM2_PER_M2 = ucum("cm2/m2", "square centimeter per square meter")
UNIT_KG_PER_M2 = ucum("kg/m2", "kilogram per square meter")
UNIT_RATIO = ucum("{ratio}", "ratio")
UNIT_PERCENT = ucum("%", "percent")
UNIT_CM = ucum("cm", "centimeter")
UNIT_MM = ucum("mm", "millimeter")
UNIT_M = ucum("m", "meter")
UNIT_KG = ucum("kg", "kilogram")
