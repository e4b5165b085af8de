"""Overlay picture of the analysed slice: CT in a soft-tissue window, tissues, peritoneal line, numbers.

Why: a reader must be able to check the segmentation at a glance (and the PACS may only show a
Secondary Capture). The picture uses square pixels in millimetres (anisotropic spacing is
resampled), colour-blind-friendly Okabe-Ito colours at ~0.5 alpha, a legend with the key numbers,
the rule set and HU preset, an orientation hint, a 5 cm scale bar and a review note. Pillow only;
returns an RGB image (the caller may wrap it into DICOM SC).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from workers.pictures.text import default_font as _font
from workers.pictures.text import drawable
from workers.result import (
    CorrectionJson,
    HuPresetJson,
    Measurement,
    MetricsJson,
    QcJson,
    TissueKey,
    TissuesJson,
)
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
_NAMES: dict[int, tuple[TissueKey, str]] = {
    LABEL_SM: ("skeletal_muscle", "SM"),
    LABEL_IMAT: ("imat", "IMAT"),
    LABEL_VAT: ("vat", "VAT"),
    LABEL_SAT: ("sat", "SAT"),
}
#: The preset's windows, in the order the panel lists them.
_WINDOWS: tuple[tuple[TissueKey, str], ...] = (
    ("skeletal_muscle", "SM"),
    ("imat", "IMAT"),
    ("vat", "VAT"),
    ("sat", "SAT"),
)
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


def render_overlay(
    hu: npt.NDArray[Any],
    labels: npt.NDArray[np.uint8],
    spacing_yx_mm: Sequence[float],
    summary: Measurement | None,
    path_or_none: str | Path | None = None,
    *,
    qc: QcJson | None = None,
    correction: CorrectionJson | None = None,
    peritoneal_contour_px: npt.NDArray[np.float64] | None = None,
    title: str = "bodycomp: body composition at L3",
) -> Image.Image:
    """Render the overlay; save it as PNG if a path is given; return the RGB image.

    ``summary`` is what was measured (a :class:`workers.result.MeasuredResult` is one): tissues,
    metrics, HU preset; None shows every value as n/a. ``qc`` is the verdict with its reasons
    (without one, the metrics' flags are shown), ``correction`` what a corrected result corrects.
    """
    if hu.shape != labels.shape:
        raise ValueError("hu and labels must have the same shape")
    pic = _picture(hu, labels, spacing_yx_mm, peritoneal_contour_px)
    out_w, out_h = pic.size
    panel_h = max(out_h, 470)
    # room for any number of wrapped lines; cut to what was drawn at the end
    canvas = Image.new("RGB", (out_w + PANEL_W, panel_h + 600), (0, 0, 0))
    canvas.paste(pic, (0, 0))
    panel = _Panel(ImageDraw.Draw(canvas), out_w + 12, 8)
    panel.draw.text((panel.x, panel.y), title, fill=(255, 255, 255), font=_font(16))
    panel.y += 26
    drawn_line = peritoneal_contour_px is not None and len(peritoneal_contour_px) > 2
    _tissue_table(panel, None if summary is None else summary["tissues"], drawn_line)
    metrics = None if summary is None else summary["metrics"]
    _metric_lines(panel, metrics)
    _preset_lines(panel, None if summary is None else summary["hu_preset"])
    _qc_lines(panel, qc, [] if metrics is None else metrics["flags"])
    _correction_lines(panel, correction)
    y = max(panel.y + 6, panel_h - 40)
    small = panel.font
    panel.draw.text(
        (panel.x, y), "Automated measurement. Not for diagnostic", fill=(255, 200, 200), font=small
    )
    panel.draw.text(
        (panel.x, y + 16), "use without review by a qualified reader.", fill=(255, 200, 200), font=small
    )
    canvas = canvas.crop((0, 0, canvas.width, y + 40))
    if path_or_none is not None:
        canvas.save(str(path_or_none), format="PNG")
    return canvas


def _picture(
    hu: npt.NDArray[Any],
    labels: npt.NDArray[np.uint8],
    spacing_yx_mm: Sequence[float],
    peritoneal_contour_px: npt.NDArray[np.float64] | None,
) -> Image.Image:
    """The slice in square millimetre pixels (:data:`TARGET_PX` on its longest side) with the
    tissues blended in, the peritoneal line, the orientation letters and a 5 cm bar. Why
    resampled: anisotropic pixels would distort the anatomy a reader checks."""
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
    return pic


class _Panel:
    """The text panel right of the picture: where the next line goes."""

    def __init__(self, draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
        self.draw, self.x, self.y = draw, x, y
        self.font = _font(13)

    def line(self, text: str, colour: tuple[int, int, int] = (255, 255, 255)) -> None:
        self.draw.text((self.x, self.y), text, fill=colour, font=self.font)
        self.y += 17


def _tissue_table(panel: _Panel, tissues: TissuesJson | None, peritoneal_line: bool) -> None:
    """Area and mean HU per tissue beside its colour, and the peritoneal line's key when drawn."""
    d, x, small = panel.draw, panel.x, panel.font
    d.text((x, panel.y), "tissue     area cm2   mean HU", fill=(200, 200, 200), font=small)
    panel.y += 18
    for value in (LABEL_SM, LABEL_IMAT, LABEL_VAT, LABEL_SAT):
        key, short = _NAMES[value]
        t = None if tissues is None else tissues[key]
        area, mean = (None, None) if t is None else (t["area_cm2"], t["mean_hu"])
        d.rectangle(
            [x, panel.y + 2, x + 12, panel.y + 14], fill=TISSUE_COLOURS[value], outline=(255, 255, 255)
        )
        d.text(
            (x + 18, panel.y),
            f"{short:<6} {_fmt(area):>9}  {_fmt(mean):>8}",
            fill=(255, 255, 255),
            font=small,
        )
        panel.y += 18
    if peritoneal_line:  # only what is drawn
        d.line([(x, panel.y + 6), (x + 14, panel.y + 6)], fill=LINE_COLOUR, width=2)
        d.text((x + 18, panel.y), "peritoneal line", fill=(255, 255, 255), font=small)
        panel.y += 6
    panel.y += 18


def _metric_lines(panel: _Panel, metrics: MetricsJson | None) -> None:
    """SMI (or why not), BMI, VAT/SAT, IMAT %, waist, and the two verdicts with their rule set."""
    if metrics is None:
        panel.line("SMI: n/a cm2/m2 ()")
        panel.line("BMI: n/a kg/m2   VAT/SAT: n/a")
        panel.line("IMAT: n/a %   waist: n/a cm")
        panel.line("Low muscle mass (LSMM): n/a")
        panel.line("Myosteatosis: n/a")
        return
    smi = metrics["smi_cm2_m2"]
    # (a reason is there only for a value that is missing)
    panel.line(
        f"SMI: {_fmt(smi)} cm2/m2"
        + ("" if smi is not None else f" ({metrics['reasons'].get('smi_cm2_m2', '')})")
    )
    panel.line(f"BMI: {_fmt(metrics['bmi'])} kg/m2   VAT/SAT: {_fmt(metrics['vat_sat_ratio'], 2)}")
    panel.line(
        f"IMAT: {_fmt(metrics['imat_percent'])} %   waist: {_fmt(metrics['waist_circumference_cm'])} cm"
    )
    for det, label in (
        (metrics["lsmm"], "Low muscle mass (LSMM)"),
        (metrics["myosteatosis"], "Myosteatosis"),
    ):
        panel.line(
            f"{label}: {det['status'].replace('_', ' ')}",
            (255, 220, 120) if det["value"] else (255, 255, 255),
        )
        if det["rule_set"]:
            panel.line(f"   rule set {det['rule_set']}", (200, 200, 200))


def _preset_lines(panel: _Panel, preset: HuPresetJson | None) -> None:
    """The HU preset and its windows: the areas are only comparable with them."""
    panel.line(f"HU preset: {'n/a' if preset is None else preset['id'] or 'n/a'}", (200, 200, 200))
    if preset is not None and preset["windows"]:
        for key, short in _WINDOWS:
            win = preset["windows"][key]
            panel.line(f"   {short}: {win['min_hu']}..{win['max_hu']} HU", (170, 170, 170))


def _qc_lines(panel: _Panel, qc: QcJson | None, metric_flags: Sequence[str]) -> None:
    """The verdict and its reasons, the readable form of the flags: shown one per line, and the
    raw flags only when no reason was given (both at once printed "fov truncated, fov_truncated")."""
    reasons = [str(r) for r in qc["reasons"]] if qc is not None else []
    if not reasons:
        reasons = [str(f) for f in metric_flags]
    reasons = list(dict.fromkeys(reasons))
    if reasons or qc is not None:
        panel.line(f"QC: {qc['status'] if qc is not None else 'review'}", (255, 160, 160))
        for text in qc_lines(reasons):
            panel.line(text, (255, 160, 160))


def _correction_lines(panel: _Panel, correction: CorrectionJson | None) -> None:
    """A corrected result says so on the picture itself: a reader comparing two overlays in the
    study must see which one stands."""
    if correction is not None and correction["description"]:
        panel.line("Corrected result, supersedes the earlier one:", CORRECTION_COLOUR)
        for text in qc_lines([correction["description"]]):
            panel.line(text, CORRECTION_COLOUR)
