"""``bodycomp analyze`` end to end on the real CT: the result contract of issues #4, #5 and #6."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from node.operate.cli import main


def analyze(*args: str) -> tuple[int, dict[str, Any] | None]:
    out = Path(args[args.index("--out") + 1])
    code = main(["analyze", *args])
    result_path = out / "result.json"
    return code, json.loads(result_path.read_text()) if result_path.exists() else None


@pytest.fixture(scope="module")
def nifti_result(
    example_ct_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("nifti")
    code, result = analyze(str(example_ct_path), "--out", str(out))
    assert code == 0 and result is not None
    return out, result


@pytest.fixture(scope="module")
def dicom_result(
    example_ct_derived_dicom: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("dicom")
    code, result = analyze(
        str(example_ct_derived_dicom),
        "--out",
        str(out),
        "--dicom",
        "--height-m",
        "1.72",
        "--weight-kg",
        "70",
        "--sex",
        "M",
    )
    assert code == 0 and result is not None
    return out, result


def test_nifti_l3_contract(nifti_result: tuple[Path, dict[str, Any]], example_ct_path: Path) -> None:
    out, result = nifti_result
    l3 = result["l3"]
    assert 72 <= l3["slice_index"] <= 76
    assert abs(l3["body_range"][0] - 69) <= 2 and abs(l3["body_range"][1] - 79) <= 2
    assert l3["flags"] == []
    assert 0 < l3["confidence"] <= 1 and l3["method"] == "sacrum+ribs"
    assert {"L1", "L2", "L3", "L4", "L5"} <= set(l3["levels"])
    affine = nib.load(str(example_ct_path)).affine
    assert l3["z_mm"] == pytest.approx(affine[2, 3] + 3.0 * l3["slice_index"], abs=0.01)
    for name in ("l3_qc.png", "l3_overlay.png", "l3_labels.npy", "result.json"):
        assert (out / name).stat().st_size > 0


def test_nifti_labels_are_in_the_files_own_slice_order(
    nifti_result: tuple[Path, dict[str, Any]], example_ct_path: Path
) -> None:
    out, result = nifti_result
    labels = np.load(out / "l3_labels.npy")
    data = np.asarray(nib.load(str(example_ct_path)).dataobj)[:, :, result["l3"]["slice_index"]]
    assert labels.shape == data.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    # Every labelled pixel lies in its tissue's HU window (tomovision-l3@1), in the file's own order.
    windows = {1: (-29, 150), 2: (-190, -30), 3: (-150, -50), 4: (-190, -30)}
    for label, (low, high) in windows.items():
        values = data[labels == label]
        assert values.size > 0 and values.min() >= low and values.max() <= high
    pixels = {key: result["tissues"][key]["pixels"] for key in ("skeletal_muscle", "imat", "vat", "sat")}
    assert pixels == {
        "skeletal_muscle": int((labels == 1).sum()),
        "imat": int((labels == 2).sum()),
        "vat": int((labels == 3).sum()),
        "sat": int((labels == 4).sum()),
    }
    assert result["tissues"]["skeletal_muscle"]["area_cm2"] == pytest.approx(
        pixels["skeletal_muscle"] * 9 / 100, abs=0.01
    )


def test_missing_height_makes_smi_null_with_a_reason(nifti_result: tuple[Path, dict[str, Any]]) -> None:
    _, result = nifti_result
    metrics = result["metrics"]
    assert metrics["smi_cm2_m2"] is None and metrics["reasons"]["smi_cm2_m2"]
    assert metrics["lsmm"]["value"] is None and metrics["lsmm"]["reason"]
    assert result["qc"]["status"] in ("ok", "review")


def test_peritoneal_contour_is_in_patient_coordinates_on_the_l3_slice(
    nifti_result: tuple[Path, dict[str, Any]],
) -> None:
    _, result = nifti_result
    contour = np.asarray(result["peritoneal_contour_mm"])
    assert contour.shape[0] > 20 and contour.shape[1] == 3
    assert np.allclose(contour[:, 2], result["l3"]["z_mm"], atol=0.01)


def test_dicom_gives_the_same_slice_with_its_uid(
    dicom_result: tuple[Path, dict[str, Any]],
    nifti_result: tuple[Path, dict[str, Any]],
    example_ct_derived_dicom: Path,
) -> None:
    _, result = dicom_result
    _, nifti = nifti_result
    assert result["l3"]["slice_index"] == nifti["l3"]["slice_index"]
    assert result["l3"]["z_mm"] == pytest.approx(nifti["l3"]["z_mm"], abs=0.01)
    uid = result["l3"]["sop_instance_uid"]
    matches = [
        p
        for p in example_ct_derived_dicom.iterdir()
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == uid
    ]
    assert len(matches) == 1
    ds = pydicom.dcmread(matches[0], stop_before_pixels=True)
    assert float(ds.ImagePositionPatient[2]) == pytest.approx(result["l3"]["z_mm"], abs=0.01)
    assert result["tissues"] == nifti["tissues"]


def test_dicom_outputs_round_trip(dicom_result: tuple[Path, dict[str, Any]]) -> None:
    out, result = dicom_result
    labels = np.load(out / "l3_labels.npy")
    seg = hd.seg.segread(out / "dicom" / "seg.dcm")
    uid = result["l3"]["sop_instance_uid"]
    for segment in range(1, 5):
        mask = seg.get_pixels_by_source_instance([uid], segment_numbers=[segment])[0, :, :, 0]
        np.testing.assert_array_equal(mask.astype(bool), labels == segment)
    sr = pydicom.dcmread(out / "dicom" / "sr.dcm")
    numbers = []
    stack = list(sr.ContentSequence)
    while stack:
        item = stack.pop()
        stack.extend(item.get("ContentSequence", []))
        if item.get("ValueType") == "NUM" and item.MeasuredValueSequence:
            numbers.append(
                (item.ConceptNameCodeSequence[0].CodeValue, float(item.MeasuredValueSequence[0].NumericValue))
            )
    areas = {round(v, 2) for code, v in numbers if code == "42798000"}
    assert {result["tissues"][k]["area_cm2"] for k in ("skeletal_muscle", "imat", "vat", "sat")} <= areas
    smi = [v for code, v in numbers if code == "SMI"]
    assert smi == [pytest.approx(result["metrics"]["smi_cm2_m2"], abs=0.01)]
    overlay = pydicom.dcmread(out / "dicom" / "overlay.dcm")
    assert overlay.StudyInstanceUID == seg.StudyInstanceUID == sr.StudyInstanceUID
    assert result["patient_inputs"]["height_m"]["source"] == "command line"


def test_l3_outside_the_field_of_view_is_exit_code_3(example_ct_dicom: Path, tmp_path: Path) -> None:
    code, result = analyze(str(example_ct_dicom), "--out", str(tmp_path))
    assert code == 3
    assert result is not None and result["l3"] is None
    assert "not in the field of view" in result["reason"]


def test_slice_override_and_multi_slice(example_ct_path: Path, tmp_path: Path) -> None:
    code, result = analyze(str(example_ct_path), "--out", str(tmp_path), "--slice", "80", "--slices", "3")
    assert code == 0 and result is not None
    assert result["l3"]["slice_index"] == 80 and result["l3"]["manual"] is True
    assert [s["slice_index"] for s in result["slices"]] == [79, 80, 81]
    assert result["n_slices"] == 3


def test_implausible_height_is_not_used_and_asks_for_review(example_ct_path: Path, tmp_path: Path) -> None:
    code, result = analyze(str(example_ct_path), "--out", str(tmp_path), "--slice", "74", "--height-m", "170")
    assert code == 0 and result is not None
    assert result["metrics"]["smi_cm2_m2"] is None
    assert "height_implausible" in result["qc"]["flags"] and result["qc"]["status"] == "review"


def test_dicom_outputs_refused_for_nifti(
    example_ct_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = analyze(str(example_ct_path), "--out", str(tmp_path), "--dicom")
    assert code == 2
    assert "NIfTI" in capsys.readouterr().err


def test_slice_outside_the_series_is_bad_input(example_ct_path: Path, tmp_path: Path) -> None:
    code, _ = analyze(str(example_ct_path), "--out", str(tmp_path), "--slice", "500")
    assert code == 2


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--preset", "foo", "unknown HU window preset 'foo'"),
        ("--rule-set", "bar@9", "unknown rule set 'bar@9'"),
    ],
)
def test_unknown_preset_or_rule_set_is_bad_input(
    example_ct_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    message: str,
) -> None:
    code, _ = analyze(str(example_ct_path), "--out", str(tmp_path), flag, value)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bodycomp: error: " + message) and "Traceback" not in err
