"""Real CT: Dice against the TotalSegmentator tissue masks of example_ct_sm (issue 5 targets).

The reference masks are model output on example_ct[:, :, 82:112]; the same HU windows
(tomovision-l3@1) are applied to them. Slices "below the diaphragm" = crop slices without a lung
label in example_seg.nii.gz. Targets per slice: SM ≥ 0.90, SAT ≥ 0.95, VAT (vs torso_fat) ≥ 0.85.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage as ndi

from tests.conftest import validation_script
from workers.measure.composition import PatientInputs, compute_result, tissue_stats, waist_circumference_cm
from workers.tissues.engine import LABEL_IMAT, LABEL_SAT, LABEL_SM, LABEL_VAT, get_segmenter
from workers.tissues.presets import get_preset

OFFSET = 82
SPACING = (3.0, 3.0)


@lru_cache(maxsize=1)
def _data() -> tuple[npt.NDArray[np.int16], list[int]]:
    vs = validation_script()
    return vs.load_ct(), vs.below_diaphragm_crop_slices()


@lru_cache(maxsize=1)
def _rows() -> list[dict[str, Any]]:
    """Per-slice Dice of scripts/validate_tissues.py (the numbers docs/validation-tissues.md shows)."""
    rows: list[dict[str, Any]] = validation_script().evaluate()["rows"]
    return rows


@lru_cache(maxsize=1)
def _muscle_recall() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = validation_script().muscle_recall()
    return rows


def test_below_diaphragm_slices_are_the_expected_ones() -> None:
    _, below = _data()
    assert below == list(range(19))  # example_ct slices 82-100 (lungs appear from crop slice 19)


def _check(tissue: str, target: float, key: str = "dice") -> None:
    worst = min(_rows(), key=lambda r: r[f"{key}_{tissue}"])
    value = worst[f"{key}_{tissue}"]
    assert value >= target, f"{tissue}: worst slice crop {worst['crop_slice']} {key} {value:.3f} < {target}"


def test_dice_vat_vs_torso_fat() -> None:
    _check("vat", 0.85)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "target not reached: SM Dice min 0.866 / mean 0.883 over crop slices 0-18 (classical@0.1; was "
        "0.857 / 0.875); the reference draws the psoas/quadratus/wall boundary against visceral fat one "
        "pixel tighter (boundary-only Dice min 0.904: the target is the outline ceiling), and the "
        "liver's left lobe under the linea alba and colon against the left wall are still counted as "
        "wall muscle, see docs/validation-tissues.md"
    ),
)
def test_dice_skeletal_muscle() -> None:
    _check("sm", 0.90)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "target not reached: SAT Dice min 0.922 / mean 0.939 (0.931 / 0.945 before classical@0.4 "
        "counted the outermost ring's pure fat on coarse pixels); the reference "
        "excludes more skin/fat partial-volume pixels than the HU-window convention and calls the fat "
        "under the linea alba torso fat, see docs/validation-tissues.md"
    ),
)
def test_dice_sat() -> None:
    _check("sat", 0.95)


def test_dice_floor_reached_so_far() -> None:
    """Regression guard at the level reached (not the target): catches any change that makes it worse."""
    _check("sm", 0.86)
    _check("sat", 0.92)
    _check("vat", 0.855)


def test_mean_dice_no_lower_than_reached() -> None:
    """#20's regression guard on the mean over the 19 slices (SM 0.883, VAT 0.915 when it was filed).
    SAT is held at 0.938, not 0.944: classical@0.4 counts the outermost pixel ring's pure fat on
    coarse pixels (docs/validation-tissues.md "Pixel size"), which this reference leaves out."""
    rows = _rows()
    for tissue, floor in (("sm", 0.883), ("vat", 0.915), ("sat", 0.938)):
        mean = float(np.mean([r[f"dice_{tissue}"] for r in rows]))
        assert mean >= floor, (tissue, mean)


def test_disagreement_beyond_the_outline_stays_small() -> None:
    """Boundary-only Dice: what is left if only the one-pixel outline disagreement remained.

    The targets (0.90 / 0.95) equal this ceiling on the worst slices (SM 0.904, SAT 0.950 at
    classical@0.1): errors away from the reference's outline (organ or bowel taken as wall, muscle
    lost) lower it, outline convention does not. A regression guard just under the reached level.
    """
    _check("sm", 0.90, key="bdice")
    _check("sat", 0.945, key="bdice")
    _check("vat", 0.92, key="bdice")


def _recall(levels: set[str], muscle: str) -> list[float]:
    return [
        v
        for r in _muscle_recall()
        if r["level"] in levels
        for name, v in r["recall"].items()
        if name.startswith(muscle) and v is not None
    ]


def test_psoas_and_paraspinal_muscles_are_muscle_through_l3() -> None:
    """On every slice through the L3 body (TotalSegmentator `total` iliopsoas/autochthon labels)."""
    psoas, paraspinal = _recall({"L3"}, "psoas"), _recall({"L3"}, "paraspinal")
    assert len(psoas) >= 18 and len(paraspinal) >= 18  # 10-11 slices, left and right
    assert float(np.median(psoas)) >= 0.95 and min(psoas) >= 0.9, psoas  # min 0.68 before 2026-12-04
    assert min(paraspinal) >= 0.95, paraspinal


def test_psoas_denser_than_fatty_paraspinal_muscles_is_kept_at_l4() -> None:
    """L4 here: psoas 31-47 HU, erector spinae 8-17 HU (the patient's muscle reference).

    Before 2026-12-04 the block's organ test (reference + 30 HU) cut the psoas's denser spots and
    the kidney-pole rule dropped whatever the cut separated from the vertebra (there is no kidney at
    L4): 8 of the 18 L4 psoas side-slices were below 0.7.
    """
    psoas = _recall({"L4"}, "psoas")
    assert len(psoas) >= 16
    assert sum(v < 0.7 for v in psoas) <= 3, psoas


def test_psoas_beside_the_discs_next_to_l3() -> None:
    """L2/L3 and L3/L4 disc slices (a multi-slice measurement around L3 can reach them).

    A disc has no cortex, so the vertebra component was only the posterior arch and the vertebral
    body landed on a lamina: the psoas zone went with it. Before 2026-12-04, 5 of these 12 psoas
    side-slices were below 0.6 (three at 0.00).
    """
    psoas = [
        v
        for r in _muscle_recall()
        if r["level"] == "disc" and 66 <= r["ct_slice"] <= 81
        for name, v in r["recall"].items()
        if name.startswith("psoas") and v is not None
    ]
    assert len(psoas) >= 10
    assert sum(v < 0.6 for v in psoas) <= 2, psoas


def test_fatty_paraspinal_muscles_are_not_lost_l4_to_t12() -> None:
    """Very fatty erector spinae (L4 here: median 8-17 HU) fall apart under the block's opening.

    Before the paraspinal-gutter rule: mean recall 0.959 with 5 side-slices below 0.7 (L4).
    """
    recall = _recall({"L4", "L3", "L2", "L1", "T12"}, "paraspinal")
    assert float(np.mean(recall)) >= 0.97, recall
    assert sum(v < 0.7 for v in recall) <= 2, recall


def test_iliac_crest_is_not_an_arm() -> None:
    """ct 59 (L4): the iliac crest's section looks like a forearm bone in the body's outer third.

    The watershed split used to cut a 1,600 mm² column out of the posterior subcutaneous fat and
    flag ``arms_in_fov``; an arm bulges out of the trunk's outline, this part lay inside it.
    """
    from workers.tissues.body import find_body
    from workers.tissues.geometry import as_float

    hu, _ = _data()
    body = find_body(as_float(hu[59]), SPACING)
    assert "arms_in_fov" not in body.flags
    assert not body.removed.any()
    assert np.array_equal(body.mask, ndi.binary_fill_holes(body.mask))


def test_vertebral_body_matches_reference_vertebra() -> None:
    """The vertebral body (anchor of psoas zone, canal and peritoneal line) is found on every slice.

    Evaluation only: TotalSegmentator's ``vertebrae_body`` labels (body + disc) are compared with
    our mask's row/column extent; at 3 mm a miss by more than 2 pixels means the detector ran into
    the canal, stopped at an endplate or picked a lamina (classical@0.1 before this check: 13 of 19
    below-diaphragm slices off).
    """
    import nibabel

    from workers.tissues.body import find_body
    from workers.tissues.bone import find_spine
    from workers.tissues.geometry import as_float

    hu, below = _data()
    vs = validation_script()
    lab = vs.canonical(np.asarray(nibabel.load(str(vs.VERTEBRAL_BODIES)).dataobj))
    off = []
    for k in [c + OFFSET for c in below] + [74]:
        h = as_float(hu[k])
        vb = find_spine(h, find_body(h, SPACING).mask, SPACING).vertebral_body
        r, c = np.flatnonzero(vb.any(axis=1)), np.flatnonzero(vb.any(axis=0))
        rr, cc = np.flatnonzero((lab[k] > 0).any(axis=1)), np.flatnonzero((lab[k] > 0).any(axis=0))
        err = max(abs(r[0] - rr[0]), abs(r[-1] - rr[-1]), abs(c[0] - cc[0]), abs(c[-1] - cc[-1]))
        if err > 2:
            off.append((k, int(err)))
    assert len(off) <= 1 and all(k != 74 for k, _ in off), off


def test_l3_values_are_plausible() -> None:
    """Mid-L3 (example_ct slice 74): areas in adult ranges, flags as expected (left flank at edge)."""
    hu, _ = _data()
    sl = hu[74]
    out = get_segmenter().segment(sl, SPACING, get_preset())
    st = tissue_stats(sl, out.labels, SPACING)
    assert 80 < st["skeletal_muscle"].area_cm2 < 200
    assert 50 < st["vat"].area_cm2 < 250 and 100 < st["sat"].area_cm2 < 350
    assert st["imat"].area_cm2 < 0.2 * st["skeletal_muscle"].area_cm2
    assert st["skeletal_muscle"].mean_hu is not None and 0 < st["skeletal_muscle"].mean_hu < 60
    assert "fov_truncated" in out.flags  # skin touches the left image edge at L3 (data README)
    assert {int(v) for v in np.unique(out.labels)} <= {0, LABEL_SM, LABEL_IMAT, LABEL_VAT, LABEL_SAT}
    waist = waist_circumference_cm(sl, out.body_mask, SPACING)
    res = compute_result(st, PatientInputs(), waist_cm=waist, fov_truncated=True).to_json()
    assert res["metrics"]["waist_circumference_cm"] is None and res["metrics"]["smi_cm2_m2"] is None


def test_no_kidney_pixel_is_muscle_from_l1_to_l3() -> None:
    """example_ct is unenhanced: its kidneys (~30 HU) lie in the muscle window and touch the psoas
    and the quadratus. No pixel of TotalSegmentator's kidney labels may be skeletal muscle on any
    slice of L1-L3 (the slices where a vertebra label L1, L2 or L3 appears)."""
    from tests import l3_helpers as l3h

    labels = l3h.load_example_labels()
    names = l3h.label_table()
    kidney = np.isin(labels, [names["kidney_left"], names["kidney_right"]])
    lumbar = np.isin(labels, [names[f"vertebrae_L{i}"] for i in (1, 2, 3)]).any(axis=(1, 2))
    ct, _ = _data()
    seg = get_segmenter()
    checked = 0
    for k in np.flatnonzero(lumbar):
        if not kidney[k].any():
            continue
        out = seg.segment(ct[k], SPACING, get_preset()).labels
        assert int(((out == LABEL_SM) & kidney[k]).sum()) == 0, f"ct {k}: kidney pixels labelled muscle"
        checked += 1
    assert checked >= 20  # the kidneys span most of L1-L3 here


def test_the_spinal_canal_is_not_muscle_from_l1_to_l3() -> None:
    """The thecal sac (0-40 HU) lies in the muscle window. TotalSegmentator's spinal_cord label (the
    sac at this resolution) may be muscle or IMAT on none of its pixels at mid-L3 and on at most 10 %
    of them over L1-L3 (61 of 823 with the canal inside the bony ring, workers/tissues/bone.py; 135
    when the canal was a disk only; most of the rest lies on disc slices, where the ring is open)."""
    from tests import l3_helpers as l3h

    labels = l3h.load_example_labels()
    names = l3h.label_table()
    cord = labels == names["spinal_cord"]
    lumbar = np.isin(labels, [names[f"vertebrae_L{i}"] for i in (1, 2, 3)]).any(axis=(1, 2))
    ct, _ = _data()
    seg = get_segmenter()
    in_canal = labelled = 0
    for k in np.flatnonzero(lumbar & cord.any(axis=(1, 2))):
        out = seg.segment(ct[k], SPACING, get_preset()).labels
        wrong = int((np.isin(out, [LABEL_SM, LABEL_IMAT]) & cord[k]).sum())
        if k == 74:
            assert wrong == 0, "mid-L3: canal pixels labelled muscle"
        in_canal += int(cord[k].sum())
        labelled += wrong
    assert in_canal > 300  # ~30 slices of ~20 pixels
    assert labelled <= 0.10 * in_canal, (labelled, in_canal)


def test_the_fat_outside_the_back_of_the_wall_is_subcutaneous_at_l3_l4() -> None:
    """example_ct ct 68 (L3/L4), the patient's right: the lateral wall's band ends and its aponeurosis
    runs to the quadratus; the fat between that band and the skin is subcutaneous (the left side's
    fat in the same place is, and nothing but the band separates it from the subcutaneous fat). The
    box was drawn on the picture (rows 70-80, cols 20-40 of the canonical slice); 15 % of its fat
    was SAT before the pocket rule asked the sector and the depth separately (#20)."""
    ct, _ = _data()
    sl = ct[68]
    labels = get_segmenter().segment(sl, SPACING, get_preset()).labels
    box = (slice(70, 80), slice(20, 40))
    fat = get_preset().sat.contains(sl[box])
    assert fat.sum() > 100
    assert ((labels[box] == LABEL_SAT) & fat).sum() >= 0.9 * fat.sum()
