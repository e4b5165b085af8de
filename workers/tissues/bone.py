"""Spine and bone: vertebral body, bone interior and spinal canal.

Why: trabecular bone (~120 HU in older patients) and CSF/cord in the canal fall inside the muscle
window, and marrow/epidural fat inside the fat windows; they must never count as muscle or VAT.
The vertebral body is also the anchor for the posterior part of the peritoneal line (which runs
in front of the spine) and for the ray centre.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from workers.tissues.geometry import BoolArray, close_mm
from workers.tissues.params import TISSUE_PARAMS

P = TISSUE_PARAMS.bone


@dataclass
class SpineResult:
    bone: BoolArray  # cortical/dense bone anywhere in the body
    bone_interior: BoolArray  # bone plus its enclosed marrow (all bones)
    vertebra: BoolArray  # the vertebra component (body + posterior elements), filled
    vertebral_body: BoolArray  # the round anterior part of the vertebra
    canal: BoolArray
    body_center_rc: tuple[float, float] | None  # vertebral body centroid (row, col)


def find_spine(hu: npt.NDArray[Any], body: BoolArray, spacing_yx_mm: Sequence[float]) -> SpineResult:
    """Locate the vertebra as the large bone component nearest the posterior midline of the body."""
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    bone = (hu > P.bone_hu) & body
    # trabecular bone of older patients is only ~60-130 HU: find bone *regions* on a smoothed image
    sig = (P.trabecular_smooth_mm / dy, P.trabecular_smooth_mm / dx)
    smooth = ndi.gaussian_filter(np.clip(hu, *P.smooth_clip_hu).astype(np.float32), sig)
    dense = ((smooth > P.trabecular_hu) | bone) & body
    closed = close_mm(dense, P.bone_region_close_mm, spacing_yx_mm) | dense
    interior = ndi.binary_fill_holes(closed)
    empty = np.zeros_like(body)
    if not body.any() or not interior.any():
        return SpineResult(bone, interior, empty, empty, empty, None)
    rows = np.flatnonzero(body.any(axis=1))
    cols = np.flatnonzero(body.any(axis=0))
    r0, r1 = rows[0], rows[-1]
    _cy, cx = ndi.center_of_mass(body)
    lab, _n = ndi.label(interior, structure=np.ones((3, 3), bool))
    best, best_score = 0, -np.inf
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        area = comp.sum() * dy * dx
        if area < P.vert_min_area_mm2:  # < 3 cm²: not a vertebra
            continue
        yy, xx = np.nonzero(comp)
        my = (yy.mean() + sl[0].start - r0) / max(r1 - r0, 1)  # 0 front .. 1 back
        mx = abs(xx.mean() + sl[1].start - cx) * dx
        width_mm = (cols[-1] - cols[0] + 1) * dx
        score = (
            np.log(area)
            - P.vert_depth_weight * abs(my - P.vert_depth)
            - P.vert_midline_weight * mx / max(width_mm, 1.0)
        )
        if score > best_score:
            best, best_score = i, score
    if best == 0:
        return SpineResult(bone, interior, empty, empty, empty, None)
    vert = lab == best
    # close the cortical ring around low-density marrow (osteopenia, basivertebral veins)
    vert = ndi.binary_fill_holes(close_mm(vert, P.vert_close_mm, spacing_yx_mm)) | vert
    vert &= body
    vbody = _vertebral_body(hu, vert, body, spacing_yx_mm)
    dist = ndi.distance_transform_edt(vbody, sampling=(dy, dx))
    rmax = float(dist.max())
    vy, vx = ndi.center_of_mass(vbody)
    # what is excluded from muscle/fat: dense bone, marrow enclosed by it, the vertebral body
    raw_bone = (hu > P.raw_bone_hu) & body
    # (close only pixel-size gaps: larger closings would fill muscle between lamina and processes)
    interior = (
        ndi.binary_fill_holes(close_mm(raw_bone, min(P.raw_bone_close_max_mm, max(dy, dx)), spacing_yx_mm))
        | vbody
    )
    canal = _find_canal(hu, vert, vbody, (float(vy), float(vx)), spacing_yx_mm, rmax)
    return SpineResult(bone, interior, vert, vbody, canal, (float(vy), float(vx)))


def _find_canal(
    hu: npt.NDArray[Any],
    vert: BoolArray,
    vbody: BoolArray,
    vc: tuple[float, float],
    spacing_yx_mm: Sequence[float],
    body_radius_mm: float,
) -> BoolArray:
    """Canal = the soft-tissue gap straight behind the vertebral body, closed by the lamina.

    Walk posteriorly (+row) from the body centre: leave the vertebral body, cross the canal, hit
    the lamina/spinous process (bone > 150 HU) within 35 mm. The canal is the disk spanning that
    gap (radius 5-12 mm), minus bone. Works at coarse resolution where the bony ring is not
    closed. If no lamina is found a 7 mm disk just behind the body is used.
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    h, w = vert.shape
    r = round(vc[0])
    c = round(vc[1])
    canal = np.zeros_like(vert)
    if not (0 <= r < h and 0 <= c < w):
        return canal
    col_hu = hu[:, c]
    col_vb = vbody[:, c]
    i = r
    while i < h - 1 and col_vb[i]:
        i += 1
    start = i
    lamina = None
    while i < h - 1 and (i - start) * dy < P.lamina_search_mm:
        if col_hu[i] > P.raw_bone_hu and (i - start) * dy >= P.lamina_min_gap_mm:
            lamina = i
            break
        i += 1
    if lamina is None:
        mid_r, rad = start + P.canal_default_radius_mm / dy, P.canal_default_radius_mm
    else:
        mid_r = 0.5 * (start + lamina)
        rad = float(np.clip(0.5 * (lamina - start) * dy + 0.5 * dy, *P.canal_radius_range_mm))
    yy, xx = np.ogrid[:h, :w]
    disk = ((yy - mid_r) * dy) ** 2 + ((xx - vc[1]) * dx) ** 2 <= rad**2
    if lamina is not None:
        # at coarse pixels the canal is only 2-3 rows deep and the disk above is smaller than the
        # canal's width (the interpedicular distance, ~20-25 mm): add the band between the back of
        # the body and the lamina, inside the vertebra, across the canal's half-width
        band = (yy >= start) & (yy < lamina) & (np.abs(xx - vc[1]) * dx <= P.canal_half_width_mm)
        disk = disk | (band & vert)
    disk &= ~vbody & (hu < P.raw_bone_hu)
    # the rest of the canal inside the bony ring: the parts of it that the disk's soft tissue reaches
    # without crossing bone (not the multifidus between the laminae and the spinous process)
    ring = (
        _inside_the_bony_ring(hu, vbody, (mid_r, vc[1]), start, spacing_yx_mm) & ~vbody & (hu < P.raw_bone_hu)
    )
    # (a lamina's partial-volumed pixels below 150 HU must not connect: pass at a pixel from bone)
    square = np.ones((3, 3), bool)
    core = (ring | disk) & ~ndi.binary_dilation(hu >= P.raw_bone_hu, structure=square)
    lab, _n = ndi.label(core)
    ids = np.unique(lab[disk & core])
    reached = ndi.binary_dilation(np.isin(lab, ids[ids > 0]), structure=square)
    return disk | (reached & ring)


