"""Muscle wall by ray casting: outer edge (SAT | muscle) and inner edge (peritoneal line).

Why rays: the abdominal/back muscle wall is a ring around a centre in front of the spine, so each
angle has one outer and one inner edge. Walking inward from the skin, the first run of muscle-range
HU after the subcutaneous fat is the outer edge; continuing inward through muscle (tolerating thin
intermuscular fat planes and passing through bone) the first real fat layer, gas, or the anterior
surface of the vertebral body is the inner edge. Where an organ (liver, bowel, kidney) touches the
wall the walk runs on and the wall looks too thick; such rays are detected against their
neighbours (and a thickness cap) and replaced by interpolation (classical-methods.md, the single
largest gain of the prototype). All lengths are in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from workers.tissues.geometry import (
    BoolArray,
    FloatArray,
    circular_mean,
    circular_median,
    interpolate_invalid_circular,
)
from workers.tissues.params import TISSUE_PARAMS

P = TISSUE_PARAMS.wall


@dataclass
class WallResult:
    center_rc: tuple[float, float]
    angles: FloatArray
    skin_mm: FloatArray  # radius of skin along each ray
    outer_mm: FloatArray  # radius of the outer wall edge
    inner_mm: FloatArray  # radius of the inner wall edge (peritoneal line)
    inner_valid: npt.NDArray[np.bool_]  # rays whose inner edge was measured, not interpolated
    outer_contour_rc: FloatArray
    inner_contour_rc: FloatArray
    posterior: npt.NDArray[np.bool_]
    stop_reason: list[str]  # per ray: fat, air, organ, vbody, weak, cap, no_body (for QC/debugging)


def _polar_points(
    center: tuple[float, float], angles: FloatArray, radii_mm: FloatArray, spacing: tuple[float, float]
) -> FloatArray:
    dy, dx = spacing
    rows = center[0] + radii_mm * np.sin(angles) / dy
    cols = center[1] + radii_mm * np.cos(angles) / dx
    out: FloatArray = np.stack([rows, cols], axis=1)
    return out


def cast_wall(  # noqa: C901 (long: to split into named stages, issue #22)
    hu: npt.NDArray[np.float32],
    body: BoolArray,
    spacing_yx_mm: Sequence[float],
    center_rc: tuple[float, float],
    spine_dir: tuple[float, float] | None,
    vertebral_body: BoolArray,
    bone: BoolArray,
    stop_mask: BoolArray | None = None,
    muscle_ref_hu: float | None = None,
) -> WallResult:
    """Cast ``P.n_rays`` rays from ``center_rc`` and return both wall edges per angle.

    ``spine_dir`` is the unit (row, col) direction from the centre to the vertebral body; rays
    within ±62° of it form the posterior sector (thick paraspinal/psoas block, larger cap).
    ``stop_mask`` marks pixels (e.g. kidneys) where the inward walk must stop.
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    step = 0.25 * min(dy, dx)
    h, w = hu.shape
    # rays only need to reach the farthest body pixel (keeps the profiles short)
    by, bx = np.nonzero(body)
    if by.size:
        max_r = float(np.sqrt(((by - center_rc[0]) * dy) ** 2 + ((bx - center_rc[1]) * dx) ** 2).max()) + 5.0
    else:
        max_r = float(np.hypot(h * dy, w * dx))
    s = np.arange(0.0, max_r, step)
    angles = np.linspace(0.0, 2 * np.pi, P.n_rays, endpoint=False)
    rr = center_rc[0] + np.outer(np.sin(angles), s) / dy
    cc = center_rc[1] + np.outer(np.cos(angles), s) / dx
    inside = (rr >= 0) & (rr <= h - 1) & (cc >= 0) & (cc <= w - 1)
    coords = np.stack([rr, cc])
    prof = ndi.map_coordinates(hu, coords, order=1, mode="nearest").astype(np.float32)
    # organ detector: muscle has a patient-specific density (paraspinal reference); liver, spleen,
    # enhanced kidney or bowel wall touching the wall differ from it over several millimetres
    # (median, not mean: a rib or cartilage crossing the wall must not look like a bright organ)
    n_med = max(round(P.organ_smooth_mm / (0.25 * min(dy, dx))), 1)
    sprof_hu = ndi.median_filter(prof, size=(1, n_med), mode="nearest")
    bprof = ndi.map_coordinates(body.astype(np.uint8), coords, order=0, mode="constant") > 0
    bprof &= inside
    vprof = ndi.map_coordinates(vertebral_body.astype(np.uint8), coords, order=0, mode="constant") > 0
    boneprof = ndi.map_coordinates(bone.astype(np.uint8), coords, order=0, mode="constant") > 0
    ribprof = ndi.map_coordinates(_rib_sections(hu, bone, (dy, dx)).astype(np.uint8), coords, order=0) > 0
    if stop_mask is not None:
        sprof = ndi.map_coordinates(stop_mask.astype(np.uint8), coords, order=0, mode="constant") > 0
    else:
        sprof = np.zeros_like(bprof)
    if spine_dir is not None:
        cosang = np.sin(angles) * spine_dir[0] + np.cos(angles) * spine_dir[1]
        posterior = cosang >= np.cos(np.deg2rad(P.posterior_half_angle_deg))
    else:
        posterior = np.zeros(P.n_rays, dtype=bool)

    n_skin = max(int(P.skin_max_mm / step), 1)
    n_run = max(round(P.muscle_run_mm / step), 1)
    n_organ_min = max(round(P.organ_min_wall_mm / step), 1)
    n_bowel_wall = max(round(P.bowel_wall_mm / step), 1)
    n_organ_run = max(round(P.organ_run_mm / step), 1)
    n_look = max(round(P.lookahead_mm / step), 1)
    n_gap = max(round(P.fat_gap_mm / step), 1)
    n_gap_post = max(round(P.fat_gap_posterior_mm / step), 1)
    n_plane = max(round(P.fat_plane_min_mm / step), 1)
    n_organ_wall = max(round(P.organ_wall_max_mm / step), 1)
    skin_r = np.zeros(P.n_rays)
    outer_r = np.zeros(P.n_rays)
    inner_r = np.zeros(P.n_rays)
    capped = np.zeros(P.n_rays, dtype=bool)
    weak = np.zeros(P.n_rays, dtype=bool)
    fat_stop = np.zeros(P.n_rays, dtype=bool)
    stop_reason: list[str] = ["no_body"] * P.n_rays  # per ray: fat, air, organ, vbody, weak, cap
    outer_idx = np.full(P.n_rays, -1, dtype=np.int64)
    for k in range(P.n_rays):
        inb = np.flatnonzero(bprof[k])
        if inb.size == 0:
            capped[k] = True
            continue
        i_skin = int(inb[-1])
        skin_r[k] = s[i_skin]
        p = prof[k]
        # --- outer edge: walk inward from the skin
        i = i_skin
        # skip skin until the first fat sample (or give up after P.skin_max_mm: no SAT)
        j = i
        while j > 0 and i - j < n_skin and p[j] < P.fat_lo:  # air/skin partial volume at the surface
            j -= 1
        while j > 0 and i - j < n_skin and p[j] > P.fat_hi:
            j -= 1
        if p[j] > P.fat_hi:
            outer = i - max(int(P.skin_min_mm / step), 1)
        else:
            soft = p > P.fat_hi
            notfat = soft | (p < P.air_hu)
            outer = 0
            cnt = 0
            peak = -np.inf
            while j > 0:
                if p[j] < P.air_hu and bprof[k, j] and not posterior[k] and s[i] - s[j] > P.gas_min_depth_mm:
                    # bowel gas reached before a convincing wall: the wall is the thin soft layer
                    # just outside the gas (e.g. a thin rectus on a gas-filled loop)
                    jj = j + 1
                    while jj < i and p[jj] > P.thin_wall_hu:
                        jj += 1
                    outer = jj - 1 if jj - 1 > j else j + 1
                    break
                if soft[j]:
                    cnt += 1
                    peak = max(peak, float(p[j]))
                    if cnt >= n_run and peak >= P.muscle_peak_hu:
                        start = j + cnt - 1
                        ahead = notfat[max(start - n_look, 0) : start + 1]
                        if ahead.mean() >= P.lookahead_soft_fraction:
                            outer = start
                            break
                else:
                    cnt = 0
                    peak = -np.inf
                j -= 1
        outer = max(outer, 0)
        outer_r[k] = s[outer]
        outer_idx[k] = outer
    # each ray's own wall density (first mm under the outer edge): the recti and obliques are often
    # denser than fatty paraspinal muscle. Where no muscle lies under the SAT (linea alba, a wall
    # thinned to nothing) the "first mm" is the organ itself (liver, stomach, bowel wall), so the
    # ray's density may exceed the wall's typical density around the circumference by at most the
    # organ margin: otherwise an organ touching the linea alba would define its own reference
    first_hu = np.full(P.n_rays, np.nan)
    rays_in_body = [int(r) for r in np.flatnonzero(outer_idx >= 0)]
    for k in rays_in_body:
        o = int(outer_idx[k])
        first = prof[k, max(o - n_organ_min, 0) : o + 1]
        first = first[first > P.fat_hi]
        if first.size:
            first_hu[k] = float(np.median(first))
    front_first = first_hu[~posterior & np.isfinite(first_hu)]
    wall_typ = float(np.median(front_first)) if front_first.size else None
    rib_depth = np.full(P.n_rays, np.nan)
    n_rib = max(round(P.rib_search_mm / step), 1)
    for k in rays_in_body:
        p = prof[k]
        outer = int(outer_idx[k])
        if not posterior[k]:
            # ribs inside the outer edge belong to the wall (intercostal muscles, diaphragm)
            # ... but only bone reached through the wall: past a fat layer wider than the wall's own
            # clefts, or past gas, lies the cavity (oral contrast in the stomach or colon is as dense
            # as a rib and, taken for one, moved the edge 15 mm deep under the fat on the bowel)
            lo = _wall_reach(p, boneprof[k], outer, n_rib, n_gap)
            seg_b = ribprof[k, lo : outer + 1] & bprof[k, lo : outer + 1]
            hits = np.flatnonzero(seg_b)
            if hits.size:
                deepest = lo + int(hits[0])
                rib_depth[k] = s[outer] - s[deepest]
        # --- inner edge: continue inward through muscle
        cap = P.cap_posterior_mm if posterior[k] else P.cap_lateral_mm
        n_cap = int(cap / step)
        j = outer
        last_tissue = outer
        gap = 0
        organ_run = 0
        why = "start"
        ray_ref = muscle_ref_hu
        if muscle_ref_hu is not None and np.isfinite(first_hu[k]):
            own = float(first_hu[k])
            if wall_typ is not None:
                own = min(own, max(wall_typ, muscle_ref_hu) + P.ref_excess_max_hu)
            ray_ref = max(muscle_ref_hu, own)
        in_vbody = False
        stopped = False
        plane_outer = -1  # the last fat plane crossed: tissue index just outside it, and just inside
        plane_inner = -1
        while j > 0 and outer - j < n_cap:
            why = "cap"
            if sprof[k, j]:
                why = "organ"
                stopped = True
                break
            if vprof[k, j]:
                in_vbody = True
            elif in_vbody:
                # left the vertebral body through its front: the line runs in front of the spine
                last_tissue = j + 1
                why = "vbody"
                stopped = True
                break
            v = p[j]
            sv = float(sprof_hu[k, j])
            if (
                ray_ref is not None
                and not posterior[k]
                and outer - j > n_organ_min
                and (
                    sv - ray_ref > P.organ_delta_hu  # brighter organ (liver, spleen, enhanced bowel)
                    or P.fluid_min_hu < sv < ray_ref - P.fluid_delta_hu
                )
            ):  # ascites, fluid-filled bowel
                organ_run += 1
                if organ_run >= n_organ_run:
                    last_tissue = _before_plane(j + organ_run, plane_outer, plane_inner, n_organ_wall)
                    why = "organ"
                    stopped = True
                    break
            else:
                organ_run = 0
            if v < P.air_hu and bprof[k, j] and not boneprof[k, j] and not posterior[k]:
                why = "air"
                stopped = True
                # the soft tissue just outside the gas is the bowel wall, not abdominal wall muscle
                last_tissue = min(max(last_tissue, j + n_bowel_wall), outer - n_organ_min)
                last_tissue = max(last_tissue, j + 1)
                last_tissue = _before_plane(last_tissue, plane_outer, plane_inner, n_organ_wall)
                break
            if v <= P.fat_hi and not boneprof[k, j] and not in_vbody:
                gap += 1
                if gap > (n_gap_post if posterior[k] else n_gap):
                    why = "fat"
                    stopped = True
                    break
            else:
                if gap >= n_plane:
                    plane_outer, plane_inner = last_tissue, j
                gap = 0
                last_tissue = j
            j -= 1
        if not stopped:
            capped[k] = True
            if not posterior[k]:
                # organ contact: look for a faint boundary (thin extraperitoneal fat, partial volume)
                lo = max(outer - int(P.weak_max_mm / step), 1)
                hi = outer - max(int(P.weak_min_mm / step), 1)
                if hi - lo > 3:
                    seg_raw = p[lo:hi].astype(np.float64)
                    seg = ndi.uniform_filter1d(seg_raw, max(int(2.0 / step), 1), mode="nearest")
                    m = int(np.argmin(seg))
                    if seg[m] < min(float(np.median(seg_raw)) - P.weak_drop_hu, P.weak_max_hu):
                        last_tissue = lo + m
                        capped[k] = False
                        weak[k] = True
                        why = "weak"
        inner_r[k] = s[last_tissue]
        fat_stop[k] = why == "fat"
        stop_reason[k] = why
    # outer edge outliers: SAT much thicker than around it = a thin wall layer was missed
    sat_t = skin_r - outer_r
    sat_env = _nanpercentile_circular(sat_t, P.sat_env_window, P.sat_env_percentile)
    outer_ok = sat_t <= sat_env + P.sat_outlier_mm
    outer_r = skin_r - interpolate_invalid_circular(sat_t, outer_ok)
    thick = outer_r - inner_r
    valid = ~capped & (thick >= 0)
    # organ contact only ever ADDS apparent thickness: compare each ray with a local lower envelope
    t = np.where(valid, thick, np.nan)
    env = _nanpercentile_circular(t, P.env_window, P.env_percentile)
    front = ~posterior
    tol = np.where(fat_stop, P.env_tol_fat_mm, P.env_tol_mm)
    too_thick = valid & np.isfinite(env) & (thick > env + tol)
    thick = np.where(front & too_thick, env, thick)
    for sector in (posterior, front):
        if not sector.any():
            continue
        t = np.where(valid, thick, np.nan)
        med = _nanmedian_circular(t, 25)
        bad = sector & valid & (thick > med + P.outlier_mm)
        valid &= ~bad
    thick_i = interpolate_invalid_circular(thick, valid)
    # wide contacts (liver, spleen) leave long gaps: never interpolate above a thin-wall prior
    clean_front = valid & front & ~weak
    if clean_front.sum() >= 10:
        prior = float(np.percentile(thick[clean_front], P.prior_percentile))
        thick_i = np.where(front & ~valid, np.minimum(thick_i, prior), thick_i)
    thick_i = circular_median(thick_i, 5)
    # ribs are part of the wall (intercostal muscles between them, the diaphragm's costal origin on
    # their inner surface): the inner edge never lies outside a rib's inner surface, and the
    # intercostal spaces take the floor of the ribs on either side. Organ detection alone puts the
    # edge 5 mm under the outer edge there, because unenhanced liver/spleen and wall share their HU
    has_rib = np.isfinite(rib_depth) & front
    if has_rib.any():
        floor = _interpolate_short_gaps(np.where(has_rib, rib_depth, 0.0), has_rib, P.rib_gap_rays)
        thick_i = np.where(front & np.isfinite(floor), np.maximum(thick_i, floor), thick_i)
    outer_s = circular_mean(circular_median(outer_r, 5), 3)
    inner_s = outer_s - np.maximum(thick_i, 0.0)
    inner_s = circular_mean(inner_s, 3)
    sp = (dy, dx)
    return WallResult(
        center_rc=center_rc,
        angles=angles,
        skin_mm=skin_r,
        outer_mm=outer_s,
        inner_mm=np.maximum(inner_s, 0.0),
        inner_valid=valid,
        outer_contour_rc=_polar_points(center_rc, angles, outer_s, sp),
        inner_contour_rc=_polar_points(center_rc, angles, np.maximum(inner_s, 0.0), sp),
        posterior=posterior,
        stop_reason=stop_reason,
    )


