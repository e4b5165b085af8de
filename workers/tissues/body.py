"""Body mask for one axial slice: the trunk only, without table, cushions, clothing or arms.

Why: everything outside the trunk would otherwise be counted as fat or muscle (arms beside the
trunk add both; the table is dense and flat). Steps: threshold at −500 HU (air, foam cushions and
out-of-field padding fall below), a small opening to cut thin table/clothing bridges, then a large
opening (≈ trunk-scale neck) to split arms touching the flank; every body pixel is given to its
nearest opened component and only the trunk's share is kept. Holes (bowel gas, lung) are filled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from workers.tissues.geometry import BoolArray, dilate_mm, largest_component, open_mm
from workers.tissues.params import TISSUE_PARAMS

P = TISSUE_PARAMS.body


@dataclass
class BodyResult:
    mask: BoolArray
    removed: BoolArray
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_body(
    hu: npt.NDArray[Any], spacing_yx_mm: Sequence[float], outside_fov: BoolArray | None = None
) -> BodyResult:
    """Trunk mask plus QC flags (``fov_truncated``, ``arms_in_fov``, ``no_body``).

    ``outside_fov``: pixels outside the reconstruction circle (padding values such as −2000 or
    −3024 in the raw data); default: HU ≤ −1500 in ``hu``.
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    px_mm2 = dy * dx
    raw = hu > P.body_hu
    flags: list[str] = []
    notes: list[str] = []
    opened = open_mm(raw, P.table_open_mm, spacing_yx_mm)
    core = largest_component(opened)
    if not core.any():
        empty = np.zeros_like(raw)
        return BodyResult(empty, empty.copy(), ["no_body"], ["no body found above -500 HU"])
    # keep the raw pixels connected to the core (restores skin detail lost by the opening)
    lab, _ = ndi.label(raw, structure=np.ones((3, 3), bool))
    ids = np.unique(lab[core])
    ids = ids[ids > 0]
    body = np.isin(lab, ids) & dilate_mm(core, P.table_open_mm + P.reattach_margin_mm, spacing_yx_mm)
    body = ndi.binary_fill_holes(body)
    separate_parts = raw & ~body
    # arms touching the trunk: split with a large opening, assign pixels to the nearest opened part
    big = open_mm(body, P.arm_open_mm, spacing_yx_mm)
    blab, nb = ndi.label(big)
    removed = np.zeros_like(body)
    if nb > 1:
        sizes = np.bincount(blab.ravel())
        sizes[0] = 0
        trunk_id = int(np.argmax(sizes))
        _, (iy, ix) = ndi.distance_transform_edt(blab == 0, sampling=(dy, dx), return_indices=True)
        nearest = blab[iy, ix]
        for i in range(1, nb + 1):
            if i == trunk_id:
                continue
            part = body & (nearest == i)
            if (
                part.sum() * px_mm2 >= P.arm_min_area_mm2
                and (hu[part] > P.arm_bone_hu).sum() * px_mm2 > P.arm_bone_min_mm2
            ):
                removed |= part
        if removed.any():
            body = largest_component(body & ~removed)
            body = ndi.binary_fill_holes(body)
            flags.append("arms_in_fov")
            notes.append("limb-like part with bone touching the trunk was removed from the body mask")
    # arms lying against the flank (broad contact, no neck for the opening): split at the skin
    # crease by a watershed between the trunk core and limb bones (humerus, forearm)
    limb = _limb_bones(hu, body, spacing_yx_mm)
    if limb.any():
        part = _split_limbs(body, limb, spacing_yx_mm)
        if part.sum() * px_mm2 >= P.arm_min_area_mm2 and _bulges_out(body, part):
            removed |= part
            body = ndi.binary_fill_holes(largest_component(body & ~part))
            if "arms_in_fov" not in flags:
                flags.append("arms_in_fov")
                notes.append("arm lying against the trunk was cut off at the skin crease")
    # arms lying separately beside the trunk
    slab, ns = ndi.label(separate_parts & open_mm(separate_parts, P.separate_open_mm, spacing_yx_mm))
    for i in range(1, ns + 1):
        part = slab == i
        if (
            part.sum() * px_mm2 >= P.arm_min_area_mm2
            and (hu[part] > P.arm_bone_hu).sum() * px_mm2 > P.arm_bone_min_mm2
        ):
            if "arms_in_fov" not in flags:
                flags.append("arms_in_fov")
                notes.append("arms (or other limbs) lie in the field of view outside the trunk; excluded")
            removed |= part
            break
    # truncation: body touching the image border or the out-of-field padding (circular FOV)
    edge = np.zeros_like(body)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    if outside_fov is None:
        outside_fov = hu <= -1500
    touches = bool((body & edge).any()) or bool((body & ndi.binary_dilation(outside_fov, iterations=1)).any())
    if touches:
        flags.append("fov_truncated")
        notes.append("body touches the edge of the field of view: SAT and circumference are understated")
    return BodyResult(body, removed, flags, notes)


def _limb_bones(hu: npt.NDArray[Any], body: BoolArray, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Compact bone sections (humerus, radius/ulna) near the lateral ends of the body mask.

    Ribs are excluded by width (a rib section is thinner than ~9 mm) and vertebrae/pelvis by
    position (they are not in the outer 30 % of the width on either side).
    """
    from skimage.measure import regionprops

    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    cols = np.flatnonzero(body.any(axis=0))
    if cols.size == 0:
        return np.zeros_like(body)
    c0, c1 = cols[0], cols[-1]
    width = (c1 - c0 + 1) * dx
    bone = ndi.binary_fill_holes((hu > P.limb_bone_hu) & body)
    lab, _ = ndi.label(bone)
    out = np.zeros_like(body)
    for rp in regionprops(lab):
        area = rp.area * dy * dx
        if area < P.limb_bone_min_mm2:
            continue
        minor = rp.axis_minor_length * min(dy, dx)
        if minor < P.limb_bone_min_width_mm:
            continue
        cx = rp.centroid[1]
        if min(cx - c0, c1 - cx) * dx > P.limb_lateral_fraction * width:
            continue
        out[lab == rp.label] = True
    return out


def _bulges_out(body: BoolArray, part: BoolArray) -> bool:
    """True when most of ``part`` lies outside the convex hull of the rest of the body.

    Why: an arm against the flank bulges out of the trunk's outline; the iliac crest (a compact
    bone section in the outer third of the width at L4-L5) gave a watershed "part" that lay inside
    the trunk, and cutting it left a hole in the subcutaneous fat.
    """
    from skimage.morphology import convex_hull_image

    rest = body & ~part
    if not rest.any():
        return True
    inside = float((part & convex_hull_image(rest)).sum()) / max(float(part.sum()), 1.0)
    return inside <= P.limb_max_inside_hull


def _split_limbs(body: BoolArray, limb: BoolArray, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Body pixels that a watershed on the distance map gives to the limb-bone markers."""
    from skimage.segmentation import watershed

    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    dist = ndi.distance_transform_edt(body, sampling=(dy, dx))
    core = dist >= P.trunk_core_fraction * float(dist.max())
    markers = np.zeros(body.shape, dtype=np.int32)
    markers[core] = 1
    lab, n = ndi.label(limb)
    markers[(lab > 0) & ~core] = lab[(lab > 0) & ~core] + 1
    if n == 0:
        return np.zeros_like(body)
    ws = watershed(-dist, markers, mask=body)
    out: BoolArray = body & (ws > 1)
    return out
