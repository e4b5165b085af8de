"""The segmenter answers for the patient, not for the image grid: metamorphic checks on the real CT.

The analysis will meet CTs nobody here has seen, at other pixel sizes, positions in the field of
view and with the patient lying slightly rolled. Without truth for those, the checks compare the
engine with itself on transformed copies of example_ct's own slices (mid-L3 = 74, L1 = 86, T12/L1
= 95): mirrored left-right must give the mirrored labels exactly; moved within a larger field of
view, the same labels; resampled to 1 mm pixels (the 3 mm slice upsampled), labels that agree with
the 3 mm ones after majority downsampling; rolled by ±5°, areas within 5 %.
The real CT at clinical resolution, hcc_tace_seg_048 mid-L3 (0.7 mm), sampled on grids of 0.8-3 mm:
areas within 3 %.

A slice turned by 8 degrees or more from upright is segmented in the patient's own frame
(workers/tissues/frame.py) and mapped back; the rotation tests up to +-15 degrees at mid-L3 are in
tests/test_tissues_frame.py. Known limit: ct 95 (T12/L1) rolled by -5 degrees lies at -9 degrees,
is set upright, and then gains ~5 % muscle from the posterior right liver (marked xfail below).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi

from tests.conftest import validation_script
from workers.tissues.engine import LABEL_SAT, LABEL_SM, LABEL_VAT, get_segmenter
from workers.tissues.presets import get_preset

SLICES = (74, 86, 95)
SPACING_MM = 3.0
TISSUES = {"skeletal_muscle": LABEL_SM, "vat": LABEL_VAT, "sat": LABEL_SAT}


@lru_cache(maxsize=1)
def _ct() -> npt.NDArray[np.float32]:
    """example_ct in the engine's convention (float, so that resampling interpolates HU)."""
    hu: npt.NDArray[np.float32] = validation_script().load_ct().astype(np.float32)
    return hu


def _labels(hu: npt.NDArray[Any], spacing_mm: float = SPACING_MM) -> npt.NDArray[np.uint8]:
    return get_segmenter().segment(hu, (spacing_mm, spacing_mm), get_preset()).labels


def _areas_cm2(labels: npt.NDArray[np.uint8], spacing_mm: float) -> dict[str, float]:
    return {name: float((labels == v).sum()) * spacing_mm**2 / 100.0 for name, v in TISSUES.items()}


@pytest.mark.parametrize("k", SLICES)
def test_mirrored_slice_gives_mirrored_labels(k: int) -> None:
    hu = _ct()[k]
    labels = _labels(hu)
    mirrored = _labels(np.ascontiguousarray(hu[:, ::-1]))[:, ::-1]
    assert (labels > 0).sum() > 1000
    np.testing.assert_array_equal(mirrored, labels)


@pytest.mark.parametrize("k", SLICES)
def test_position_in_the_field_of_view_does_not_change_the_labels(k: int) -> None:
    hu = _ct()[k]
    canvas = np.full((hu.shape[0] + 60, hu.shape[1] + 60), -1024.0, np.float32)
    canvas[50 : 50 + hu.shape[0], 5 : 5 + hu.shape[1]] = hu
    labels = _labels(hu)
    moved = _labels(canvas)[50 : 50 + hu.shape[0], 5 : 5 + hu.shape[1]]
    # ct 74 is cut by the field of view on the patient's left; in the larger canvas that edge is no
    # longer the image border, which may move a few boundary pixels there
    assert (moved != labels).sum() <= 0.005 * (labels > 0).sum()


@pytest.mark.parametrize("k", SLICES)
def test_labels_at_1_mm_pixels_agree_with_those_at_3_mm(k: int) -> None:
    hu = _ct()[k]
    z = 3
    fine = ndi.zoom(hu, z, order=1, grid_mode=True, mode="nearest")
    coarse_labels = _labels(hu)
    fine_labels = _labels(fine, SPACING_MM / z)
    preset = get_preset()
    windows = {"skeletal_muscle": preset.sm, "vat": preset.vat, "sat": preset.sat}
    for name, v in TISSUES.items():
        share = (fine_labels == v).reshape(hu.shape[0], z, hu.shape[1], z).mean(axis=(1, 3))
        back = (share >= 0.5) & windows[name].contains(hu)
        assert (coarse_labels == v).any(), (k, name)  # (the script's Dice of two empty masks is 1)
        assert validation_script().dice(back, coarse_labels == v) >= 0.90, (k, name)


T12_LIVER = pytest.mark.xfail(
    strict=True,
    reason="ct 95 rolled by -5 degrees lies at -9 degrees and is set upright (workers/tissues/frame.py); "
    "upright, the posterior right liver joins the posterior block behind the vertebral body's back line "
    "(+5 % muscle): the liver is only ~20 HU denser than muscle on this unenhanced scan (#20, open)",
)


@pytest.mark.parametrize("k", SLICES)
@pytest.mark.parametrize("degrees", [-5.0, 5.0])
def test_a_patient_rolled_by_5_degrees_gets_the_same_areas(
    k: int, degrees: float, request: pytest.FixtureRequest
) -> None:
    if (k, degrees) == (95, -5.0):
        request.applymarker(T12_LIVER)
    z = 3  # at 1 mm pixels, so that the rotation's interpolation does not blur 3 mm pixels away
    fine = np.pad(ndi.zoom(_ct()[k], z, order=1, grid_mode=True, mode="nearest"), 40, constant_values=-1024)
    rolled = ndi.rotate(fine, degrees, reshape=False, order=1, cval=-1024)
    upright = _areas_cm2(_labels(fine, SPACING_MM / z), SPACING_MM / z)
    turned = _areas_cm2(_labels(rolled, SPACING_MM / z), SPACING_MM / z)
    for name in TISSUES:
        assert turned[name] == pytest.approx(upright[name], rel=0.05), (k, name, turned, upright)


@lru_cache(maxsize=1)
def _hcc_mid_l3() -> tuple[npt.NDArray[np.float32], float, dict[str, float]]:
    realct = validation_script().realct
    hu, sp = realct.hcc_slice(10)
    hu[hu < -1024] = -1024
    hu = np.pad(hu, 40, constant_values=-1024)
    return hu, sp, _areas_cm2(_labels(hu, sp), sp)


@pytest.mark.parametrize("pixel_mm", [0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0])
def test_hcc_reconstructed_on_coarser_pixels_gets_the_same_areas(pixel_mm: float) -> None:
    """hcc_tace_seg_048 mid-L3 (0.7 mm) sampled on a coarser grid, as a scanner reconstructing the
    same data on a larger field of view: SM, VAT and SAT within 3 % from 0.8 to 3 mm (at 2.5-3 mm the
    outermost pixel ring holds half of the first millimetres of fat; docs/validation-tissues.md
    "Pixel size")."""
    hu, sp, scanned = _hcc_mid_l3()
    coarse, p2 = validation_script().realct.coarser(hu, sp, pixel_mm, average=False)
    areas = _areas_cm2(_labels(coarse, p2), p2)
    for name in TISSUES:
        assert areas[name] == pytest.approx(scanned[name], rel=0.03), (pixel_mm, name, areas, scanned)
