"""Posterior muscle block: paraspinal (erector spinae, multifidus), quadratus lumborum and psoas.

Why a region and not rays: seen from a centre in front of the spine, the posterior muscles are
not star-shaped (psoas beside the vertebral body, quadratus lateral to the transverse process),
so ray edges fan out and cut wedges through kidney and perirenal fat. Anatomically these muscles
form one soft-tissue block attached to the vertebra and bounded by fat (perirenal/posterior
pararenal fat in front, SAT behind). So: take soft tissue and bone, open it a little to cut thin
bridges (this is what separates a kidney with its fat rim, or a bowel loop, from psoas), keep the
component attached to the vertebra, restore the opened edges, fill small fat holes (they become
IMAT). The block is limited to the region behind the front of the vertebral body (aorta and IVC lie
in front of it) with a small allowance beside it for the psoas bellies, and, farther than the psoas
zone from the vertebral body, to the region behind the back of the vertebral body.

Two kinds of muscle are not attached after the opening and are kept anyway: a psoas belly that a
fat plane separates from the vertebral body (lower lumbar levels), and the fragments of very fatty
erector spinae in the paraspinal gutters behind the spine, where no organ lies. The organ test
(brighter than the patient's paraspinal muscle by 30 HU) only counts bright regions of organ size:
the psoas keeps its density when the paraspinal muscles turn fatty, and its denser spots are not
an organ.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from workers.tissues.geometry import BoolArray, dilate_mm, open_mm
from workers.tissues.params import TISSUE_PARAMS

P = TISSUE_PARAMS.posterior


def find_posterior_block(
    hu: npt.NDArray[Any],
    region: BoolArray,
    vertebra: BoolArray,
    vertebral_body: BoolArray,
    spacing_yx_mm: Sequence[float],
    stop: BoolArray | None = None,
    muscle_ref_hu: float | None = None,
) -> BoolArray:
    """Mask of the posterior muscle block (including the vertebra itself) inside ``region``."""
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    if not vertebra.any():
        return np.zeros_like(region)
    smooth = ndi.gaussian_filter(hu.astype(np.float32), (P.soft_smooth_mm / dy, P.soft_smooth_mm / dx))
    soft = ((smooth >= P.soft_lo) | vertebra) & region
    if stop is not None:
        soft &= ~stop
    if muscle_ref_hu is not None:
        # clearly brighter than this patient's muscle = organ (enhanced liver/spleen/kidney), not muscle;
        # the margin is wide because psoas is often 10-25 HU denser than fatty paraspinal muscle
        organ = ndi.gaussian_filter(hu.astype(np.float32), (P.organ_sigma_mm / dy, P.organ_sigma_mm / dx))
        near_bone = dilate_mm(vertebra | (hu > 150), P.organ_bone_margin_mm, spacing_yx_mm)
        bright = (organ > muscle_ref_hu + P.organ_delta_hu) & ~near_bone
        # an organ is large; scattered bright spots are the denser tail of a psoas that kept its
        # density while the paraspinal muscles (the reference) turned fatty
        lab_b, n_b = ndi.label(bright)
        if n_b:
            area = np.bincount(lab_b.ravel()) * dy * dx
            big = area >= P.organ_min_area_mm2
            big[0] = False
            bright = big[lab_b]
        soft &= ~bright
    # only behind the front of the vertebral body (+ allowance for psoas beside it)
    ref = vertebral_body if vertebral_body.any() else vertebra
    rows = np.flatnonzero(ref.any(axis=1))
    front = int(rows[0])
    cols = np.flatnonzero(ref.any(axis=0))
    c0, c1 = int(cols[0]), int(cols[-1])
    rr = np.arange(hu.shape[0])[:, None]
    cc = np.arange(hu.shape[1])[None, :]
    beside = (cc < c0) | (cc > c1)
    allow = (rr >= front) | (beside & (rr >= front - P.psoas_front_allowance_mm / dy))
    # away from the psoas (beside the vertebral body) the quadratus and the erector spinae lie behind
    # the transverse processes, i.e. behind the back of the vertebral body; in front of that line,
    # lateral to the psoas, lie kidney, liver and spleen (touching the back wall above L2)
    back = int(rows[-1])
    near_ref = dilate_mm(ref, P.psoas_zone_mm, spacing_yx_mm)
    allow &= near_ref | (rr >= back)
    soft &= allow
    opened = open_mm(soft, P.open_mm, spacing_yx_mm) | (vertebra & soft)
    lab, _n = ndi.label(opened)
    ids = np.unique(lab[vertebra & opened])
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros_like(region)
    block = np.isin(lab, ids)
    # a psoas belly separated from the vertebral body by a fat plane (lower lumbar levels) is a
    # component of its own: keep components that lie mostly in the psoas zone beside the body
    zone = near_ref & beside & (rr <= back)
    sizes = np.bincount(lab.ravel())
    in_zone = np.bincount(lab[zone], minlength=sizes.size)
    belly = (in_zone * dy * dx >= P.psoas_belly_min_mm2) & (in_zone >= P.psoas_belly_in_zone * sizes)
    belly[0] = False
    block |= belly[lab]
    # restore the edges removed by the opening (only soft pixels touching the block)
    block = dilate_mm(block, P.open_mm + 0.5 * max(dy, dx), spacing_yx_mm) & soft
    # paraspinal gutters: behind the back of the vertebral body and close to the midline there are
    # only the erector spinae and multifidus (no organ reaches there); very fatty muscle falls apart
    # into fragments under the opening, so soft tissue there is block whether attached or not
    mid = 0.5 * (c0 + c1)
    gutter = (rr >= back + P.gutter_behind_mm / dy) & (np.abs(cc - mid) * dx <= P.gutter_half_width_mm)
    block |= soft & gutter
    return _fill_small_holes(block, P.hole_max_mm2 / (dy * dx)) & region


def _fill_small_holes(mask: BoolArray, max_px: float) -> BoolArray:
    filled = ndi.binary_fill_holes(mask)
    holes = filled & ~mask
    lab, n = ndi.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    small = np.flatnonzero(sizes <= max_px)
    small = small[small > 0]
    out: BoolArray = mask | np.isin(lab, small)
    return out
