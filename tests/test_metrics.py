"""Metrics: areas, HU stats, SMI/BMI/ratios, missing and implausible inputs, circumference, averaging."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.phantoms import make_disk
from workers.measure.composition import (
    PatientInputs,
    TissueStats,
    average_results,
    compute_result,
    tissue_stats,
    waist_circumference_cm,
)
from workers.tissues.engine import LABEL_IMAT, LABEL_SAT, LABEL_SM, LABEL_VAT
from workers.tissues.presets import PRESETS, get_preset


def _stats(
    sm: float = 150.0, imat: float = 10.0, vat: float = 100.0, sat: float = 200.0, sm_hu: float = 40.0
) -> dict[str, TissueStats]:
    return {
        "skeletal_muscle": TissueStats(sm, sm_hu, 10.0, 1000),
        "imat": TissueStats(imat, -80.0, 20.0, 100),
        "vat": TissueStats(vat, -90.0, 20.0, 700),
        "sat": TissueStats(sat, -100.0, 20.0, 1300),
    }


def test_tissue_stats_counts_area_and_hu() -> None:
    labels = np.zeros((10, 20), np.uint8)
    hu = np.zeros((10, 20), np.float32)
    labels[:5, :4] = LABEL_SM
    hu[:5, :4] = np.arange(20).reshape(5, 4)
    labels[9, :] = LABEL_SAT
    hu[9, :] = -100
    st = tissue_stats(hu, labels, (0.5, 2.0))
    assert st["skeletal_muscle"].pixels == 20
    assert st["skeletal_muscle"].area_cm2 == pytest.approx(20 * 1.0 / 100)
    assert st["skeletal_muscle"].mean_hu == pytest.approx(9.5)
    assert st["skeletal_muscle"].sd_hu == pytest.approx(np.arange(20).std())
    assert st["sat"].area_cm2 == pytest.approx(0.2)
    assert st["vat"].pixels == 0 and st["vat"].mean_hu is None and st["imat"].area_cm2 == 0.0
    assert LABEL_VAT != LABEL_IMAT


def test_smi_bmi_ratios() -> None:
    res = compute_result(_stats(), PatientInputs(1.70, 70.0, "M"))
    m = res.metrics
    assert m.smi_cm2_m2 == pytest.approx(150 / 1.7**2)
    assert m.bmi == pytest.approx(70 / 1.7**2)
    assert m.vat_sat_ratio == pytest.approx(0.5)
    assert m.imat_percent == pytest.approx(100 * 10 / 160)
    assert m.sati_cm2_m2 == pytest.approx(200 / 1.7**2)
    # SMI 51.9, BMI 24.2 (< 25) → martin men < 43: not low
    assert m.lsmm.status == "absent" and m.lsmm.rule_set == "martin2013@1"
    assert m.myosteatosis.status == "present"  # 40 < 41 with BMI < 25


def test_missing_height_gives_null_with_reason() -> None:
    res = compute_result(_stats(), PatientInputs(None, 70.0, "M"))
    j = res.to_json()["metrics"]
    assert j["smi_cm2_m2"] is None and j["bmi"] is None
    assert "height missing" in j["reasons"]["smi_cm2_m2"]
    assert j["lsmm"]["value"] is None and j["lsmm"]["status"] == "not_computable"
    assert "height" in j["lsmm"]["reason"]
    assert j["vat_sat_ratio"] == pytest.approx(0.5)  # does not need height


@pytest.mark.parametrize("height", [170.0, 1.0, 2.5, float("nan"), 0.0])
def test_implausible_height_is_missing_and_flagged(height: float) -> None:
    res = compute_result(_stats(), PatientInputs(height, 70.0, "M"))
    assert res.metrics.smi_cm2_m2 is None and res.metrics.bmi is None
    assert "height_implausible" in res.metrics.flags
    assert "implausible" in res.metrics.reasons["smi_cm2_m2"]
    assert res.to_json()["patient_inputs"]["height_m"]["raw"] == height or math.isnan(height)


def test_missing_sex_and_weight() -> None:
    res = compute_result(_stats(sm=100.0), PatientInputs(1.8, None, None))
    m = res.metrics
    assert m.smi_cm2_m2 == pytest.approx(100 / 3.24)
    assert m.bmi is None and "weight" in m.reasons["bmi"]
    assert m.lsmm.status == "not_computable" and "sex" in m.lsmm.reason
    # myosteatosis (martin) is sex independent: 40 HU without BMI lies between 33 and 41
    assert m.myosteatosis.status == "undetermined"


def test_women_martin_without_bmi() -> None:
    """Women's Martin cut-off does not depend on BMI: SMI 36.7 < 41 → present even without weight."""
    res = compute_result(_stats(sm=100.0), PatientInputs(1.65, None, "F"))
    assert res.metrics.smi_cm2_m2 == pytest.approx(36.73, abs=0.01)
    assert res.metrics.lsmm.status == "present" and res.metrics.lsmm.value is True