def _inside_the_bony_ring(
    hu: npt.NDArray[Any],
    vbody: BoolArray,
    centre_rc: tuple[float, float],
    body_back_row: int,
    spacing_yx_mm: Sequence[float],
) -> BoolArray:
    """Everything inside the ring of the body's back, pedicles and laminae around the canal.

    Why: at L3 the canal is a triangle (lateral recesses, a dorsal apex between the laminae) that a
    disk does not cover; the thecal sac (0-40 HU, in the muscle window) and the epidural fat in its
    corners were muscle and intermuscular fat (hcc_tace_seg_048 upper L3: 2 cm²). The ring's bone
    near the canal has a convex hull whose inside, less the bone, is canal; the processes further
    out (transverse, spinous) are left out by the radius so that the psoas and multifidus beside
    them stay outside.
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    h, w = hu.shape
    yy, xx = np.ogrid[:h, :w]
    near = ((yy - centre_rc[0]) * dy) ** 2 + ((xx - centre_rc[1]) * dx) ** 2 <= P.canal_ring_mm**2
    ring = near & ((hu > P.canal_ring_bone_hu) | vbody)
    if ring.sum() < 3:
        return np.zeros_like(vbody)
    return _convex_hull(ring) & (yy >= body_back_row)


def _convex_hull(mask: BoolArray) -> BoolArray:
    from skimage.morphology import convex_hull_image

    if mask.sum() < 3:
        return mask
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = convex_hull_image(mask[y0:y1, x0:x1])
    return out


def _body_run(
    col: npt.NDArray[Any],
    raw_col: npt.NDArray[Any],
    in_body: npt.NDArray[np.bool_],
    v_top: int,
    v_bot: int,
    dy: float,
    search_front_mm: float = P.vb_search_front_mm,
) -> tuple[int, int] | None:
    """First/last row of the vertebral body on the midline profile, or None.

    Why: the vertebra component found on the smoothed image can miss the body (disc and endplate
    levels, osteopenic marrow) or run through a narrow canal into the laminae. Along the midline the
    spine always reads: vertebral body (a run above 55 HU, ≥ 15 mm deep; gaps < 6 mm such as
    basivertebral veins tolerated) → canal (CSF/cord, < 55 HU, ≥ 6 mm) → laminae/spinous process
    (cortical bone > 150 HU within 35 mm behind the body). So the body is the deepest long
    run that has a lamina behind it (where the spinous process lies behind a lamina, the lamina's
    run is the shorter one).
    Searched from ``search_front_mm`` (40 mm; 65 mm on the retry for disc levels) in front of the
    vertebra component to its back.
    """
    n = len(col)
    r0 = max(v_top - int(search_front_mm / dy), 0)
    r1 = min(v_bot + 1, n)
    above = (col > P.body_run_hu) & in_body
    runs: list[tuple[int, int]] = []
    r = r0
    while r < r1:
        if not above[r]:
            r += 1
            continue
        start = last = r
        gap = 0
        r += 1
        while r < r1:
            if above[r]:
                last = r
                gap = 0
            else:
                gap += 1
                if gap * dy >= P.body_gap_mm:
                    break
            r += 1
        if (last - start + 1) * dy >= P.vb_min_depth_mm:
            runs.append((start, last))
        r = last + 1
    lamina_lo, lamina_hi = int(np.ceil(P.body_gap_mm / dy)), int(P.lamina_search_mm / dy)
    with_lamina = [
        (a, b) for a, b in runs if (raw_col[b + lamina_lo : min(b + lamina_hi + 1, n)] > P.raw_bone_hu).any()
    ]
    if with_lamina:
        # the body is the deepest such run (a lamina with the spinous process behind it is shorter)
        return max(with_lamina, key=lambda ab: (ab[1] - ab[0], -ab[0]))
    return None


def _front_of_aorta_cut(
    hu: npt.NDArray[Any],
    vert: BoolArray,
    top: int,
    back: int,
    lo_c: int,
    hi_c: int,
    spacing_yx_mm: Sequence[float],
) -> int:
    """The body's front row: ``top``, unless the run is deeper than the body is wide; then the row
    after the darkest row (strip median, below P.body_run_hu) in the run's front part."""
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    back_rows = slice(max(back - int(P.vb_width_back_mm / dy), top), back + 1)
    cols = np.flatnonzero((vert[back_rows] & (hu[back_rows] > P.bone_hu)).any(axis=0))
    if cols.size == 0:
        return top
    width = float(cols[-1] - cols[0] + 1) * dx
    if (back - top + 1) * dy <= P.vb_max_depth_to_width * width:
        return top
    last = back - int(P.vb_min_depth_to_width * width / dy)
    if last <= top:
        return top
    med = np.median(hu[top:last, lo_c:hi_c], axis=1)
    i = int(np.argmin(med))
    return top + i + 1 if med[i] < P.body_run_hu else top


