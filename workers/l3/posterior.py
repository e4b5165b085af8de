"""The bony ring around the spinal canal and the transverse processes, slice by slice.

Two profiles along z that do not depend on the vertebral-body intensity the disc finder uses:

* **Ring closure**: the fraction of 16 rays from the canal centre that meet bone within 5-25 mm.
  At the pedicles the canal is walled by bone all round (body in front, pedicles at the sides,
  laminae behind): closure 1.0. At a disc the front of the ring is disc (soft tissue) and the sides
  are the neural foramina: closure 0.44-0.50 at every disc of hcc_tace_seg_048 and 1.0 at every
  pedicle level. On thick slices a dip in the middle of a body (basivertebral veins, fatty marrow)
  can outscore a blurred disc and shift the whole count by half a vertebra onto the discs; the
  ring then shows it. It is a check, not a disc detector: on example_ct resampled to 5 mm a slice
  through the L4/L5 disc still has a closed ring (endplates and facets averaged in).
* **Transverse-process span**: the left-right extent of the bone that is connected to the canal's
  wall, within 25 mm in front of or behind the canal. Per lumbar vertebra its maximum is the span
  of the transverse processes; L3's are usually the longest, L1's short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from workers.l3.cues import ProcessSpan
from workers.l3.grid import WorkGrid
from workers.l3.params import L3_PARAMS
from workers.l3.spine import SpineTrack

P = L3_PARAMS.posterior  # the numbers of the ring and the processes (workers/l3/params.py)


@dataclass(frozen=True)
class PosteriorProfile:
    """Per work slice: ring closure (0-1) and transverse-process reach right/left (mm from the
    canal centre; NaN where no spine was tracked)."""

    ring: np.ndarray
    reach_right: np.ndarray
    reach_left: np.ndarray

    @property
    def span(self) -> np.ndarray:
        out: np.ndarray = self.reach_right + self.reach_left
        return out


def measure_posterior(
    g: WorkGrid, body: np.ndarray, t: SpineTrack, ring_hu: float, process_hu: float
) -> PosteriorProfile:
    """Ring closure and transverse-process reach on every slice with a tracked spine.

    Two thresholds: the ring needs real bone (``ring_hu``; at a lower one the partial-volumed
    endplates next to a disc close it too), the processes' thin tips need a low one
    (``process_hu``)."""
    nz, ny, nx = g.hu.shape
    ring = np.full(nz, np.nan)
    right = np.full(nz, np.nan)
    left = np.full(nz, np.nan)
    ang = np.linspace(0.0, 2.0 * np.pi, P.ring_rays, endpoint=False)
    step = 0.5 * min(g.dy, g.dx)
    radii = np.arange(P.ring_radii_mm[0], P.ring_radii_mm[1] + 1e-6, step)
    ray_dy = np.sin(ang)[:, None] * radii[None, :] / g.dy
    ray_dx = np.cos(ang)[:, None] * radii[None, :] / g.dx
    yy, xx = np.mgrid[0:ny, 0:nx]
    st = np.ones((3, 3), dtype=bool)
    for k in np.nonzero(t.valid)[0]:
        cy, cx = float(t.y_canal[k]), float(t.x[k])
        ry = np.clip(np.round(cy + ray_dy).astype(int), 0, ny - 1)
        rx = np.clip(np.round(cx + ray_dx).astype(int), 0, nx - 1)
        ring[k] = float((g.hu[k, ry, rx] > ring_hu).any(axis=1).mean())
        bone = (g.hu[k] > process_hu) & body[k]
        lab, n = ndi.label(bone, st)
        if n == 0:
            right[k] = left[k] = 0.0
            continue
        dxm = (xx - cx) * g.dx
        dym = (yy - cy) * g.dy
        wall = bone & (np.hypot(dxm, dym) <= P.wall_mm)
        ids = np.unique(lab[wall])
        comp = np.isin(lab, ids[ids > 0]) & (np.abs(dym) <= P.tp_band_mm) & (np.abs(dxm) <= P.tp_max_reach_mm)
        if not comp.any():
            right[k] = left[k] = 0.0
            continue
        # Patient right is canonical -x (x runs right -> left).
        right[k] = max(0.0, float(-dxm[comp].min()))
        left[k] = max(0.0, float(dxm[comp].max()))
    return PosteriorProfile(ring=ring, reach_right=right, reach_left=left)


def ring_at(p: PosteriorProfile, z_mm: np.ndarray, z: float) -> float:
    """Ring closure at patient z (linear between work slices; NaN outside the tracked spine)."""
    ok = np.isfinite(p.ring)
    if ok.sum() < 2 or z < z_mm[ok][0] - P.ring_edge_tol_mm or z > z_mm[ok][-1] + P.ring_edge_tol_mm:
        return float("nan")
    return float(np.interp(z, z_mm[ok], p.ring[ok]))


def segment_span(p: PosteriorProfile, z_mm: np.ndarray, lo: float, hi: float) -> ProcessSpan | None:
    """The transverse processes of the vertebra between two disc centres, None if fewer than two
    slices lie there.

    Each side's reach is the second largest in the segment, so a single slice where a vessel or an
    osteophyte touches the process does not decide it; ``z_mm`` is the slice of the widest span."""
    m = (z_mm > lo + P.segment_margin_mm) & (z_mm < hi - P.segment_margin_mm) & np.isfinite(p.span)
    if m.sum() < 2:
        return None
    ks = np.nonzero(m)[0]
    k = int(ks[np.argmax(p.span[ks])])
    return ProcessSpan(float(z_mm[k]), _second(p.reach_right[m]), _second(p.reach_left[m]))


def _second(a: np.ndarray) -> float:
    s = np.sort(a)[::-1]
    return float(s[1]) if s.size > 1 else float(s[0])