def test_truncated_fov_nulls_waist() -> None:
    res = compute_result(_stats(), PatientInputs(1.7, 70, "F"), waist_cm=90.0, fov_truncated=True)
    assert res.metrics.waist_circumference_cm is None
    assert "fov_truncated" in res.metrics.flags
    res2 = compute_result(_stats(), PatientInputs(1.7, 70, "F"), waist_cm=90.0)
    assert res2.metrics.waist_circumference_cm == 90.0


def test_result_json_contract() -> None:
    res = compute_result(
        _stats(), PatientInputs(1.7, 70, "F", {"height_m": "header"}), rule_set="fujiwara2015"
    )
    j = json.loads(json.dumps(res.to_json()))
    for k in ("skeletal_muscle", "imat", "vat", "sat"):
        assert set(j["tissues"][k]) == {"area_cm2", "mean_hu", "sd_hu", "pixels"}
    for k in (
        "smi_cm2_m2",
        "bmi",
        "vat_sat_ratio",
        "imat_percent",
        "waist_circumference_cm",
        "lsmm",
        "myosteatosis",
    ):
        assert k in j["metrics"]
    for k in ("lsmm", "myosteatosis"):
        assert set(j["metrics"][k]) >= {"value", "rule_set", "threshold", "reason"}
        assert j["metrics"][k]["rule_set"] == "fujiwara2015@1"
    assert j["hu_preset"]["id"] == "tomovision-l3@1"
    assert j["patient_inputs"]["height_m"]["source"] == "header"


@pytest.mark.parametrize("spacing", [(0.7, 0.7), (0.6, 0.9), (1.0, 1.0)])
def test_waist_circumference_of_disk(spacing: tuple[float, float]) -> None:
    hu, true_cm = make_disk(140.0, spacing, shape=(512, 512))
    body = hu > -500
    got = waist_circumference_cm(hu, body, spacing)
    assert got is not None
    assert got == pytest.approx(true_cm, rel=0.01)


def test_waist_none_without_body() -> None:
    hu = np.full((32, 32), -1000.0)
    assert waist_circumference_cm(hu, hu > 0, (1.0, 1.0)) is None


def test_average_results_pools_hu_and_means_areas() -> None:
    a = _stats(sm=100.0, sm_hu=30.0)
    b = _stats(sm=200.0, sm_hu=50.0)
    res = average_results([a, b], PatientInputs(2.0, 80.0, "M"), waists_cm=[90.0, 92.0])
    t = res.tissues["skeletal_muscle"]
    assert t.area_cm2 == pytest.approx(150.0)
    assert t.mean_hu == pytest.approx(40.0)  # equal pixel counts
    assert t.sd_hu == pytest.approx(math.sqrt(100 + 100))  # within 10, between ±10
    assert t.pixels == 2000 and res.n_slices == 2
    assert res.metrics.waist_circumference_cm == pytest.approx(91.0)
    assert res.metrics.smi_cm2_m2 == pytest.approx(37.5)
    with pytest.raises(ValueError):
        average_results([], PatientInputs())


def test_presets() -> None:
    p = get_preset()
    assert p.id == "tomovision-l3@1"
    assert (p.sm.lo, p.sm.hi, p.sat.lo, p.sat.hi, p.vat.lo, p.vat.hi, p.imat.lo, p.imat.hi) == (
        -29,
        150,
        -190,
        -30,
        -150,
        -50,
        -190,
        -30,
    )
    u = get_preset("uniform-fat")
    assert u.id == "uniform-fat@1" and (u.vat.lo, u.vat.hi) == (-190, -30)
    assert set(PRESETS) == {"tomovision-l3@1", "uniform-fat@1"}
    assert p.sm.contains(np.array([-30, -29, 150, 151])).tolist() == [False, True, True, False]
    j = p.to_json()
    assert j["windows"]["vat"] == {"min_hu": -150.0, "max_hu": -50.0}
    with pytest.raises(KeyError):
        get_preset("nope")


def test_implausible_sm_area_is_flagged() -> None:
    assert "sm_area_implausible" in compute_result(_stats(sm=30.0), PatientInputs()).metrics.flags
    assert "sm_area_implausible" in compute_result(_stats(sm=450.0), PatientInputs()).metrics.flags
    assert "sm_area_implausible" not in compute_result(_stats(sm=120.0), PatientInputs()).metrics.flags