@dataclass(frozen=True)
class _MidlineStrip:
    """The vertebra's midline profile at one column and the body run found on it."""

    mid: int
    lo_c: int
    hi_c: int
    col: npt.NDArray[Any]  # median of the smoothed strip
    raw_col: npt.NDArray[Any]  # maximum of the raw strip
    v_top: int
    run: tuple[int, int] | None  # (front, back) rows of the vertebral body, the aorta cut off


def _midline_strip(
    hu: npt.NDArray[Any],
    sm: npt.NDArray[Any],
    vert: BoolArray,
    body: BoolArray,
    mid: int,
    half: int,
    spacing_yx_mm: Sequence[float],
    lamina_half_width_mm: float = P.midline_half_width_mm,
) -> _MidlineStrip:
    """The body run on the ±``half``-pixel strip around column ``mid`` (see ``_body_run``); the
    lamina behind the canal is looked for within ``lamina_half_width_mm`` of the midline."""
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    lo_c, hi_c = max(mid - half, 0), mid + half + 1
    # median across the ±3 mm strip: one noisy bright pixel in the canal must not bridge it
    col = np.median(sm[:, lo_c:hi_c], axis=1)
    raw_col = hu[:, lo_c:hi_c].max(axis=1)
    lam = max(round(lamina_half_width_mm / dx), half)
    lamina_col = hu[:, max(mid - lam, 0) : mid + lam + 1].max(axis=1)
    ys = np.flatnonzero(vert.any(axis=1))
    on_vert = np.flatnonzero(vert[:, lo_c:hi_c].any(axis=1))
    v_top = int(on_vert[0]) if on_vert.size else int(ys.min())
    v_bot = int(on_vert[-1]) if on_vert.size else int(ys.max())
    run = _body_run(col, lamina_col, body[:, mid], v_top, v_bot, dy)
    if run is None:
        # disc level: the smoothed bone component is only the posterior arch, so its front lies a
        # canal's depth behind the disc's back and the disc can reach ~60 mm in front of it
        run = _body_run(col, lamina_col, body[:, mid], v_top, v_bot, dy, P.disc_search_front_mm)
    if run is not None:
        run = (_front_of_aorta_cut(hu, vert, run[0], run[1], lo_c, hi_c, spacing_yx_mm), run[1])
    return _MidlineStrip(mid, lo_c, hi_c, col, raw_col, v_top, run)


