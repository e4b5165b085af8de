"""SEG, TID 1500 SR and colour SC: round trips, DICOM validators, identity and orientation."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.dicom_builder import SeriesOptions, axial_geometry, sample, write_series
from workers.encode import EncodeInput, encode_all
from workers.encode.uids import OutputIdentity
from workers.load.source import load_series
from workers.load.volume import Volume

RESULT: dict[str, Any] = {
    "tissues": {
        "skeletal_muscle": {"area_cm2": 150.2, "mean_hu": 38.1, "sd_hu": 20.0, "pixels": 15750},
        "imat": {"area_cm2": 6.3, "mean_hu": -70.5, "sd_hu": 30.0, "pixels": 660},
        "vat": {"area_cm2": 80.4, "mean_hu": -95.2, "sd_hu": 15.0, "pixels": 8430},
        "sat": {"area_cm2": 120.9, "mean_hu": -100.3, "sd_hu": 12.0, "pixels": 12680},
    },
    "metrics": {
        "smi_cm2_m2": None,
        "bmi": None,
        "vat_sat_ratio": 0.66,
        "imat_percent": 4.0,
        "waist_circumference_cm": 95.0,
        "lsmm": {"value": None, "rule_set": "martin2013@1", "reason": "height missing"},
        "myosteatosis": {"value": False, "rule_set": "martin2013@1"},
    },
    "patient_inputs": {
        "height_m": {"value": None, "raw": None, "source": None},
        "weight_kg": {"value": 79.0, "raw": 79.0, "source": "dicom-header"},
        "sex": {"value": None, "raw": None, "source": None},
    },
    "hu_preset": {"id": "tomovision-l3@1"},
    "rule_set": {"id": "martin2013@1"},
    "l3": {"method": "ribs", "confidence": 0.364, "manual": False},
    "slices": [{"slice_index": 10, "z_mm": -371.0, "sop_instance_uid": "1.2.3.4"}],
    "qc": {
        "status": "review",
        "flags": ["l3_low_confidence", "contrast"],
        "reasons": [
            "L3 level: low confidence (0.36), found from the ribs only",
            "contrast agent recorded (GASTRO & OMNI): muscle HU is enhanced",
        ],
    },
}


def threshold_labels(hu: np.ndarray) -> np.ndarray:
    """A rough but non-trivial label image: body by HU, four tissues by window, one VAT block."""
    labels = np.zeros(hu.shape, np.uint8)
    body = hu > -500
    labels[(hu >= -29) & (hu <= 150) & body] = 1
    labels[(hu >= -190) & (hu <= -30) & body] = 4
    r, c = hu.shape[0] // 2, hu.shape[1] // 2
    block = (slice(r - 20, r + 20), slice(c - 40, c + 40))
    labels[block][(hu[block] >= -150) & (hu[block] <= -50)] = 3
    labels[block][(hu[block] >= -29) & (hu[block] <= 0)] = 2
    return labels


def encode_slice(volume: Volume, k: int, version: str = "0.1.0", **changes: Any) -> tuple[EncodeInput, Any]:
    labels = threshold_labels(np.asarray(volume.hu[k]))[None]
    identity = OutputIdentity.build(
        str(volume.series.series_instance_uid if volume.series else ""),
        [volume.sop_instance_uids[k]],
        version,
        "tomovision-l3@1",
        "martin2013@1",
    )
    rows, cols = labels.shape[1:]
    contour = np.array([[rows * 0.6, cols * 0.2], [rows * 0.5, cols * 0.5], [rows * 0.6, cols * 0.8]])
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[..., 1] = 120
    data = EncodeInput(
        source_slices=[volume.headers[k]],
        labels=labels,
        result={**RESULT, **changes},
        overlay_rgb=rgb,
        identity=identity,
        version=version,
        peritoneal_contour_px=contour,
    )
    return data, encode_all(data)


@pytest.fixture(scope="module")
def encoded(
    example_ct_dicom: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[EncodeInput, dict[str, Path]]:
    volume = load_series(example_ct_dicom)
    data, outputs = encode_slice(volume, 10)
    return data, outputs.write(tmp_path_factory.mktemp("encoded"))


def test_seg_round_trip_equals_the_label_image(encoded: tuple[EncodeInput, dict[str, Path]]) -> None:
    data, paths = encoded
    seg = hd.seg.segread(paths["seg"])
    assert seg.SegmentationType == "BINARY"
    assert seg.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert seg.StudyInstanceUID == data.central.StudyInstanceUID
    assert seg.SeriesInstanceUID != data.central.SeriesInstanceUID
    ct_uid = data.central.SOPInstanceUID
    for segment in range(1, 5):
        mask = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ct_uid], segment_numbers=[segment], combine_segments=False
        )[0, :, :, 0]
        np.testing.assert_array_equal(mask.astype(bool), data.labels[0] == segment)
    descriptions = {d.segment_number: d for d in seg.SegmentSequence}
    assert descriptions[1].segmented_property_type.value == "127954009"
    assert descriptions[3].segmented_property_type.value == "55603005"
    assert descriptions[2].segmented_property_type.scheme_designator == "99BODYCOMP"
    assert all("RecommendedDisplayCIELabValue" in d for d in seg.SegmentSequence)
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99BODYCOMP"


def _walk(items: Any) -> Any:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _num(items: list[Any], code: str, derivation: str | None = None) -> list[Any]:
    found = []
    for item in items:
        if item.get("ValueType") != "NUM" or item.ConceptNameCodeSequence[0].CodeValue != code:
            continue
        derivations = [
            child.ConceptCodeSequence[0].CodeValue
            for child in item.get("ContentSequence", [])
            if child.ConceptNameCodeSequence[0].CodeValue == "121401"
        ]
        if derivation is None or derivation in derivations:
            found.append(item)
    return found


def evaluations_of(items: list[Any]) -> dict[str, str]:
    """Concept name code → meaning of the coded value, for every CODE item."""
    return {
        i.ConceptNameCodeSequence[0].CodeValue: str(i.ConceptCodeSequence[0].CodeMeaning)
        for i in items
        if i.get("ValueType") == "CODE"
    }


def test_sr_holds_the_result_numbers_and_required_items(encoded: tuple[EncodeInput, dict[str, Path]]) -> None:
    _, paths = encoded
    sr = pydicom.dcmread(paths["sr"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    items = list(_walk(sr.ContentSequence))
    names = {i.ConceptNameCodeSequence[0].CodeValue for i in items if "ConceptNameCodeSequence" in i}
    for required in (
        "111028",
        "126200",
        "126010",
        "125007",
        "112039",
        "112040",
        "121071",
        "363698007",
        "121214",
    ):
        assert required in names, required
    areas = sorted(
        {
            round(float(i.MeasuredValueSequence[0].NumericValue), 1)
            for i in _num(items, "42798000")
            if i.MeasuredValueSequence
        }
    )
    expected = sorted({round(v["area_cm2"], 1) for v in RESULT["tissues"].values()})
    assert expected == [a for a in areas if a in expected]
    means = {
        round(float(i.MeasuredValueSequence[0].NumericValue), 1) for i in _num(items, "112031", "373098007")
    }
    assert {38.1, -70.5, -95.2, -100.3} <= means
    # Finding site L3 on every tissue group; for viewers a labelled point under the area, whose
    # label (a Comment) carries the report's own values (#21: an outline's stats get recomputed)
    assert sum(i.get("ValueType") == "SCOORD" and i.GraphicType == "POINT" for i in items) >= 8
    comments = [
        i.TextValue
        for i in items
        if i.get("ValueType") == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    assert "Skeletal muscle: 150.20 cm2, mean 38.1 HU (QC: review)" in comments, comments
    assert "Visceral adipose tissue: 80.40 cm2, mean -95.2 HU (QC: review)" in comments, comments
    trackers = [
        i.TextValue
        for i in items
        if i.get("ValueType") == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "112039"
    ]
    assert "L3 SM" in trackers and "Cornerstone3DTools@^0.1.0:ArrowAnnotate" in trackers
    # SMI cannot be computed (no height): stated as such, not left out.
    assert not _num(items, "SMI")
    assert evaluations_of(items)["SMI"].startswith("Not computable: height")
    vsr = _num(items, "VSR")
    assert float(vsr[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(0.66)
    evaluations = {
        i.ConceptNameCodeSequence[0].CodeValue: i.ConceptCodeSequence[0].CodeValue
        for i in items
        if i.get("ValueType") == "CODE"
    }
    assert evaluations_of(items)["60621009"].startswith("Not computable")  # BMI: no height
    assert evaluations["LSMM"] == "373068000"  # Undetermined
    assert evaluations["MYOST"] == "272519000"  # Absent
    # Segment references are by frame only (the conformant form).
    refs = [
        i
        for i in items
        if i.get("ValueType") == "IMAGE" and i.ConceptNameCodeSequence[0].CodeValue == "121214"
    ]
    assert len(refs) == 4
    assert all("ReferencedSegmentNumber" not in r.ReferencedSOPSequence[0] for r in refs)


def test_sr_says_the_qc_verdict_its_reasons_and_the_level(
    encoded: tuple[EncodeInput, dict[str, Path]],
) -> None:
    """#21: a reader who opens only the SR must see that the result asks for review, and why."""
    _, paths = encoded
    sr = pydicom.dcmread(paths["sr"])
    [container] = [
        i
        for i in sr.ContentSequence
        if i.ValueType == "CONTAINER" and i.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    ]
    assert container.ConceptNameCodeSequence[0].CodingSchemeDesignator == "UMLS"
    coded = {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
        for i in container.ContentSequence
        if i.ValueType == "CODE"
    }
    assert coded == {"Automated result check": "Review recommended before use", "Finding site": "L3 vertebra"}
    texts = [
        (i.ConceptNameCodeSequence[0].CodeValue, i.TextValue)
        for i in container.ContentSequence
        if i.ValueType == "TEXT"
    ]
    assert texts == [
        ("QCREASON", RESULT["qc"]["reasons"][0]),
        ("QCREASON", RESULT["qc"]["reasons"][1]),
        ("L3METHOD", "ribs"),
        ("L3CONF", "0.36"),
        ("L3SLICE", "z = -371.0 mm, SOP Instance UID 1.2.3.4"),
    ]
    dump = subprocess.run(
        ["/usr/bin/dsrdump", "+Pl", str(paths["sr"])], capture_output=True, text=True
    ).stdout
    for shown in ("Review recommended before use", "contrast agent recorded (GASTRO & OMNI)", "0.36", "ribs"):
        assert shown in dump, dump


