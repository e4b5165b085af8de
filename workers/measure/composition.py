"""Body-composition metrics from a tissue label image: areas, attenuation, SMI, BMI, ratios, flags.

Why separate from segmentation: the metrics are the clinical contract (result.json keys of issue 5)
and must be identical whichever segmenter produced the labels. Formulas follow
body-composition.md §2. Missing or implausible patient inputs make only the dependent metrics
``None`` with a reason; nothing is converted or guessed (e.g. a height of ``170`` is not silently
read as centimetres, it is rejected with the flag ``height_implausible``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from skimage import measure

from workers.measure.rules import Determination, RuleSet, evaluate, get_rule_set
from workers.result import Measurement, MetricsJson, PatientInputsJson, TissueJson
from workers.tissues.engine import LABEL_IMAT, LABEL_SAT, LABEL_SM, LABEL_VAT
from workers.tissues.presets import WindowPreset, get_preset

__all__ = [
    "HEIGHT_RANGE_M",
    "TISSUE_KEYS",
    "BodyCompositionResult",
    "Metrics",
    "PatientInputs",
    "TissueStats",
    "average_results",
    "compute_result",
    "tissue_stats",
    "waist_circumference_cm",
]

#: result.json tissue key -> label value
TISSUE_KEYS: dict[str, int] = {
    "skeletal_muscle": LABEL_SM,
    "imat": LABEL_IMAT,
    "vat": LABEL_VAT,
    "sat": LABEL_SAT,
}
HEIGHT_RANGE_M = (1.2, 2.3)
WEIGHT_RANGE_KG = (20.0, 350.0)
#: an L3 SM area outside this range is almost certainly a segmentation or level error (issue 5 QC)
SM_AREA_PLAUSIBLE_CM2 = (40.0, 400.0)


@dataclass(frozen=True)
class TissueStats:
    """Area and attenuation of one tissue on one slice (or pooled over slices)."""

    area_cm2: float
    mean_hu: float | None
    sd_hu: float | None
    pixels: int

    def to_json(self) -> TissueJson:
        return {
            "area_cm2": round(self.area_cm2, 3),
            "mean_hu": None if self.mean_hu is None else round(self.mean_hu, 2),
            "sd_hu": None if self.sd_hu is None else round(self.sd_hu, 2),
            "pixels": int(self.pixels),
        }


def _check_spacing(spacing_yx_mm: Sequence[float]) -> tuple[float, float]:
    dy, dx = (float(spacing_yx_mm[0]), float(spacing_yx_mm[1]))
    if not (dy > 0 and dx > 0 and math.isfinite(dy) and math.isfinite(dx)):
        raise ValueError(f"invalid pixel spacing {spacing_yx_mm!r}")
    return dy, dx


def tissue_stats(
    hu: npt.NDArray[Any], labels: npt.NDArray[np.uint8], spacing_yx_mm: Sequence[float]
) -> dict[str, TissueStats]:
    """Per-tissue area (cm²), mean and SD HU (population SD, ddof=0) and pixel count."""
    if hu.shape != labels.shape:
        raise ValueError(f"hu {hu.shape} and labels {labels.shape} differ")
    dy, dx = _check_spacing(spacing_yx_mm)
    px_cm2 = dy * dx / 100.0
    out: dict[str, TissueStats] = {}
    for key, lab in TISSUE_KEYS.items():
        vals = hu[labels == lab].astype(np.float64)
        n = int(vals.size)
        out[key] = TissueStats(
            area_cm2=n * px_cm2,
            mean_hu=float(vals.mean()) if n else None,
            sd_hu=float(vals.std()) if n else None,
            pixels=n,
        )
    return out


def waist_circumference_cm(
    hu: npt.NDArray[Any], body_mask: npt.NDArray[np.bool_], spacing_yx_mm: Sequence[float]
) -> float | None:
    """Perimeter of the body outline (cm) from a sub-pixel iso-contour at −500 HU.

    Why −500 HU: halfway between air (−1000) and skin (~0), so the contour sits on the true skin
    surface with sub-pixel precision, unlike a staircase pixel outline which overestimates length.
    Anything outside the (slightly dilated) body mask is set to air so table and arms do not join.
    Returns None if there is no body.
    """
    dy, dx = _check_spacing(spacing_yx_mm)
    if not body_mask.any():
        return None
    from scipy import ndimage as ndi

    near = ndi.binary_dilation(body_mask, iterations=2)
    img = np.where(near, np.clip(hu.astype(np.float32), -1000, 200), -1000.0)
    img = np.pad(img, 1, constant_values=-1000.0)
    contours = measure.find_contours(img, -500.0)
    if not contours:
        return None
    best = 0.0
    for c in contours:
        d = np.diff(c, axis=0) * np.array([dy, dx])
        length = float(np.sqrt((d**2).sum(axis=1)).sum())
        best = max(best, length)
    return best / 10.0


@dataclass(frozen=True)
class PatientInputs:
    """Height (m), weight (kg), sex (M/F) with the source of each value (header, RIS, manual...)."""

    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def validated(self) -> tuple[float | None, float | None, str | None, list[str]]:
        """Plausibility-checked values and flags; implausible values become None (never converted)."""
        flags: list[str] = []
        h = self.height_m
        if h is not None and not (math.isfinite(h) and HEIGHT_RANGE_M[0] <= h <= HEIGHT_RANGE_M[1]):
            flags.append("height_implausible")
            h = None
        w = self.weight_kg
        if w is not None and not (math.isfinite(w) and WEIGHT_RANGE_KG[0] <= w <= WEIGHT_RANGE_KG[1]):
            flags.append("weight_implausible")
            w = None
        s = self.sex.strip().upper() if isinstance(self.sex, str) else None
        if s not in ("M", "F"):
            s = None
        return h, w, s, flags

    def to_json(self) -> PatientInputsJson:
        h, w, s, flags = self.validated()
        return {
            "height_m": {"value": h, "raw": self.height_m, "source": self.sources.get("height_m")},
            "weight_kg": {"value": w, "raw": self.weight_kg, "source": self.sources.get("weight_kg")},
            "sex": {"value": s, "raw": self.sex, "source": self.sources.get("sex")},
            "flags": flags,
        }


@dataclass(frozen=True)
class Metrics:
    """Derived metrics; each None value has an entry in ``reasons``."""

    smi_cm2_m2: float | None
    sati_cm2_m2: float | None
    vati_cm2_m2: float | None
    bmi: float | None
    vat_sat_ratio: float | None
    imat_percent: float | None
    waist_circumference_cm: float | None
    lsmm: Determination
    myosteatosis: Determination
    high_vsr: Determination
    reasons: dict[str, str]
    flags: list[str]

    def to_json(self) -> MetricsJson:
        def r(x: float | None, nd: int = 2) -> float | None:
            return None if x is None else round(x, nd)

        return {
            "smi_cm2_m2": r(self.smi_cm2_m2),
            "sati_cm2_m2": r(self.sati_cm2_m2),
            "vati_cm2_m2": r(self.vati_cm2_m2),
            "bmi": r(self.bmi),
            "vat_sat_ratio": r(self.vat_sat_ratio, 3),
            "imat_percent": r(self.imat_percent),
            "imat_percent_denominator": "skeletal_muscle + imat area",
            "waist_circumference_cm": r(self.waist_circumference_cm, 1),
            "lsmm": self.lsmm.to_json(),
            "myosteatosis": self.myosteatosis.to_json(),
            "high_vsr": self.high_vsr.to_json(),
            "reasons": dict(self.reasons),
            "flags": list(self.flags),
        }


@dataclass(frozen=True)
class BodyCompositionResult:
    """Everything result.json needs from the tissue step."""

    tissues: dict[str, TissueStats]
    metrics: Metrics
    preset: WindowPreset
    rule_set: RuleSet
    inputs: PatientInputs
    n_slices: int = 1

    def to_json(self) -> Measurement:
        t = self.tissues
        return {
            "tissues": {
                "skeletal_muscle": t["skeletal_muscle"].to_json(),
                "imat": t["imat"].to_json(),
                "vat": t["vat"].to_json(),
                "sat": t["sat"].to_json(),
            },
            "metrics": self.metrics.to_json(),
            "hu_preset": self.preset.to_json(),
            "rule_set": self.rule_set.to_json(),
            "patient_inputs": self.inputs.to_json(),
            "n_slices": self.n_slices,
        }


def compute_result(
    tissues: dict[str, TissueStats],
    inputs: PatientInputs,
    *,
    preset: WindowPreset | str | None = None,
    rule_set: RuleSet | str | None = None,
    waist_cm: float | None = None,
    fov_truncated: bool = False,
    n_slices: int = 1,
) -> BodyCompositionResult:
    """Derive SMI, BMI, ratios and rule-based flags from tissue stats and patient inputs."""
    p = preset if isinstance(preset, WindowPreset) else get_preset(preset)
    rs = rule_set if isinstance(rule_set, RuleSet) else get_rule_set(rule_set)
    h, w, sex, flags = inputs.validated()
    reasons: dict[str, str] = {}
    sm = tissues["skeletal_muscle"].area_cm2
    imat = tissues["imat"].area_cm2
    vat = tissues["vat"].area_cm2
    sat = tissues["sat"].area_cm2

    def index(area: float, key: str) -> float | None:
        if h is None:
            reasons[key] = (
                "height implausible (outside 1.2-2.3 m)"
                if "height_implausible" in flags
                else "height missing"
            )
            return None
        return area / (h * h)

    smi = index(sm, "smi_cm2_m2")
    sati = index(sat, "sati_cm2_m2")
    vati = index(vat, "vati_cm2_m2")
    bmi: float | None = None
    if h is None or w is None:
        missing = [n for n, v in (("height", h), ("weight", w)) if v is None]
        reasons["bmi"] = " and ".join(missing) + " missing or implausible"
    else:
        bmi = w / (h * h)
    vsr: float | None = None
    if sat > 0:
        vsr = vat / sat
    else:
        reasons["vat_sat_ratio"] = "no SAT measured"
    if fov_truncated:
        flags.append("fov_truncated")
        reasons["vat_sat_ratio_note"] = "field of view truncated: SAT understated, ratio overstated"
    imat_pct: float | None = None
    if sm + imat > 0:
        imat_pct = 100.0 * imat / (sm + imat)
    else:
        reasons["imat_percent"] = "no muscle measured"
    waist: float | None = waist_cm
    if fov_truncated and waist is not None:
        waist = None
        reasons["waist_circumference_cm"] = "field of view truncated: body outline incomplete"
    elif waist is None:
        reasons.setdefault("waist_circumference_cm", "not measured")
    if not (SM_AREA_PLAUSIBLE_CM2[0] <= sm <= SM_AREA_PLAUSIBLE_CM2[1]):
        flags.append("sm_area_implausible")
        reasons["skeletal_muscle_area_note"] = (
            f"SM area {sm:.1f} cm² outside {SM_AREA_PLAUSIBLE_CM2[0]:g}-{SM_AREA_PLAUSIBLE_CM2[1]:g} cm²: "
            "review"
        )
    lsmm = evaluate(rs, "lsmm", smi, sex, bmi)
    if smi is None:
        lsmm = Determination(
            "lsmm",
            rs.id,
            "not_computable",
            f"SMI not computable: {reasons['smi_cm2_m2']}",
            None,
            None,
            lsmm.inputs,
        )
    myo = evaluate(rs, "myosteatosis", tissues["skeletal_muscle"].mean_hu, sex, bmi)
    hvsr = evaluate(rs, "high_vsr", vsr, sex, bmi)
    metrics = Metrics(smi, sati, vati, bmi, vsr, imat_pct, waist, lsmm, myo, hvsr, reasons, flags)
    return BodyCompositionResult(tissues, metrics, p, rs, inputs, n_slices)


def _pool(stats: Sequence[TissueStats]) -> TissueStats:
    """Mean area over slices; mean and SD HU pooled over all pixels of all slices."""
    n = sum(s.pixels for s in stats)
    area = float(np.mean([s.area_cm2 for s in stats]))
    if n == 0:
        return TissueStats(area, None, None, 0)
    s1 = sum(s.pixels * (s.mean_hu or 0.0) for s in stats)
    s2 = sum(s.pixels * ((s.sd_hu or 0.0) ** 2 + (s.mean_hu or 0.0) ** 2) for s in stats)
    mean = s1 / n
    var = max(s2 / n - mean * mean, 0.0)
    return TissueStats(area, mean, math.sqrt(var), n)


def average_results(
    per_slice: Sequence[dict[str, TissueStats]],
    inputs: PatientInputs,
    *,
    preset: WindowPreset | str | None = None,
    rule_set: RuleSet | str | None = None,
    waists_cm: Sequence[float | None] | None = None,
    fov_truncated: bool = False,
) -> BodyCompositionResult:
    """Multi-slice mode: mean area per slice, pooled HU; metrics from the averaged tissues.

    ``pixels`` of the result is the total over all slices; ``n_slices`` records N.
    """
    if not per_slice:
        raise ValueError("no slices to average")
    pooled = {k: _pool([s[k] for s in per_slice]) for k in TISSUE_KEYS}
    waist: float | None = None
    if waists_cm:
        vals = [w for w in waists_cm if w is not None]
        waist = float(np.mean(vals)) if len(vals) == len(waists_cm) else None
    return compute_result(
        pooled,
        inputs,
        preset=preset,
        rule_set=rule_set,
        waist_cm=waist,
        fov_truncated=fov_truncated,
        n_slices=len(per_slice),
    )
