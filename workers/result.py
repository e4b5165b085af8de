"""The result document (``result.json``) as types, from the pipeline to every reader of it.

Why typed: :func:`workers.pipeline.analyse` writes the document and many read it: the DICOM
encoders (SEG, SR, SC), the FHIR and ORU encoders, the overlay picture, ``bodycomp status`` and
``export``, the cohort table and corrections. Read as ``dict[str, Any]`` with ``.get(key, {})``,
a renamed key silently became "not measured". Here each part is a :class:`TypedDict` with the
pipeline's keys: a key every result has is required (readers index it, and mypy checks the name);
a key only some results have is ``NotRequired`` (readers use ``.get``), e.g. ``correction``.

Two kinds of document, told apart by ``status``: :class:`MeasuredResult` (``ok``, ``review`` or
``failed``: L3 found and measured) and :class:`NotFoundResult` (``l3_not_found``: ``l3`` is null,
the search and the reason are given instead). :data:`ResultDocument` is either; a reader tells
them apart with ``result["status"] == NOT_FOUND``, which mypy understands.

A ``result.json`` read back from disk goes through :func:`read_result`, which checks every
required key, nested parts included, and raises :class:`ResultFileError` naming the first one
missing. Only key presence (and that parts are objects and lists) is checked, not value types.

The shapes are those of the producers' ``to_json`` (:mod:`workers.l3.result`,
:mod:`workers.tissues.result`, :mod:`workers.measure`, :mod:`workers.load.describe`,
:mod:`workers.revision`) and of the pipeline's own parts. No
``from __future__ import annotations`` here: Python 3.11 reads ``NotRequired`` only from
evaluated annotations, and :func:`read_result` relies on ``__required_keys__``.
"""

import types
import typing
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict, Union

from workers.jsonfile import read_json

#: The tissues' keys in ``tissues`` and in the preset's ``windows``.
TissueKey = Literal["skeletal_muscle", "imat", "vat", "sat"]
TISSUE_KEYS: tuple[TissueKey, ...] = ("skeletal_muscle", "imat", "vat", "sat")
#: The QC verdict (:class:`workers.measure.verdict.QualityReport`), also the measured result's status.
QcStatus = Literal["ok", "review", "failed"]
NOT_FOUND: Literal["l3_not_found"] = "l3_not_found"
#: The derived metrics that are numbers (None: not computable, with the reason in ``reasons``).
NumberMetric = Literal[
    "smi_cm2_m2",
    "sati_cm2_m2",
    "vati_cm2_m2",
    "bmi",
    "vat_sat_ratio",
    "imat_percent",
    "waist_circumference_cm",
]
#: The determinations (:class:`workers.measure.rules.Determination`) in ``metrics``.
DeterminationKey = Literal["lsmm", "myosteatosis", "high_vsr"]


# --- input (workers.load.describe.describe) -----------------------------------------------------


class SeriesJson(TypedDict):
    """One series of the input (:meth:`workers.load.selection.SeriesCandidate.to_json`)."""

    series_instance_uid: str | None
    series_number: str | None
    description: str | None
    modality: str | None
    sop_class_uid: str | None
    instances: int
    slices: int
    image_type: list[str]
    kernel: str | None
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None
    z_range_mm: list[float] | None
    transfer_syntaxes: list[str]
    status: str
    rejections: list[str]
    notes: list[str]


class HeaderPatientJson(TypedDict):
    """Patient values in the DICOM header (:meth:`workers.load.volume.PatientInfo.to_json`)."""

    height_m: float | None
    weight_kg: float | None
    sex: str | None
    source: str


class VolumeJson(TypedDict):
    """The loaded volume (:meth:`workers.load.volume.Volume.to_json`)."""

    source_kind: str
    source_path: str
    series_instance_uid: str | None
    geometry: dict[str, Any]
    patient: HeaderPatientJson
    acquisition: dict[str, Any]
    flags: list[str]
    notes: list[str]
    skipped_files: dict[str, int]


class InputJson(TypedDict):
    """``input``: what was analysed (:func:`workers.load.describe.describe`)."""

    input: str
    source_kind: str
    skipped_files: dict[str, int]
    series: list[SeriesJson]
    chosen_series_instance_uid: str | None
    volume: VolumeJson
    hu_range: list[float]


# --- presets and rule sets (workers.tissues.presets, workers.measure.rules) ---------------------


class HuWindowJson(TypedDict):
    min_hu: float
    max_hu: float


class WindowsJson(TypedDict):
    skeletal_muscle: HuWindowJson
    imat: HuWindowJson
    vat: HuWindowJson
    sat: HuWindowJson


class HuPresetJson(TypedDict):
    """``hu_preset`` (:meth:`workers.tissues.presets.WindowPreset.to_json`)."""

    id: str
    name: str
    version: int
    source: str
    windows: WindowsJson