def test_sr_of_a_result_without_reasons_says_so(example_ct_dicom: Path) -> None:
    volume = load_series(example_ct_dicom)
    _, outputs = encode_slice(volume, 10, qc={"status": "ok", "flags": [], "reasons": []})
    evaluation = next(
        i
        for i in outputs.sr.ContentSequence
        if i.ValueType == "CONTAINER" and i.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    ).ContentSequence[0]
    assert evaluation.ConceptCodeSequence[0].CodeMeaning == "No reason for review found"


def test_sr_reads_back_with_highdicom(encoded: tuple[EncodeInput, dict[str, Path]]) -> None:
    _, paths = encoded
    sr = hd.sr.srread(paths["sr"])
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 4


def test_overlay_is_a_secondary_capture_in_the_same_study(
    encoded: tuple[EncodeInput, dict[str, Path]],
) -> None:
    data, paths = encoded
    sc = pydicom.dcmread(paths["overlay"])
    assert sc.Modality == "OT"
    assert list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.StudyInstanceUID == data.central.StudyInstanceUID
    assert sc.PatientName == data.central.PatientName
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == data.central.SOPInstanceUID
    assert sc.pixel_array.shape == (200, 300, 3)
    assert sc.SamplesPerPixel == 3 and sc.PhotometricInterpretation == "RGB"