def _rib_sections(hu: npt.NDArray[np.float32], bone: BoolArray, spacing: tuple[float, float]) -> BoolArray:
    """Dense bone in a small dense region: a rib's section (cortex and marrow, at most a few cm²).

    Why: oral contrast in the stomach or colon (150-250 HU, patchy above 200) is as dense as a rib
    at 3 mm (their maxima overlap, 180-480 HU), but it fills a region of tens of cm² above
    ``P.rib_region_hu``; a rib's section is small.
    """
    lab, n = ndi.label(hu > P.rib_region_hu)
    if n == 0:
        return np.zeros_like(bone)
    area = np.bincount(lab.ravel(), minlength=n + 1) * spacing[0] * spacing[1]
    small = area <= P.rib_max_area_mm2
    small[0] = False
    out: BoolArray = bone & small[lab]
    return out


def _wall_reach(p: FloatArray, bone: npt.NDArray[np.bool_], outer: int, n_max: int, n_gap: int) -> int:
    """The deepest profile index (at most ``n_max`` samples inward from ``outer``) reached without
    leaving the wall: a fat run longer than ``n_gap`` (wider than a cleft between the wall's layers)
    or a gas sample ends it."""
    gap = 0
    j = outer
    lo = max(outer - n_max, 0)
    while j > lo:
        v = float(p[j])
        if v < P.air_hu and not bone[j]:
            return j + 1
        if v <= P.fat_hi and not bone[j]:
            gap += 1
            if gap > n_gap:
                return j + gap
        else:
            gap = 0
        j -= 1
    return lo


