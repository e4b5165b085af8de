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

DATA = Path("/work/shared/data")
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


def resample_z(hu: np.ndarray, z: np.ndarray, dz: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation to a new slice spacing (thin slices are smooth, thick ones average:
    for thick slices we average over the slice thickness like a scanner would)."""
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
