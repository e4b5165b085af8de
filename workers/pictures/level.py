"""QC picture for the L3 level: a radiologist should be able to check the count in two seconds.

Two curved reformats that follow the tracked spine, both with superior at the top and square
millimetre pixels (true anatomical proportions):

* sagittal (anterior on the left) through the vertebral bodies, so bodies, discs and the sacrum
  are visible and the labels can be counted;
* coronal (patient right on the left) as a maximum-intensity slab from the vertebral bodies to
  just behind the spinal canal, so the lowest ribs, the transverse processes and the sacroiliac
  joints, i.e. the two anchors of the count, are visible.

Each identified vertebra is labelled, the L3 body range is shaded, the chosen slice is a line
across both views, and the caption repeats confidence, method and flags. Only Pillow is used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from workers.l3.cues import CUE_RIB, CUE_TP, RUDIMENTARY_RIB, Cue
from workers.l3.result import L3Result
from workers.pictures.text import default_font as _font
from workers.pictures.text import drawable

SERIOUS_FLAGS = {
    "anchors_disagree",
    "vertebral_level_ambiguous",
    "possible_transitional_vertebra",
    "z_gap_near_l3",
}
PX_MM = 1.0  # reformat pixel size
WINDOW = (-250.0, 1100.0)  # wide bone/soft-tissue window: discs, bodies, ribs all readable


def _spine_path(
    hu: np.ndarray, spacing: tuple[float, float], result: L3Result
) -> tuple[np.ndarray, np.ndarray]:
    """Body-centre (y, x) per slice in mm; the image centre if the localiser found no spine."""
    nz, ny, nx = hu.shape
    if result.spine_yx_mm is not None and len(result.spine_yx_mm) == nz:
        a = np.asarray(result.spine_yx_mm, dtype=np.float64)
        return a[:, 0], a[:, 1]
    return np.full(nz, 0.6 * ny * spacing[0]), np.full(nz, 0.5 * nx * spacing[1])


def _reformats(
    hu: np.ndarray, z_mm: np.ndarray, spacing: tuple[float, float], ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sagittal [z, y], coronal [z, x], gap mask [z]) on a 1 mm grid, z ascending."""
    nz, ny, nx = hu.shape
    dy, dx = spacing
    sag = np.empty((nz, ny), dtype=np.float32)
    cor = np.empty((nz, nx), dtype=np.float32)
    hx = max(0, round(2.0 / dx))
    for k in range(nz):
        xc = int(np.clip(round(xs[k] / dx), 0, nx - 1))
        sag[k] = hu[k, :, max(0, xc - hx) : xc + hx + 1].astype(np.float32).mean(axis=1)
        # Coronal MIP from the body centre to ~35 mm behind it (pedicles, canal, rib heads).
        y0 = int(np.clip(round(ys[k] / dy), 0, ny - 1))
        y1 = int(np.clip(round((ys[k] + 35.0) / dy), y0 + 1, ny))
        cor[k] = hu[k, y0:y1, :].max(axis=0)
    # Resample to 1 mm: z by linear interpolation between real slices; y/x likewise.
    gz = np.arange(z_mm[0], z_mm[-1] + 1e-6, PX_MM)
    kpos = np.interp(gz, z_mm, np.arange(nz))
    k0 = np.floor(kpos).astype(int)
    k1 = np.minimum(k0 + 1, nz - 1)
    w = (kpos - k0)[:, None]
    sag_z = sag[k0] * (1 - w) + sag[k1] * w
    cor_z = cor[k0] * (1 - w) + cor[k1] * w
    gap = np.abs(gz - z_mm[np.clip(np.round(kpos).astype(int), 0, nz - 1)]) > 4.0
    gy = np.arange(0.0, (ny - 1) * dy + 1e-6, PX_MM) / dy
    gx = np.arange(0.0, (nx - 1) * dx + 1e-6, PX_MM) / dx
    sag_r = np.stack([np.interp(gy, np.arange(ny), row) for row in sag_z])
    cor_r = np.stack([np.interp(gx, np.arange(nx), row) for row in cor_z])
    return sag_r, cor_r, gap


