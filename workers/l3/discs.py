"""Intervertebral discs from the vertebral-body intensity profile.

The profile (75th percentile HU in a box inside the body, per slice) is resampled to a regular 1 mm
grid in patient z, so 0.6 mm, 3 mm, 5 mm and uneven or gapped series are treated alike. Each point
is compared with the brightest bone within +-8 mm (a black top-hat): a disc lies between two
bright endplates, so it scores high, while a broad low-density region inside a body (osteopenic
centre, venous plexus) scores low. A running-median detrend was tried first and mistook such
regions for discs when the field of view was short or the pixel size changed.

Candidate dips are then chained by dynamic programming under the
anatomical constraint that consecutive discs are 20-55 mm apart (vertebra + disc is 30-45 mm in the
lumbar spine, a little less in the lower thoracic spine). Too-close dips cannot both be chosen; too
long a gap costs so much that a weak dip in it is preferred, which is how faint discs in osteopenic
bone are recovered.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from workers.l3.params import L3_PARAMS

P = L3_PARAMS.discs  # the numbers of the disc chain (workers/l3/params.py)


@dataclass(frozen=True)
class Disc:
    """One disc: centre and the two endplate positions (z of the half-depth crossings), in mm."""

    z: float
    z_lo: float
    z_hi: float
    depth_hu: float
    strength: float  # depth relative to the typical disc depth of this spine (1 = typical)


@dataclass(frozen=True)
class DiscResult:
    discs: tuple[Disc, ...]
    grid_z: np.ndarray
    detrended: np.ndarray
    observed: np.ndarray  # grid points within reach of a real slice (False inside z gaps)
    typical_depth_hu: float


def find_discs(z_mm: np.ndarray, profile: np.ndarray, valid: np.ndarray) -> DiscResult:
    """Detect the disc chain. ``valid`` marks slices where the spine track was plausible."""
    ok = valid & np.isfinite(profile)
    empty = DiscResult((), np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool), 0.0)
    if ok.sum() < P.min_slices:
        return empty
    zs, ps = z_mm[ok], profile[ok]
    z0, z1 = float(zs[0]), float(zs[-1])
    if z1 - z0 < 2 * P.gap_min_mm:
        return empty
    gz = np.arange(z0, z1 + 1e-6, P.grid_mm)
    gp = np.interp(gz, zs, ps)
    # Grid points farther than 4 mm (or 0.75 of the local spacing) from any slice are unobserved.
    nearest = np.abs(gz[:, None] - zs[None, :]).min(axis=1) if gz.size * zs.size < 4e6 else _nearest(gz, zs)
    spacing = float(np.median(np.diff(zs))) if zs.size > 1 else P.single_slice_mm
    observed = nearest <= max(P.observed_min_mm, P.observed_spacing_fraction * spacing)
    sigma = max(P.smooth_min_mm, P.smooth_spacing_fraction * spacing) / P.grid_mm
    gp = ndi.gaussian_filter1d(gp, sigma, mode="nearest")
    # Black top-hat: how far each point lies below the brightest bone within +-(8 mm + half a
    # slice). A disc sits between two bright endplates that close; a broad low-density region
    # inside a body (osteopenic centre, venous plexus) is wider than the window and scores low.
    half_w = round((P.tophat_half_mm + 0.5 * spacing) / P.grid_mm)
    closed = ndi.grey_closing(gp, size=2 * half_w + 1, mode="nearest")
    d = gp - closed

    # Local minima, merged within P.merge_mm.
    half = max(1, round(P.merge_mm / 2 / P.grid_mm))
    is_min = (d == ndi.minimum_filter1d(d, 2 * half + 1, mode="nearest")) & (d < 0) & observed
    # A "dip" at the first or last slice is an edge effect (nothing to compare with on one side).
    edge = max(P.edge_min_mm, spacing) / P.grid_mm
    is_min &= (np.arange(d.size) >= edge) & (np.arange(d.size) <= d.size - 1 - edge)
    cand = np.nonzero(is_min)[0]
    if cand.size == 0:
        return DiscResult((), gz, d, observed, 0.0)
    depths = -d[cand]
    # Typical disc depth: upper part of the candidate depths (most real discs are among the deepest).
    n_expected = max(1, round((z1 - z0) / P.vertebra_mm))
    typical = float(np.median(np.sort(depths)[::-1][:n_expected]))
    typical = max(typical, P.typical_depth_min_hu)
    score = np.minimum(depths / typical, P.score_max)

    chain = _chain(gz[cand], score - P.score_offset)
    discs = [_disc_at(int(cand[i]), gz, d, typical) for i in chain]
    return DiscResult(tuple(discs), gz, d, observed, typical)


def _disc_at(c: int, gz: np.ndarray, d: np.ndarray, typical: float) -> Disc:
    """The disc whose deepest point is grid index ``c``; its extent is where the detrended profile
    stays below half that depth (at most 8 mm each side)."""
    lvl = 0.5 * d[c]
    lo = c
    while lo > 0 and d[lo - 1] < lvl and (c - lo) * P.grid_mm < P.extent_max_mm:
        lo -= 1
    hi = c
    while hi < d.size - 1 and d[hi + 1] < lvl and (hi - c) * P.grid_mm < P.extent_max_mm:
        hi += 1
    return Disc(
        z=float(gz[c]),
        z_lo=float(gz[lo]),
        z_hi=float(gz[hi]),
        depth_hu=float(-d[c]),
        strength=float(-d[c] / typical),
    )


def _chain(zc: np.ndarray, score: np.ndarray) -> list[int]:
    """Best chain of candidate indices by a second-order dynamic programme.

    Score = sum of candidate scores - penalty(each gap) - penalty(each change of gap between
    neighbouring vertebrae). The second term matters: two mid-body dips either side of a real
    disc can have a larger summed score than the disc itself, but they produce a short gap next to
    a long one, which real spines do not (adjacent vertebra+disc heights differ by ~10 %).
    """
    n = zc.size
    if n == 0:
        return []
    neg = -np.inf
    # pair[j, i]: best chain ending with ... -> j -> i ; single[i]: chain consisting of i alone.
    pair = np.full((n, n), neg)
    back = np.full((n, n), -1, dtype=np.int64)
    best_single = int(np.argmax(score))
    for i in range(n):
        for j in range(i):
            g = zc[i] - zc[j]
            if g < P.gap_min_mm or g > P.gap_hard_max_mm:
                continue
            base = score[j] + score[i] - _gap_penalty(g)
            pair[j, i] = base
            # Extend chains ending with (k, j).
            ks = np.nonzero(np.isfinite(pair[:j, j]))[0]
            if ks.size:
                g_prev = zc[j] - zc[ks]
                cand = pair[ks, j] + score[i] - _gap_penalty(g) - _change_penalty(g_prev, g)
                m = int(np.argmax(cand))
                if cand[m] > base:
                    pair[j, i] = cand[m]
                    back[j, i] = ks[m]
    if not np.isfinite(pair).any() or pair.max() < score[best_single]:
        return [best_single]
    jj, ii = np.unravel_index(int(np.argmax(pair)), pair.shape)
    j, i = int(jj), int(ii)
    out = [i, j]
    while back[j, i] >= 0:
        k = int(back[j, i])
        out.append(k)
        j, i = k, j
    return out[::-1]


def _change_penalty(g_prev: np.ndarray, g: float) -> np.ndarray:
    excess = np.clip(np.abs(np.log(g / g_prev)) - P.gap_change_free, 0.0, None)
    out: np.ndarray = 0.5 * (excess / P.gap_change_free) ** 2
    return out


def _gap_penalty(gap: float) -> float:
    lo, hi = P.gap_soft_mm
    if gap < lo:
        return ((lo - gap) / P.gap_short_scale_mm) ** 2
    if gap > hi:
        return ((gap - hi) / P.gap_long_scale_mm) ** 2
    return 0.0


def _nearest(gz: np.ndarray, zs: np.ndarray) -> np.ndarray:
    i = np.clip(np.searchsorted(zs, gz), 1, zs.size - 1)
    out: np.ndarray = np.minimum(np.abs(gz - zs[i - 1]), np.abs(gz - zs[i]))
    return out


def weak_disc_near(
    dr: DiscResult, z_target: float, tol_mm: float, min_sep_mm: float = P.weak_min_sep_mm
) -> Disc | None:
    """The deepest dip within +-tol_mm of z_target that is at least min_sep_mm from every chained
    disc: used to recover a faint L5/S1 disc (tilted, partial-volumed) when the sacrum says where it
    must be. Returns None when the profile has no dip there."""
    if dr.grid_z.size == 0:
        return None
    d = dr.detrended
    m = (np.abs(dr.grid_z - z_target) <= tol_mm) & dr.observed
    for x in dr.discs:
        m &= np.abs(dr.grid_z - x.z) >= min_sep_mm
    idx = np.nonzero(m)[0]
    if idx.size == 0:
        return None
    interior = idx[(idx > 0) & (idx < d.size - 1)]
    mins = [int(i) for i in interior if d[i] <= d[i - 1] and d[i] <= d[i + 1] and d[i] < 0]
    if not mins:
        return None
    c = min(mins, key=lambda i: float(d[i]))
    return _disc_at(c, dr.grid_z, d, max(dr.typical_depth_hu, P.typical_depth_min_hu))
