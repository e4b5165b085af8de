"""Anatomical anchors to count vertebrae from: the sacrum (via the sacroiliac joints) and the ribs.

Both anchors only give a z position; the caller ties it to the disc chain. Both are deliberately
conservative: a missed anchor costs confidence, a false anchor costs a whole vertebra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

from workers.l3.grid import WorkGrid
from workers.l3.params import L3_PARAMS
from workers.l3.posterior import PosteriorProfile
from workers.l3.spine import SpineTrack

ANCHOR_BONE_HU = 180.0
SI_MIN_AREA_MM2 = 400.0  # filled bone beyond 40 mm on EACH side (real SI level: 500-2500)
RIB_CAGE_MIN = 10  # rib cross-sections per slice that mean "inside the thoracic cage"
RIB = L3_PARAMS.ribs  # the numbers of find_ribs and rib_cage_count
SACRUM = L3_PARAMS.sacrum
CREST = L3_PARAMS.crests


@dataclass(frozen=True)
class StubRule:
    """What separates a rudimentary (short) 12th rib from a lumbar transverse process, both 15-30 mm
    of thin bone beyond the 30 mm cylinder around the canal. Version ``stub@1``.

    Measured on the work grid of example_ct with its 12th ribs cut to 25 mm stubs (1, 3 and 5 mm
    slices) against every transverse process of example_ct (also with noise, 0.7 mm pixels) and
    of hcc_tace_seg_048 (2.5, 3, 5 mm):

    - min_reach_mm 45: the stub reaches 51-55 mm from the canal, transverse processes 42-55 mm
      (so reach alone never decides; it only keeps rib heads and pedicle stumps out).
    - min_descent_mm 3, min_elevation_deg 13: a rib runs down from its head as it goes out (stubs:
      its lateral end 4-6 mm lower, principal axis 15-25 deg below the horizontal plane); a
      transverse process is horizontal (descent -4..2 mm, axis 0-11 deg, and the ascending ones
      are L4/L5's).
    - min_z_extent_mm 10: the stub spans 10-16 mm of z, a process 5-10 mm (a process is a plate
      about 10 mm tall; a stub descends across it).
    - longer_than_below_mm 8: a rudimentary rib is longer than the processes of the vertebra
      below it (L1's are the shortest lumbar processes; stubs 51-55 mm against 21-37 mm below).
    - below_lowest_rib_mm (18, 45): with a full rib in view the stub lies one vertebra below it.
    - max_bar_ratio 0.6: a stub's width over its length (principal axes; stubs 0.31-0.49, a full
      rib <= 0.35). Processes pass this too; the bar test only keeps plates and blobs out.
    - lateral_end_mm 8: the descent is measured to the stub's lateral end, its voxels within this of
      its farthest reach.
    - below_mm (15, 45): the processes it must be longer than are those 15-45 mm below its medial
      end (the vertebra below).
    """

    name: str = "stub@1"
    min_reach_mm: float = 45.0
    min_descent_mm: float = 3.0
    min_elevation_deg: float = 13.0
    min_z_extent_mm: float = 10.0
    longer_than_below_mm: float = 8.0
    below_lowest_rib_mm: tuple[float, float] = (18.0, 45.0)
    max_bar_ratio: float = 0.6
    lateral_end_mm: float = 8.0
    below_mm: tuple[float, float] = (15.0, 45.0)


STUB_RULE = StubRule()


@dataclass(frozen=True)
class SacrumAnchor:
    """Top (z, mm) of the run of slices where bone is continuous from the spine to both iliac bones."""

    z_top: float
    z_bottom: float
    strength: float  # mean lateral bone area per side beyond 40 mm, in cm^2


@dataclass(frozen=True)
class Rib:
    side: str  # "right" or "left" (patient)
    z_medial: float  # patient z of the medial end (rib head/neck), mm
    length_mm: float  # radial reach beyond the medial end
    volume_ml: float
    touches_fov_edge: bool
    rudimentary: bool = False  # a short stub told from a transverse process by its shape (see find_ribs)


@dataclass(frozen=True)
class RibAnchor:
    """The lowest rib: its medial end marks the T12 body (12 rib pairs assumed)."""

    z_lowest: float
    ribs: tuple[Rib, ...]
    sides_agree: bool
    lowest_short: bool  # the lowest rib is short enough to be confused with a transverse process
    lowest_rudimentary: bool = False  # the lowest rib is a stub (rudimentary 12th rib)


def find_sacrum(g: WorkGrid, body: np.ndarray, t: SpineTrack, si_hu: float = 150.0) -> SacrumAnchor | None:
    """Sacroiliac level: going down the spine, where bone becomes continuous from the midline far
    out to BOTH sides (sacral alae joined to the iliac bones).

    A one-voxel closing bridges the narrow SI joint space. Ribs attached to a thoracic vertebra can
    also reach far out on both sides, but only over a few millimetres of z and with thin bone; we
    require >= 6 mm (two slices) of consecutive hits and a substantial bone area beyond 40 mm on each side.
    """
    nz, ny, nx = g.hu.shape
    st = np.ones((3, 3), dtype=bool)
    yy, xx = np.mgrid[0:ny, 0:nx]
    hit = np.zeros(nz, dtype=bool)
    area = np.zeros(nz)
    px_area = g.dx * g.dy
    for k in range(nz):
        if not t.valid[k] and not body[k].any():
            continue
        bone = ndi.binary_closing((g.hu[k] > si_hu) & body[k], st)
        lab, n = ndi.label(bone, st)
        if n == 0:
            continue
        dxf = (xx - t.x[k]) * g.dx
        dyf = (yy - t.y_canal[k]) * g.dy
        sel = (np.abs(dxf) <= SACRUM.seed_half_width_mm) & (np.abs(dyf) <= SACRUM.seed_depth_mm) & bone
        ids = np.unique(lab[sel])
        ids = ids[ids > 0]
        if ids.size == 0:
            continue
        comp = np.isin(lab, ids)
        reach_l = float(dxf[comp].max())
        reach_r = float(-dxf[comp].min())
        if min(reach_l, reach_r) < SACRUM.min_reach_mm:
            continue
        fill = ndi.binary_fill_holes(comp)
        a_l = float((fill & (dxf > SACRUM.lateral_mm)).sum()) * px_area
        a_r = float((fill & (dxf < -SACRUM.lateral_mm)).sum()) * px_area
        if min(a_l, a_r) >= SI_MIN_AREA_MM2:
            hit[k] = True
            area[k] = 0.5 * (a_l + a_r)
    if hit.any():
        # Inside the rib cage, ribs attached to a vertebra can also reach far out on both sides:
        # the sacroiliac joints are never inside the rib cage.
        ks = np.nonzero(hit)[0]
        cage = rib_cage_count(g, body, t, si_hu, slices=ks)
        hit[ks[cage[ks] >= RIB_CAGE_MIN]] = False
    if not hit.any():
        return None
    # Group hits into runs (tolerating gaps up to 10 mm, e.g. the S1 foramina level).
    z = g.z_mm
    ks = np.nonzero(hit)[0]
    runs: list[list[int]] = [[int(ks[0])]]
    for k in ks[1:]:
        if z[k] - z[runs[-1][-1]] <= SACRUM.run_gap_mm:
            runs[-1].append(int(k))
        else:
            runs.append([int(k)])
    best = None
    best_score = 0.0
    for r in runs:
        length = z[r[-1]] - z[r[0]] + _slice_thickness(z, r[0])
        if length < SACRUM.min_run_mm or len(r) < SACRUM.min_run_slices:
            continue
        s = float(area[r].sum())
        if s > best_score:
            best, best_score = r, s
    if best is None:
        return None
    return SacrumAnchor(
        z_top=float(z[best[-1]]), z_bottom=float(z[best[0]]), strength=float(area[best].mean() / 100.0)
    )


def _from_canal_mm(g: WorkGrid, t: SpineTrack) -> tuple[np.ndarray, np.ndarray]:
    """Per work slice, every pixel's offset from the canal centre in mm: (dx towards the patient's
    left, dy towards the back), broadcastable to [z, y, x]."""
    _, ny, nx = g.hu.shape
    dx = (np.arange(nx) * g.dx)[None, None, :] - (t.x * g.dx)[:, None, None]
    dy = (np.arange(ny) * g.dy)[None, :, None] - (t.y_canal * g.dy)[:, None, None]
    return dx, dy


def _slice_thickness(z: np.ndarray, k: int) -> float:
    if z.size < 2:
        return RIB.single_slice_mm
    if k + 1 < z.size:
        return float(z[k + 1] - z[k])
    return float(z[k] - z[k - 1])


def _rib_shaped(z: np.ndarray, y: np.ndarray, x: np.ndarray, max_ratio: float = RIB.bar_ratio) -> bool:
    """A rib is a thin bar: its point cloud has one long principal axis, a much shorter second one
    (curvature only) and almost no thickness. Iliac-bone fragments and cortical shells of the pelvis
    are plates (second axis > 0.35 of the first, or thick), contrast-filled kidneys are blobs.
    A 25 mm stub is a bar too, but a short one, whose width weighs more (up to 0.5 of its length)."""
    if z.size < 4 or float(z.max() - z.min()) <= 0.0:
        return False
    p = np.stack([z, y, x], axis=1).astype(np.float64)
    p -= p.mean(axis=0)
    ev = np.sort(np.linalg.eigvalsh(np.cov(p.T)))[::-1]
    sd = np.sqrt(np.clip(ev, 0.0, None))
    return bool(sd[0] > 0 and sd[1] <= max_ratio * sd[0] and sd[2] <= RIB.max_thickness_mm)


def find_ribs(
    g: WorkGrid,
    body: np.ndarray,
    t: SpineTrack,
    sacrum: SacrumAnchor | None = None,
    bone_hu: float = ANCHOR_BONE_HU,
    posterior: PosteriorProfile | None = None,
    stub: StubRule = STUB_RULE,
) -> RibAnchor | None:
    """Ribs: bone pieces outside a 30 mm cylinder around the canal whose medial end touches that
    cylinder (they start at the vertebra), behind the front of the vertebral body, that run at least
    45 mm further out, and that are thin (cross-section below ~2.5 cm^2; contrast-filled kidneys,
    the iliac bones and calcified aorta fail this). Lumbar transverse processes reach at most about
    55-60 mm from the canal, so a 75 mm reach separates them from all but hypoplastic 12th ribs.

    Shorter pieces are rudimentary ribs when they are shaped like one (:class:`StubRule`: running
    down as they go out, longer than the processes of the vertebra below); that needs the
    processes' reach (``posterior``), without it stubs are not looked for.

    Stages: cut the bone into pieces at the cylinder (:func:`_bone_beside_canal`), judge each piece
    (:func:`_rib_piece`, :func:`_medial_end`), then take the lowest rib (:func:`_lowest_rib`).
    The numbers are :class:`workers.l3.params.RibParams`.
    """
    pieces = _bone_beside_canal(g, body, t, bone_hu)
    if pieces is None:
        return None
    front = (t.y_body * g.dy) - 0.5 * t.depth_mm  # anterior surface of the body per slice, mm
    ribs: list[Rib] = []
    stubs: list[Rib] = []
    for i, sl in enumerate(ndi.find_objects(pieces.labels), start=1):
        if sl is None:
            continue
        rib = _rib_piece(g, t, pieces, i, sl, front, sacrum, posterior, stub)
        if rib is not None:
            (stubs if rib.rudimentary else ribs).append(rib)
    return _lowest_rib(ribs, stubs, stub)


class _BonePieces(NamedTuple):
    """Bone outside the cylinder around the canal as labelled 3-D pieces ([z, y, x]), every
    voxel's distance from the canal (mm), and one voxel's volume (ml)."""

    labels: np.ndarray
    r_mm: np.ndarray
    vox_ml: float


def _bone_beside_canal(g: WorkGrid, body: np.ndarray, t: SpineTrack, bone_hu: float) -> _BonePieces | None:
    """Bone in the body outside a ``RIB.canal_radius_mm`` cylinder around the canal, on slices with
    a tracked spine, cut into connected pieces (None: no bone).

    Why: a rib starts at its vertebra and runs outwards; cutting at the cylinder separates each rib
    from the spine (and from the other ribs), so each rib is one piece whose medial end touches the
    cylinder. Only slices with a tracked spine can carry a rib anchor."""
    dx, dy = _from_canal_mm(g, t)
    r = np.hypot(dy, dx).astype(np.float32)
    bone = (g.hu > bone_hu) & body & (r > RIB.canal_radius_mm)
    bone &= t.valid[:, None, None]
    lab, n = ndi.label(bone, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return None
    dz = float(np.median(np.diff(g.z_mm)) if g.nz > 1 else RIB.single_slice_mm)
    return _BonePieces(lab, r, g.dx * g.dy * dz / 1000.0)


def _rib_piece(
    g: WorkGrid,
    t: SpineTrack,
    pieces: _BonePieces,
    i: int,
    sl: tuple[slice, ...],
    front: np.ndarray,
    sacrum: SacrumAnchor | None,
    posterior: PosteriorProfile | None,
    stub: StubRule,
) -> Rib | None:
    """Piece ``i`` as a rib (``rudimentary`` for a stub), or None when it is not one.

    Why each test: a rib's medial end touches the cylinder and it reaches far out (a stub less far,
    then its shape decides); it is thin (a small cross-section for its length, not a kidney, iliac
    bone or aorta) and shaped like a bar; its medial end is a rib head (:func:`_medial_end`); and
    the 12th rib lies at least five vertebrae above the sacroiliac joints."""
    m = pieces.labels[sl] == i
    nvox = int(m.sum())
    if nvox < RIB.min_voxels:
        return None
    rr = np.broadcast_to(pieces.r_mm[:, :, :], pieces.labels.shape)[sl][m]
    r_min, r_max = float(rr.min()), float(rr.max())
    full = r_max >= RIB.canal_radius_mm + RIB.full_reach_mm
    if r_min > RIB.canal_radius_mm + RIB.medial_touch_mm or (
        not full and (posterior is None or r_max < stub.min_reach_mm)
    ):
        return None
    vol = nvox * pieces.vox_ml
    length = r_max - r_min
    if vol * 1000.0 / max(length, 1.0) > RIB.max_section_mm2 or vol > RIB.max_volume_ml:
        return None
    kk, jj, ii = np.nonzero(m)
    kk = kk + sl[0].start
    jj = jj + sl[1].start
    ii = ii + sl[2].start
    if not _rib_shaped(g.z_mm[kk], jj * g.dy, ii * g.dx, RIB.bar_ratio if full else stub.max_bar_ratio):
        return None
    medial = _medial_end(g, t, kk, jj, ii, rr <= r_min + RIB.medial_end_mm, front)
    if medial is None:
        return None
    if sacrum is not None and medial.z_mm < sacrum.z_top + RIB.above_sacrum_mm:
        return None  # T12 lies at least five vertebrae above the sacroiliac joints
    touches = bool(kk.min() == 0 or kk.max() == g.nz - 1)
    if full:
        return Rib(medial.side, medial.z_mm, length, vol, touches)
    if posterior is not None and _stub_shaped(g, kk, jj, ii, rr, medial.z_mm, medial.side, posterior, stub):
        return Rib(medial.side, medial.z_mm, length, vol, touches, rudimentary=True)
    return None


class _MedialEnd(NamedTuple):
    """A rib's medial end: its patient z (mm, the rib neck) and the patient's side."""

    z_mm: float
    side: str


def _medial_end(
    g: WorkGrid,
    t: SpineTrack,
    kk: np.ndarray,
    jj: np.ndarray,
    ii: np.ndarray,
    med: np.ndarray,
    front: np.ndarray,
) -> _MedialEnd | None:
    """The medial end (voxels ``med``) of a piece as a rib head's neighbourhood, or None.

    Why: a piece cut by the top of the image may have its head above, so its level is unknown; a
    medial end in front of the vertebral body is not a rib head (a vessel, the crus, bowel)."""
    k_med = kk[med]
    if k_med.max() >= g.nz - 1:
        return None  # cut by the top of the image: its head may lie above, so its level is unknown
    if (jj[med] * g.dy < front[k_med] - RIB.front_tol_mm).mean() > 0.5:
        return None  # medial end in front of the vertebral body: not a rib head
    z_med = float(np.median(g.z_mm[k_med]))
    side = "left" if float(np.median(ii[med] * g.dx - t.x[k_med] * g.dx)) > 0 else "right"
    return _MedialEnd(z_med, side)


def _lowest_rib(ribs: list[Rib], stubs: list[Rib], stub: StubRule) -> RibAnchor | None:
    """The lowest of the ribs found, which marks T12 (12 rib pairs assumed).

    Why: with a full rib in view a stub counts only one vertebra below it (``stub.below_lowest_rib_mm``),
    where a rudimentary 12th rib lies; the sides are compared to flag a rib seen on one side only,
    and a short lowest rib could be a transverse process."""
    if ribs:
        lo, hi = stub.below_lowest_rib_mm
        z_full = min(rb.z_medial for rb in ribs)
        stubs = [s_ for s_ in stubs if lo <= z_full - s_.z_medial <= hi]
    ribs = ribs + stubs
    if not ribs:
        return None
    lowest = min(ribs, key=lambda rb: rb.z_medial)
    per_side = {}
    for s in ("left", "right"):
        zs = [rb.z_medial for rb in ribs if rb.side == s]
        if zs:
            per_side[s] = min(zs)
    agree = len(per_side) == 2 and abs(per_side["left"] - per_side["right"]) <= RIB.sides_agree_mm
    return RibAnchor(
        z_lowest=lowest.z_medial,
        ribs=tuple(sorted(ribs, key=lambda rb: rb.z_medial)),
        sides_agree=agree,
        lowest_short=lowest.length_mm < RIB.short_rib_mm,
        lowest_rudimentary=lowest.rudimentary,
    )


def _stub_shaped(
    g: WorkGrid,
    kk: np.ndarray,
    jj: np.ndarray,
    ii: np.ndarray,
    rr: np.ndarray,
    z_med: float,
    side: str,
    posterior: PosteriorProfile,
    rule: StubRule,
) -> bool:
    """A short bar of bone is a rudimentary rib, not a transverse process, when it runs down as it
    goes out, spans enough z for that, and reaches farther than the processes of the vertebra below
    (:class:`StubRule` gives the numbers and where they come from)."""
    z = g.z_mm[kk]
    lateral = rr >= rr.max() - rule.lateral_end_mm
    if z_med - float(np.median(z[lateral])) < rule.min_descent_mm:
        return False
    if float(z.max() - z.min()) < max(rule.min_z_extent_mm, 2.0 * float(np.median(np.diff(g.z_mm)))):
        return False
    p = np.stack([z, jj * g.dy, ii * g.dx], axis=1).astype(np.float64)
    _, vecs = np.linalg.eigh(np.cov((p - p.mean(axis=0)).T))
    axis = vecs[:, -1]
    if np.degrees(np.arctan2(abs(axis[0]), float(np.hypot(axis[1], axis[2])))) < rule.min_elevation_deg:
        return False
    reach = posterior.reach_left if side == "left" else posterior.reach_right
    near, far = rule.below_mm
    below = (g.z_mm >= z_med - far) & (g.z_mm <= z_med - near) & np.isfinite(reach)
    if below.sum() < 2:
        return False  # nothing below to compare with: a stub cannot be told from a process
    reach_below = float(np.sort(reach[below])[-2])
    return float(rr.max()) >= reach_below + rule.longer_than_below_mm


def rib_cage_count(
    g: WorkGrid,
    body: np.ndarray,
    t: SpineTrack,
    bone_hu: float = ANCHOR_BONE_HU,
    slices: np.ndarray | None = None,
) -> np.ndarray:
    """Per slice, the number of separate small bone pieces near the body surface and away from the
    spine: rib cross-sections. The rib cage shows 6-20 of them on every slice down to about L1;
    at L3 there are at most the tips of the floating ribs. Used only when no rib can be followed to
    the spine (e.g. a short field of view), to recognise a purely thoracic scan."""
    nz, ny, nx = g.hu.shape
    out = np.zeros(nz, dtype=int)
    st = np.ones((3, 3), dtype=bool)
    yy, xx = np.mgrid[0:ny, 0:nx]
    px = g.dx * g.dy
    depth_px = max(1, round(RIB.cage_rim_mm / min(g.dx, g.dy)))
    for k in range(nz) if slices is None else (int(i) for i in slices):
        if not body[k].any():
            continue
        rim = body[k] & ~ndi.binary_erosion(body[k], st, iterations=depth_px)
        r = np.hypot((yy - t.y_canal[k]) * g.dy, (xx - t.x[k]) * g.dx)
        bone = (g.hu[k] > bone_hu) & rim & (r > RIB.cage_min_from_canal_mm)
        lab, n = ndi.label(bone, st)
        if n == 0:
            continue
        areas = np.bincount(lab.ravel())[1:] * px
        lo, hi = RIB.cage_section_mm2
        out[k] = int(((areas >= lo) & (areas <= hi)).sum())
    return out


@dataclass(frozen=True)
class IliacCrests:
    """Tops (z, mm) of the iliac crests: the highest bone of each iliac wing.

    The supracristal plane (Tuffier's line) usually passes through the L4 body or the L4/L5 disc,
    less often L3/L4 or L5, so the crests vote for a level with a low weight and are never an
    anchor on their own."""

    z_top: float  # the higher of the two crests (the one seen, when only one is)
    z_right: float | None
    z_left: float | None


ILIUM_MIN_ML = 4.0  # bone of one iliac wing within the field of view (a rib is < 2 ml per 45 mm)
ILIUM_MAX_THICKNESS_MM = 9.0  # a wing is a thin curved plate; a contrast-filled kidney is a blob
# The crest's cortex: the 90th HU percentile of a wing's upper 30 mm is 360-510 HU at scale 1 on
# example_ct (any slice spacing, noise or crop); an enhancing renal cortex joined to oral-contrast
# bowel (hcc_tace_seg_048, portal-venous) is a thin plate too, but stays at 215 HU. Scaled with the
# scan's bone brightness (BoneThresholds.scale) like every other bone threshold.
ILIUM_CORTEX_HU = 300.0


def find_iliac_crests(
    g: WorkGrid,
    body: np.ndarray,
    t: SpineTrack,
    ribs: RibAnchor | None,
    bone_hu: float = ANCHOR_BONE_HU,
    cortex_hu: float = ILIUM_CORTEX_HU,
) -> IliacCrests | None:
    """The iliac wings: large plate-shaped bone pieces lateral to the spine (> 45 mm from the
    canal) below the lowest rib, each side on its own; the crest is the top of each wing.

    Pieces that touch the top of the image are not wings (their top is unknown), nor are pieces
    above the lowest rib's neck (the rib cage)."""
    nz = g.nz
    if nz < 3:
        return None
    dx, dy = _from_canal_mm(g, t)
    lateral = (g.hu > bone_hu) & body & (np.hypot(dx, dy) > CREST.lateral_mm)
    dz = float(np.median(np.diff(g.z_mm)))
    vox_ml = g.dx * g.dy * dz / 1000.0
    tops: dict[str, float] = {}
    # Each side on its own: through the sacroiliac joints both wings join the sacrum.
    for side, on_side in (("left", dx > CREST.lateral_mm), ("right", dx < -CREST.lateral_mm)):
        lab, _ = ndi.label(lateral & on_side, structure=np.ones((3, 3, 3), dtype=bool))
        for i, sl in enumerate(ndi.find_objects(lab), start=1):
            if sl is None or sl[0].stop >= nz:
                continue
            z_top = _wing_top(g, lab, i, sl, dx, dy, vox_ml, cortex_hu)
            if z_top is None or (ribs is not None and z_top > ribs.z_lowest - CREST.below_rib_mm):
                continue
            tops[side] = max(tops.get(side, -np.inf), z_top)
    if not tops:
        return None
    return IliacCrests(z_top=max(tops.values()), z_right=tops.get("right"), z_left=tops.get("left"))


def _wing_top(
    g: WorkGrid,
    lab: np.ndarray,
    i: int,
    sl: tuple[slice, ...],
    dx: np.ndarray,
    dy: np.ndarray,
    vox_ml: float,
    cortex_hu: float,
) -> float | None:
    """Top z of piece ``i`` if it is shaped like an iliac wing, else None.

    A wing is large, lies lateral to the spine (> 50 mm), runs down from its crest for at least
    50 mm or to the lower edge of the image (the wing is 10-15 cm tall), has its crest no farther
    forward than 40 mm in front of the canal (the crest rises posterolaterally), and is a thin
    plate in its upper 30 mm (a contrast-filled kidney or bowel loop is a blob or a short piece)."""
    m = lab[sl] == i
    if m.sum() * vox_ml < ILIUM_MIN_ML:
        return None
    kk, jj, ii = np.nonzero(m)
    kk = kk + sl[0].start
    sdx = np.broadcast_to(dx, lab.shape)[sl][m]
    sdy = np.broadcast_to(dy, lab.shape)[sl][m]
    if np.median(np.abs(sdx)) < CREST.wing_lateral_mm:
        return None
    z = g.z_mm[kk]
    z_top, z_bot = float(z.max()), float(z.min())
    if z_top - z_bot < CREST.wing_min_height_mm and sl[0].start > 0:
        return None
    top = z >= z_top - CREST.plate_top_mm
    if float(np.median(sdy[z >= z_top - CREST.crest_top_mm])) < -CREST.crest_front_max_mm:
        return None
    p = np.stack([z[top], (jj[top] + sl[1].start) * g.dy, (ii[top] + sl[2].start) * g.dx], axis=1)
    if p.shape[0] < CREST.plate_min_voxels:
        return None
    ev = np.sort(np.linalg.eigvalsh(np.cov((p - p.mean(axis=0)).T)))
    if np.sqrt(max(float(ev[0]), 0.0)) > ILIUM_MAX_THICKNESS_MM:
        return None
    hu_top = g.hu[kk[top], jj[top] + sl[1].start, ii[top] + sl[2].start]
    if float(np.percentile(hu_top, CREST.cortex_percentile)) < cortex_hu:
        return None
    return z_top
