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
from typing import NamedTuple

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


def cast_wall(
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

    Stages: sample the rays (:func:`_sample_rays`), find each ray's outer edge
    (:func:`_outer_edges`), its own wall density (:func:`_wall_density`) and the ribs inside the
    wall (:func:`_rib_depths`), walk on to the inner edge (:func:`_inner_edges`), then correct
    each ray against its neighbours: SAT outliers (:func:`_without_sat_outliers`), too thick rays
    (:func:`_wall_thickness`, :func:`_interpolated_thickness`) and the ribs' floor
    (:func:`_with_rib_floor`).
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    rays = _sample_rays(hu, body, (dy, dx), center_rc, spine_dir, vertebral_body, bone, stop_mask)
    n = _RaySamples.from_step(rays.step)
    outer = _outer_edges(rays, n)
    density = _wall_density(rays, outer.outer_idx, n)
    rib_depth = _rib_depths(rays, outer.outer_idx, n)
    inner = _inner_edges(rays, outer.outer_idx, density, muscle_ref_hu, n)
    outer_r = _without_sat_outliers(outer.skin_mm, outer.outer_mm)
    front = ~rays.posterior
    thick, valid = _wall_thickness(outer_r, inner, rays.posterior)
    thick_i = _interpolated_thickness(thick, valid, front, inner.weak)
    thick_i = _with_rib_floor(thick_i, rib_depth, front)
    outer_s = circular_mean(circular_median(outer_r, P.smooth_median_rays), P.smooth_mean_rays)
    inner_s = outer_s - np.maximum(thick_i, 0.0)
    inner_s = circular_mean(inner_s, P.smooth_mean_rays)
    sp = (dy, dx)
    return WallResult(
        center_rc=center_rc,
        angles=rays.angles,
        skin_mm=outer.skin_mm,
        outer_mm=outer_s,
        inner_mm=np.maximum(inner_s, 0.0),
        inner_valid=valid,
        outer_contour_rc=_polar_points(center_rc, rays.angles, outer_s, sp),
        inner_contour_rc=_polar_points(center_rc, rays.angles, np.maximum(inner_s, 0.0), sp),
        posterior=rays.posterior,
        stop_reason=inner.stop_reason,
    )


@dataclass(frozen=True)
class _Rays:
    """Every ray sampled from the centre outwards: HU and the masks along it ([ray, sample])."""

    step: float  # mm between samples
    s: FloatArray  # radius of each sample, mm
    angles: FloatArray  # per ray, radians
    hu: npt.NDArray[np.float32]
    hu_smooth: npt.NDArray[np.float32]  # median-smoothed along the ray (organ and fluid tests)
    body: BoolArray
    vbody: BoolArray  # vertebral body
    bone: BoolArray
    rib: BoolArray  # rib sections (:func:`_rib_sections`)
    stop: BoolArray  # the caller's stop mask (e.g. kidneys)
    posterior: BoolArray  # per ray: in the posterior sector (towards the spine)


@dataclass(frozen=True)
class _RaySamples:
    """The wall's lengths (:class:`WallParams`) in ray samples, for one sample step."""

    skin: int
    skin_min: int
    run: int
    organ_min: int
    bowel_wall: int
    organ_run: int
    look: int
    gap: int
    gap_post: int
    plane: int
    organ_wall: int
    rib: int

    @classmethod
    def from_step(cls, step: float) -> _RaySamples:
        return cls(
            skin=max(int(P.skin_max_mm / step), 1),
            skin_min=max(int(P.skin_min_mm / step), 1),
            run=max(round(P.muscle_run_mm / step), 1),
            organ_min=max(round(P.organ_min_wall_mm / step), 1),
            bowel_wall=max(round(P.bowel_wall_mm / step), 1),
            organ_run=max(round(P.organ_run_mm / step), 1),
            look=max(round(P.lookahead_mm / step), 1),
            gap=max(round(P.fat_gap_mm / step), 1),
            gap_post=max(round(P.fat_gap_posterior_mm / step), 1),
            plane=max(round(P.fat_plane_min_mm / step), 1),
            organ_wall=max(round(P.organ_wall_max_mm / step), 1),
            rib=max(round(P.rib_search_mm / step), 1),
        )


def _sample_rays(
    hu: npt.NDArray[np.float32],
    body: BoolArray,
    spacing: tuple[float, float],
    center_rc: tuple[float, float],
    spine_dir: tuple[float, float] | None,
    vertebral_body: BoolArray,
    bone: BoolArray,
    stop_mask: BoolArray | None,
) -> _Rays:
    """HU and masks along ``P.n_rays`` rays from the centre, a quarter pixel apart.

    Why: every later stage walks along a ray, so the image is sampled once. The rays only need to
    reach the farthest body pixel (keeps the profiles short).
    """
    dy, dx = spacing
    step = P.ray_step_px * min(dy, dx)
    h, w = hu.shape
    by, bx = np.nonzero(body)
    if by.size:
        max_r = (
            float(np.sqrt(((by - center_rc[0]) * dy) ** 2 + ((bx - center_rc[1]) * dx) ** 2).max())
            + P.ray_margin_mm
        )
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
    n_med = max(round(P.organ_smooth_mm / step), 1)
    sprof_hu = ndi.median_filter(prof, size=(1, n_med), mode="nearest")

    def along(mask: BoolArray) -> BoolArray:
        out: BoolArray = ndi.map_coordinates(mask.astype(np.uint8), coords, order=0, mode="constant") > 0
        return out

    bprof = along(body) & inside
    rib = along(_rib_sections(hu, bone, (dy, dx)))
    stop = along(stop_mask) if stop_mask is not None else np.zeros_like(bprof)
    return _Rays(
        step=step,
        s=s,
        angles=angles,
        hu=prof,
        hu_smooth=sprof_hu,
        body=bprof,
        vbody=along(vertebral_body),
        bone=along(bone),
        rib=rib,
        stop=stop,
        posterior=_posterior_sector(angles, spine_dir),
    )


def _posterior_sector(angles: FloatArray, spine_dir: tuple[float, float] | None) -> BoolArray:
    """Rays within ``P.posterior_half_angle_deg`` of the direction to the spine.

    Why: they cross the paraspinal/quadratus/psoas block, not the thin anterolateral wall, and are
    judged by other limits (no organ or gas test, a larger cap)."""
    if spine_dir is None:
        return np.zeros(P.n_rays, dtype=bool)
    cosang = np.sin(angles) * spine_dir[0] + np.cos(angles) * spine_dir[1]
    out: BoolArray = cosang >= np.cos(np.deg2rad(P.posterior_half_angle_deg))
    return out


class _OuterEdges(NamedTuple):
    """Per ray: the skin's and the outer wall edge's radius (mm) and the outer edge's sample index
    (-1 for a ray that meets no body)."""

    skin_mm: FloatArray
    outer_mm: FloatArray
    outer_idx: npt.NDArray[np.int64]


def _outer_edges(rays: _Rays, n: _RaySamples) -> _OuterEdges:
    """The outer wall edge (SAT | muscle) of every ray, walking inward from the skin.

    Why: the outer edge bounds the SAT, and every inner-edge test is measured from it."""
    skin_r = np.zeros(P.n_rays)
    outer_r = np.zeros(P.n_rays)
    outer_idx = np.full(P.n_rays, -1, dtype=np.int64)
    for k in range(P.n_rays):
        inb = np.flatnonzero(rays.body[k])
        if inb.size == 0:
            continue
        i_skin = int(inb[-1])
        skin_r[k] = rays.s[i_skin]
        outer = max(_outer_edge(rays, k, i_skin, n), 0)
        outer_r[k] = rays.s[outer]
        outer_idx[k] = outer
    return _OuterEdges(skin_r, outer_r, outer_idx)


def _outer_edge(rays: _Rays, k: int, i_skin: int, n: _RaySamples) -> int:
    """Ray ``k``'s outer edge: past the skin (air/skin partial volume, then dermis up to
    ``P.skin_max_mm``), the first convincing muscle run under the SAT. A ray without SAT
    (cachexia) has its edge ``P.skin_min_mm`` under the skin."""
    p = rays.hu[k]
    i = i_skin
    j = i
    while j > 0 and i - j < n.skin and p[j] < P.fat_lo:  # air/skin partial volume at the surface
        j -= 1
    while j > 0 and i - j < n.skin and p[j] > P.fat_hi:
        j -= 1
    if p[j] > P.fat_hi:
        return i - n.skin_min
    return _first_muscle_run(rays, k, i, j, n)


def _first_muscle_run(rays: _Rays, k: int, i: int, j: int, n: _RaySamples) -> int:
    """From SAT sample ``j`` inward: the outer end of the first soft-tissue run that is long and
    dense enough to be muscle (septa in the SAT are thinner and partial-volumed) and is followed
    by mostly tissue (a fascia in the SAT is followed by fat); or the thin layer on bowel gas
    reached first. 0 if there is none."""
    p = rays.hu[k]
    soft = p > P.fat_hi
    notfat = soft | (p < P.air_hu)
    cnt = 0
    peak = -np.inf
    while j > 0:
        if (
            p[j] < P.air_hu
            and rays.body[k, j]
            and not rays.posterior[k]
            and rays.s[i] - rays.s[j] > P.gas_min_depth_mm
        ):
            return _thin_wall_on_gas(p, i, j)
        if soft[j]:
            cnt += 1
            peak = max(peak, float(p[j]))
            if cnt >= n.run and peak >= P.muscle_peak_hu:
                start = j + cnt - 1
                ahead = notfat[max(start - n.look, 0) : start + 1]
                if ahead.mean() >= P.lookahead_soft_fraction:
                    return start
        else:
            cnt = 0
            peak = -np.inf
        j -= 1
    return 0


def _thin_wall_on_gas(p: npt.NDArray[np.float32], i: int, j: int) -> int:
    """Bowel gas at sample ``j`` reached before a convincing wall: the wall is the thin soft layer
    just outside the gas (e.g. a thin rectus on a gas-filled loop)."""
    jj = j + 1
    while jj < i and p[jj] > P.thin_wall_hu:
        jj += 1
    return jj - 1 if jj - 1 > j else j + 1


class _WallDensity(NamedTuple):
    """Each ray's own wall density (HU, NaN where unknown) and the typical one of the
    anterior/lateral rays (None without any)."""

    per_ray_hu: FloatArray
    typical_hu: float | None


def _wall_density(rays: _Rays, outer_idx: npt.NDArray[np.int64], n: _RaySamples) -> _WallDensity:
    """Each ray's own wall density: the median tissue HU of the first mm under the outer edge.

    Why: the recti and obliques are often denser than fatty paraspinal muscle, and the organ test
    compares with the ray's own muscle. Where no muscle lies under the SAT (linea alba, a wall
    thinned to nothing) the "first mm" is the organ itself (liver, stomach, bowel wall), so the
    typical density around the circumference limits it (:func:`_ray_reference`)."""
    first_hu = np.full(P.n_rays, np.nan)
    for k in np.flatnonzero(outer_idx >= 0):
        o = int(outer_idx[k])
        first = rays.hu[k, max(o - n.organ_min, 0) : o + 1]
        first = first[first > P.fat_hi]
        if first.size:
            first_hu[k] = float(np.median(first))
    front_first = first_hu[~rays.posterior & np.isfinite(first_hu)]
    wall_typ = float(np.median(front_first)) if front_first.size else None
    return _WallDensity(first_hu, wall_typ)


def _rib_depths(rays: _Rays, outer_idx: npt.NDArray[np.int64], n: _RaySamples) -> FloatArray:
    """Per anterior/lateral ray, how deep under the outer edge the deepest rib reached through the
    wall lies (mm; NaN: none).

    Why: ribs inside the outer edge belong to the wall (intercostal muscles, diaphragm), but only
    bone reached through the wall: past a fat layer wider than the wall's own clefts, or past gas,
    lies the cavity (oral contrast in the stomach or colon is as dense as a rib and, taken for one,
    moved the edge 15 mm deep under the fat on the bowel)."""
    rib_depth = np.full(P.n_rays, np.nan)
    for k in np.flatnonzero(outer_idx >= 0):
        if rays.posterior[k]:
            continue
        outer = int(outer_idx[k])
        lo = _wall_reach(rays.hu[k], rays.bone[k], outer, n.rib, n.gap)
        hits = np.flatnonzero(rays.rib[k, lo : outer + 1] & rays.body[k, lo : outer + 1])
        if hits.size:
            rib_depth[k] = rays.s[outer] - rays.s[lo + int(hits[0])]
    return rib_depth


class _InnerEdges(NamedTuple):
    """Per ray: the inner edge's radius (mm), whether no edge was found (capped), whether it is a
    faint boundary (weak), and why the walk stopped (fat, air, organ, vbody, weak, cap, no_body)."""

    inner_mm: FloatArray
    capped: BoolArray
    weak: BoolArray
    stop_reason: list[str]

    @property
    def fat_stop(self) -> BoolArray:
        """Rays that ended on a clean fat plane."""
        return np.array([why == "fat" for why in self.stop_reason], dtype=bool)


class _Walk(NamedTuple):
    """Where one ray's inward walk ended: the sample index of the inner edge, why, and whether it
    stopped on a boundary (else it ran into the cap or the centre)."""

    edge: int
    why: str
    stopped: bool


def _inner_edges(
    rays: _Rays,
    outer_idx: npt.NDArray[np.int64],
    density: _WallDensity,
    muscle_ref_hu: float | None,
    n: _RaySamples,
) -> _InnerEdges:
    """The inner edge (peritoneal line) of every ray: its walk through the muscle
    (:func:`_walk_to_inner_edge`) or, on an anterior/lateral ray that found no boundary (an organ
    touching the wall), a faint boundary (:func:`_weak_boundary`)."""
    inner_r = np.zeros(P.n_rays)
    capped = outer_idx < 0
    weak = np.zeros(P.n_rays, dtype=bool)
    stop_reason: list[str] = ["no_body"] * P.n_rays
    for k in np.flatnonzero(outer_idx >= 0):
        outer = int(outer_idx[k])
        ray_ref = _ray_reference(muscle_ref_hu, float(density.per_ray_hu[k]), density.typical_hu)
        walk = _walk_to_inner_edge(rays, int(k), outer, ray_ref, n)
        last_tissue, why = walk.edge, walk.why
        if not walk.stopped:
            capped[k] = True
            faint = None if rays.posterior[k] else _weak_boundary(rays.hu[k], outer, rays.step)
            if faint is not None:
                last_tissue = faint
                capped[k] = False
                weak[k] = True
                why = "weak"
        inner_r[k] = rays.s[last_tissue]
        stop_reason[k] = why
    return _InnerEdges(inner_r, capped, weak, stop_reason)


def _ray_reference(muscle_ref_hu: float | None, own_hu: float, typical_hu: float | None) -> float | None:
    """The muscle density a ray's organ and fluid tests compare with: the patient's (paraspinal)
    muscle, raised to the ray's own wall density, which may exceed the typical wall (or the
    patient's muscle) by at most ``P.ref_excess_max_hu`` (an organ touching the linea alba must not
    define its own reference)."""
    if muscle_ref_hu is None or not np.isfinite(own_hu):
        return muscle_ref_hu
    own = own_hu
    if typical_hu is not None:
        own = min(own, max(typical_hu, muscle_ref_hu) + P.ref_excess_max_hu)
    return max(muscle_ref_hu, own)


def _organ_like(hu_smooth: float, ray_ref: float) -> bool:
    """Smoothed HU unlike the ray's muscle: a brighter organ (liver, spleen, enhanced bowel) or
    fluid (ascites, fluid-filled bowel), which is darker but not fat."""
    return bool(
        hu_smooth - ray_ref > P.organ_delta_hu or P.fluid_min_hu < hu_smooth < ray_ref - P.fluid_delta_hu
    )


def _walk_to_inner_edge(rays: _Rays, k: int, outer: int, ray_ref: float | None, n: _RaySamples) -> _Walk:
    """Walk ray ``k`` inward from its outer edge through muscle, tolerating thin intermuscular fat
    planes and passing through bone, to the first real fat layer, gas, organ, stop-mask pixel or
    the front of the vertebral body.

    Why: that is the peritoneal line; where nothing stops the walk within the cap (an organ of
    muscle density touching the wall) the caller looks for a faint boundary or interpolates."""
    posterior = bool(rays.posterior[k])
    p = rays.hu[k]
    cap = P.cap_posterior_mm if posterior else P.cap_lateral_mm
    n_cap = int(cap / rays.step)
    max_gap = n.gap_post if posterior else n.gap
    j = outer
    last_tissue = outer
    gap = 0
    organ_run = 0
    why = "start"
    in_vbody = False
    plane_outer = -1  # the last fat plane crossed: tissue index just outside it, and just inside
    plane_inner = -1
    while j > 0 and outer - j < n_cap:
        why = "cap"
        if rays.stop[k, j]:
            return _Walk(last_tissue, "organ", True)
        if rays.vbody[k, j]:
            in_vbody = True
        elif in_vbody:
            # left the vertebral body through its front: the line runs in front of the spine
            return _Walk(j + 1, "vbody", True)
        v = p[j]
        if (
            ray_ref is not None
            and not posterior
            and outer - j > n.organ_min
            and _organ_like(float(rays.hu_smooth[k, j]), ray_ref)
        ):
            organ_run += 1
            if organ_run >= n.organ_run:
                edge = _before_plane(j + organ_run, plane_outer, plane_inner, n.organ_wall)
                return _Walk(edge, "organ", True)
        else:
            organ_run = 0
        if v < P.air_hu and rays.body[k, j] and not rays.bone[k, j] and not posterior:
            return _Walk(_wall_on_gas(last_tissue, j, outer, plane_outer, plane_inner, n), "air", True)
        if v <= P.fat_hi and not rays.bone[k, j] and not in_vbody:
            gap += 1
            if gap > max_gap:
                return _Walk(last_tissue, "fat", True)
        else:
            if gap >= n.plane:
                plane_outer, plane_inner = last_tissue, j
            gap = 0
            last_tissue = j
        j -= 1
    return _Walk(last_tissue, why, False)


def _wall_on_gas(
    last_tissue: int, j: int, outer: int, plane_outer: int, plane_inner: int, n: _RaySamples
) -> int:
    """The inner edge on a ray that reached gas at sample ``j``: the soft tissue just outside the
    gas is the bowel wall (``P.bowel_wall_mm``), not abdominal wall muscle."""
    edge = min(max(last_tissue, j + n.bowel_wall), outer - n.organ_min)
    edge = max(edge, j + 1)
    return _before_plane(edge, plane_outer, plane_inner, n.organ_wall)


def _weak_boundary(p: npt.NDArray[np.float32], outer: int, step: float) -> int | None:
    """On a capped anterior/lateral ray (an organ touching the wall): a faint wall|organ boundary
    (thin extraperitoneal fat, partial volume) ``P.weak_min_mm``-``P.weak_max_mm`` under the outer
    edge, as a ``P.weak_dip_mm`` dip clearly below the segment's median. None if there is none."""
    lo = max(outer - int(P.weak_max_mm / step), 1)
    hi = outer - max(int(P.weak_min_mm / step), 1)
    if hi - lo <= 3:
        return None
    seg_raw = p[lo:hi].astype(np.float64)
    seg = ndi.uniform_filter1d(seg_raw, max(int(P.weak_dip_mm / step), 1), mode="nearest")
    m = int(np.argmin(seg))
    if seg[m] < min(float(np.median(seg_raw)) - P.weak_drop_hu, P.weak_max_hu):
        return lo + m
    return None


def _without_sat_outliers(skin_r: FloatArray, outer_r: FloatArray) -> FloatArray:
    """Outer edge radii with SAT outliers replaced: SAT much thicker than around it means a thin
    wall layer was missed there, so that ray's outer edge is interpolated from its neighbours."""
    sat_t = skin_r - outer_r
    sat_env = _nanpercentile_circular(sat_t, P.sat_env_window, P.sat_env_percentile)
    outer_ok = sat_t <= sat_env + P.sat_outlier_mm
    out: FloatArray = skin_r - interpolate_invalid_circular(sat_t, outer_ok)
    return out


def _wall_thickness(
    outer_r: FloatArray, inner: _InnerEdges, posterior: BoolArray
) -> tuple[FloatArray, BoolArray]:
    """Wall thickness per ray and which rays are trusted.

    Why: organ contact only ever ADDS apparent thickness, so an anterior/lateral ray thicker than
    a local lower envelope (by more than ``P.env_tol_mm``; ``P.env_tol_fat_mm`` when it ended on a
    clean fat plane) takes the envelope; then, in each sector, a ray thicker than the median of its
    neighbours by ``P.outlier_mm`` is not trusted (interpolated later)."""
    thick = outer_r - inner.inner_mm
    valid = ~inner.capped & (thick >= 0)
    t = np.where(valid, thick, np.nan)
    env = _nanpercentile_circular(t, P.env_window, P.env_percentile)
    front = ~posterior
    tol = np.where(inner.fat_stop, P.env_tol_fat_mm, P.env_tol_mm)
    too_thick = valid & np.isfinite(env) & (thick > env + tol)
    thick = np.where(front & too_thick, env, thick)
    for sector in (posterior, front):
        if not sector.any():
            continue
        t = np.where(valid, thick, np.nan)
        med = _nanmedian_circular(t, P.outlier_window)
        bad = sector & valid & (thick > med + P.outlier_mm)
        valid &= ~bad
    return thick, valid


def _interpolated_thickness(
    thick: FloatArray, valid: BoolArray, front: BoolArray, weak: BoolArray
) -> FloatArray:
    """Thickness of untrusted rays interpolated from their neighbours, then median-smoothed.

    Why: wide contacts (liver, spleen) leave long gaps, so on the anterior/lateral side the
    interpolation never exceeds a thin-wall prior (``P.prior_percentile`` of the clean rays)."""
    thick_i = interpolate_invalid_circular(thick, valid)
    clean_front = valid & front & ~weak
    if clean_front.sum() >= P.prior_min_rays:
        prior = float(np.percentile(thick[clean_front], P.prior_percentile))
        thick_i = np.where(front & ~valid, np.minimum(thick_i, prior), thick_i)
    out: FloatArray = circular_median(thick_i, P.smooth_median_rays)
    return out


def _with_rib_floor(thick_i: FloatArray, rib_depth: FloatArray, front: BoolArray) -> FloatArray:
    """Thickness never less than the ribs' depth on anterior/lateral rays.

    Why: ribs are part of the wall (intercostal muscles between them, the diaphragm's costal
    origin on their inner surface): the inner edge never lies outside a rib's inner surface, and
    the intercostal spaces take the floor of the ribs on either side. Organ detection alone puts
    the edge 5 mm under the outer edge there, because unenhanced liver/spleen and wall share their
    HU."""
    has_rib = np.isfinite(rib_depth) & front
    if not has_rib.any():
        return thick_i
    floor = _interpolate_short_gaps(np.where(has_rib, rib_depth, 0.0), has_rib, P.rib_gap_rays)
    out: FloatArray = np.where(front & np.isfinite(floor), np.maximum(thick_i, floor), thick_i)
    return out


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