@pytest.mark.parametrize("name", ["seg", "sr", "overlay"])
def test_dcmtk_reads_every_object(encoded: tuple[EncodeInput, dict[str, Path]], name: str) -> None:
    _, paths = encoded
    dump = subprocess.run(["/usr/bin/dcmdump", "-q", str(paths[name])], capture_output=True, text=True)
    assert dump.returncode == 0 and "E:" not in dump.stderr
    if name == "sr":
        sr = subprocess.run(["/usr/bin/dsrdump", str(paths[name])], capture_output=True, text=True)
        assert sr.returncode == 0, sr.stderr
        assert "E:" not in sr.stderr and "W:" not in sr.stderr, sr.stderr
        assert "Imaging Measurement Report" in sr.stdout


#: dciodvfy warnings that are expected and explained:
#: - 99BODYCOMP is our private coding scheme (declared in CodingSchemeIdentificationSequence);
#:   dciodvfy only knows the standard's designators.
#: - SECTRA and other designators, Study ID / Patient ID: copied unchanged from the source CT.
EXPLAINED_WARNINGS = (
    "Unrecognized defined term <99BODYCOMP>",
    "Unrecognized defined term <SECTRA>",
    "DICOMDIR",
)


@pytest.mark.parametrize("name", ["seg", "sr", "overlay"])
def test_dciodvfy_finds_no_errors(encoded: tuple[EncodeInput, dict[str, Path]], name: str) -> None:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is required: run the README's test command")
    _, paths = encoded
    output = subprocess.run([tool, str(paths[name])], capture_output=True, text=True)
    lines = [line for line in (output.stdout + output.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "\n".join(errors)
    unexplained = [
        line
        for line in lines
        if line.startswith("Warning") and not any(w in line for w in EXPLAINED_WARNINGS)
    ]
    assert not unexplained, "\n".join(unexplained)


def test_uids_are_deterministic_and_change_with_the_version(example_ct_dicom: Path) -> None:
    volume = load_series(example_ct_dicom)
    _, first = encode_slice(volume, 10)
    _, again = encode_slice(volume, 10)
    _, newer = encode_slice(volume, 10, version="0.2.0")
    for kind in ("seg", "sr", "overlay"):
        a, b, c = getattr(first, kind), getattr(again, kind), getattr(newer, kind)
        assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
        assert a.SOPInstanceUID != c.SOPInstanceUID
    assert (
        len({first.seg.SeriesInstanceUID, first.sr.SeriesInstanceUID, first.overlay.SeriesInstanceUID}) == 3
    )


def test_unicode_name_and_feet_first_prone_source(tmp_path: Path) -> None:
    """The SEG frame lies exactly on its source image; a non-Latin name survives in all three."""

    def phantom(points: np.ndarray) -> np.ndarray:
        # Muscle-HU block in the patient's left anterior quadrant only: a flip would move it.
        left_anterior = (points[:, 0] > 20) & (points[:, 1] < -20)
        body = np.hypot(points[:, 0], points[:, 1]) < 80
        return np.where(left_anterior & body, 50, np.where(body, -100, -1000))

    geometry = axial_geometry(rows=64, columns=64, n_slices=5, patient_position="FFP")
    options = SeriesOptions(extra={"SpecificCharacterSet": "ISO_IR 192"})
    write_series(tmp_path / "ct", sample(phantom, geometry), geometry, options)
    for path in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName = "山田^太郎"
        ds.save_as(path, enforce_file_format=True)
    volume = load_series(tmp_path / "ct")
    data, outputs = encode_slice(volume, 2)
    paths = outputs.write(tmp_path / "out")
    for name in ("seg", "sr", "overlay"):
        assert str(pydicom.dcmread(paths[name]).PatientName) == "山田^太郎"
    seg = hd.seg.segread(paths["seg"])
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    ct = data.central
    assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == pytest.approx(
        [float(v) for v in ct.ImagePositionPatient]
    )
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == pytest.approx([float(v) for v in ct.ImageOrientationPatient])
    muscle = seg.get_pixels_by_source_instance([ct.SOPInstanceUID], segment_numbers=[1])[0, :, :, 0].astype(
        bool
    )
    rows, cols = np.nonzero(muscle)
    index = np.column_stack([np.full(rows.size, 2), rows, cols])
    points = volume.voxel_to_patient(index)
    assert np.all(points[:, 0] > 20) and np.all(points[:, 1] < -20)  # still the left anterior block


def test_every_object_names_its_maker(encoded: tuple[EncodeInput, dict[str, Path]]) -> None:
    data, paths = encoded
    for name in ("seg", "sr", "overlay"):
        ds = pydicom.dcmread(paths[name], stop_before_pixels=True)
        assert ds.Manufacturer == "bodycomp"
        assert ds.ManufacturerModelName and ds.SoftwareVersions == data.version
        assert ds.SeriesDescription.startswith("bodycomp L3")


def test_a_one_component_patient_name_is_copied_without_a_warning(example_ct_dicom: Path) -> None:
    """highdicom warned in several lines on every study whose PatientName has one component (#24)."""
    import warnings

    volume = load_series(example_ct_dicom)
    volume.headers[10].PatientName = "HCC_048"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, outputs = encode_slice(volume, 10)
    assert not [w for w in caught if "person name" in str(w.message)], [str(w.message) for w in caught]
    assert str(outputs.seg.PatientName) == "HCC_048"


def test_the_two_groups_of_a_tissue_say_which_is_which(encoded: tuple[EncodeInput, dict[str, Path]]) -> None:
    """Every tissue has a drawable group (for OHIF) and a SEG-referencing group (for Slicer) with
    the same values: their Activity Session says so, in dsrdump too (#21)."""
    _, paths = encoded
    dump = subprocess.run(
        ["/usr/bin/dsrdump", "+Pl", str(paths["sr"])], capture_output=True, text=True
    ).stdout
    assert dump.count("label for viewers: the same values as the segment group of this tissue") == 4
    assert dump.count("the tissue's measurements, referencing its SEG segment") == 4