def _to_rgb(img: np.ndarray, gap: np.ndarray) -> np.ndarray:
    lo, hi = WINDOW
    g = np.clip((img - lo) / (hi - lo), 0.0, 1.0) ** 0.8
    rgb = np.repeat((g * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    rgb[gap] = (rgb[gap] * 0.4 + np.array([60, 0, 60]) * 0.6).astype(np.uint8)  # z gaps: purple
    return rgb


def render_l3_qc(
    hu: np.ndarray,
    z_mm: np.ndarray,
    spacing_yx_mm: tuple[float, float],
    result: L3Result,
    path: str | Path,
    slice_label: Callable[[int], str] | None = None,
    title: str | None = None,
) -> Path:
    """Write the QC PNG and return its path. Works for found and not-found results.

    ``slice_label`` maps a canonical slice index to what the user sees in their viewer (file
    index, DICOM InstanceNumber); by default the canonical index is printed as "slice N".
    ``title`` (e.g. patient-free series description) is written above the caption.
    """
    lab = slice_label or (lambda k: f"slice {k}")
    z_mm = np.asarray(z_mm, dtype=np.float64)
    ys, xs = _spine_path(hu, spacing_yx_mm, result)
    sag, cor, gap = _reformats(hu, z_mm, spacing_yx_mm, ys, xs)
    # Keep the trunk around the spine: drops the table, arms and empty air, so short fields of
    # view can be magnified. Offsets are in mm (1 mm pixels), anterior/right kept wider.
    ym, xm = float(np.median(ys)), float(np.median(xs))
    s0, s1 = max(0, round(ym - 170.0)), min(sag.shape[1], round(ym + 90.0))
    c0, c1 = max(0, round(xm - 180.0)), min(cor.shape[1], round(xm + 180.0))
    sag, cor = sag[:, s0:s1], cor[:, c0:c1]
    ys, xs = ys - s0, xs - c0
    z_top = float(z_mm[-1])
    # Magnify short fields of view so they stay legible, shrink very wide ones; never distort.
    scale = float(min(1700.0 / (sag.shape[1] + cor.shape[1]), max(2.0, 500.0 / sag.shape[0]), 5.0))
    nzp = round(sag.shape[0] * scale)

    def row(z: float) -> float:  # display row of patient z (superior at top)
        return (z_top - z) / PX_MM * scale

    panels = []
    for img, centre in ((sag, ys), (cor, xs)):
        rgb = _to_rgb(img[::-1], gap[::-1])
        size = (round(rgb.shape[1] * scale), nzp)
        im = Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR)
        panels.append((im, float(np.median(centre)) / PX_MM * scale))

    font = _font(18)
    small = _font(13)
    pad = 8
    title_h = 24
    width = max(900, sum(p[0].width for p in panels) + pad * (len(panels) + 1))
    lines = _caption(result, lab, title, small, width - 2 * pad)
    cap_h = len(lines) * 21 + 10
    height = title_h + nzp + cap_h + pad
    canvas = Image.new("RGB", (width, height), (16, 16, 16))
    draw = ImageDraw.Draw(canvas, "RGBA")

    x0 = pad
    titles = ("Sagittal (anterior left)", "Coronal (patient right on left)")
    for (im, centre_px), panel_title in zip(panels, titles, strict=True):
        canvas.paste(im, (x0, title_h))
        draw.text((x0 + 4, 4), panel_title, fill=(230, 230, 230), font=small)
        y_off = title_h
        if result.found and "L3" in result.level_ranges:
            a, b = result.level_ranges["L3"]
            draw.rectangle([x0, y_off + row(b), x0 + im.width - 1, y_off + row(a)], fill=(255, 170, 0, 55))
        lumbar = [a for k, (a, _) in result.level_ranges.items() if k != "S"]
        z_floor = min(lumbar) - 12.0 if lumbar else -np.inf
        for dz in (d for d in result.disc_z_mm if d >= z_floor):  # no ticks inside the sacrum
            yy = y_off + row(dz)
            tick = [x0 + centre_px - 28 * scale, yy, x0 + centre_px - 16 * scale, yy]
            draw.line(tick, fill=(90, 200, 255), width=2)
        for name, zc in result.levels.items():
            yy = y_off + row(zc)
            tx = x0 + max(4.0, centre_px - 60 * scale)
            colour = (255, 190, 40) if name == "L3" else (255, 255, 255)
            _outlined(draw, (tx, yy - 9), name, font, colour)
        if "S" in result.level_ranges and "S" not in result.levels:
            a, b = result.level_ranges["S"]
            zc = max(a, b - 25.0)
            pos = (x0 + max(4.0, centre_px - 60 * scale), y_off + row(zc) - 9)
            _outlined(draw, pos, "S", font, (255, 255, 255))
        if result.found and result.z_mm is not None:
            yy = y_off + row(result.z_mm)
            draw.line([x0, yy, x0 + im.width - 1, yy], fill=(255, 60, 60), width=2)
        if panel_title.startswith("Coronal"):
            _draw_cues(draw, result, x0, y_off, im.width, centre_px, scale, row, small)
        x0 += im.width + pad

    cy = title_h + nzp + 6
    for i, (text, col) in enumerate(lines):
        draw.text((pad, cy + i * 21), text, fill=col, font=small)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


_ANCHOR_MARKS = (
    ("lowest_rib_neck", "last rib"),
    ("sacroiliac_bridge_top", "SI joints"),
    ("iliac_crest_top", "iliac crest"),
)


def _draw_cues(
    draw: ImageDraw.ImageDraw,
    result: L3Result,
    x0: int,
    y_off: int,
    width: int,
    centre_px: float,
    scale: float,
    row: Callable[[float], float],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """On the coronal view: where each landmark was found (magenta ticks at the right edge), and
    the measured transverse-process span of each lumbar vertebra as a bar across the spine (the
    widest one, which votes for L3, in yellow), so the count can be checked against them."""
    rib = next((c for c in result.cues if c.name == CUE_RIB), None)
    stub = rib is not None and rib.structure == RUDIMENTARY_RIB
    for key, text in _ANCHOR_MARKS:
        if key == "lowest_rib_neck" and stub:
            text = "last rib (stub)"
        if key in result.anchors_z_mm:
            yy = y_off + row(result.anchors_z_mm[key])
            xa = x0 + width - 4
            draw.line([xa - 40, yy, xa, yy], fill=(255, 80, 255), width=2)
            tx = xa - 40 - draw.textlength(text, font=font) - 4
            _outlined(draw, (tx, yy - 8), text, font, (255, 120, 255))
    tp = next((c for c in result.cues if c.name == CUE_TP), None)
    if tp is None:
        return
    widest = max(tp.spans, key=lambda s: s.span_mm, default=None)
    for sp in tp.spans:
        yy = y_off + row(sp.z_mm)
        colour = (255, 230, 0) if sp is widest and tp.vote is not None else (120, 220, 120)
        xl = x0 + centre_px - sp.right_mm / PX_MM * scale  # patient right is on the left
        xr = x0 + centre_px + sp.left_mm / PX_MM * scale
        draw.line([xl, yy, xr, yy], fill=colour, width=2)
        _outlined(draw, (xr + 4, yy - 8), f"{sp.span_mm:.0f} mm", font, colour)


def _outlined(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    fill: tuple[int, int, int],
) -> None:
    x, y = xy
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1)):
        draw.text((x + dx, y + dy), text, fill=(0, 0, 0), font=font)
    draw.text((x, y), text, fill=fill, font=font)