class CriterionJson(TypedDict):
    """A cut-off of a rule set (:meth:`workers.measure.rules.Criterion.to_json`)."""

    operator: str
    value: float
    unit: str
    sex: str | None
    bmi_min: float | None
    bmi_max_exclusive: float | None
    text: str


class BranchesJson(TypedDict):
    """The cut-offs of every BMI branch, when BMI is missing (:func:`workers.measure.rules.evaluate`)."""

    branches: list[CriterionJson]


class RuleSetJson(TypedDict):
    """``rule_set`` (:meth:`workers.measure.rules.RuleSet.to_json`)."""

    id: str
    citation: str
    population: str
    verified: bool
    note: str
    criteria: list[CriterionJson]


# --- L3 (workers.l3.result.L3Result.to_json and the pipeline's slice) ---------------------------


class CueJson(TypedDict):
    """One cue of the level (:meth:`workers.l3.cues.Cue.to_json`)."""

    name: str
    found_at_z_mm: float
    structure: str
    implies_level: str
    implied_l3_z_mm: float | None
    weight: float
    agrees: bool
    note: str


class _L3Common(TypedDict):
    found: bool
    engine: str
    engine_version: str
    definition: str
    body_range: list[int] | None
    confidence: float
    method: str
    levels: dict[str, float | None]
    level_ranges: dict[str, list[float | None]]
    levels_seen: list[str]
    flags: list[str]
    reason: str | None
    notes: list[str]
    disc_z_mm: list[float | None]
    anchors_z_mm: dict[str, float | None]
    cues: list[CueJson]
    cue_weights: str | None


class L3SearchJson(_L3Common):
    """``l3_search`` of a result without L3: the localiser's search as it ended (canonical indices)."""

    slice_index: int | None
    z_mm: float | None


class SliceJson(TypedDict):
    """One analysed slice: its index in the source, its z and, for DICOM, its instance."""

    slice_index: int
    z_mm: float
    sop_instance_uid: NotRequired[str]
    frame_number: NotRequired[int]


class L3Json(_L3Common):
    """``l3``: the level found (or given), with the slice in the source's indices.

    ``slice_index`` and ``body_range`` are the source's, ``canonical_slice_index`` the localiser's."""

    slice_index: int
    z_mm: float
    sop_instance_uid: NotRequired[str]
    frame_number: NotRequired[int]
    canonical_slice_index: int
    manual: bool


# --- measurements (workers.measure.composition) -------------------------------------------------


class TissueJson(TypedDict):
    """Area and attenuation of one tissue (:meth:`workers.measure.composition.TissueStats.to_json`)."""

    area_cm2: float
    mean_hu: float | None
    sd_hu: float | None
    pixels: int


class TissuesJson(TypedDict):
    """``tissues``: one entry per tissue (:data:`TISSUE_KEYS`)."""

    skeletal_muscle: TissueJson
    imat: TissueJson
    vat: TissueJson
    sat: TissueJson


class CodeJson(TypedDict):
    scheme: str
    value: str
    meaning: str


class DeterminationJson(TypedDict):
    """One rule's verdict (:meth:`workers.measure.rules.Determination.to_json`)."""

    value: bool | None
    status: str
    rule_set: str
    threshold: CriterionJson | BranchesJson | None
    reason: str
    measured: float | None
    inputs: dict[str, Any]
    code: CodeJson | None


class MetricsJson(TypedDict):
    """``metrics`` (:meth:`workers.measure.composition.Metrics.to_json`); each None number has its
    reason in ``reasons`` (an optional key there: present only when the value is missing)."""

    smi_cm2_m2: float | None
    sati_cm2_m2: float | None
    vati_cm2_m2: float | None
    bmi: float | None
    vat_sat_ratio: float | None
    imat_percent: float | None
    imat_percent_denominator: str
    waist_circumference_cm: float | None
    lsmm: DeterminationJson
    myosteatosis: DeterminationJson
    high_vsr: DeterminationJson
    reasons: dict[str, str]
    flags: list[str]


class NumberInputJson(TypedDict):
    """A patient value: the one used (None: missing or implausible), as given, and from where."""

    value: float | None
    raw: float | None
    source: str | None


class SexInputJson(TypedDict):
    value: str | None
    raw: str | None
    source: str | None


class PatientInputsJson(TypedDict):
    """``patient_inputs`` (:meth:`workers.measure.composition.PatientInputs.to_json`)."""

    height_m: NumberInputJson
    weight_kg: NumberInputJson
    sex: SexInputJson
    flags: list[str]


class Measurement(TypedDict):
    """What the tissue step measured (:meth:`workers.measure.composition.BodyCompositionResult.to_json`):
    the part of a :class:`MeasuredResult` the overlay picture shows."""

    tissues: TissuesJson
    metrics: MetricsJson
    hu_preset: HuPresetJson
    rule_set: RuleSetJson
    patient_inputs: PatientInputsJson
    n_slices: int


# --- verdict, segmentation, correction ----------------------------------------------------------


