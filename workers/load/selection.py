"""Group DICOM files into series and choose the one to analyse, saying why.

A study routed from a PACS holds many series: scouts, several reconstructions (thin/thick, soft
tissue/bone/lung kernels), phases, reformats, dose reports, secondary captures. The rules here are
deterministic and configurable (:class:`SelectionPolicy`); every series gets a verdict and the
reasons for it, which ``bodycomp inspect`` prints and results record (as MONAI Deploy's series
selector does).

Hard rules (a series failing one is rejected): CT modality; a CT image storage SOP class (CT,
Enhanced CT, Legacy Converted Enhanced CT); not a localizer; axial slices; enough slices.
Preferences among the rest, in order: ORIGINAL over DERIVED, soft-tissue kernel over sharp
kernels, slice spacing in the preferred band (1–5 mm), then coverage along z, then slice count.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from workers.errors import NoSeriesError
from workers.load.scan import DicomFile
from workers.result import SeriesJson

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CONVERTED_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"
CT_SOP_CLASSES = {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT}
MULTIFRAME_CT_SOP_CLASSES = {ENHANCED_CT_IMAGE_STORAGE, LEGACY_CONVERTED_ENHANCED_CT}

#: ImageType values that mark a series that is not a diagnostic axial stack.
REJECTED_IMAGE_TYPES = {"LOCALIZER", "SCOUT", "SCREEN SAVE", "DOSE_INFO", "PROJECTION IMAGE", "MIP", "MINIP"}

_SHARP_KERNEL_WORDS = ("LUNG", "BONE", "SHARP", "EDGE", "DETAIL+", "HIGH", "ULTRA", "YC", "YD", "FC5", "FC8")
_SOFT_KERNEL_WORDS = ("SOFT", "STANDARD", "STND", "BODY", "ABDOMEN", "SMOOTH")


@dataclass(frozen=True)
class SelectionPolicy:
    """Configurable rules for choosing the series to analyse (see module docstring)."""

    series_instance_uid: str | None = None
    """Analyse exactly this series (overrides every preference; hard rules still apply)."""
    allow_derived: bool = True
    """Accept DERIVED axial series when no ORIGINAL one qualifies (they always rank below)."""
    min_slices: int = 3
    preferred_spacing_mm: tuple[float, float] = (1.0, 5.0)
    max_axial_angle_deg: float = 45.0
    """A slice normal further than this from the patient z axis is not axial (coronal/sagittal MPR)."""


def classify_kernel(kernel: str) -> int:
    """+1 for a soft-tissue kernel, -1 for a sharp (bone/lung) kernel, 0 when unknown.

    Vendor conventions: Siemens ``B30f``/``Br38f``/``I31f`` (number < 50 soft, ≥ 60 sharp), GE
    ``STANDARD``/``SOFT`` vs ``BONE``/``LUNG``, Philips ``B``/``C`` vs ``YC``/``L``/``D``, Canon
    ``FC03``/``FC08`` vs ``FC5x``/``FC8x``.
    """
    k = kernel.upper().strip()
    if not k:
        return 0
    if any(word in k for word in _SOFT_KERNEL_WORDS):
        return 1
    if any(word in k for word in _SHARP_KERNEL_WORDS):
        return -1
    match = re.match(r"^[A-Z]{1,3}(\d{2})", k)
    if match:
        number = int(match.group(1))
        if k.startswith("FC"):
            return 1 if number < 20 else -1 if number >= 50 else 0
        return 1 if number < 50 else -1 if number >= 60 else 0
    if k in {"A", "B", "C"}:
        return 1
    return 0


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    return seq[0] if seq else None


def functional_group_value(ds: Dataset, group: str, keyword: str, frame: int | None = None) -> Any:
    """Look up an attribute in an Enhanced multi-frame header (per-frame first, then shared)."""
    sources = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        sources.append(ds.PerFrameFunctionalGroupsSequence[frame])
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    if shared is not None:
        sources.append(shared)
    for source in sources:
        item = _first_item(source, group)
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def image_orientation(ds: Dataset) -> list[float] | None:
    """ImageOrientationPatient of a single-frame header, or of frame 0 of an Enhanced one."""
    if "ImageOrientationPatient" in ds:
        return [float(v) for v in ds.ImageOrientationPatient]
    value = functional_group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", frame=0)
    return [float(v) for v in value] if value is not None else None


def image_type(ds: Dataset) -> list[str]:
    value = ds.get("ImageType")
    if value is None:
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        frame_type = _first_item(shared, "CTImageFrameTypeSequence") if shared is not None else None
        value = frame_type.get("FrameType") if frame_type is not None else None
    if value is None:
        return []
    if isinstance(value, str):
        return [value.upper()]
    return [str(v).upper() for v in value]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:6], float)
    normal = np.cross(row, col)
    norm = np.linalg.norm(normal)
    return normal / norm if norm > 0 else normal


@dataclass
class SeriesCandidate:
    """One series found in the input, with its verdict."""

    series_instance_uid: str
    files: list[DicomFile]
    modality: str = ""
    sop_class_uid: str = ""
    series_number: str = ""
    description: str = ""
    image_type: list[str] = field(default_factory=list)
    kernel: str = ""
    slice_thickness_mm: float | None = None
    z_range_mm: tuple[float, float] | None = None
    slice_spacing_mm: float | None = None
    transfer_syntaxes: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    status: str = "candidate"

    @property
    def is_multiframe(self) -> bool:
        return self.sop_class_uid in MULTIFRAME_CT_SOP_CLASSES

    @property
    def n_slices(self) -> int:
        if self.is_multiframe:
            return int(self.files[0].header.get("NumberOfFrames", 1) or 1)
        return len(self.files)

    @property
    def coverage_mm(self) -> float:
        return 0.0 if self.z_range_mm is None else self.z_range_mm[1] - self.z_range_mm[0]

    def rank_key(self, policy: SelectionPolicy) -> tuple[int, int, int, float, int]:
        original = 0 if "DERIVED" in self.image_type[:1] else 1
        spacing = self.slice_spacing_mm
        low, high = policy.preferred_spacing_mm
        in_band = 1 if spacing is not None and low - 1e-3 <= spacing <= high + 1e-3 else 0
        return (original, classify_kernel(self.kernel), in_band, round(self.coverage_mm, 1), self.n_slices)

    def to_json(self) -> SeriesJson:
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "sop_class_uid": self.sop_class_uid,
            "instances": len(self.files),
            "slices": self.n_slices,
            "image_type": self.image_type,
            "kernel": self.kernel,
            "slice_thickness_mm": self.slice_thickness_mm,
            "slice_spacing_mm": self.slice_spacing_mm,
            "z_range_mm": list(self.z_range_mm) if self.z_range_mm else None,
            "transfer_syntaxes": self.transfer_syntaxes,
            "status": self.status,
            "rejections": self.rejections,
            "notes": self.notes,
        }


def _z_positions(candidate: SeriesCandidate) -> list[float]:
    positions: list[float] = []
    for f in candidate.files:
        ds = f.header
        if candidate.is_multiframe:
            for i in range(int(ds.get("NumberOfFrames", 1) or 1)):
                ipp = functional_group_value(ds, "PlanePositionSequence", "ImagePositionPatient", frame=i)
                if ipp is not None:
                    positions.append(float(ipp[2]))
        elif "ImagePositionPatient" in ds:
            positions.append(float(ds.ImagePositionPatient[2]))
    return positions


def describe_series(uid: str, files: list[DicomFile], policy: SelectionPolicy) -> SeriesCandidate:
    """Summarise one series and apply the hard rules."""
    candidate = _summary(uid, files)
    reject = candidate.rejections
    if not uid:
        candidate.notes.append("SeriesInstanceUID is empty: files grouped as one series")
    reject += _not_a_ct_image(candidate, policy)
    if not reject:
        reject += _not_an_axial_stack(candidate, policy)
        if candidate.is_multiframe and len(files) > 1:
            candidate.notes.append(f"{len(files)} multi-frame instances; the largest is used")
    if policy.series_instance_uid and uid != policy.series_instance_uid:
        reject.append("not the series requested by the policy")
    if reject:
        candidate.status = "rejected"
    return candidate


def _summary(uid: str, files: list[DicomFile]) -> SeriesCandidate:
    """What the series' first header and its files' positions say: modality, class, kernel,
    thickness, transfer syntaxes, z range and spacing (what ranking and people need)."""
    first = files[0].header
    candidate = SeriesCandidate(series_instance_uid=uid, files=files)
    candidate.modality = str(first.get("Modality", "") or "")
    candidate.sop_class_uid = files[0].sop_class_uid
    candidate.series_number = str(first.get("SeriesNumber", "") or "")
    candidate.description = str(first.get("SeriesDescription", "") or "")
    candidate.image_type = image_type(first)
    kernel = first.get("ConvolutionKernel", "")
    candidate.kernel = (
        "\\".join(str(k) for k in kernel) if isinstance(kernel, MultiValue) else str(kernel or "")
    )
    candidate.transfer_syntaxes = sorted({f.transfer_syntax for f in files if f.transfer_syntax})
    thickness = first.get("SliceThickness")
    if thickness in (None, "") and candidate.sop_class_uid in MULTIFRAME_CT_SOP_CLASSES:
        thickness = functional_group_value(first, "PixelMeasuresSequence", "SliceThickness", frame=0)
    candidate.slice_thickness_mm = float(thickness) if thickness not in (None, "") else None
    z = sorted(set(_z_positions(candidate)))
    if z:
        candidate.z_range_mm = (z[0], z[-1])
        if len(z) > 1:
            candidate.slice_spacing_mm = round(float(np.median(np.diff(z))), 3)
    return candidate


def _not_a_ct_image(candidate: SeriesCandidate, policy: SelectionPolicy) -> list[str]:
    """Reasons the series is not an original CT image series the policy accepts (modality, SOP
    class, localiser/secondary image types, DERIVED)."""
    reasons: list[str] = []
    if candidate.modality != "CT":
        reasons.append(f"modality is {candidate.modality or 'missing'}, not CT")
    if candidate.sop_class_uid not in CT_SOP_CLASSES:
        reasons.append(f"SOP class {candidate.sop_class_uid or 'missing'} is not a CT image storage class")
    bad_types = REJECTED_IMAGE_TYPES.intersection(candidate.image_type)
    if bad_types:
        reasons.append(f"ImageType {'/'.join(candidate.image_type)} marks a {', '.join(sorted(bad_types))}")
    if "DERIVED" in candidate.image_type[:1] and not policy.allow_derived:
        reasons.append("DERIVED image type and derived series are not allowed by the policy")
    return reasons


def _not_an_axial_stack(candidate: SeriesCandidate, policy: SelectionPolicy) -> list[str]:
    """Reasons a CT image series cannot be analysed as an axial stack: no orientation, a slice
    plane too far from axial, too few slices."""
    reasons: list[str] = []
    orientation = image_orientation(candidate.files[0].header)
    if orientation is None or len(orientation) != 6:
        reasons.append("no ImageOrientationPatient")
    else:
        normal = slice_normal(orientation)
        angle = float(np.degrees(np.arccos(min(1.0, abs(normal[2])))))
        if angle > policy.max_axial_angle_deg:
            reasons.append(f"not axial: slice normal is {angle:.0f}° from the patient z axis")
    if candidate.n_slices < policy.min_slices:
        reasons.append(f"only {candidate.n_slices} slice(s); at least {policy.min_slices} needed")
    return reasons


def group_series(files: list[DicomFile]) -> dict[str, list[DicomFile]]:
    """Files by SeriesInstanceUID, in first-seen order."""
    groups: dict[str, list[DicomFile]] = {}
    for f in files:
        groups.setdefault(str(f.header.get("SeriesInstanceUID", "") or ""), []).append(f)
    return groups


def select_series(
    files: list[DicomFile], policy: SelectionPolicy
) -> tuple[SeriesCandidate, list[SeriesCandidate]]:
    """Return the chosen series and the verdicts on all series (chosen one included).

    Raises :class:`NoSeriesError` listing each series' reasons when none qualifies.
    """
    candidates = [describe_series(uid, group, policy) for uid, group in group_series(files).items()]
    eligible = [c for c in candidates if c.status != "rejected"]
    if not eligible:
        details = "; ".join(
            f"series {c.series_number or c.series_instance_uid or '?'} ({c.modality or '?'}): "
            + c.rejections[0]
            for c in candidates
        )
        raise NoSeriesError(f"no CT series to analyse among {len(candidates)} series: {details}")
    eligible.sort(key=lambda c: c.rank_key(policy), reverse=True)
    chosen = eligible[0]
    chosen.status = "chosen"
    chosen.notes.append(_why_chosen(chosen, eligible[1:], policy))
    for other in eligible[1:]:
        other.status = "not chosen"
        other.notes.append(_why_not(other, chosen, policy))
    return chosen, candidates


_RANK_CRITERIA = (
    "ORIGINAL rather than DERIVED",
    "soft-tissue kernel",
    "slice spacing in the preferred band",
    "larger z coverage",
    "more slices",
)


def _first_difference(a: SeriesCandidate, b: SeriesCandidate, policy: SelectionPolicy) -> str | None:
    for criterion, x, y in zip(_RANK_CRITERIA, a.rank_key(policy), b.rank_key(policy), strict=True):
        if x != y:
            return criterion
    return None


def _why_chosen(chosen: SeriesCandidate, others: list[SeriesCandidate], policy: SelectionPolicy) -> str:
    if policy.series_instance_uid:
        return "chosen: requested explicitly"
    if not others:
        return "chosen: the only series that passes the selection rules"
    reason = _first_difference(chosen, others[0], policy)
    return f"chosen: best of {len(others) + 1} eligible series" + (
        f" ({reason})" if reason else " (tie: first)"
    )


def _why_not(other: SeriesCandidate, chosen: SeriesCandidate, policy: SelectionPolicy) -> str:
    reason = _first_difference(chosen, other, policy)
    return f"eligible, but series {chosen.series_number or chosen.series_instance_uid} ranks higher" + (
        f" ({reason})" if reason else ""
    )
