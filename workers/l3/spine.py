"""Track the spine and the vertebral-body centre on every slice.

Three steps, each chosen for robustness rather than elegance:

1. Spine midline x (and a rough y): the spine is the one bony structure that is both near the
   body's left-right middle and long in z. Bone density smoothed in-plane and averaged over +-20 mm
   of z peaks there (ribs, pelvis and femurs are lateral; a short bright blob does not survive the z
   average). A running median along z removes the remaining jumps between the two pedicles.
2. A midline sagittal "slab" (75th percentile over a 15 mm band around the midline x) turns the
   problem into a 2-D sagittal image, the view a radiologist would use.
3. On the slab, the spinal canal is tracked by dynamic programming: a dark strip with bright bone
   both in front (bodies and discs) and behind (posterior elements). The canal exists on every
   slice, including disc levels, which a vertebral-body detector does not. The body is then the
   bright run directly in front of the canal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from workers.l3.grid import WorkGrid, running_max_z, running_mean_z, running_median_z
from workers.l3.params import L3_PARAMS

P = L3_PARAMS.spine  # the numbers of the spine tracking (workers/l3/params.py)


@dataclass(frozen=True)
class SpineTrack:
    """Per-slice spine geometry on the work grid (float voxel coordinates of the work grid)."""

    x: np.ndarray  # midline column
    y_canal: np.ndarray  # canal centre row
    y_body: np.ndarray  # vertebral-body centre row
    depth_mm: np.ndarray  # AP depth of the anterior column (body or disc)
    valid: np.ndarray  # bool: a plausible spine was seen on this slice
    slab: np.ndarray  # [z, y] midline sagittal slab (HU)
    body_contrast: float  # typical HU difference body/disc column vs canal


def _midline_path(g: WorkGrid, body: np.ndarray, bone_hu: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rough spinal-canal (x, y) per slice, and whether canal-like evidence was present."""
    ev = _canal_evidence(g, body, bone_hu)
    sig = (0.0, P.evidence_smooth_mm / g.dy, P.evidence_smooth_mm / g.dx)
    dens = ndi.gaussian_filter(ev, sig)
    dens = running_mean_z(dens, g.z_mm, P.evidence_z_mm)
    nz, ny, nx = g.hu.shape
    yy = (np.arange(ny, dtype=np.float32) * g.dy)[:, None]
    xx = (np.arange(nx, dtype=np.float32) * g.dx)[None, :]
    cy = np.full(nz, np.nan)
    cx = np.full(nz, np.nan)
    for k in range(nz):
        ys, xs = np.nonzero(body[k])
        if ys.size >= P.min_body_px:
            cy[k], cx[k] = ys.mean() * g.dy, xs.mean() * g.dx
    if np.isnan(cx).all():
        z = np.zeros(nz)
        return z, z, np.zeros(nz, dtype=bool)
    cy = np.where(np.isnan(cy), np.nanmedian(cy), cy)
    cx = np.where(np.isnan(cx), np.nanmedian(cx), cx)

    def scan(x_prior: np.ndarray, sigma_x: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        px = np.zeros(nz)
        py = np.zeros(nz)
        peak = np.zeros(nz)
        for k in range(nz):
            # Spine: near the left-right middle, behind the body centre.
            w = np.exp(-0.5 * ((xx - x_prior[k]) / sigma_x) ** 2) * np.clip(
                1.0 + (yy - cy[k] + P.prior_front_mm) / P.prior_ramp_mm, 0.0, 1.0
            )
            s = dens[k] * w
            j = int(np.argmax(s))
            peak[k] = s.flat[j]
            y0, x0 = divmod(j, nx)
            ym, xm = y0 * g.dy, x0 * g.dx
            # Mean shift within +-30 mm: converges to the centre of the two pedicles/laminae
            # instead of jumping between them.
            for _ in range(P.mean_shift_steps):
                win = (np.abs(xx - xm) <= P.mean_shift_mm) & (np.abs(yy - ym) <= P.mean_shift_mm)
                ww = s * win
                tot = float(ww.sum())
                if tot <= 0:
                    break
                xm = float((ww * xx).sum() / tot)
                ym = float((ww * yy).sum() / tot)
            px[k], py[k] = xm / g.dx, ym / g.dy
        return px, py, peak

    px, py, peak = scan(cx, P.first_sigma_x_mm)
    strong = peak >= np.quantile(peak, 0.5)
    # Second pass: the spine is a nearly straight line in x; a prior around its robust global
    # position stops the track from wandering to an iliac bone or femur in the pelvis.
    x_glob = float(np.median(px[strong])) * g.dx
    px, py, peak = scan(np.full(nz, x_glob), P.second_sigma_x_mm)
    ok = peak > P.min_peak
    if ok.sum() == 0:
        return px, py, ok
    idx = np.arange(nz)
    px = np.interp(idx, idx[ok], px[ok])
    py = np.interp(idx, idx[ok], py[ok])
    px = running_median_z(px, g.z_mm, P.path_z_mm)
    py = running_median_z(py, g.z_mm, P.path_z_mm)
    return px, py, ok


def _canal_evidence(g: WorkGrid, body: np.ndarray, bone_hu: float) -> np.ndarray:
    """Per voxel: soft-tissue/CSF density (not air, not bone) with bone 6-15 mm away in many of 8
    directions, i.e. the spinal canal, walled by body, pedicles and laminae.

    Plain bone density was used first; a contrast-filled aorta (a uniform 200-400 HU tube lying
    along the spine) outscored the spine's thin cortex and captured the track. The aorta has no
    dark centre, so it scores zero here."""
    bone = (g.hu > bone_hu) & body
    dark = (
        (g.hu < P.canal_dark_hu[1]) & (g.hu > P.canal_dark_hu[0]) & body
    )  # CSF and epidural fat, not trabecular bone
    _, ny, nx = bone.shape
    hits = np.zeros(bone.shape, dtype=np.uint8)
    for dy_u, dx_u in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)):
        norm = float(np.hypot(dy_u, dx_u))
        ray = np.zeros(bone.shape, dtype=bool)
        for r_mm in P.canal_ray_mm:
            sy = round(dy_u * r_mm / norm / g.dy)
            sx = round(dx_u * r_mm / norm / g.dx)
            src = bone[:, max(0, sy) : ny + min(0, sy), max(0, sx) : nx + min(0, sx)]
            ray[:, max(0, -sy) : ny + min(0, -sy), max(0, -sx) : nx + min(0, -sx)] |= src
        hits += ray
    out: np.ndarray = np.where(dark, hits.astype(np.float32) / 8.0, 0.0).astype(np.float32)
    # Require a mostly closed ring (>= 5 of 8 directions): bowel or fat next to one bone is not a canal.
    out[out < P.canal_ring_fraction] = 0.0
    return out