class QcJson(TypedDict):
    """``qc`` (:meth:`workers.measure.verdict.QualityReport.to_json`): reasons in the flags' order."""

    status: QcStatus
    flags: list[str]
    reasons: list[str]


class SegmentationJson(TypedDict):
    """``segmentation`` (:meth:`workers.tissues.result.TissueSegmentation.to_json`)."""

    segmenter: str
    parameters: str
    hu_preset: str
    flags: list[str]
    qc_notes: list[str]
    peritoneal_contour_points: int


class PatientValuesJson(TypedDict):
    """Patient values a correction gave (:func:`workers.corrections.options.correction_options`)."""

    height_m: float | None
    weight_kg: float | None
    sex: str | None
    source: str


class CorrectionJson(TypedDict):
    """``correction`` of a result that corrects an earlier one
    (:meth:`workers.revision.Revision.to_json`)."""

    description: str
    kinds: list[str]
    source_instance_uid: str
    predecessor_sr: list[str] | None
    kept_qc_reasons: list[str]
    patient_values: PatientValuesJson | None


# --- the documents ------------------------------------------------------------------------------


class _ResultBase(TypedDict):
    bodycomp_version: str
    input: InputJson
    hu_preset: HuPresetJson
    rule_set: RuleSetJson
    timings_s: dict[str, float]
    """Seconds per stage (:class:`workers.pipeline.StageTimer`)."""
    files: dict[str, str]
    """What was written (``result_json``, ``l3_qc_png``, ``dicom_seg``...): path by name. The
    file on disk lacks ``result_json`` (it names itself once written)."""
    batch: NotRequired[dict[str, Any]]
    """Added by ``bodycomp batch`` (:class:`workers.batch.records.BatchSection`)."""


class MeasuredResult(_ResultBase):
    """A result with L3 found and measured; ``status`` is the QC verdict."""

    status: QcStatus
    l3: L3Json
    correction: NotRequired[CorrectionJson]
    """Only when this result corrects an earlier one."""
    tissues: TissuesJson
    metrics: MetricsJson
    patient_inputs: PatientInputsJson
    n_slices: int
    slices: list[SliceJson]
    segmentation: SegmentationJson
    peritoneal_contour_mm: list[list[float]]
    qc: QcJson


class NotFoundResult(_ResultBase):
    """A result without L3 (not in the field of view): the search and why, nothing measured."""

    status: Literal["l3_not_found"]
    l3: None
    l3_search: L3SearchJson
    reason: str


ResultDocument = MeasuredResult | NotFoundResult


class ResultFileError(ValueError):
    """A ``result.json`` that is not a result document: unreadable, or without a required key."""


def check_result(data: Any, where: str = "result.json") -> ResultDocument:
    """``data`` as a :data:`ResultDocument` when it has every required key (nested parts too);
    else :class:`ResultFileError` naming the first missing key by its dotted path."""
    if not isinstance(data, dict):
        raise ResultFileError(f"{where}: not a JSON object")
    kind: type = NotFoundResult if data.get("status") == NOT_FOUND else MeasuredResult
    _check(kind, data, where, "")
    return typing.cast(ResultDocument, data)


def read_result(path: Path) -> ResultDocument:
    """The result document in ``path`` (:func:`check_result`); :class:`ResultFileError` when it is
    missing, not JSON, or lacks a required key (named in the message)."""
    data = read_json(path)
    if data is None:
        raise ResultFileError(f"{path}: missing or not a JSON object")
    return check_result(data, str(path))


def _check(expected: Any, value: Any, where: str, at: str) -> None:
    """Check ``value`` against the annotation ``expected``: keys of TypedDicts, items of lists
    and dicts, the non-None member of an optional part. Scalars are not checked."""
    origin = typing.get_origin(expected)
    if origin in (Union, types.UnionType):
        members = [m for m in typing.get_args(expected) if m is not type(None)]
        if value is None or len(members) != 1:
            return
        _check(members[0], value, where, at)
    elif typing.is_typeddict(expected):
        if not isinstance(value, dict):
            raise ResultFileError(f"{where}: {at or 'the document'} is not an object")
        hints = typing.get_type_hints(expected)
        for key in expected.__required_keys__:
            if key not in value:
                raise ResultFileError(f"{where}: no {_join(at, key)!r}")
        for key, hint in hints.items():
            if key in value:
                _check(hint, value[key], where, _join(at, key))
    elif origin is list:
        if not isinstance(value, list):
            raise ResultFileError(f"{where}: {at} is not a list")
        (item,) = typing.get_args(expected)
        for index, entry in enumerate(value):
            _check(item, entry, where, f"{at}[{index}]")
    elif origin is dict:
        if not isinstance(value, dict):
            raise ResultFileError(f"{where}: {at} is not an object")
        _, item = typing.get_args(expected)
        for key, entry in value.items():
            _check(item, entry, where, _join(at, str(key)))


def _join(at: str, key: str) -> str:
    return f"{at}.{key}" if at else key