def _vertebral_body(
    hu: npt.NDArray[Any], vert: BoolArray, body: BoolArray, spacing_yx_mm: Sequence[float]
) -> BoolArray:
    """The vertebral body = the front part of the vertebra, ending where the canal starts.

    On the vertebra's midline strip (median of ±3 mm, lightly smoothed) the body is the long run of
    HU above 55 that has the lamina behind the canal (see ``_body_run``); if none is found, the old
    walk from the first cortical bone is used. The body region is then the dense bone in those rows
    attached to that run, made convex. Works for osteopenic bodies whose low-density marrow leaves
    the cortical ring open, and at disc/endplate levels where the smoothed bone component misses
    the body.
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    sm = ndi.gaussian_filter(
        np.clip(hu, *P.smooth_clip_hu).astype(np.float32),
        (P.midline_smooth_mm / dy, P.midline_smooth_mm / dx),
    )
    xs = np.nonzero(vert)[1]
    mid = round(float(np.median(xs)))
    half = max(round(P.midline_half_width_mm / dx), 0)
    # midline = median column of dense cortical bone (an enhanced aorta glued to the vertebra
    # in the smoothed image must not pull it); the body starts at the first cortical bone on it
    dense = vert & (hu > P.bone_hu)
    if dense.sum() >= P.midline_min_px:
        mid = round(float(np.median(np.nonzero(dense)[1])))
    strip = _midline_strip(hu, sm, vert, body, mid, half, spacing_yx_mm)
    if strip.run is not None and (strip.run[1] - strip.run[0]) * dy > P.vb_max_depth_mm:
        # deeper than any vertebral body: the strip ran beside the canal through a pedicle (one
        # long transverse process, the other out of the cut, pulls the median aside); the body is
        # symmetric, so its own front half gives the midline
        dys, dxs = np.nonzero(dense)
        front = dys <= dys.min() + 0.5 * (dys.max() - dys.min())
        if front.sum() >= P.midline_min_px:
            # the laminae meet behind the canal in a V whose arms may pass beside the strip
            alt_mid = round(float(np.median(dxs[front])))
            alt = _midline_strip(hu, sm, vert, body, alt_mid, half, spacing_yx_mm, P.lamina_half_width_mm)
            # (the same body, found shorter: not a run somewhere in front of it)
            if (
                alt.run is not None
                and (alt.run[1] - alt.run[0]) * dy <= P.vb_max_depth_mm
                and strip.run[0] <= alt.run[1]
                and alt.run[0] <= strip.run[1]
            ):
                strip = alt
    mid, col, raw_col, run = strip.mid, strip.col, strip.raw_col, strip.run
    v_top = strip.v_top
    if run is not None:
        top, back = run
    else:
        top = v_top
        cortex = np.flatnonzero(raw_col[top : top + int(P.cortex_search_mm / dy) + 1] > P.bone_hu)
        if cortex.size:
            top += int(cortex[0])
        back = top
        r = top
        gap = 0
        max_rows = int(P.walk_max_depth_mm / dy)
        while r < hu.shape[0] - 1 and r - top < max_rows:
            if col[r] > P.body_run_hu:
                back = r
                gap = 0
            else:
                gap += 1
                if gap * dy >= P.body_gap_mm:
                    break
            r += 1
    rows = np.zeros(hu.shape[0], dtype=bool)
    rows[top : back + 1] = True
    region = (
        ((hu > P.raw_bone_hu) | ((sm > P.body_region_hu) & (hu > P.body_region_raw_hu)))
        & rows[:, None]
        & body
    )
    lab, _ = ndi.label(region)
    ids = np.unique(lab[top : back + 1, mid])
    ids = ids[ids > 0]
    if run is not None and np.isin(lab, ids).sum() * dy * dx < P.disc_max_bone_mm2:
        # an intervertebral disc (70-110 HU, at most an endplate fragment of bone): the soft dense
        # region around the run
        region = (sm > P.body_run_hu) & rows[:, None] & body
        lab, _ = ndi.label(region)
        ids = np.unique(lab[top : back + 1, mid])
        ids = ids[ids > 0]
    core = np.isin(lab, ids) if ids.size else vert & rows[:, None]
    # lateral limit: the vertebral body is at most ~60 mm wide
    cols = np.arange(hu.shape[1])
    core &= (np.abs(cols - mid) * dx <= P.vb_half_width_max_mm)[None, :]
    core[top : back + 1, mid] = True
    return _convex_hull(core)