def _before_plane(edge: int, plane_outer: int, plane_inner: int, n_organ_wall: int) -> int:
    """The inner edge on a ray that ended on an organ or gas: where a fat plane lies just outside the
    organ (at most ``n_organ_wall`` samples of tissue between them: the organ's own wall or
    capsule), the wall ends outside that fat, and the fat between wall and organ is preperitoneal
    (visceral), not enclosed by muscle."""
    if plane_outer < 0 or plane_inner - edge > n_organ_wall or plane_outer <= edge:
        return edge
    return plane_outer


def _interpolate_short_gaps(x: FloatArray, valid: npt.NDArray[np.bool_], max_gap: int) -> FloatArray:
    """Circular linear interpolation of invalid samples, but only across gaps ≤ ``max_gap``; NaN elsewhere."""
    n = len(x)
    out = np.full(n, np.nan)
    if not valid.any():
        return out
    filled = interpolate_invalid_circular(x, valid)
    out[valid] = x[valid]
    idx = np.flatnonzero(valid)
    nxt = np.concatenate([idx[1:], idx[:1] + n])
    for a, b in zip(idx, nxt, strict=True):
        if 1 < b - a <= max_gap + 1:
            for i in range(a + 1, b):
                out[i % n] = filled[i % n]
    return out


def _nanmedian_circular(x: FloatArray, width: int) -> FloatArray:
    n = len(x)
    half = width // 2
    xx = np.concatenate([x[-half:], x, x[:half]])
    win = np.lib.stride_tricks.sliding_window_view(xx, width)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(win, axis=1)
    med = np.where(np.isnan(med), np.inf, med)
    out: FloatArray = med[:n]
    return out


def _nanpercentile_circular(x: FloatArray, width: int, q: float) -> FloatArray:
    n = len(x)
    half = width // 2
    xx = np.concatenate([x[-half:], x, x[:half]])
    win = np.lib.stride_tricks.sliding_window_view(xx, 2 * half + 1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out: FloatArray = np.nanpercentile(win, q, axis=1)[:n]
    return out
