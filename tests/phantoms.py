"""Synthetic abdomen-like phantoms with known tissue areas and HU, for segmenter and metric tests.

Why: real CT has no exact truth; phantoms do. Each phantom is drawn on a 4x finer grid and
block-averaged, so boundary pixels carry realistic partial volume; Gaussian noise is added after.
Compartments (outside in): air, skin, SAT, muscle wall ring, cavity (VAT fat, soft-tissue "organs"
and a gas-filled "bowel" loop), vertebral body with cortex and spinal canal, paraspinal muscles
with IMAT streaks, psoas beside the vertebra. Truth areas are the exact analytic/fine-grid areas of
each compartment in cm²; truth mean HU is the value the compartment was filled with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

SUPERSAMPLE = 4
HU = {
    "air": -1000.0,
    "skin": 40.0,
    "sat": -105.0,
    "muscle": 45.0,
    "vat": -100.0,
    "organ": 35.0,
    "gas": -1000.0,
    "bowel_wall": 30.0,
    "bone_cortex": 700.0,
    "bone_marrow": 180.0,
    "canal": 15.0,
    "imat": -95.0,
    "table": 150.0,
    "fluid": 10.0,
}


@dataclass
class Phantom:
    hu: npt.NDArray[np.float32]
    spacing_yx_mm: tuple[float, float]
    truth_area_cm2: dict[str, float]
    truth_mean_hu: dict[str, float]
    fine_labels: npt.NDArray[np.uint8] = field(repr=False)
    ideal_area: dict[str, float] = field(default_factory=dict)
    ideal_mean_hu: dict[str, float] = field(default_factory=dict)


# fine-grid class ids
AIR, SKIN, SAT, SM, VAT, ORGAN, GAS, BWALL, CORTEX, MARROW, CANAL, IMAT, TABLE, FLUID = range(14)
_CLASS_HU = {
    AIR: "air",
    SKIN: "skin",
    SAT: "sat",
    SM: "muscle",
    VAT: "vat",
    ORGAN: "organ",
    GAS: "gas",
    BWALL: "bowel_wall",
    CORTEX: "bone_cortex",
    MARROW: "bone_marrow",
    CANAL: "canal",
    IMAT: "imat",
    TABLE: "table",
    FLUID: "fluid",
}


def _ellipse(
    yy: npt.NDArray[np.float64],
    xx: npt.NDArray[np.float64],
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    wobble: float = 0.0,
    phase: float = 0.0,
    lobes: int = 5,
) -> npt.NDArray[np.bool_]:
    """Ellipse, optionally with a smooth radial wobble (irregular, still star-shaped)."""
    ang = np.arctan2((yy - cy) / ry, (xx - cx) / rx)
    r = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    lim = 1.0 + wobble * np.sin(lobes * ang + phase) + 0.5 * wobble * np.sin((lobes + 2) * ang + 2 * phase)
    out: npt.NDArray[np.bool_] = r <= lim
    return out


def make_abdomen(
    spacing_yx_mm: tuple[float, float] = (0.8, 0.8),
    shape: tuple[int, int] = (512, 512),
    *,
    noise_sd: float = 0.0,
    irregular: bool = False,
    seed: int = 0,
    offset_mm: tuple[float, float] = (0, 0),
    sat_mm: float = 25.0,
    with_table: bool = True,
    arms: bool = False,
    enhanced: bool = False,
    ascites_mm: float = 0.0,
) -> Phantom:
    """Abdomen-like phantom in the canonical orientation (row = anterior→posterior, col = right→left)."""
    dy, dx = spacing_yx_mm
    f = SUPERSAMPLE
    H, W = shape[0] * f, shape[1] * f
    # fine-grid pixel centres in mm, origin at image centre (+ offset)
    yy = ((np.arange(H) + 0.5) / f - shape[0] / 2) * dy - offset_mm[0]
    xx = ((np.arange(W) + 0.5) / f - shape[1] / 2) * dx - offset_mm[1]
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    wob = 0.04 if irregular else 0.0
    lab = np.full((H, W), AIR, dtype=np.uint8)
    # trunk: 320 x 230 mm outer ellipse for 25 mm SAT; more SAT makes the trunk larger (obesity),
    # not the cavity smaller, so the organs keep their place inside the muscle wall
    ry, rx = 115.0 + (sat_mm - 25.0), 160.0 + (sat_mm - 25.0)
    body = _ellipse(Y, X, 0, 0, ry, rx, wob, 0.3)
    skin_in = _ellipse(Y, X, 0, 0, ry - 2.5, rx - 2.5, wob, 0.3)
    wall_out = _ellipse(Y, X, 0, 0, ry - 2.5 - sat_mm, rx - 2.5 - sat_mm, wob, 0.3)
    wall_in = _ellipse(Y, X, 0, 0, ry - 2.5 - sat_mm - 12.0, rx - 2.5 - sat_mm - 12.0, wob * 1.2, 1.1)
    lab[body] = SKIN
    lab[skin_in] = SAT
    lab[wall_out] = SM
    lab[wall_in] = VAT
    # posterior block: paraspinal muscles behind the spine, inside the wall
    vy = ry - 2.5 - sat_mm - 12.0 - 55.0  # vertebral body centre row (mm, +y posterior); = 20.5
    lab[_ellipse(Y, X, vy + 40, 0, 26, 52, wob, 2.0) & wall_out] = SM  # paraspinal block
    # IMAT streaks inside the paraspinals
    lab[_ellipse(Y, X, vy + 46, -30, 9, 13)] = IMAT
    lab[_ellipse(Y, X, vy + 42, 30, 8, 12)] = IMAT
    # psoas beside the vertebral body, touching it and the paraspinal block
    lab[_ellipse(Y, X, vy + 8, -27, 16, 14, wob, 0.7)] = SM
    lab[_ellipse(Y, X, vy + 8, 27, 16, 14, wob, 1.7)] = SM
    # vertebral body, posterior arch and canal
    lab[_ellipse(Y, X, vy, 0, 16, 20)] = CORTEX
    lab[_ellipse(Y, X, vy, 0, 14, 18)] = MARROW
    arch = _ellipse(Y, X, vy + 26, 0, 13, 12) & ~_ellipse(Y, X, vy + 26, 0, 8, 7)
    lab[arch] = CORTEX
    lab[_ellipse(Y, X, vy + 26, 0, 8, 7)] = CANAL
    lab[_ellipse(Y, X, vy + 44, 0, 10, 3)] = CORTEX  # spinous process
    # organs in the cavity (kidney-like blobs with fat rim, a liver-like mass) and a gas-filled loop
    lab[_ellipse(Y, X, vy - 5, -75, 28, 20, wob, 0.2)] = ORGAN
    lab[_ellipse(Y, X, vy - 5, 75, 28, 20, wob, 0.9)] = ORGAN
    lab[_ellipse(Y, X, -30, 40, 25, 30, wob, 1.3)] = ORGAN
    loop = _ellipse(Y, X, -45, -40, 16, 20)
    lab[loop] = BWALL
    lab[_ellipse(Y, X, -45, -40, 13, 17)] = GAS
    if ascites_mm > 0:
        # free fluid along the anterior and lateral inner wall (liver patients), replacing VAT there
        depth = 2.5 + sat_mm + 12.0 + ascites_mm
        inner_fluid = _ellipse(Y, X, 0, 0, ry - depth, rx - depth, wob * 1.2, 1.1)
        fluid = (lab == VAT) & ~inner_fluid & (vy - 10 > Y)
        lab[fluid] = FLUID
    if with_table:
        lab[(ry + 12 < Y) & (ry + 22 > Y) & (np.abs(X) < 200)] = TABLE
    if arms:
        for sx in (-1, 1):
            arm = _ellipse(Y, X, 0, sx * (rx + 45), 45, 40)
            lab[arm] = SAT
            lab[_ellipse(Y, X, 0, sx * (rx + 45), 33, 28)] = SM
            lab[_ellipse(Y, X, 0, sx * (rx + 45), 10, 10)] = CORTEX
    values = dict(HU)
    if enhanced:  # portal-venous phase: muscle +10 HU, organs and bowel wall much brighter
        values.update(muscle=HU["muscle"] + 10.0, organ=150.0, bowel_wall=90.0)
    fine_hu = np.zeros((H, W), dtype=np.float32)
    for cid, name in _CLASS_HU.items():
        fine_hu[lab == cid] = values[name]
    hu = fine_hu.reshape(shape[0], f, shape[1], f).mean(axis=(1, 3))
    if noise_sd > 0:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise_sd, hu.shape).astype(np.float32)
    fine_area_cm2 = dy * dx / (f * f) / 100.0
    trunk = np.abs(X) < rx
    truth_area = {
        "skeletal_muscle": float(((lab == SM) & trunk).sum() * fine_area_cm2),
        "imat": float((lab == IMAT).sum() * fine_area_cm2),
        "vat": float((lab == VAT).sum() * fine_area_cm2),
        "sat": float(((lab == SAT) & trunk).sum() * fine_area_cm2),
    }
    truth_hu = {"skeletal_muscle": values["muscle"], "imat": HU["imat"], "vat": HU["vat"], "sat": HU["sat"]}
    coarse_x = np.abs(((np.arange(shape[1]) + 0.5) - shape[1] / 2) * dx - offset_mm[1]) < rx
    ideal_area, ideal_hu = _ideal(lab, hu, spacing_yx_mm, coarse_x[None, :])
    return Phantom(
        hu.astype(np.float32),
        spacing_yx_mm,
        truth_area,
        truth_hu,
        lab,
        ideal_area=ideal_area,
        ideal_mean_hu=ideal_hu,
    )


def make_disk(
    radius_mm: float,
    spacing_yx_mm: tuple[float, float] = (0.7, 0.7),
    shape: tuple[int, int] = (512, 512),
    value: float = 40.0,
) -> tuple[npt.NDArray[np.float32], float]:
    """A uniform disk in air (for circumference tests); returns (hu, true perimeter in cm)."""
    dy, dx = spacing_yx_mm
    f = SUPERSAMPLE
    yy = ((np.arange(shape[0] * f) + 0.5) / f - shape[0] / 2) * dy
    xx = ((np.arange(shape[1] * f) + 0.5) / f - shape[1] / 2) * dx
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    fine = np.where(np.hypot(Y, X) <= radius_mm, value, -1000.0).astype(np.float32)
    hu = fine.reshape(shape[0], f, shape[1], f).mean(axis=(1, 3))
    return hu.astype(np.float32), 2 * np.pi * radius_mm / 10.0


def make_concentric(
    spacing_yx_mm: tuple[float, float] = (0.8, 0.8),
    shape: tuple[int, int] = (512, 512),
    *,
    noise_sd: float = 0.0,
    seed: int = 0,
    irregular: bool = False,
) -> Phantom:
    """Skin / SAT / muscle ring / VAT, nothing else: truth is the exact (fine-grid) area of each ring."""
    dy, dx = spacing_yx_mm
    f = SUPERSAMPLE
    H, W = shape[0] * f, shape[1] * f
    yy = ((np.arange(H) + 0.5) / f - shape[0] / 2) * dy
    xx = ((np.arange(W) + 0.5) / f - shape[1] / 2) * dx
    Y, X = np.meshgrid(yy, xx, indexing="ij")
    wob = 0.05 if irregular else 0.0
    lab = np.full((H, W), AIR, dtype=np.uint8)
    lab[_ellipse(Y, X, 0, 0, 120, 150, wob, 0.4)] = SKIN
    lab[_ellipse(Y, X, 0, 0, 117.5, 147.5, wob, 0.4)] = SAT
    lab[_ellipse(Y, X, 0, 0, 95, 125, wob, 0.4)] = SM
    lab[_ellipse(Y, X, 0, 0, 80, 110, wob, 0.4)] = VAT
    fine_hu = np.zeros((H, W), dtype=np.float32)
    for cid, name in _CLASS_HU.items():
        fine_hu[lab == cid] = HU[name]
    hu = fine_hu.reshape(shape[0], f, shape[1], f).mean(axis=(1, 3))
    if noise_sd > 0:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise_sd, hu.shape).astype(np.float32)
    a = dy * dx / (f * f) / 100.0
    truth_area = {
        "skeletal_muscle": float((lab == SM).sum() * a),
        "imat": 0.0,
        "vat": float((lab == VAT).sum() * a),
        "sat": float((lab == SAT).sum() * a),
    }
    truth_hu = {"skeletal_muscle": HU["muscle"], "imat": HU["imat"], "vat": HU["vat"], "sat": HU["sat"]}
    ideal_area, ideal_hu = _ideal(lab, hu, spacing_yx_mm, np.ones(shape, bool))
    return Phantom(
        hu.astype(np.float32),
        spacing_yx_mm,
        truth_area,
        truth_hu,
        lab,
        ideal_area=ideal_area,
        ideal_mean_hu=ideal_hu,
    )


def _ideal(
    lab: npt.NDArray[np.uint8],
    hu: npt.NDArray[np.float32],
    spacing_yx_mm: tuple[float, float],
    keep: npt.NDArray[np.bool_],
) -> tuple[dict[str, float], dict[str, float]]:
    """What a perfect compartment segmentation + the HU window measures on the coarse grid.

    A pixel belongs to a compartment when most of its area does; it counts when its (noisy,
    partial-volume) HU is inside the tissue's window (tomovision-l3@1).
    """
    f = SUPERSAMPLE
    h, w = hu.shape
    px_area = spacing_yx_mm[0] * spacing_yx_mm[1] / 100.0
    area: dict[str, float] = {}
    mean: dict[str, float] = {}
    for key, cid, (lo, hi) in (
        ("skeletal_muscle", SM, (-29, 150)),
        ("imat", IMAT, (-190, -30)),
        ("vat", VAT, (-150, -50)),
        ("sat", SAT, (-190, -30)),
    ):
        maj = ((lab == cid).reshape(h, f, w, f).mean(axis=(1, 3)) > 0.5) & keep
        m = maj & (hu >= lo) & (hu <= hi)
        area[key] = float(m.sum() * px_area)
        mean[key] = float(hu[m].mean()) if m.any() else float("nan")
    return area, mean
