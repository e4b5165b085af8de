"""Test data for the L3 localiser: the shared example CT in canonical space and its variants.

Canonical space is hu[z (inferior->superior), y (anterior->posterior), x (patient right->left)] with
ascending patient z per slice. Flips and transposes of the file are no-ops there (the loader undoes
them), so the variants that matter to the localiser are resolution, noise, field of view and z
sampling. Every generator returns a Case with the reference patient z of the L3 body centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_CT = DATA / "example_ct" / "example_ct.nii.gz"
DICOM_DIR = DATA / "example_ct_dicom" / "example_ct_dicom"

# Reference facts (TotalSegmentator vertebrae_pp_refined labels; see /work/shared/data/README.md).
REF_L3_BODY = (69, 79)
REF_L3_CENTROID = 73.72
REF_BODIES = {
    "T12": (103, 111),
    "L1": (92, 102),
    "L2": (81, 91),
    "L3": (69, 79),
    "L4": (56, 66),
    "L5": (43, 55),
}
ORIG_DZ = 3.0


@dataclass
class Case:
    name: str
    hu: np.ndarray
    z_mm: np.ndarray
    spacing: tuple[float, float]
    ref_z: float | None  # patient z of the L3 body centre; None when L3 is not in the FOV
    expect_flags: tuple[str, ...] = ()
    forbid_flags: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def z_tol_mm(self) -> float:
        """One original slice (3 mm), widened by the quantisation of coarser slices, and never
        tighter than the distance to the nearest slice that exists (a gap across mid-L3)."""
        dz = float(np.median(np.diff(self.z_mm))) if self.z_mm.size > 1 else ORIG_DZ
        tol = ORIG_DZ + max(0.0, dz / 2.0 - ORIG_DZ / 2.0)
        if self.ref_z is not None and self.z_mm.size:
            tol = max(tol, float(np.abs(self.z_mm - self.ref_z).min()) + 1.0)
        return tol


_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def load_example() -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """example_ct in canonical space (as the lead's loader will produce it)."""
    if "ex" not in _CACHE:
        import nibabel

        img = nibabel.load(str(EXAMPLE_CT))
        a = np.asarray(img.dataobj)
        hu = np.ascontiguousarray(a.transpose(2, 1, 0)[:, ::-1, ::-1]).astype(np.int16)
        z = float(img.affine[2, 3]) + ORIG_DZ * np.arange(a.shape[2])
        _CACHE["ex"] = (hu, z)
    hu, z = _CACHE["ex"]
    return hu, z.copy(), (3.0, 3.0)


def z_of_slice(k: float) -> float:
    _, z, _ = load_example()
    return float(z[0] + ORIG_DZ * k)


def ref_z() -> float:
    return z_of_slice(REF_L3_CENTROID)


def resample_z(
    hu: np.ndarray, z: np.ndarray, dz: float, keep_top: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation to a new slice spacing (thin slices are smooth, thick ones average:
    for thick slices we average over the slice thickness like a scanner would). The new grid
    starts at the lowest slice, or with ``keep_top`` at the highest (a series whose last rib's
    head lies in its top slices keeps it)."""
    if keep_top:
        h, zz = resample_z(hu[::-1], -z[::-1], dz)
        return np.ascontiguousarray(h[::-1]), -zz[::-1]
    new_z = np.arange(z[0], z[-1] + 1e-6, dz)
    pos = (new_z - z[0]) / (z[1] - z[0])
    src = hu.astype(np.float32)
    if dz > (z[1] - z[0]):
        src = ndi.uniform_filter1d(src, size=max(1, round(dz / (z[1] - z[0]))), axis=0, mode="nearest")
    k0 = np.clip(np.floor(pos).astype(int), 0, hu.shape[0] - 1)
    k1 = np.clip(k0 + 1, 0, hu.shape[0] - 1)
    w = (pos - k0).astype(np.float32)[:, None, None]
    out = src[k0] * (1 - w) + src[k1] * w
    return np.round(out).astype(np.int16), new_z


def resample_inplane(
    hu: np.ndarray, spacing: tuple[float, float], new: float
) -> tuple[np.ndarray, tuple[float, float]]:
    fy, fx = spacing[0] / new, spacing[1] / new
    out = ndi.zoom(hu.astype(np.float32), (1.0, fy, fx), order=1, mode="nearest")
    sp = (spacing[0] * hu.shape[1] / out.shape[1], spacing[1] * hu.shape[2] / out.shape[2])
    return np.round(out).astype(np.int16), sp


def add_noise(hu: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(hu + rng.normal(0.0, sigma, hu.shape)).astype(np.int16)


def crop(hu: np.ndarray, z: np.ndarray, k0: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep canonical slices k0..k1 inclusive."""
    return np.ascontiguousarray(hu[k0 : k1 + 1]), z[k0 : k1 + 1].copy()


def uneven(hu: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop every 5th slice and a 12 mm block far from L3 (slices 95-98): uneven spacing with a gap."""
    keep = np.ones(hu.shape[0], dtype=bool)
    keep[::5] = False
    keep[95:99] = False
    keep[[73, 74, 75]] = True
    return np.ascontiguousarray(hu[keep]), z[keep].copy()


def load_dicom_canonical() -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Decode the 20-slice DICOM series ourselves (until the loader exists): axial HFS with
    IOP 1,0,0,0,1,0, so rows are A->P and columns R->L already; sort by IPP z."""
    import pydicom

    dss = [pydicom.dcmread(str(p)) for p in sorted(DICOM_DIR.iterdir()) if p.is_file()]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack(
        [d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss]
    ).astype(np.int16)
    z = np.array([float(d.ImagePositionPatient[2]) for d in dss])
    sp = tuple(float(v) for v in dss[0].PixelSpacing)
    return hu, z, (sp[0], sp[1])


def build_cases() -> list[Case]:
    """Every validation case for the example CT (the DICOM case is separate: it needs pydicom)."""
    hu, z, sp = load_example()
    rz = ref_z()
    cases = [Case("original 3 mm", hu, z, sp, rz, forbid_flags=("only_rib_anchor", "only_sacrum_anchor"))]
    h1, z1 = resample_z(hu, z, 1.0)
    cases.append(Case("resampled z 1 mm", h1, z1, sp, rz))
    h5, z5 = resample_z(hu, z, 5.0)
    cases.append(Case("resampled z 5 mm", h5, z5, sp, rz))
    h07, sp07 = resample_inplane(hu, sp, 0.7)
    cases.append(Case("in-plane 0.7 mm", h07, z.copy(), sp07, rz))
    cases.append(Case("noise sigma 20 HU", add_noise(hu, 20.0), z.copy(), sp, rz))
    hr, zr = crop(hu, z, 60, 111)
    cases.append(
        Case("pelvis cropped (slices 60-111, ribs only)", hr, zr, sp, rz, expect_flags=("only_rib_anchor",))
    )
    hs, zs = crop(hu, z, 0, 96)
    cases.append(
        Case("ribs cropped (slices 0-96, sacrum only)", hs, zs, sp, rz, expect_flags=("only_sacrum_anchor",))
    )
    hu_u, zu = uneven(hu, z)
    cases.append(Case("uneven z with a 15 mm gap", hu_u, zu, sp, rz))
    hc, zc = crop(hu, z, 82, 111)
    cases.append(Case("crop 82-111 (T11-L2, no L3)", hc, zc, sp, None))
    hl, zl = crop(hu, z, 0, 62)
    cases.append(Case("crop 0-62 (pelvis-L4, no L3)", hl, zl, sp, None))
    return cases


def add_aorta(hu: np.ndarray, spacing: tuple[float, float], hu_value: float = 300.0) -> np.ndarray:
    """Simulate arterial-phase contrast: a 24 mm tube of `hu_value` HU just anterior-left of the
    vertebral bodies along the whole scan (where the aorta lies), touching the spine."""
    out = hu.copy()
    ny, nx = hu.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    # example_ct: vertebral body centre at about row 57, column 63 (3 mm pixels) in the lumbar spine.
    cy, cx = 57 * 3.0 - 22.0, 63 * 3.0 + 14.0
    disk = ((yy * spacing[0] - cy) ** 2 + (xx * spacing[1] - cx) ** 2) <= 12.0**2
    out[:, disk] = np.int16(hu_value)
    return out


def shift_x(hu: np.ndarray, spacing: tuple[float, float], amplitude_mm: float) -> np.ndarray:
    """Scoliosis-like lateral displacement: slice k shifted by amplitude*sin(pi*k/nz) in x."""
    out = np.empty_like(hu)
    nz = hu.shape[0]
    for k in range(nz):
        s = round(amplitude_mm * np.sin(np.pi * k / max(nz - 1, 1)) / spacing[1])
        out[k] = np.roll(hu[k], s, axis=1)
        if s > 0:
            out[k, :, :s] = -1024
        elif s < 0:
            out[k, :, s:] = -1024
    return out


def rotate_inplane(hu: np.ndarray, degrees: float) -> np.ndarray:
    """Patient rotated on the table (in-plane rotation about the image centre)."""
    out = ndi.rotate(hu.astype(np.float32), degrees, axes=(2, 1), reshape=False, order=1, cval=-1024.0)
    return np.round(out).astype(np.int16)


def add_arms(hu: np.ndarray, spacing: tuple[float, float], touching: bool = True) -> np.ndarray:
    """Arms down at the sides: the image is widened by 80 mm each side and two 'arms' (muscle,
    fat and a humerus with a cortical ring) are placed against (or 10 mm away from) the flanks."""
    pad = round(80.0 / spacing[1])
    out = np.full((hu.shape[0], hu.shape[1], hu.shape[2] + 2 * pad), -1024, dtype=np.int16)
    out[:, :, pad:-pad] = hu
    ny, nx = out.shape[1:]
    yy, xx = np.mgrid[0:ny, 0:nx]
    ymm, xmm = yy * spacing[0], xx * spacing[1]
    body_rows = np.nonzero((hu[hu.shape[0] // 2] > -500).any(axis=1))[0]
    cy = 0.5 * (body_rows[0] + body_rows[-1]) * spacing[0]
    gap = 0.0 if touching else 10.0
    for cx in (pad * spacing[1] - 38.0 - gap, (nx - pad) * spacing[1] + 38.0 + gap):
        r = np.hypot(ymm - cy, xmm - cx)
        arm = r <= 40.0
        out[:, arm] = np.where(r[arm] > 34.0, -100, 50).astype(np.int16)
        out[:, (r <= 12.0) & (r > 8.0)] = 800
        out[:, r <= 8.0] = 80
    return out


# ---------------------------------------------------------------------------------------------
# Anchor cues: the TotalSegmentator `total` labels of example_ct, rudimentary 12th ribs, and crops
# that leave the localiser one anchor (ribs only, iliac crests only). The labels are only used to
# make the test images; the localiser never sees them.
# ---------------------------------------------------------------------------------------------

EXAMPLE_LABELS = DATA / "example_ct" / "labels" / "example_seg_fast_force_split.nii.gz"
CUE_BONE_HU = 180.0  # bone threshold of the localiser's anchors (workers.l3.anchors.ANCHOR_BONE_HU)
# Crest-only crop, canonical slices inclusive (measured on example_ct, see cue_cases()):
# hip_left / hip_right labels top out at slice 60 (iliac crests); the sacrum label ends at slice 51;
# the localiser's sacroiliac_bridge_top is slice 47 on the full CT; the lowest rib label voxels
# (rib_left_11 / rib_right_11 tips) are at slice 85 (the bone at x 88-94, slices 78-84 is a
# calcification inside kidney_left). So 52-84 holds L3, L4 and the crests but no SI joint and no rib.
CREST_ONLY_SLICES = (52, 84)
_LABEL_CACHE: dict[str, np.ndarray] = {}
_TABLE_CACHE: dict[str, dict[str, int]] = {}


def label_table() -> dict[str, int]:
    """Name -> value of the `total` class map, read from the XML label table that the label file
    carries in its NIfTI header extension, so that no label value is typed in from memory (the
    value of a name differs between TotalSegmentator versions and tasks)."""
    if "total" not in _TABLE_CACHE:
        import xml.etree.ElementTree as ET

        import nibabel

        img = nibabel.load(str(EXAMPLE_LABELS))
        if not isinstance(img, nibabel.Nifti1Image):
            raise RuntimeError(f"{EXAMPLE_LABELS} is not a NIfTI-1 image")
        table: dict[str, int] = {}
        for ext in img.header.extensions:
            content = ext.get_content()
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
            if "<LabelTable>" not in text:
                continue
            root = ET.fromstring(text.strip().rstrip("\x00").strip())
            for el in root.iter("Label"):
                table[(el.text or "").strip()] = int(el.attrib["Key"])
        if not table:
            raise RuntimeError(f"{EXAMPLE_LABELS} has no XML label table")
        _TABLE_CACHE["total"] = table
    return dict(_TABLE_CACHE["total"])


def load_example_labels() -> np.ndarray:
    """The `total` label map of example_ct in canonical space, with exactly the transpose and flips of
    load_example() (both files share one RAS grid), so labels[k, y, x] describes hu[k, y, x].

    The orientation is checked on load because a wrong flip would silently move the ribs and the
    iliac crests: L3 (whole vertebra) must span slices 65-79, spine labels must lie on bone
    (HU > 150) far more often than the average voxel, and the left hip must lie at larger x
    (x runs patient right -> left)."""
    if "total" not in _LABEL_CACHE:
        import nibabel

        img = nibabel.load(str(EXAMPLE_LABELS))
        if not isinstance(img, nibabel.Nifti1Image):
            raise RuntimeError(f"{EXAMPLE_LABELS} is not a NIfTI-1 image")
        a = np.asarray(img.dataobj)
        lab = np.ascontiguousarray(a.transpose(2, 1, 0)[:, ::-1, ::-1]).astype(np.uint8)
        hu, _, _ = load_example()
        if lab.shape != hu.shape:
            raise RuntimeError(f"label grid {lab.shape} differs from the CT grid {hu.shape}")
        t = label_table()
        ks = np.nonzero((lab == t["vertebrae_L3"]).any(axis=(1, 2)))[0]
        if (int(ks.min()), int(ks.max())) != (65, 79):
            raise RuntimeError(f"L3 label at slices {ks.min()}-{ks.max()}, expected 65-79: orientation?")
        spine = np.isin(lab, [v for n, v in t.items() if n.startswith("vertebrae_") or n == "sacrum"])
        on_bone = float((hu[spine] > 150).mean())
        if on_bone < 0.4 or on_bone < 10.0 * float((hu > 150).mean()):
            raise RuntimeError(f"only {on_bone:.0%} of spine label voxels are bone: labels misaligned")
        x_left = np.nonzero(lab == t["hip_left"])[2].mean()
        x_right = np.nonzero(lab == t["hip_right"])[2].mean()
        if not x_left > x_right:
            raise RuntimeError("hip_left is not at larger x than hip_right: x flipped")
        _LABEL_CACHE["total"] = lab
    return _LABEL_CACHE["total"].copy()


@dataclass
class RibShortening:
    """What shorten_ribs() did, for checks and reports."""

    hu: np.ndarray
    rib_number: int  # 12 unless the 12th pair is absent
    sides: tuple[str, ...]  # "left" / "right" ribs of that number that were found and cut
    length_mm: dict[str, float]  # geodesic length of each rib before the cut (medial end -> tip)
    kept: np.ndarray  # bool: rib voxels kept (the stub)
    removed: np.ndarray  # bool: rib label voxels removed
    filled: np.ndarray  # bool: voxels replaced (removed + their partial-volume rim, other bones excluded)
    bone_before: int  # voxels > CUE_BONE_HU in `filled` before
    bone_after: int  # ... and after (0 when nothing bright is left)
    bone_near_before: int  # voxels > CUE_BONE_HU within 2 voxels of the removed part, other bones excluded
    bone_near_after: int


def _geodesic_mm(
    mask: np.ndarray, seed: tuple[int, int, int], spacing: tuple[float, float, float]
) -> np.ndarray:
    """Shortest-path length (mm) inside `mask` (26-connected voxel steps) from `seed` to every mask
    voxel, as a flat array in np.argwhere(mask) order. Voxels not connected to the seed (a fragment of
    the label) get their straight-line distance, a lower bound of the length along the rib."""
    import itertools

    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    pts = np.argwhere(mask)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[tuple(pts.T)] = np.arange(len(pts))
    sp = np.asarray(spacing, dtype=np.float64)
    rows, cols, wts = [], [], []
    for off in itertools.product((-1, 0, 1), repeat=3):
        if off == (0, 0, 0):
            continue
        q = pts + np.asarray(off)
        ok = np.all((q >= 0) & (q < np.asarray(mask.shape)), axis=1)
        j = np.full(len(pts), -1, dtype=np.int64)
        j[ok] = index[tuple(q[ok].T)]
        good = j >= 0
        rows.append(np.nonzero(good)[0])
        cols.append(j[good])
        wts.append(np.full(int(good.sum()), float(np.linalg.norm(np.asarray(off) * sp))))
    n = len(pts)
    graph = coo_matrix((np.concatenate(wts), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    s = int(index[seed])
    d = np.asarray(dijkstra(graph.tocsr(), directed=False, indices=s))
    far = ~np.isfinite(d)
    d[far] = np.linalg.norm((pts[far] - np.asarray(seed)) * sp, axis=1)
    return d


def _soft_tissue_fill(hu: np.ndarray, fill: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """HU to put into `fill`: per voxel, the median of the soft tissue around it (neighbourhood
    growing from 5x5x5 voxels until >= 10 usable voxels), skipping bone, air/lung (< -200 HU) and
    the voxels being replaced, so the rib disappears into the muscle and fat it lay in."""
    nz, ny, nx = hu.shape
    usable = ~exclude & ~fill & (hu > -200) & (hu <= 150)
    out = np.empty(int(fill.sum()), dtype=np.int16)
    for i, (k, y, x) in enumerate(np.argwhere(fill)):
        val = -50.0  # fat/muscle mixture if nothing usable is found
        for r in (2, 3, 4, 6):
            sl = (
                slice(max(0, k - r), min(nz, k + r + 1)),
                slice(max(0, y - r), min(ny, y + r + 1)),
                slice(max(0, x - r), min(nx, x + r + 1)),
            )
            v = hu[sl][usable[sl]]
            if v.size >= 10:
                val = float(np.median(v))
                break
        out[i] = np.int16(round(val))
    return out


def shorten_ribs(
    hu: np.ndarray,
    labels: np.ndarray,
    keep_mm: float = 25.0,
    spacing_zyx_mm: tuple[float, float, float] = (ORIG_DZ, 3.0, 3.0),
) -> RibShortening:
    """Turn the lowest rib pair into rudimentary ribs (a common variant: short 12th ribs that a
    rib-based count can mistake for L1 transverse processes, or miss).

    The lowest pair is rib_*_12 if the label map has it, otherwise the highest-numbered rib present.
    For each side, the medial end is the rib voxel nearest to the vertebrae (the costovertebral
    joint); the rib is kept within `keep_mm` measured along the rib (geodesic inside its label) and
    the rest is replaced by the local soft-tissue median, and a one-voxel rim around it (partial
    volume the label misses) is capped at that median. Other bones and the stub are never touched."""
    t = label_table()
    number = next(
        (n for n in range(12, 0, -1) if any((labels == t[f"rib_{s}_{n}"]).any() for s in ("left", "right"))),
        None,
    )
    if number is None:
        raise ValueError("no rib labels in the label map")
    bone_names = ("vertebrae_", "rib_", "sacrum", "hip_", "femur_", "sternum", "costal_", "scapula_",
                  "clavicula_", "humerus_", "skull")  # fmt: skip
    bone_labels = np.isin(labels, [v for nm, v in t.items() if nm.startswith(bone_names)])
    vert = np.isin(labels, [v for nm, v in t.items() if nm.startswith("vertebrae_") or nm == "sacrum"])
    if not vert.any():
        vert = labels == t["spinal_cord"]
    if not vert.any():
        raise ValueError("no vertebra or spinal cord label to find the medial end of the ribs from")
    to_vert = ndi.distance_transform_edt(~vert, sampling=spacing_zyx_mm)

    kept = np.zeros(hu.shape, dtype=bool)
    removed = np.zeros(hu.shape, dtype=bool)
    sides: list[str] = []
    length: dict[str, float] = {}
    for side in ("left", "right"):
        rib = labels == t[f"rib_{side}_{number}"]
        if not rib.any():
            continue
        pts = np.argwhere(rib)
        seed = tuple(int(v) for v in pts[int(np.argmin(to_vert[rib]))])
        d = _geodesic_mm(rib, (seed[0], seed[1], seed[2]), spacing_zyx_mm)
        sides.append(side)
        length[side] = float(d.max())
        keep = d <= keep_mm
        kept[tuple(pts[keep].T)] = True
        removed[tuple(pts[~keep].T)] = True

    # The rim: voxels next to a removed voxel whose nearest rib voxel is a removed one (not the stub).
    rib_all = kept | removed
    _, (iz, iy, ix) = ndi.distance_transform_edt(~rib_all, sampling=spacing_zyx_mm, return_indices=True)
    nearest_removed = removed[iz, iy, ix]
    rim = ndi.binary_dilation(removed, np.ones((3, 3, 3), dtype=bool)) & ~rib_all & nearest_removed
    protect = (bone_labels & ~removed) | kept
    filled = (removed | rim) & ~protect

    out = hu.copy()
    soft = _soft_tissue_fill(hu, filled, bone_labels | (hu > 150))
    # Rib voxels take the soft-tissue value; rim voxels only lose their brightening (min), so lung
    # or fat next to the rib stays lung or fat instead of turning into muscle.
    out[filled] = np.where(removed[filled], soft, np.minimum(hu[filled], soft))
    near = ndi.binary_dilation(removed, np.ones((3, 3, 3), dtype=bool), iterations=2) & ~protect
    return RibShortening(
        hu=out,
        rib_number=number,
        sides=tuple(sides),
        length_mm=length,
        kept=kept,
        removed=removed,
        filled=filled,
        bone_before=int((hu[filled] > CUE_BONE_HU).sum()),
        bone_after=int((out[filled] > CUE_BONE_HU).sum()),
        bone_near_before=int((hu[near] > CUE_BONE_HU).sum()),
        bone_near_after=int((out[near] > CUE_BONE_HU).sum()),
    )


def shorten_lowest_ribs(hu: np.ndarray, labels: np.ndarray, keep_mm: float = 25.0) -> np.ndarray:
    """A copy of `hu` whose lowest rib pair is cut to `keep_mm` stubs (see shorten_ribs()); warns
    when the lowest pair present is not the 12th, because then the case tests something else."""
    res = shorten_ribs(hu, labels, keep_mm)
    if res.rib_number != 12 or len(res.sides) != 2:
        import warnings

        warnings.warn(f"shortened rib pair {res.rib_number} ({', '.join(res.sides)})", stacklevel=2)
    return res.hu


def cue_cases() -> list[Case]:
    """Cases where only one counting cue is left, to see how the localiser copes without the other:
    short 12th ribs (rib anchor weakened), ribs without pelvis, crests without ribs or SI joints."""
    hu, z, sp = load_example()
    rz = ref_z()
    h12 = shorten_lowest_ribs(hu, load_example_labels(), keep_mm=25.0)
    cases = [Case("12th ribs shortened to 25 mm", h12, z.copy(), sp, rz)]
    hb, zb = crop(h12, z, 60, 111)
    cases.append(Case("12th ribs shortened, pelvis cropped (rib-only)", hb, zb, sp, rz))
    hb5, zb5 = resample_z(hb, zb, 5.0)
    cases.append(Case("12th ribs shortened, rib-only at 5 mm", hb5, zb5, sp, rz))
    hp, zp = crop(hu, z, 60, 111)
    h5, z5 = resample_z(hp, zp, 5.0)
    cases.append(Case("rib-only at 5 mm", h5, z5, sp, rz))
    k0, k1 = CREST_ONLY_SLICES
    hd, zd = crop(hu, z, k0, k1)
    cases.append(Case(f"crest-only (slices {k0}-{k1})", hd, zd, sp, rz))
    hd5, zd5 = resample_z(hd, zd, 5.0)
    cases.append(Case("crest-only at 5 mm", hd5, zd5, sp, rz))
    return cases
