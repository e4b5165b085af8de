"""The patient's own frame (#20): a patient rolled on the table gets the same areas at mid-L3.

Metamorphic checks on the real CTs, no truth needed: ``hcc_tace_seg_048`` at mid-L3 (index 10, 0.7 mm,
rotated at its native pixel size) and ``example_ct`` at mid-L3 (ct 74, 3 mm upsampled to 1 mm so that
the rotation's interpolation does not blur 3 mm pixels away). Turned by up to +-15 degrees, mirrored
or moved in the field of view, the skeletal muscle, VAT and SAT areas stay within 3 % of the slice as
scanned. Before the frame, hcc turned by -15 degrees lost 22 % of its muscle: the rules that read
image rows (the back of the vertebral body, the psoas zone) cut the psoas and the quadratus at a slant.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi

from tests.conftest import SHARED_DATA, validation_script
from workers.load.source import load_series
from workers.tissues.body import find_body
from workers.tissues.bone import find_spine
from workers.tissues.engine import LABEL_SAT, LABEL_SM, LABEL_VAT, TissueSegmentation, get_segmenter
from workers.tissues.frame import FRAME_RULE, PatientFrame, Turn, find_frame
from workers.tissues.presets import get_preset

TISSUES = {"SM": LABEL_SM, "VAT": LABEL_VAT, "SAT": LABEL_SAT}
ANGLES = (-15.0, -10.0, -5.0, 5.0, 10.0, 15.0)
TOLERANCE = 0.03


@lru_cache(maxsize=1)
def _hcc_mid_l3() -> tuple[npt.NDArray[np.float32], float]:
    view = load_series(SHARED_DATA / "hcc_tace_seg_048" / "dicom").canonical()
    h = np.asarray(view.hu[10], dtype=np.float32)
    h[h < -1024] = -1024  # the stored padding: air, so that the turned corners look like the rest
    return np.pad(h, 40, constant_values=-1024), float(view.spacing_yx_mm[0])


@lru_cache(maxsize=1)
def _example_mid_l3() -> tuple[npt.NDArray[np.float32], float]:
    hu = validation_script().load_ct().astype(np.float32)[74]
    fine = ndi.zoom(hu, 3, order=1, grid_mode=True, mode="nearest")
    return np.pad(fine, 40, constant_values=-1024), 1.0


SLICES = {"hcc_tace_seg_048 mid-L3": _hcc_mid_l3, "example_ct mid-L3": _example_mid_l3}


def _segment(hu: npt.NDArray[np.float32], sp: float) -> TissueSegmentation:
    return get_segmenter().segment(hu, (sp, sp), get_preset())


def _areas(seg: TissueSegmentation, sp: float) -> dict[str, float]:
    return {n: float((seg.labels == v).sum()) * sp * sp / 100.0 for n, v in TISSUES.items()}


def _frame(hu: npt.NDArray[np.float32], sp: float) -> PatientFrame:
    body = find_body(hu, (sp, sp), outside_fov=hu <= -1500).mask
    f = find_frame(hu, find_spine(hu, body, (sp, sp)).vertebra, (sp, sp))
    assert f is not None
    return f


@pytest.mark.parametrize("name", list(SLICES))
def test_the_frame_follows_the_turn(name: str) -> None:
    """The midline's angle moves with the patient, within 2 degrees, and the spine is symmetric
    enough to trust it (score >= min_score) at every angle."""
    hu, sp = SLICES[name]()
    upright = _frame(hu, sp)
    assert upright.score >= FRAME_RULE.min_score
    for deg in ANGLES:
        f = _frame(ndi.rotate(hu, deg, reshape=False, order=1, cval=-1024), sp)
        assert f.angle_deg - upright.angle_deg == pytest.approx(deg, abs=2.0), (name, deg, f)
        assert f.score >= FRAME_RULE.min_score


@pytest.mark.parametrize("name", list(SLICES))
@pytest.mark.parametrize(  # the fast tier turns by ±15 degrees only, the full suite by every angle
    "deg", [pytest.param(d, marks=[] if abs(d) == 15.0 else [pytest.mark.slow]) for d in ANGLES]
)
def test_a_turned_patient_gets_the_same_areas(name: str, deg: float) -> None:
    hu, sp = SLICES[name]()
    upright = _areas(_segment(hu, sp), sp)
    turned = _areas(_segment(ndi.rotate(hu, deg, reshape=False, order=1, cval=-1024), sp), sp)
    for t in TISSUES:
        assert turned[t] == pytest.approx(upright[t], rel=TOLERANCE), (name, deg, t, turned, upright)


def test_a_turned_slice_says_so() -> None:
    """Beyond min_turn_deg the compartments are found upright and the result says how far the
    patient was turned; the contours come back onto the original pixels (inside the body)."""
    hu, sp = _hcc_mid_l3()
    seg = _segment(ndi.rotate(hu, 15.0, reshape=False, order=1, cval=-1024), sp)
    assert "patient_turned" in seg.flags
    assert any("turned by 17 degrees" in n for n in seg.qc_notes), seg.qc_notes
    line = np.round(seg.peritoneal_contour_px).astype(int)
    assert len(line) > 50
    assert seg.body_mask[line[:, 0], line[:, 1]].mean() > 0.95
    plain = _segment(hu, sp)
    assert "patient_turned" not in plain.flags  # hcc lies at 2 degrees: segmented as scanned


@pytest.mark.parametrize("name", list(SLICES))
def test_mirrored_and_moved_slices_get_the_same_labels(name: str) -> None:
    hu, sp = SLICES[name]()
    labels = _segment(hu, sp).labels
    mirrored = _segment(np.ascontiguousarray(hu[:, ::-1]), sp).labels[:, ::-1]
    np.testing.assert_array_equal(mirrored, labels)
    canvas = np.full((hu.shape[0] + 60, hu.shape[1] + 60), -1024.0, np.float32)
    canvas[50 : 50 + hu.shape[0], 10 : 10 + hu.shape[1]] = hu
    moved = _segment(canvas, sp).labels[50 : 50 + hu.shape[0], 10 : 10 + hu.shape[1]]
    np.testing.assert_array_equal(moved, labels)


def test_turn_maps_points_and_pixels_consistently() -> None:
    """Turn.upright is scipy's rotate(reshape=True); back_points sends an upright pixel to the
    original position whose interpolated value it holds, and back() of upright() restores a smooth
    image everywhere but at the borders."""
    rng = np.random.default_rng(7)
    img = ndi.gaussian_filter(rng.normal(size=(60, 80)), 3).astype(np.float64)
    turn = Turn(12.5, (60, 80))
    up = turn.upright(img, cval=0.0, order=1)
    np.testing.assert_allclose(up, ndi.rotate(img, -12.5, reshape=True, order=1, cval=0.0))
    pts = np.array([[30.0, 40.0], [20.0, 50.0], [35.0, 28.0]])  # upright pixel centres
    src = turn.back_points(pts)
    np.testing.assert_allclose(
        ndi.map_coordinates(up, pts.T, order=1), ndi.map_coordinates(img, src.T, order=1), atol=1e-9
    )
    back = turn.back(up)
    inner = np.zeros(img.shape, dtype=bool)
    inner[10:-10, 10:-10] = True
    assert np.abs(back - img)[inner].max() < 0.5 * img.std()
