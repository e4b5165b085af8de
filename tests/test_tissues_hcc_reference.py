"""Tissues at clinical resolution against one reader's hand-drawn reference (#20).

``hcc_tace_seg_048`` (real, portal-venous, 0.7 mm pixels): the reader labelled lower, mid and upper L3
(indices 7, 10, 13) without seeing bodycomp's output (../shared/data/hcc_tace_seg_048/reference/
README.md: conventions and the uncertainty per tissue, SM +-1 %, VAT +-2 %, SAT +-4 %). The labels are
read here only, never by the engine. The slice is loaded by the product's own loader, whose canonical
order is the DICOM pixel order for this series (checked below), so labels compare pixel for pixel.

IMAT is held to a regression guard only (at most 1.8x the reader's, whose IMAT uncertainty is +-20 %):
the fat between the wall and an organ lying on it is now preperitoneal (workers/tissues/fascia.py;
IMAT was 2.9-3.5x the reader's before; oral contrast taken for a rib no longer drags the wall's
inner edge through the fat on the stomach, and foraminal fat is not IMAT: 1.3-1.6x now), the rest
of the excess is fat between the wall's layers and beside the spine, an open part of #20.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import SHARED_DATA
from workers.load.source import load_series
from workers.tissues.engine import LABEL_IMAT, LABEL_SAT, LABEL_SM, LABEL_VAT, get_segmenter
from workers.tissues.presets import get_preset

HCC = SHARED_DATA / "hcc_tace_seg_048"
REFERENCE = HCC / "reference"
INDICES = (7, 10, 13)
#: reader label value and our label value per tissue
TISSUES = {"SM": (1, LABEL_SM), "VAT": (3, LABEL_VAT), "SAT": (4, LABEL_SAT)}
DICE_MIN = {"SM": 0.93, "VAT": 0.90, "SAT": 0.95}
AREA_TOLERANCE = 0.05


@lru_cache(maxsize=1)
def _volume() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], tuple[float, float]]:
    view = load_series(HCC / "dicom").canonical()
    return np.asarray(view.hu, dtype=np.float32), np.asarray(view.z_mm), view.spacing_yx_mm


@lru_cache(maxsize=3)
def _pair(k: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], float]:
    """(our labels, reader labels, pixel area in cm^2) at index k."""
    hu, _, sp = _volume()
    ours = get_segmenter().segment(hu[k], sp, get_preset()).labels
    ref: npt.NDArray[np.uint8] = np.load(REFERENCE / f"labels_k{k:02d}.npy")
    return ours, ref, sp[0] * sp[1] / 100.0


def test_reference_slices_are_the_ones_loaded() -> None:
    """The reader's stats name each slice's z; the loader's index k must be that slice."""
    stats = json.loads((REFERENCE / "stats.json").read_text())
    _, z, sp = _volume()
    assert sp == pytest.approx((0.703125, 0.703125))
    for k in INDICES:
        assert z[k] == pytest.approx(stats[f"k{k:02d}"]["_slice"]["z_mm"]), k
        assert _pair(k)[1].shape == (512, 512)


@pytest.mark.parametrize("k", INDICES)
@pytest.mark.parametrize("tissue", list(TISSUES))
def test_area_within_5_percent_and_dice(k: int, tissue: str) -> None:
    ours, ref, px = _pair(k)
    v_ref, v_ours = TISSUES[tissue]
    a, b = ref == v_ref, ours == v_ours
    area_ref, area_ours = float(a.sum()) * px, float(b.sum()) * px
    dice = 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())
    assert abs(area_ours / area_ref - 1.0) <= AREA_TOLERANCE, (tissue, k, area_ours, area_ref)
    assert dice >= DICE_MIN[tissue], (tissue, k, dice)


@pytest.mark.parametrize("k", INDICES)
def test_nothing_in_front_of_the_vertebral_body_is_taken_for_psoas(k: int) -> None:
    """The aorta lies on the body's front here (enhanced lumen ~165 HU, calcified back wall): the
    body's midline run once went through it, the body's "front" moved 17 mm forward, and the
    soft tissue between the aorta and the inferior vena cava (the right crus, 4-5 cm^2) joined the
    psoas. No piece of our muscle that the reader left out may be larger than 2 cm^2."""
    from scipy import ndimage as ndi

    ours, ref, px = _pair(k)
    extra = (ours == LABEL_SM) & (ref == 0)
    lab, n = ndi.label(extra, structure=np.ones((3, 3), dtype=bool))
    assert n > 0
    largest = float(np.bincount(lab.ravel())[1:].max()) * px
    assert largest < 2.0, (k, largest)


@pytest.mark.parametrize("k", INDICES)
def test_imat_stays_below_1_8_times_the_readers(k: int) -> None:
    ours, ref, _ = _pair(k)
    assert 0 < (ours == LABEL_IMAT).sum() <= 1.8 * (ref == 2).sum(), k
