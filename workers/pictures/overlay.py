"""Overlay picture of the analysed slice: CT in a soft-tissue window, tissues, peritoneal line, numbers.

Why: a reader must be able to check the segmentation at a glance (and the PACS may only show a
Secondary Capture). The picture uses square pixels in millimetres (anisotropic spacing is
resampled), colour-blind-friendly Okabe-Ito colours at ~0.5 alpha, a legend with the key numbers,
the rule set and HU preset, an orientation hint, a 5 cm scale bar and a review note. Pillow only;
returns an RGB image (the caller may wrap it into DICOM SC).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from workers.pictures.text import default_font as _font
from workers.pictures.text import drawable
from workers.tissues.engine import LABEL_IMAT, LABEL_SAT, LABEL_SM, LABEL_VAT

__all__ = ["TISSUE_COLOURS", "render_overlay"]

QC_LINES = 4  # QC reasons shown on the picture; all of them are in result.json (and the SR)
QC_CHARS = 44  # characters of a line of the panel: a longer reason wraps, it is never cut


def qc_lines(reasons: Sequence[str]) -> list[str]:
    """The panel's lines for the QC reasons: the first :data:`QC_LINES`, each wrapped whole
    (a reason cut in the middle once hid what a reader needed: "contrast agent recorded (…): mu…")."""
    lines = []
    for reason in reasons[:QC_LINES]:
        for k, part in enumerate(textwrap.wrap(drawable(reason), QC_CHARS - 5, break_on_hyphens=False)):
            lines.append(f"{'   ' if k == 0 else '     '}{part}")
    if len(reasons) > QC_LINES:
        lines.append(f"   (+{len(reasons) - QC_LINES} more in result.json and the SR)")
    return lines


#: Okabe-Ito palette (distinguishable with the common colour-vision deficiencies)
TISSUE_COLOURS: dict[int, tuple[int, int, int]] = {
    LABEL_SM: (213, 94, 0),  # vermillion
    LABEL_IMAT: (240, 228, 66),  # yellow
    LABEL_VAT: (0, 158, 115),  # bluish green
    LABEL_SAT: (86, 180, 233),  # sky blue
}
_NAMES = {
    LABEL_SM: ("skeletal_muscle", "SM"),
    LABEL_IMAT: ("imat", "IMAT"),
    LABEL_VAT: ("vat", "VAT"),
    LABEL_SAT: ("sat", "SAT"),
}
LINE_COLOUR = (204, 121, 167)  # reddish purple: peritoneal line
CORRECTION_COLOUR = (120, 200, 255)  # light blue: the note of a corrected result
ALPHA = 0.5
WINDOW_W, WINDOW_L = 400.0, 40.0
PANEL_W = 360
TARGET_PX = 640  # longest side of the image part


def _fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int | float):
        return f"{x:.{nd}f}"
    return str(x)


def render_overlay(  # noqa: C901 (long: to split into named stages, issue #22)
    hu: npt.NDArray[Any],
    labels: npt.NDArray[np.uint8],
    spacing_yx_mm: Sequence[float],
    summary: Mapping[str, Any] | None,
    path_or_none: str | Path | None = None,
    *,
    peritoneal_contour_px: npt.NDArray[np.float64] | None = None,
    title: str = "bodycomp: body composition at L3",
) -> Image.Image:
    """Render the overlay; save it as PNG if a path is given; return the RGB image.

    ``summary`` is the result.json-like dict (``tissues``, ``metrics``, ``hu_preset``, ``rule_set``,
    optional ``qc``/``flags``/``slice``); missing parts are shown as n/a.
    """
    if hu.shape != labels.shape:
        raise ValueError("hu and labels must have the same shape")
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    h, w = hu.shape
    mm_per_px = max(h * dy, w * dx) / TARGET_PX
    out_h = max(round(h * dy / mm_per_px), 1)
    out_w = max(round(w * dx / mm_per_px), 1)
    lo = WINDOW_L - WINDOW_W / 2
    grey = np.clip((hu.astype(np.float32) - lo) / WINDOW_W * 255.0, 0, 255).astype(np.uint8)
    base = Image.fromarray(grey, "L").resize((out_w, out_h), Image.Resampling.BILINEAR).convert("RGB")
    lab_img = Image.fromarray(labels.astype(np.uint8), "L").resize((out_w, out_h), Image.Resampling.NEAREST)
    lab = np.asarray(lab_img)
    rgb = np.asarray(base).astype(np.float32)
    for value, col in TISSUE_COLOURS.items():
        m = lab == value
        rgb[m] = (1 - ALPHA) * rgb[m] + ALPHA * np.array(col, dtype=np.float32)
    pic = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pic)
    sy, sx = out_h / h, out_w / w
    if peritoneal_contour_px is not None and len(peritoneal_contour_px) > 2:
        pts = [(float(c + 0.5) * sx, float(r + 0.5) * sy) for r, c in peritoneal_contour_px]
        draw.line([*pts, pts[0]], fill=LINE_COLOUR, width=2)
    small = _font(13)
    # orientation (radiological display) and scale bar
    draw.text((6, out_h // 2 - 7), "R", fill=(255, 255, 255), font=small)
    draw.text((out_w - 14, out_h // 2 - 7), "L", fill=(255, 255, 255), font=small)
    draw.text((out_w // 2 - 4, 4), "A", fill=(255, 255, 255), font=small)
    bar = 50.0 / mm_per_px
    y0 = out_h - 14
    draw.line([(10, y0), (10 + bar, y0)], fill=(255, 255, 255), width=3)
    draw.text((12, y0 - 17), "5 cm", fill=(255, 255, 255), font=small)

    panel_h = max(out_h, 470)
    # room for any number of wrapped lines; cut to what was drawn at the end
    canvas = Image.new("RGB", (out_w + PANEL_W, panel_h + 600), (0, 0, 0))
    canvas.paste(pic, (0, 0))
    d = ImageDraw.Draw(canvas)
    x = out_w + 12
    y = 8
    big = _font(16)
    d.text((x, y), title, fill=(255, 255, 255), font=big)
    y += 26
    s = dict(summary or {})
    tissues = s.get("tissues", {}) or {}
    metrics = s.get("metrics", {}) or {}
    d.text((x, y), "tissue     area cm2   mean HU", fill=(200, 200, 200), font=small)
    y += 18
    for value in (LABEL_SM, LABEL_IMAT, LABEL_VAT, LABEL_SAT):
        key, short = _NAMES[value]
        t = tissues.get(key, {}) or {}
        d.rectangle([x, y + 2, x + 12, y + 14], fill=TISSUE_COLOURS[value], outline=(255, 255, 255))
        d.text(
            (x + 18, y),
            f"{short:<6} {_fmt(t.get('area_cm2')):>9}  {_fmt(t.get('mean_hu')):>8}",
            fill=(255, 255, 255),
            font=small,
        )
        y += 18
    if peritoneal_contour_px is not None and len(peritoneal_contour_px) > 2:  # only what is drawn
        d.line([(x, y + 6), (x + 14, y + 6)], fill=LINE_COLOUR, width=2)
        d.text((x + 18, y), "peritoneal line", fill=(255, 255, 255), font=small)
        y += 6
    y += 18

    def line(text: str, colour: tuple[int, int, int] = (255, 255, 255)) -> None:
        nonlocal y
        d.text((x, y), text, fill=colour, font=small)
        y += 17

    line(
        f"SMI: {_fmt(metrics.get('smi_cm2_m2'))} cm2/m2"
        + (
            ""
            if metrics.get("smi_cm2_m2") is not None
            else f" ({(metrics.get('reasons') or {}).get('smi_cm2_m2', '')})"
        )
    )
    line(f"BMI: {_fmt(metrics.get('bmi'))} kg/m2   VAT/SAT: {_fmt(metrics.get('vat_sat_ratio'), 2)}")
    line(
        f"IMAT: {_fmt(metrics.get('imat_percent'))} %   "
        f"waist: {_fmt(metrics.get('waist_circumference_cm'))} cm"
    )
    for key, label in (("lsmm", "Low muscle mass (LSMM)"), ("myosteatosis", "Myosteatosis")):
        det = metrics.get(key) or {}
        det_value = det.get("value")
        status = det.get("status") or ("present" if det_value else "absent" if det_value is False else "n/a")
        line(
            f"{label}: {str(status).replace('_', ' ')}",
            (255, 220, 120) if det.get("value") else (255, 255, 255),
        )
        if det.get("rule_set"):
            line(f"   rule set {det.get('rule_set')}", (200, 200, 200))
    preset = s.get("hu_preset") or {}
    pid = preset.get("id") if isinstance(preset, Mapping) else preset
    line(f"HU preset: {pid or 'n/a'}", (200, 200, 200))
    if isinstance(preset, Mapping) and preset.get("windows"):
        wins = preset["windows"]
        for k, short in (("skeletal_muscle", "SM"), ("imat", "IMAT"), ("vat", "VAT"), ("sat", "SAT")):
            win = wins.get(k) or {}
            line(f"   {short}: {win.get('min_hu')}..{win.get('max_hu')} HU", (170, 170, 170))
    # the QC reasons are the readable form of the flags: show them, one per line, and the raw flags
    # only when no reason was given (both at once printed "fov truncated, fov_truncated")
    qc = s.get("qc") or {}
    reasons = [str(r) for r in (qc.get("reasons") or [])]
    if not reasons:
        reasons = [str(f) for f in list(s.get("flags", []) or []) + list(metrics.get("flags", []) or [])]
    reasons = list(dict.fromkeys(reasons))
    if reasons or qc.get("status"):
        line(f"QC: {qc.get('status') or 'review'}", (255, 160, 160))
        for text in qc_lines(reasons):
            line(text, (255, 160, 160))
    # a corrected result says so on the picture itself: a reader comparing two overlays in the
    # study must see which one stands
    correction = s.get("correction") or {}
    if correction.get("description"):
        line("Corrected result, supersedes the earlier one:", CORRECTION_COLOUR)
        for text in qc_lines([str(correction["description"])]):
            line(text, CORRECTION_COLOUR)
    if s.get("slice") is not None:
        line(f"slice: {s.get('slice')}", (200, 200, 200))
    y = max(y + 6, panel_h - 40)
    d.text((x, y), "Automated measurement. Not for diagnostic", fill=(255, 200, 200), font=small)
    d.text((x, y + 16), "use without review by a qualified reader.", fill=(255, 200, 200), font=small)
    canvas = canvas.crop((0, 0, canvas.width, y + 40))
    if path_or_none is not None:
        canvas.save(str(path_or_none), format="PNG")
    return canvas