def _slab(g: WorkGrid, x: np.ndarray, half_mm: float = P.slab_half_mm) -> np.ndarray:
    """75th percentile over a band of columns around x on each slice: a sagittal through the spine."""
    nz, ny, nx = g.hu.shape
    h = max(1, round(half_mm / g.dx))
    cols = np.clip(np.round(x).astype(int)[:, None] + np.arange(-h, h + 1)[None, :], 0, nx - 1)
    band = np.take_along_axis(g.hu, np.broadcast_to(cols[:, None, :], (nz, ny, cols.shape[1])), axis=2)
    return np.percentile(band, P.slab_percentile, axis=2).astype(np.float32)


def _box_mean(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Mean of a[:, y+lo : y+hi+1] for every y (clamped at the borders), vectorised with cumsum."""
    nz, ny = a.shape
    cs = np.concatenate([np.zeros((nz, 1)), np.cumsum(a, axis=1, dtype=np.float64)], axis=1)
    y = np.arange(ny)
    a0 = np.clip(y + lo, 0, ny)
    a1 = np.clip(y + hi + 1, 0, ny)
    n = np.maximum(a1 - a0, 1)
    out: np.ndarray = (cs[:, a1] - cs[:, a0]) / n
    out[:, (a1 - a0) <= 0] = np.nan
    return out


def _viterbi(score: np.ndarray, z_mm: np.ndarray, dy: float, slope: float, penalty: float) -> np.ndarray:
    """Best path y(k) maximising sum(score) - penalty*|dy| with |dy| <= slope*dz (in mm)."""
    nz, ny = score.shape
    acc = score[0].copy()
    back = np.zeros((nz, ny), dtype=np.int32)
    y = np.arange(ny)
    for k in range(1, nz):
        dz = max(float(z_mm[k] - z_mm[k - 1]), 0.5)
        r = max(1, int(np.ceil(slope * dz / dy)))
        best = np.full(ny, -np.inf)
        arg = np.zeros(ny, dtype=np.int32)
        for d in range(-r, r + 1):
            src = np.clip(y + d, 0, ny - 1)
            cand = acc[src] - penalty * abs(d) * dy
            better = cand > best
            best[better] = cand[better]
            arg[better] = src[better]
        acc = best + score[k]
        back[k] = arg
    path = np.zeros(nz, dtype=np.int32)
    path[-1] = int(np.argmax(acc))
    for k in range(nz - 1, 0, -1):
        path[k - 1] = back[k, path[k]]
    return path


def track_spine(g: WorkGrid, body: np.ndarray, bone_hu: float = P.bone_hu) -> SpineTrack:
    """Midline, canal and vertebral-body centre per slice (see module docstring)."""
    nz, ny, _ = g.hu.shape
    x, y_seed, has_bone = _midline_path(g, body, bone_hu)
    slab = _slab(g, x)
    clipped = np.clip(slab, *P.slab_clip_hu)
    sz = running_mean_z(clipped, g.z_mm, P.canal_z_mean_mm)
    sp = running_max_z(clipped, g.z_mm, P.posterior_z_max_mm)
    cr = max(1, round(P.canal_half_mm / g.dy))
    wing = max(2, round(P.wing_mm / g.dy))
    canal = _box_mean(sz, -cr, cr)
    ante = _box_mean(sz, -cr - wing, -cr - 1)
    # The anterior wall of the canal is a whole vertebral body (>= 25 mm deep), not a cortex: this
    # rejects the trabecular interior of an osteoporotic body (dark, walled by cortex) as a canal.
    far = max(1, round(P.deep_mm / g.dy))
    ante_deep = np.minimum(_box_mean(sz, -cr - far, -cr - 1), _box_mean(sz, -cr - 2 * far, -cr - far - 1))
    post = _box_mean(sp, cr + 1, cr + wing)
    score = np.minimum(np.minimum(ante, ante_deep), post) - canal
    score = np.nan_to_num(score, nan=-1e3)
    # Stay within 50 mm of the rough spine position: the canal is inside the bony spine.
    yy = np.arange(ny)[None, :]
    score = np.where(np.abs(yy - y_seed[:, None]) * g.dy <= P.seed_max_mm, score, -1e3)
    y_canal = _viterbi(
        score / P.score_scale_hu, g.z_mm, g.dy, slope=P.path_slope, penalty=P.path_penalty_per_mm
    )

    # The anterior column: bright run directly in front of the canal.
    y_body = np.zeros(nz)
    depth = np.zeros(nz)
    valid = np.zeros(nz, dtype=bool)
    contrasts = []
    max_run = round(P.column_max_mm / g.dy)
    for k in range(nz):
        yc = int(y_canal[k])
        c_lvl = float(canal[k, yc])
        a_lvl = float(ante[k, yc]) if np.isfinite(ante[k, yc]) else c_lvl
        thr = c_lvl + 0.5 * (a_lvl - c_lvl)
        prof = sz[k]
        j = yc
        while j > 0 and prof[j] < thr and yc - j < max_run // 2:  # leave the canal
            j -= 1
        yp = j
        while j > 0 and prof[j] >= thr and yp - j < max_run:  # cross the column
            j -= 1
        ya = j + 1
        y_body[k] = 0.5 * (ya + yp)
        depth[k] = (yp - ya + 1) * g.dy
        valid[k] = (
            has_bone[k]
            and (a_lvl - c_lvl) > P.min_contrast_hu
            and P.column_depth_mm[0] <= depth[k] <= P.column_depth_mm[1]
        )
        if valid[k]:
            contrasts.append(a_lvl - c_lvl)
    if valid.sum() >= 3:
        idx = np.arange(nz)
        depth_s = running_median_z(np.interp(idx, idx[valid], depth[valid]), g.z_mm, P.depth_z_mm)
        y_post = y_body[valid] + 0.5 * depth[valid] / g.dy  # posterior wall: the canal keeps it stable
        yp_s = running_median_z(np.interp(idx, idx[valid], y_post), g.z_mm, P.posterior_wall_z_mm)
        y_body = yp_s - 0.5 * depth_s / g.dy
        depth = depth_s
    contrast = float(np.median(contrasts)) if contrasts else 0.0
    return SpineTrack(
        x=x,
        y_canal=y_canal.astype(np.float64),
        y_body=y_body,
        depth_mm=depth,
        valid=valid,
        slab=slab,
        body_contrast=contrast,
    )


def body_profile(g: WorkGrid, t: SpineTrack, half_x_mm: float = P.box_half_x_mm) -> np.ndarray:
    """75th percentile HU in a small box inside the vertebral body on every slice.

    The 75th percentile, not the mean: endplate cortex and partial volume blur the minimum at a disc
    while the upper quartile of a trabecular box stays high inside a body.
    """
    nz, ny, nx = g.hu.shape
    out = np.full(nz, np.nan)
    hx = max(1, round(half_x_mm / g.dx))
    for k in range(nz):
        hy = max(1, round(float(np.clip(P.box_half_y_fraction * t.depth_mm[k], *P.box_half_y_mm)) / g.dy))
        y_front = t.y_body[k] - 0.5 * t.depth_mm[k] / g.dy
        yc = round(y_front + P.front_fraction * t.depth_mm[k] / g.dy)
        xc = round(t.x[k])
        box = g.hu[k, max(0, yc - hy) : min(ny, yc + hy + 1), max(0, xc - hx) : min(nx, xc + hx + 1)]
        if box.size:
            out[k] = float(np.percentile(box, P.body_percentile))
    return out