def _caption(
    result: L3Result,
    lab: Callable[[int], str],
    title: str | None,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
) -> list[tuple[str, tuple[int, int, int]]]:
    """Caption lines (wrapped to the picture width) with their colours."""
    if result.found:
        br = result.body_range
        k = int(result.slice_index or 0)
        z_txt = f" (z = {result.z_mm:.1f} mm)" if result.z_mm is not None else ""
        line1 = f"L3 mid-body: {lab(k)}{z_txt}"
        if br:
            line1 += f";  L3 body from {lab(br[0])} to {lab(br[1])}"
        col1 = (255, 220, 120)
    else:
        line1 = f"L3 NOT FOUND: {result.reason}"
        col1 = (255, 110, 110)
    conf_col = (120, 230, 120) if result.confidence >= 0.7 and not result.flags else (255, 170, 60)
    if set(result.flags) & SERIOUS_FLAGS:
        conf_col = (255, 90, 90)
    line2 = (
        f"confidence {result.confidence:.2f}   method: {result.method}   "
        f"engine {result.engine} {result.engine_version}"
    )
    line3 = "flags: " + (", ".join(result.flags) if result.flags else "none")
    seen = ", ".join(reversed(result.levels_seen)) if result.levels_seen else "-"
    line4 = (
        f"levels seen: {seen}   (red line = chosen slice, orange band = L3 body, blue ticks = discs, "
        "magenta = landmarks, bars = transverse processes, yellow = widest)"
    )
    raw = [(line1, col1), (line2, conf_col), (line3, conf_col), (line4, (200, 200, 200))]
    if result.cues:
        raw.append(("cues: " + "; ".join(_cue_text(c) for c in result.cues), (200, 200, 200)))
    if result.notes:
        raw.append(("notes: " + "; ".join(result.notes), (170, 170, 170)))
    if title:
        raw.insert(0, (title, (230, 230, 230)))
    img = Image.new("RGB", (1, 1))
    d = ImageDraw.Draw(img)
    out: list[tuple[str, tuple[int, int, int]]] = []
    for text, col in raw:
        out.extend((w, col) for w in _wrap(d, text, font, width))
    return out


def _cue_text(c: Cue) -> str:
    """'lowest rib (T12) agrees' — what a reader needs to check each vote on the picture."""
    verdict = "abstains" if c.vote is None else ("agrees" if c.agrees else "DISAGREES")
    return f"{c.name.replace('_', ' ')} at z={c.z_mm:.0f} ({c.level}) {verdict}"


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int
) -> list[str]:
    """Greedy word wrap so long reasons stay readable instead of running off the picture."""
    lines: list[str] = []
    cur = ""
    for word in drawable(text).split(" "):
        trial = word if not cur else f"{cur} {word}"
        if cur and draw.textlength(trial, font=font) > width:
            lines.append(cur)
            cur = word
        else:
            cur = trial
    lines.append(cur)
    return lines
