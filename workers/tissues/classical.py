"""Classical (weight-free) tissue segmenter for one axial slice at L3.

Why classical: no downloaded weights, deterministic, explainable, fast on one core. HU windows
alone cannot separate organs from muscle or bowel contents from fat, so the slice is split into
anatomical compartments first (body → spine → muscle wall by ray casting → posterior block →
organs), and only then are the HU windows of the preset applied inside each compartment:

* SM   = SM-window pixels inside the muscle compartment (wall ring + paraspinal/quadratus/psoas),
* IMAT = IMAT-window pixels inside the muscle compartment,
* VAT  = VAT-window pixels inside the peritoneal line, minus bone, canal and bowel lumen,
* SAT  = SAT-window pixels between skin and the outer muscle edge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from workers.tissues.body import BodyResult, find_body
from workers.tissues.bone import SpineResult, find_spine
from workers.tissues.bowel import find_bowel_lumen
from workers.tissues.fascia import outside_deep_fascia, preperitoneal_fat
from workers.tissues.frame import Turn, find_frame
from workers.tissues.geometry import (
    as_float,
    close_mm,
    dilate_mm,
    erode_mm,
    largest_component,
    open_mm,
    polar_mask,
)
from workers.tissues.params import TISSUE_PARAMS
from workers.tissues.posterior import find_posterior_block
from workers.tissues.presets import HUWindow, WindowPreset
from workers.tissues.result import (
    LABEL_IMAT,
    LABEL_SAT,
    LABEL_SM,
    LABEL_VAT,
    TissueSegmentation,
)
from workers.tissues.wall import WallResult, cast_wall

P = TISSUE_PARAMS.classical


class ClassicalSegmenter:
    """Default engine (``classical@0.4``); see module docstring."""

    name = "classical"
    version = "0.4"

    def segment(
        self,
        hu: npt.NDArray[Any],
        spacing_yx_mm: Sequence[float],
        preset: WindowPreset,
        context: npt.NDArray[Any] | None = None,
    ) -> TissueSegmentation:
        if hu.ndim != 2:
            raise ValueError(f"expected one 2-D slice, got shape {hu.shape}")
        sp = (float(spacing_yx_mm[0]), float(spacing_yx_mm[1]))
        h = as_float(hu)
        outside = np.asarray(hu) <= P.padding_hu
        body = find_body(h, sp, outside_fov=outside)
        if "no_body" in body.flags or abs(sp[0] - sp[1]) > P.square_pixel_tol * max(sp):
            # (a turn in pixel space is a turn in the patient only with square pixels)
            return self._segment_slice(h, sp, preset, body)
        box = _body_box(body.mask)
        spine = find_spine(h[box], body.mask[box], sp)
        frame = find_frame(h[box], spine.vertebra, sp)
        if frame is None or not frame.is_turned():
            return self._segment_slice(h, sp, preset, body, spine)
        # The patient lies turned on the table: segment in the patient's frame and map back.
        turn = Turn(frame.angle_deg, (int(h.shape[0]), int(h.shape[1])))
        up = turn.upright(h, cval=P.outside_image_hu, order=1)
        up_outside = (turn.upright(outside.astype(np.uint8), cval=1, order=0) > 0) | (up <= P.padding_hu)
        seg = self._segment_slice(up, sp, preset, find_body(up, sp, outside_fov=up_outside))
        masks = {k: turn.back(m.astype(np.uint8)).astype(bool) & body.mask for k, m in seg.masks.items()}
        # The compartments come back, not the labels: each original pixel is labelled by its own HU
        # (the upright slice is interpolated, which blurs tissue borders into no window at all).
        labels = _labels_in_zones(h, masks, _skin(h, body.mask, sp, preset.sat), preset)
        notes = [
            *seg.qc_notes,
            f"patient turned by {frame.angle_deg:.0f} degrees on the table: compartments found in "
            "the patient's own frame",
        ]
        return TissueSegmentation(
            labels=labels,
            peritoneal_contour_px=turn.back_points(seg.peritoneal_contour_px),
            body_mask=body.mask,
            flags=[*seg.flags, "patient_turned"],
            qc_notes=notes,
            wall_outer_contour_px=turn.back_points(seg.wall_outer_contour_px),
            wall_inner_contour_px=turn.back_points(seg.wall_inner_contour_px),
            masks=masks,
            segmenter=self.id,
            parameters=TISSUE_PARAMS.name,
            preset_id=preset.id,
        )

    def _segment_slice(
        self,
        h: npt.NDArray[np.float32],
        sp: tuple[float, float],
        preset: WindowPreset,
        body: BodyResult,
        spine: SpineResult | None = None,
    ) -> TissueSegmentation:
        """Segment a slice whose rows run antero-posterior (the patient's frame). ``spine``, when
        given, was found on this slice's body box (_body_box) already."""
        shape = h.shape
        labels = np.zeros(shape, dtype=np.uint8)
        flags = list(body.flags)
        notes = list(body.notes)
        empty = np.zeros((0, 2))
        if "no_body" in flags:
            return TissueSegmentation(
                labels,
                empty,
                body.mask,
                flags,
                notes,
                segmenter=self.id,
                parameters=TISSUE_PARAMS.name,
                preset_id=preset.id,
            )
        # everything else runs on the body's bounding box (same result, much less work)
        box = _body_box(body.mask)
        r0, c0 = box[0].start, box[1].start
        sub = self._segment_body(h[box], body.mask[box], sp, preset, flags, notes, spine)
        labels[box] = sub.labels
        off = np.array([r0, c0], dtype=np.float64)
        masks = {}
        for key, m in sub.masks.items():
            full = np.zeros(shape, dtype=bool)
            full[box] = m
            masks[key] = full
        line = sub.peritoneal_contour_px + off if len(sub.peritoneal_contour_px) else empty
        return TissueSegmentation(
            labels=labels,
            peritoneal_contour_px=line,
            body_mask=body.mask,
            flags=sub.flags,
            qc_notes=sub.qc_notes,
            wall_outer_contour_px=sub.wall_outer_contour_px + off,
            wall_inner_contour_px=sub.wall_inner_contour_px + off,
            masks=masks,
            segmenter=self.id,
            parameters=TISSUE_PARAMS.name,
            preset_id=preset.id,
        )

    def _segment_body(
        self,
        h: npt.NDArray[np.float32],
        bmask: npt.NDArray[np.bool_],
        sp: tuple[float, float],
        preset: WindowPreset,
        flags: list[str],
        notes: list[str],
        spine: SpineResult | None = None,
    ) -> TissueSegmentation:
        """All steps after the body mask, on the body's bounding box."""
        shape = h.shape
        if float((h[bmask] > P.metal_hu).sum()) * sp[0] * sp[1] > P.metal_min_area_mm2:
            flags.append("metal_suspected")
            notes.append("pixels above 2500 HU: metal streaks may corrupt HU values")
        if spine is None:
            spine = find_spine(h, bmask, sp)
        cy, cx = ndi.center_of_mass(bmask)
        if spine.body_center_rc is not None:
            vy, vx = spine.body_center_rc
            center = (cy + P.center_toward_spine * (vy - cy), cx + P.center_toward_spine * (vx - cx))
            # keep the centre well in front of the vertebral body so posterior rays cross it
            vb_front = float(np.flatnonzero(spine.vertebral_body.any(axis=1))[0])
            center = (min(center[0], vb_front - P.center_front_mm / sp[0]), float(vx))
            d = np.array([(vy - center[0]) * sp[0], (vx - center[1]) * sp[1]])
            nd = float(np.hypot(*d))
            spine_dir: tuple[float, float] | None = (float(d[0] / nd), float(d[1] / nd)) if nd > 0 else None
        else:
            flags.append("no_spine_found")
            notes.append("no vertebra found: posterior muscles and peritoneal line are unreliable")
            center = (float(cy), float(cx))
            spine_dir = None
        muscle_ref = _paraspinal_reference_hu(h, bmask, spine, sp, preset)
        wall = cast_wall(
            h, bmask, sp, center, spine_dir, spine.vertebral_body, spine.bone, muscle_ref_hu=muscle_ref
        )
        front_rays = ~wall.posterior
        if front_rays.any():
            guessed = float(np.mean(~wall.inner_valid[front_rays]))
            if guessed > P.wall_guessed_fraction:
                flags.append("wall_interpolated")
                notes.append(
                    f"inner wall edge interpolated on {100 * guessed:.0f} % of the anterior/lateral "
                    "rays (organs or fluid touching the wall): check the peritoneal line"
                )
        inside_outer = polar_mask(center, wall.angles, wall.outer_mm, shape, sp) & bmask
        # the ray edge is quantised to samples: let each pixel next to it decide by its own HU
        inside_outer = _refine_edge(inside_outer, h, preset, sp, P.edge_band_px) & bmask
        # anterior/lateral wall from rays; posterior sector: cavity up to the outer edge, then the
        # posterior muscle block (paraspinal, quadratus, psoas, vertebra) is carved out of it
        inner = np.where(wall.posterior, wall.outer_mm, wall.inner_mm)
        cavity_poly = polar_mask(center, wall.angles, inner, shape, sp) & inside_outer
        ray_cavity = polar_mask(center, wall.angles, wall.inner_mm, shape, sp)
        ray_ring = inside_outer & ~ray_cavity
        # guard against kidney/liver joining the block: the ray ring (rays stop at perirenal fat),
        # plus a psoas zone next to the vertebral body, where the psoas lies whatever the rays did
        psoas_zone = dilate_mm(spine.vertebral_body, P.psoas_zone_mm, sp)
        depth_in = ndi.distance_transform_edt(inside_outer, sampling=sp)
        post_px = _posterior_pixels(center, wall, shape, sp)
        guard = ((depth_in <= P.block_depth_mm) & post_px) | spine.vertebra | psoas_zone
        block = find_posterior_block(
            h, cavity_poly & guard, spine.vertebra, spine.vertebral_body, sp, muscle_ref_hu=muscle_ref
        )
        # in front of the vertebral body's centre only thick muscle is psoas; thin bands hugging the
        # body there are diaphragmatic crura, vessels or bone partial volume
        near_vb = block & psoas_zone & ~spine.vertebra
        thick = open_mm(near_vb, P.psoas_min_half_thickness_mm, sp)
        thick = dilate_mm(thick, 1.01 * max(sp), sp) & near_vb
        thin = near_vb & ~thick
        if spine.body_center_rc is not None:
            # crura and vessels hug the front half of the body (L1-L3); beside and behind its centre a
            # thin muscle is the upper psoas, which starts small at T12-L1, or the quadratus
            thin &= (np.arange(shape[0]) < spine.body_center_rc[0])[:, None]
        block = block & ~thin
        block = _drop_kidney_pole(h, block, spine, psoas_zone, preset, sp)
        block = _psoas_beyond_zone(h, block, spine, psoas_zone, cavity_poly, preset, sp)
        # thin wall muscle next to the outer edge (latissimus, obliques reaching the back) is lost by
        # the block's opening: add soft tissue of a shallow band that touches the block
        band = cavity_poly & post_px & (depth_in <= P.wall_band_mm) & preset.sm.contains(h)
        blab, _ = ndi.label(band | block)
        keep = np.unique(blab[block])
        block = block | (np.isin(blab, keep[keep > 0]) & band)
        # behind the front of the vertebral body only the block is muscle; in front of it the rays
        vb_rows = np.flatnonzero(spine.vertebral_body.any(axis=1))
        behind = np.zeros(shape, dtype=bool)
        if vb_rows.size:
            behind[int(vb_rows[0]) :, :] = True
        lateral_wall = ray_ring & post_px & ~behind & (depth_in <= P.lateral_wall_max_mm)
        # behind the spine front the rays are trusted only close under the outer edge (the wall)
        lateral_wall |= ray_ring & post_px & behind & (depth_in <= P.posterior_wall_max_mm) & ~psoas_zone
        ring0 = block | (ray_ring & ~post_px) | lateral_wall
        cavity = _largest(inside_outer & ~ring0)
        ring = inside_outer & ~cavity
        # pixels touching dense bone are bone/muscle partial volume (HU raised, not muscle)
        bone_pv = ndi.binary_dilation(h > P.bone_pv_hu, structure=np.ones((3, 3), bool))
        if muscle_ref is not None:  # only where the bone visibly raises the HU above muscle
            bone_pv &= h > muscle_ref + P.bone_pv_raise_hu
            # low-density trabecular bone of pedicles/laminae inside the vertebra region
            bone_pv |= spine.vertebra & (h > muscle_ref + P.bone_pv_raise_hu)
        excluded = spine.bone_interior | spine.canal | bone_pv
        if muscle_ref is not None:
            excluded |= _costal_cartilage(h, ring & ~block, muscle_ref, sp)
        excluded |= _organ_contact(
            h, block & ~spine.vertebra, cavity, block & psoas_zone & ~spine.vertebra, preset, sp
        )
        muscle_px = ring & ~excluded & preset.sm.contains(h)
        # IMAT: fat enclosed by muscle (holes, narrow clefts); other fat in the ring (partial volume at
        # the wall's edges, fat planes between muscles) goes to whichever side (SAT/cavity) is nearer
        outline = ndi.binary_fill_holes(close_mm(muscle_px, P.imat_close_mm, sp)) & ring & ~excluded
        # fat beside the canal, level with it, is epidural or foraminal fat around the nerve roots:
        # neither intermuscular nor visceral
        excluded |= _foraminal_zone(spine.canal, sp) & ring & ~muscle_px & preset.any_fat.contains(h)
        # (fat pixels touching bone are bone/fat partial volume at the cortex, not intermuscular fat)
        near_bone = ndi.binary_dilation(excluded, structure=np.ones((3, 3), bool))
        outline &= ~near_bone | muscle_px
        # fat lying on the cavity in the front of the wall, too thick to be a cleft between its layers,
        # is preperitoneal fat under an inner edge interpolated across it (an organ touched the wall)
        preperitoneal = preperitoneal_fat(
            ring & ~post_px & ~excluded & preset.any_fat.contains(h), cavity, sp
        )
        outline &= ~preperitoneal
        lumen = find_bowel_lumen(h, cavity, sp)
        outside = bmask & ~inside_outer
        loose = ring & ~outline & ~excluded & ~muscle_px & ~preperitoneal
        if loose.any():
            d_out = ndi.distance_transform_edt(~outside, sampling=sp)
            d_cav = ndi.distance_transform_edt(~cavity, sampling=sp)
            to_sat = loose & (d_out <= d_cav)
            to_cav = loose & ~to_sat
        else:
            to_sat = to_cav = loose
        vat_zone = ((cavity & ~lumen) | to_cav | preperitoneal) & ~excluded
        # in the posterior sector, fat outside the back of the wall is subcutaneous (the rays' outer
        # edge can run through the SAT there)
        superficial = outside_deep_fascia(
            vat_zone & preset.any_fat.contains(h), outside | to_sat, post_px, depth_in, sp
        )
        zones = {
            ZONE_IMAT: outline,
            ZONE_SM: ring & ~excluded,
            ZONE_VAT: vat_zone & ~superficial,
            ZONE_SAT: outside | to_sat | superficial,
        }
        labels = _labels_in_zones(h, zones, _skin(h, bmask, sp, preset.sat), preset)
        masks = {
            **zones,
            "inside_outer": inside_outer,
            "cavity": cavity,
            "bone_interior": spine.bone_interior,
            "canal": spine.canal,
            "bowel_lumen": lumen,
            "vertebral_body": spine.vertebral_body,
        }
        return TissueSegmentation(
            labels=labels,
            peritoneal_contour_px=_outline(cavity),
            body_mask=bmask,
            flags=flags,
            qc_notes=notes,
            wall_outer_contour_px=wall.outer_contour_rc,
            wall_inner_contour_px=wall.inner_contour_rc,
            masks=masks,
            segmenter=self.id,
            parameters=TISSUE_PARAMS.name,
            preset_id=preset.id,
        )

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"


ZONE_IMAT, ZONE_SM, ZONE_VAT, ZONE_SAT = "zone_imat", "zone_sm", "zone_vat", "zone_sat"


def _body_box(body: npt.NDArray[np.bool_], pad: int = 4) -> tuple[slice, slice]:
    """The body's bounding box plus ``pad`` pixels: every step after the body mask runs on it (same
    result, much less work)."""
    rows = np.flatnonzero(body.any(axis=1))
    cols = np.flatnonzero(body.any(axis=0))
    return (
        slice(max(int(rows[0]) - pad, 0), min(int(rows[-1]) + pad + 1, body.shape[0])),
        slice(max(int(cols[0]) - pad, 0), min(int(cols[-1]) + pad + 1, body.shape[1])),
    )


def _skin(
    h: npt.NDArray[np.float32],
    bmask: npt.NDArray[np.bool_],
    sp: tuple[float, float],
    fat: HUWindow,
) -> npt.NDArray[np.bool_]:
    """Skin and the air/skin partial volume at the surface: never SAT (see P.skin_mm).

    A pixel whose centre lies within the skin band is skin, and so is the outermost pixel at any
    pixel size, unless it is wider than the band and holds pure fat (P.skin_pure_fat_hu): on 2.5-3 mm
    pixels the outermost ring holds half of the first millimetres of fat, and without this the SAT
    area would depend on the pixel size."""
    edt = ndi.distance_transform_edt(bmask, sampling=sp)
    depth = edt - 0.5 * min(sp)
    skin = bmask & ((depth < P.skin_mm) | ~ndi.binary_erosion(bmask))
    reaches_below_skin = skin & (edt > P.skin_mm)
    if reaches_below_skin.any():
        deep_fat = bmask & (edt > P.fat_reference_depth_mm) & fat.contains(h)
        if deep_fat.any():
            fat_hu = float(np.median(h[deep_fat]))
            skin &= ~(reaches_below_skin & (np.abs(h - fat_hu) <= P.skin_pure_fat_hu))
    # the next pixel ring is skin/fat partial volume when it is brighter than fat
    rim = ndi.binary_dilation(skin, structure=np.ones((3, 3), bool)) & ~skin
    out: npt.NDArray[np.bool_] = skin | (rim & (h > P.dermis_pv_hu))
    return out


def _labels_in_zones(
    h: npt.NDArray[np.float32],
    zones: dict[str, npt.NDArray[np.bool_]],
    skin: npt.NDArray[np.bool_],
    preset: WindowPreset,
) -> npt.NDArray[np.uint8]:
    """Each tissue is its HU window inside its compartment: IMAT inside the muscles' outline, SM in
    the muscle compartment, VAT in the cavity, SAT outside the muscle wall under the skin. (The
    windows of IMAT and SM do not overlap, and the compartments of VAT and SAT do not meet those of
    SM and IMAT.)"""
    labels = np.zeros(h.shape, dtype=np.uint8)
    labels[zones[ZONE_IMAT] & preset.imat.contains(h)] = LABEL_IMAT
    labels[zones[ZONE_SM] & preset.sm.contains(h)] = LABEL_SM
    labels[zones[ZONE_VAT] & preset.vat.contains(h)] = LABEL_VAT
    labels[zones[ZONE_SAT] & ~skin & preset.sat.contains(h)] = LABEL_SAT
    return labels


def _costal_cartilage(
    h: npt.NDArray[np.float32],
    wall: npt.NDArray[np.bool_],
    muscle_ref: float,
    sp: tuple[float, float],
) -> npt.NDArray[np.bool_]:
    """Costal cartilage inside the anterior/lateral wall ring (never muscle).

    Why: above L2 the costal cartilages run inside the abdominal wall; non-calcified cartilage is
    ~70-150 HU, inside the muscle window (TotalSegmentator issue 117 counted it as muscle), but no
    skeletal muscle of the same patient is that dense (contrast raises muscle by ~10 HU only).
    Blobs ≥ 30 mm² whose lightly smoothed HU is > paraspinal reference + 50 HU are cartilage; their
    one-pixel partial-volume rim is dropped too where it is still > reference + 20 HU (the rule used
    for bone partial volume).
    """
    smooth = ndi.gaussian_filter(h, (P.cartilage_smooth_mm / sp[0], P.cartilage_smooth_mm / sp[1]))
    core = wall & (smooth > muscle_ref + P.cartilage_delta_hu)
    lab, n = ndi.label(core)
    if n == 0:
        return core
    sizes = np.bincount(lab.ravel()) * sp[0] * sp[1]
    keep = np.flatnonzero(sizes >= P.cartilage_min_mm2)
    keep = keep[keep > 0]
    core = np.isin(lab, keep)
    rim = (
        ndi.binary_dilation(core, structure=np.ones((3, 3), bool))
        & wall
        & (h > muscle_ref + P.bone_pv_raise_hu)
    )
    out: npt.NDArray[np.bool_] = core | rim
    return out


def _psoas_hu(h: npt.NDArray[np.float32], psoas: npt.NDArray[np.bool_], preset: WindowPreset) -> float | None:
    """The psoas's density: the 75th percentile of its muscle-window pixels (psoas is the bulk and
    the denser tissue of the block beside the vertebral body); None if too few pixels."""
    vals = h[psoas & preset.sm.contains(h)]
    return float(np.percentile(vals, 75)) if vals.size >= 10 else None


def _organ_contact(
    h: npt.NDArray[np.float32],
    ring: npt.NDArray[np.bool_],
    cavity: npt.NDArray[np.bool_],
    psoas: npt.NDArray[np.bool_],
    preset: WindowPreset,
    sp: tuple[float, float],
) -> npt.NDArray[np.bool_]:
    """Pixels of the muscle ring that touch an organ in the cavity and are clearly darker than the
    psoas: the thin fat plane (or its partial volume) between a muscle and the kidney, bowel or a
    vessel lying on it. By the HU-window convention they are muscle when they fall in the window,
    but they belong to neither: the reader's reference leaves them out, and so does TotalSegmentator's
    kidney label, which takes them into the kidney. The organ is cavity tissue in the muscle window
    at P.organ_min_hu or denser: the kidney's own edge pixels are partial-volumed too (5-16 HU on
    example_ct), fat and its partial volume are below it."""
    lean = _psoas_hu(h, psoas, preset)
    if lean is None:
        return np.zeros_like(ring)
    floor = min(lean - P.organ_contact_delta_hu, P.organ_contact_max_hu)
    organ = cavity & preset.sm.contains(h) & (h >= P.organ_min_hu)
    lab, n = ndi.label(organ)
    if n == 0:
        return np.zeros_like(ring)
    big = np.bincount(lab.ravel()) * sp[0] * sp[1] >= P.organ_min_area_mm2
    big[0] = False
    organ = big[lab]
    near = ndi.binary_dilation(organ, structure=np.ones((3, 3), bool))
    out: npt.NDArray[np.bool_] = ring & near & (h < floor)
    return out


def _drop_kidney_pole(
    h: npt.NDArray[np.float32],
    block: npt.NDArray[np.bool_],
    spine: SpineResult,
    psoas_zone: npt.NDArray[np.bool_],
    preset: WindowPreset,
    sp: tuple[float, float],
) -> npt.NDArray[np.bool_]:
    """Remove from the posterior block a low-density lobe beside the vertebral body (kidney pole).

    Why: the block is grown through soft tissue, so where the medial pole of an unenhanced kidney
    touches the psoas without a fat plane it joins the block (classical-methods.md: "the whole
    unenhanced kidney counted as muscle"). Beside the vertebral body (not behind it: there lie the
    fatty paraspinal muscles) the block should be psoas, whose density is taken as the 75th
    percentile of the block there (psoas is the bulk and the denser tissue). Unenhanced renal
    parenchyma is darker than muscle; a region whose smoothed HU (2 mm) is > 30 HU below the psoas
    is cut off; only the parts still attached to the vertebra (plus the edge the smoothing darkened)
    are kept. Enhanced kidneys are brighter and already removed by the block's organ test.
    """
    cand = _psoas_beside_body(block, spine, psoas_zone)
    if not cand.any():
        return block
    psoas_hu = _psoas_hu(h, cand, preset)
    if psoas_hu is None:
        return block
    smooth = ndi.gaussian_filter(h, (P.kidney_smooth_mm / sp[0], P.kidney_smooth_mm / sp[1]))
    low = cand & (smooth < psoas_hu - P.kidney_delta_hu)
    if not low.any():
        return block
    kept = block & ~low
    lab, n = ndi.label(kept)
    ids = np.unique(lab[spine.vertebra & kept])
    ids = ids[ids > 0]
    if ids.size == 0:
        return kept
    # a piece the cut separated from the vertebra goes with the low lobe, unless it is itself a
    # substantial piece of psoas density: at L4 the smoothing darkens the fat plane between psoas
    # and vertebral body, and the whole psoas used to go (there is no kidney that low)
    idx = np.arange(1, n + 1)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    med = ndi.median(h, lab, idx)
    dense = (sizes * sp[0] * sp[1] >= P.kidney_keep_min_mm2) & (
        np.asarray(med) >= psoas_hu - P.kidney_keep_delta_hu
    )
    ids = np.union1d(ids, idx[dense])
    attached = np.isin(lab, ids)
    # the psoas's own edge (partial volume, further darkened by the smoothing over ~1.5 sigma) stays
    # muscle by the window convention
    out: npt.NDArray[np.bool_] = (
        dilate_mm(attached, max(1.01 * max(sp), P.psoas_edge_sigmas * P.kidney_smooth_mm), sp) & block
    )
    return out


def _psoas_beside_body(
    block: npt.NDArray[np.bool_], spine: SpineResult, psoas_zone: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """The block within the psoas zone beside (not behind) the vertebral body: the psoas."""
    vb = spine.vertebral_body
    if not vb.any():
        return np.zeros_like(block)
    rows = np.arange(block.shape[0])[:, None]
    out: npt.NDArray[np.bool_] = (
        block & psoas_zone & ~spine.vertebra & (rows <= int(np.flatnonzero(vb.any(axis=1))[-1]))
    )
    return out


def _psoas_beyond_zone(
    h: npt.NDArray[np.float32],
    block: npt.NDArray[np.bool_],
    spine: SpineResult,
    psoas_zone: npt.NDArray[np.bool_],
    cavity_poly: npt.NDArray[np.bool_],
    preset: WindowPreset,
    sp: tuple[float, float],
) -> npt.NDArray[np.bool_]:
    """Add the lateral edge of a large psoas that reaches beyond the psoas zone.

    Why: the block is looked for within P.psoas_zone_mm of the vertebral body so that kidney and
    bowel beside it stay out; a large psoas at L3 (hcc_tace_seg_048's lower L3) reaches 35-45 mm and
    lost a crescent of 2-2.5 cm² a side along that arc, down to the quadratus. Beyond the zone (up to
    P.psoas_reach_mm), muscle-window tissue attached to the psoas (the block beside the body) whose
    smoothed HU lies within P.psoas_match_hu of the psoas's median is psoas; an unenhanced kidney is
    darker, an enhanced one brighter (example_ct's kidney test holds).
    """
    vb = spine.vertebral_body
    psoas = _psoas_beside_body(block, spine, psoas_zone)
    vals = h[psoas & preset.sm.contains(h)]
    if vals.size < 10:
        return block
    psoas_hu = float(np.median(vals))
    smooth = ndi.gaussian_filter(h, (P.kidney_smooth_mm / sp[0], P.kidney_smooth_mm / sp[1]))
    reach = dilate_mm(vb, P.psoas_reach_mm, sp) & ~psoas_zone & cavity_poly
    cand = reach & preset.sm.contains(h) & (np.abs(smooth - psoas_hu) <= P.psoas_match_hu)
    if not cand.any():
        return block
    lab, _n = ndi.label(cand | psoas)
    ids = np.unique(lab[psoas])
    out: npt.NDArray[np.bool_] = block | (np.isin(lab, ids[ids > 0]) & cand)
    return out


def _foraminal_zone(canal: npt.NDArray[np.bool_], sp: tuple[float, float]) -> npt.NDArray[np.bool_]:
    """Within P.foramen_mm of the canal and not behind it: the lateral recesses and the neural
    foramina, whose fat surrounds the nerve roots (a reader does not count it as intermuscular;
    hcc_tace_seg_048 lower L3: a 6 mm strip of it was IMAT beside the left pedicle)."""
    if not canal.any():
        return np.zeros_like(canal)
    back = int(np.flatnonzero(canal.any(axis=1))[-1])
    rows = np.arange(canal.shape[0])[:, None]
    out: npt.NDArray[np.bool_] = dilate_mm(canal, P.foramen_mm, sp) & (rows <= back)
    return out


def _largest(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    out: npt.NDArray[np.bool_] = ndi.binary_fill_holes(largest_component(mask))
    return out


def _outline(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.float64]:
    """Longest sub-pixel contour (row, col) of a mask: the peritoneal line a reader would edit."""
    from skimage import measure

    if not mask.any():
        return np.zeros((0, 2))
    cs = measure.find_contours(np.pad(mask.astype(np.float32), 1), 0.5)
    best = max(cs, key=len)
    out: npt.NDArray[np.float64] = best - 1.0
    return out


def _posterior_pixels(
    center: tuple[float, float], wall: WallResult, shape: tuple[int, ...], sp: tuple[float, float]
) -> npt.NDArray[np.bool_]:
    """Pixels whose angle from the ray centre falls in the posterior (spine) sector."""
    rr = (np.arange(shape[0]) - center[0])[:, None] * sp[0]
    cc = (np.arange(shape[1]) - center[1])[None, :] * sp[1]
    ang = np.mod(np.arctan2(rr, cc), 2 * np.pi)
    idx = np.clip(np.round(ang / (2 * np.pi) * len(wall.angles)).astype(int) % len(wall.angles), 0, None)
    out: npt.NDArray[np.bool_] = wall.posterior[idx]
    return out


def _refine_edge(
    inside: npt.NDArray[np.bool_],
    h: npt.NDArray[np.float32],
    preset: WindowPreset,
    sp: tuple[float, float],
    band_px: float,
) -> npt.NDArray[np.bool_]:
    """Within ``band_px`` pixels of the mask edge, muscle-window pixels go inside, fat-window outside."""
    r = band_px * min(sp)
    band = dilate_mm(inside, r, sp) & ~erode_mm(inside, r, sp)
    out = inside.copy()
    out[band & preset.sm.contains(h)] = True
    out[band & preset.any_fat.contains(h)] = False
    return out


def _paraspinal_reference_hu(
    h: npt.NDArray[np.float32],
    body: npt.NDArray[np.bool_],
    spine: SpineResult,
    sp: tuple[float, float],
    preset: WindowPreset,
) -> float | None:
    """Median HU of the paraspinal muscles: the patient's own muscle density (contrast, myosteatosis).

    Taken behind the vertebral body (≥ 25 mm), within 45 mm of the midline, ≥ 15 mm under the skin,
    inside the muscle window. None when there is no spine or too few pixels.
    """
    if spine.body_center_rc is None or not spine.vertebral_body.any():
        return None
    vb_back = int(np.flatnonzero(spine.vertebral_body.any(axis=1))[-1])
    rows = np.arange(h.shape[0])[:, None]
    cols = np.arange(h.shape[1])[None, :]
    depth = ndi.distance_transform_edt(body, sampling=sp)
    lateral = np.abs(cols - spine.body_center_rc[1]) * sp[1] <= P.paraspinal_half_width_mm
    base = body & lateral & preset.sm.contains(h) & ~spine.bone_interior
    # second try: a vertebral body mask that ran through a small canal into the laminae (thin
    # 3 mm slices through an endplate) pushes vb_back too far; the erector spinae still lie
    # directly behind the laminae, so accept muscle closer to the spine and to the skin
    for behind_mm, depth_mm in P.paraspinal_behind_depth_mm:
        m = base & (rows >= vb_back + behind_mm / sp[0]) & (depth >= depth_mm)
        if m.sum() * sp[0] * sp[1] >= P.paraspinal_min_mm2:
            return float(np.median(h[m]))
    return None
