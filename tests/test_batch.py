"""``bodycomp batch`` on a real cohort built from the shared CTs (issue #25).

The cohort (13 studies) is made of the real liver CT (hcc_tace_seg_048, cropped to 40 slices)
rewritten as separate patients in different folder layouts (two studies mixed in one folder,
PatientID/study/series folders, a series beside a bone-kernel one, a folder reached through a
symbolic link), the vendor JPEG 2000 series (no L3, no UIDs), the example CT as a DERIVED
DICOM series, NIfTI copies and variants (padded, resampled to 4.5 mm, cropped above L1, the
T11-L2 crop of the shared data) and one corrupt study (its files truncated). Nothing is mocked:
every study is analysed by the real pipeline in the batch's process pool.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from scipy import ndimage

from node.operate.cli import main
from tests.conftest import REPO, SHARED_DATA
from tests.dicom_builder import SeriesOptions, series_from_volume
from tests.timing import scaled
from workers.batch import table
from workers.batch.inputs import read_corrections
from workers.load.source import load_series

# Whole-cohort runs in worker processes (about a minute): the full suite only.
pytestmark = pytest.mark.slow

HCC = SHARED_DATA / "hcc_tace_seg_048"
EXAMPLE_CT = SHARED_DATA / "example_ct" / "example_ct.nii.gz"
EXAMPLE_CT_SM = SHARED_DATA / "example_ct" / "labels" / "example_ct_sm" / "example_ct_sm.nii.gz"
VENDOR_DICOM = SHARED_DATA / "example_ct_dicom" / "example_ct_dicom"
BODYCOMP = Path(sys.executable).with_name("bodycomp")
CHROMIUM = Path("/usr/bin/chromium")
#: Patient identifiers of the cohort: none may appear in a log line.
PATIENT_IDS = ("BC-001", "BC-002", "BC-003", "BC-004", "BC-005", "BC-006", "BC-099")
HEIGHTS = """patient_id,accession_number,path,height_m,height_cm,weight_kg,sex
BC-001,,,1.90,,90,
BC-002,,,1.80,,80,M
,ACC-003,,,165,58,F
,,nifti/pad.nii,1.75,,72,M
"""


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared test data missing: {path} (the repository expects ../shared/data beside it)")
    return path


@dataclass(frozen=True)
class Cohort:
    root: Path
    heights: Path
    expected: dict[str, str]
    """Source (as results.csv writes it) → expected status."""
    soft_series_uid: str
    """The series the selection must choose in the study that also has a bone-kernel series."""


def _hcc_files(n: int = 40) -> list[Path]:
    """The first ``n`` slices (inferior → superior) of the liver CT: L4 top to L1, L3 inside."""
    with _require(HCC / "slices.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if int(r["slab_index"]) < n]
    return [_require(HCC / r["file"]) for r in rows]


def _write_patient(
    files: list[Path],
    folder_of: Any,
    patient_id: str,
    accession: str = "",
    height: str | None = None,
    weight: str | None = None,
    sex: str = "",
    study_uid: str | None = None,
    kernel: str | None = None,
    series_number: str | None = None,
) -> tuple[str, str, list[Path]]:
    """The liver CT's ``files`` rewritten as another patient's study (new UIDs throughout);
    ``folder_of(index, dataset)`` says where each file goes. Returns study and series UIDs."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    written = []
    for index, source in enumerate(files):
        ds = pydicom.dcmread(source)
        ds.PatientID, ds.PatientName, ds.AccessionNumber, ds.PatientSex = (
            patient_id,
            f"Test^{patient_id}",
            accession,
            sex,
        )
        for keyword, value in (("PatientSize", height), ("PatientWeight", weight)):
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if kernel is not None:
            ds.ConvolutionKernel = kernel
        if series_number is not None:
            ds.SeriesNumber = series_number
        target = folder_of(index, ds)
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return study_uid, series_uid, written


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array, dtype=np.int16), affine), path)


def build_cohort(base: Path) -> Cohort:
    root = base / "archive"
    hcc = _hcc_files()
    expected: dict[str, str] = {}

    # two patients' studies mixed in one folder, under meaningless file names
    flat = root / "flat"
    _write_patient(
        hcc, lambda i, ds: flat / f"{ds.SOPInstanceUID[-12:]}", "BC-001", "ACC-001", "1.68", "61", "F"
    )
    _write_patient(hcc, lambda i, ds: flat / f"x{i:03d}", "BC-002", "ACC-002")
    expected["flat"] = "done"  # (both)
    # PatientID / study / series / IMxxxx.dcm
    _write_patient(
        hcc,
        lambda i, ds: root / "BC-003" / "study" / ds.SeriesInstanceUID[-8:] / f"IM{i:04d}.dcm",
        "BC-003",
        "ACC-003",
    )
    expected["BC-003/study"] = "done"
    # a soft-tissue series beside a bone-kernel one (20 slices): the selection takes the soft one
    study_uid, soft, _ = _write_patient(hcc, lambda i, ds: root / "multi" / "soft" / f"{i}.dcm", "BC-004")
    _write_patient(
        hcc[:20],
        lambda i, ds: root / "multi" / "bone" / f"{i}.dcm",
        "BC-004",
        study_uid=study_uid,
        kernel="BONE",
        series_number="7",
    )
    expected["multi"] = "done"
    # a study reached through a symbolic link to a folder outside ROOT
    _write_patient(hcc, lambda i, ds: base / "elsewhere" / f"{i}", "BC-005", "ACC-005")
    (root / "linked").symlink_to(base / "elsewhere", target_is_directory=True)
    expected["linked"] = "done"
    # the vendor series (JPEG 2000, empty UIDs, T11-T12 only): grouped by folder, no L3
    vendor = root / "vendor"
    vendor.mkdir(parents=True)
    for path in sorted(_require(VENDOR_DICOM).iterdir()):
        (vendor / path.name).symlink_to(path)
    expected["vendor"] = "l3_not_found"
    # the example CT padded to a closed body outline, written as a DERIVED DICOM series
    ct = nib.load(_require(EXAMPLE_CT))
    hu = np.asarray(ct.dataobj)
    padded = np.pad(hu, ((12, 12), (0, 0), (0, 0)), constant_values=-1024)
    pad_affine = ct.affine.copy()
    pad_affine[0, 3] -= 12 * pad_affine[0, 0]
    _save_nifti(padded, pad_affine, root / "nifti" / "pad.nii")
    expected["nifti/pad.nii"] = "done"
    series_from_volume(
        load_series(root / "nifti" / "pad.nii"),
        root / "derived",
        SeriesOptions(
            image_type=("DERIVED", "SECONDARY", "AXIAL"),
            patient_size_m=1.75,
            patient_weight_kg=72.0,
            patient_sex="M",
            extra={"PatientID": "BC-006", "AccessionNumber": "ACC-006", "PatientName": "Test^BC-006"},
        ),
    )
    expected["derived"] = "done"
    # NIfTI: a copy, a resampled variant (4.5 mm slices), a crop above L1, the shared T11-L2 crop
    shutil.copy(EXAMPLE_CT, root / "nifti" / "example_ct.nii.gz")
    expected["nifti/example_ct.nii.gz"] = "done"
    coarse = ndimage.zoom(hu.astype(np.float32), (1, 1, 2 / 3), order=1)
    coarse_affine = ct.affine.copy()
    coarse_affine[2, 2] = 4.5
    _save_nifti(np.rint(coarse), coarse_affine, root / "nifti" / "variants" / "resampled_4.5mm.nii.gz")
    expected["nifti/variants/resampled_4.5mm.nii.gz"] = "done"
    above = ct.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 92], [0, 0, 0, 1]])
    _save_nifti(hu[:, :, 92:], above, root / "nifti" / "variants" / "above_l1.nii.gz")
    expected["nifti/variants/above_l1.nii.gz"] = "l3_not_found"
    shutil.copy(_require(EXAMPLE_CT_SM), root / "nifti" / "example_ct_sm.nii.gz")
    expected["nifti/example_ct_sm.nii.gz"] = "l3_not_found"
    # corrupt: headers intact, pixel data cut short (a copy interrupted mid-way)
    _, _, corrupt = _write_patient(hcc, lambda i, ds: root / "corrupt" / f"{i:03d}.dcm", "BC-099", "ACC-099")
    for path in corrupt:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
    expected["corrupt"] = "failed"
    # not DICOM, not NIfTI: counted and skipped
    (root / "README.txt").write_text("cohort export\n")
    heights = base / "heights.csv"
    heights.write_text(HEIGHTS)
    return Cohort(root, heights, expected, soft)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    return build_cohort(tmp_path_factory.mktemp("cohort"))


@dataclass(frozen=True)
class BatchRun:
    out: Path
    code: int
    rows: list[dict[str, str]]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def batch_run(cohort: Cohort, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchRun]:
    """The whole cohort analysed once, in this process (the pool's processes do the analyses)."""
    out = tmp_path_factory.mktemp("batch") / "out"
    mask = os.umask(0o022)
    try:
        code = main(
            ["batch", str(cohort.root), "--out", str(out), "--jobs", "2", "--heights", str(cohort.heights)]
        )
    finally:
        os.umask(mask)
    yield BatchRun(out, code, _rows(out))


# --- what a row must say, read from result.json independently of workers/batch/table.py ---------

TISSUE_COLUMNS = {"sm": "skeletal_muscle", "imat": "imat", "vat": "vat", "sat": "sat"}
BOOL = {"true": True, "false": False, "": None}


def _number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


def check_row(row: dict[str, str], result: dict[str, Any]) -> None:
    """Every measured column of ``row`` equals what the study's ``result.json`` says."""
    assert row["study_key"] == result["batch"]["study_key"]
    assert row["bodycomp_version"] == result["bodycomp_version"]
    assert row["rule_set"] == result["rule_set"]["id"] and row["hu_preset"] == result["hu_preset"]["id"]
    assert _number(row["time_analysis_s"]) == pytest.approx(sum(result["timings_s"].values()), abs=2e-3)
    assert _number(row["time_wall_s"]) == pytest.approx(result["batch"]["wall_s"])
    assert row["series_instance_uid"] == (result["input"]["chosen_series_instance_uid"] or "")
    if result["l3"] is None:
        assert row["status"] == "l3_not_found" and result["status"] == "l3_not_found"
        assert row["l3_not_found_reason"] == result["reason"]
        assert row["levels_seen"].split(";") == (result["l3_search"]["levels_seen"] or [""])
        assert row["l3_slice_index"] == row["sm_area_cm2"] == row["qc_status"] == ""
        return
    assert row["status"] == "done"
    qc, l3, metrics, patient = result["qc"], result["l3"], result["metrics"], result["patient_inputs"]
    assert row["qc_status"] == qc["status"] == result["status"]
    assert row["qc_flags"] == ";".join(qc["flags"]) and row["qc_reasons"] == " | ".join(qc["reasons"])
    assert int(row["l3_slice_index"]) == l3["slice_index"] == result["slices"][0]["slice_index"]
    assert _number(row["l3_z_mm"]) == l3["z_mm"]
    assert _number(row["l3_confidence"]) == (None if l3["manual"] else l3["confidence"])
    assert row["l3_method"] == l3["method"] and BOOL[row["l3_manual"]] is l3["manual"]
    assert row["l3_flags"] == ";".join(l3["flags"]) and row["levels_seen"] == ";".join(l3["levels_seen"])
    assert int(row["n_slices"]) == result["n_slices"]
    for prefix, name in TISSUE_COLUMNS.items():
        tissue = result["tissues"][name]
        for column, key in (("area_cm2", "area_cm2"), ("mean_hu", "mean_hu"), ("sd_hu", "sd_hu")):
            assert _number(row[f"{prefix}_{column}"]) == tissue[key], (prefix, column)
    for column, key in (
        ("smi_cm2_m2", "smi_cm2_m2"),
        ("sati_cm2_m2", "sati_cm2_m2"),
        ("vati_cm2_m2", "vati_cm2_m2"),
        ("bmi_kg_m2", "bmi"),
        ("vat_sat_ratio", "vat_sat_ratio"),
        ("imat_percent", "imat_percent"),
        ("waist_circumference_cm", "waist_circumference_cm"),
    ):
        assert _number(row[column]) == metrics[key], column
    for verdict in ("lsmm", "myosteatosis", "high_vsr"):
        assert (
            BOOL[row[verdict]] is metrics[verdict]["value"]
            and row[f"{verdict}_status"] == metrics[verdict]["status"]
        )
    assert (row["smi_missing_reason"] or None) == metrics["reasons"].get("smi_cm2_m2")
    for column, key, source in (
        ("height_m", "height_m", "height_source"),
        ("weight_kg", "weight_kg", "weight_source"),
    ):
        assert _number(row[column]) == patient[key]["value"]
        expected = {"dicom-header": "dicom", "heights-file": "heights-file", None: ""}[patient[key]["source"]]
        assert row[source] == expected
    assert (row["sex"] or None) == patient["sex"]["value"]
    assert row["segmenter"] == result["segmentation"]["segmenter"]


def test_results_csv_matches_every_result_json(batch_run: BatchRun, cohort: Cohort) -> None:
    rows, out = batch_run.rows, batch_run.out
    assert batch_run.code == 1  # the corrupt study failed; every other one has its result
    assert len(rows) == 13
    assert list(rows[0]) == list(table.COLUMNS)
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        folder = out / "studies" / row["study_key"]
        source = row["source"]
        want = next(v for k, v in cohort.expected.items() if source == k or source.startswith(k + "/"))
        assert row["status"] == want, (source, row["error"])
        if want == "failed":
            assert not (folder / "result.json").exists()
            failure = json.loads((folder / "failure.json").read_text())
            assert row["error"] == failure["error"] and "pixel data" in row["error"]
            assert row["patient_id"] == "BC-099" and row["sm_area_cm2"] == ""
            continue
        result = json.loads((folder / "result.json").read_text())
        check_row(row, result)
        assert not (folder / ".partial").exists() and not (folder / "failure.json").exists()
        assert (folder / "l3_qc.png").exists() and (folder / "thumb_level.jpg").exists()
        assert (folder / "l3_overlay.png").exists() == (want == "done")
        assert not (folder / "dicom").exists()  # batch skips the DICOM outputs unless --dicom
    assert by_status == {"done": 9, "l3_not_found": 3, "failed": 1}
    assert len({r["study_key"] for r in rows}) == 13


def test_identifiers_heights_and_series_choice(batch_run: BatchRun, cohort: Cohort) -> None:
    by_patient = {r["patient_id"]: r for r in batch_run.rows if r["patient_id"]}
    assert set(by_patient) == {"BC-001", "BC-002", "BC-003", "BC-004", "BC-005", "BC-006", "BC-099"}
    assert (
        by_patient["BC-001"]["accession_number"] == "ACC-001"
        and by_patient["BC-001"]["study_date"] == "20010812"
    )
    # header values win over the heights file; the file fills what the header lacks
    assert (by_patient["BC-001"]["height_m"], by_patient["BC-001"]["height_source"]) == ("1.68", "dicom")
    assert (by_patient["BC-001"]["sex"], by_patient["BC-001"]["sex_source"]) == ("F", "dicom")
    assert (by_patient["BC-002"]["height_m"], by_patient["BC-002"]["height_source"]) == (
        "1.8",
        "heights-file",
    )
    assert (by_patient["BC-002"]["weight_kg"], by_patient["BC-002"]["sex"]) == ("80.0", "M")
    assert (by_patient["BC-003"]["height_m"], by_patient["BC-003"]["height_source"]) == (
        "1.65",
        "heights-file",
    )
    assert _number(by_patient["BC-003"]["smi_cm2_m2"]) is not None and by_patient["BC-003"]["lsmm"] in (
        "true",
        "false",
    )
    assert (by_patient["BC-004"]["height_m"], by_patient["BC-004"]["height_source"]) == ("", "")
    assert by_patient["BC-004"]["smi_missing_reason"] == "height missing"
    assert by_patient["BC-006"]["height_source"] == "dicom" and by_patient["BC-006"]["qc_status"] == "ok"
    pad = next(r for r in batch_run.rows if r["source"] == "nifti/pad.nii")
    assert (pad["height_m"], pad["height_source"], pad["patient_id"]) == ("1.75", "heights-file", "")
    # the study with a bone-kernel series beside the soft-tissue one: the soft one is analysed
    assert by_patient["BC-004"]["series_instance_uid"] == cohort.soft_series_uid
    result = json.loads(
        (batch_run.out / "studies" / by_patient["BC-004"]["study_key"] / "result.json").read_text()
    )
    assert sorted(s["status"] for s in result["input"]["series"]) == ["chosen", "not chosen"]
    assert result["patient_inputs"]["height_m"]["source"] is None
    # the vendor series without UIDs is one study (grouped by its folder)
    vendor = next(r for r in batch_run.rows if r["source"] == "vendor")
    assert vendor["study_instance_uid"] == "" and vendor["source_kind"] == "dicom"


def test_outputs_are_private(batch_run: BatchRun) -> None:
    out = batch_run.out
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in [out / "results.csv", out / "pseudonym.key", out / "gallery" / "index.html"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (out / "studies").rglob("*"):
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path


def test_pseudonymised_table_holds_no_identifier(cohort: Cohort, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "flat").symlink_to(cohort.root / "flat", target_is_directory=True)
    (sub / "pad.nii").symlink_to(cohort.root / "nifti" / "pad.nii")
    out = tmp_path / "out"
    assert main(["batch", str(sub), "--out", str(out), "--jobs", "2", "--pseudonymise"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and all(r["pseudonymised"] == "true" for r in rows)
    dicom = [r for r in rows if r["source_kind"] == "dicom"]
    for row in dicom:
        for column in ("patient_id", "accession_number", "study_instance_uid", "series_instance_uid"):
            assert len(row[column]) == 16 and int(row[column], 16) >= 0, column
        assert row["study_date"] == row["source"] == ""
    assert len({r["patient_id"] for r in dicom}) == 2
    # the recipe of docs/research.md §5 gives the same pseudonyms where the key is
    key = bytes.fromhex((out / "pseudonym.key").read_text().strip())
    expected = {
        hmac.new(key, f"patient_id\0{pid}".encode(), hashlib.sha256).hexdigest()[:16]
        for pid in ("BC-001", "BC-002")
    }
    assert {r["patient_id"] for r in dicom} == expected
    everything = (out / "results.csv").read_text() + (out / "gallery" / "index.html").read_text()
    for identifier in ("BC-001", "BC-002", "ACC-00", "flat", "20010812", "1.2.826", "2.25."):
        assert identifier not in everything
    assert [r["study_key"] for r in rows] == sorted(r["study_key"] for r in rows)


def test_dicom_outputs_only_when_asked(cohort: Cohort, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "flat").symlink_to(cohort.root / "flat", target_is_directory=True)
    (sub / "pad.nii").symlink_to(cohort.root / "nifti" / "pad.nii")
    out = tmp_path / "out"
    command = ["batch", str(sub), "--out", str(out), "--jobs", "2"]
    assert main(command) == 0
    assert not list(out.glob("studies/*/dicom"))
    before = {p: p.stat().st_mtime_ns for p in out.glob("studies/*/result.json")}
    # --dicom later: the DICOM studies are analysed again for their outputs, the NIfTI one is not
    assert main([*command, "--dicom"]) == 0
    redone = {p for p, mtime in before.items() if p.stat().st_mtime_ns != mtime}
    rows = {r["study_key"]: r for r in _rows(out)}
    for key, row in rows.items():
        result = json.loads((out / "studies" / key / "result.json").read_text())
        dicom = row["source_kind"] == "dicom"
        assert (out / "studies" / key / "result.json" in redone) is dicom
        assert (
            row["dicom_outputs"] == ("true" if dicom else "false")
            and result["batch"]["dicom_outputs"] is dicom
        )
        if dicom:
            assert _number(row["time_dicom_s"]) == pytest.approx(
                result["timings_s"]["encode_dicom"], abs=2e-3
            )
            for name in ("seg", "sr", "overlay"):
                path = Path(result["files"][f"dicom_{name}"])
                assert path == out / "studies" / key / "dicom" / f"{name}.dcm" and path.exists()
                assert pydicom.dcmread(path).StudyInstanceUID == row["study_instance_uid"]
        else:  # analysed before --dicom and not again: a NIfTI file has no study to attach them to
            assert result["batch"]["dicom_note"] is None and not (out / "studies" / key / "dicom").exists()
    # and without --dicom again nothing is redone (results with DICOM outputs are a superset)
    after = {p: p.stat().st_mtime_ns for p in out.glob("studies/*/result.json")}
    assert main(command) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("studies/*/result.json")} == after


def _group_alive(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that still run (zombies waiting for init excluded)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def test_a_killed_run_resumes_without_redoing_finished_studies(cohort: Cohort, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    for name in ("flat", "BC-003", "corrupt", "multi"):
        (sub / name).symlink_to(cohort.root / name, target_is_directory=True)
    (sub / "example_ct.nii.gz").symlink_to(cohort.root / "nifti" / "example_ct.nii.gz")
    out = tmp_path / "out"
    command = [str(BODYCOMP), "batch", str(sub), "--out", str(out), "--jobs", "1"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + scaled(120)
    while not list(out.glob("studies/*/result.json")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "no study finished in 2 minutes"
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    # the analysing process dies with the batch (nothing keeps writing into the output folder)
    deadline = time.monotonic() + scaled(20)
    while _group_alive(first.pid):
        assert time.monotonic() < deadline, f"processes left behind: {_group_alive(first.pid)}"
        time.sleep(0.1)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("studies/*/result.json")}
    assert 1 <= len(finished) < 6
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr  # the corrupt study
    assert f": {6 - len(finished)} analysed now, {len(finished)} already done" in second.stdout
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was analysed again"
    rows = _rows(out)
    assert sorted(r["status"] for r in rows) == ["done"] * 5 + ["failed"]
    assert not list(out.glob("studies/*/.partial"))
    # one log line for the failure, naming the study by its key only
    corrupt = next(r for r in rows if r["status"] == "failed")
    failures = [line for line in second.stderr.splitlines() if "event=study_failed" in line]
    assert len(failures) == 1 and f"study={corrupt['study_key']}" in failures[0]
    for identifier in PATIENT_IDS:
        assert identifier not in second.stderr + second.stdout


def test_a_study_with_two_patient_ids_is_not_measured(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    hcc = _hcc_files()[:5]
    study_uid, _, _ = _write_patient(hcc, lambda i, ds: root / "a" / f"{i}.dcm", "BC-101")
    _write_patient(hcc, lambda i, ds: root / "b" / f"{i}.dcm", "BC-102", study_uid=study_uid)
    out = tmp_path / "out"
    assert main(["batch", str(root), "--out", str(out), "--jobs", "1"]) == 1
    [row] = _rows(out)
    assert row["status"] == "failed" and "2 different PatientIDs" in row["error"]
    assert (out / "studies" / row["study_key"] / "failure.json").exists()


def test_heights_file_with_an_unknown_column_is_refused(cohort: Cohort, tmp_path: Path, capsys: Any) -> None:
    heights = tmp_path / "heights.csv"
    heights.write_text("patient_id,hieght_m\nBC-001,1.7\n")
    assert main(["batch", str(cohort.root), "--out", str(tmp_path / "out"), "--heights", str(heights)]) == 2
    assert "unknown column(s) hieght_m" in capsys.readouterr().err


def test_docs_list_every_column_with_its_unit() -> None:
    text = (REPO / "docs" / "research.md").read_text()
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    missing = [c for c in table.COLUMNS if c not in rows]
    assert not missing, f"docs/research.md does not describe: {missing}"


# --- the gallery in headless Chromium -----------------------------------------------------------


def _launch(playwright: Any) -> Any:
    if not CHROMIUM.exists():
        pytest.fail("Chromium (Debian package chromium) is required: run ./scripts/test.sh")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)


def _until(page: Any, script: str, timeout_s: float = 30) -> None:
    """Poll ``script`` (a JavaScript function) until it returns true. Not ``wait_for_function``:
    its polling evaluates strings, which the gallery's Content Security Policy forbids."""
    deadline = time.monotonic() + scaled(timeout_s)
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        time.sleep(0.1)


RANK = {"review": 0, "failed": 1, "l3_not_found": 2, "pending": 3, "ok": 4}


def _visible(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "article.tile",
        "els => els.filter(e => !e.hidden).map(e => ({key: e.dataset.key, verdict: e.dataset.verdict}))",
    )


def test_gallery_review_marks_and_corrections_rerun(
    batch_run: BatchRun, cohort: Cohort, tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    out = tmp_path / "out"
    shutil.copytree(batch_run.out, out)
    rows = {r["study_key"]: r for r in batch_run.rows}
    verdict = {k: (r["qc_status"] if r["status"] == "done" else r["status"]) for k, r in rows.items()}
    shots = Path(os.environ.get("GALLERY_SCREENSHOTS", tmp_path / "screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    target = next(r for r in batch_run.rows if r["patient_id"] == "BC-002")  # review: wrong level
    ok_mark = next(r for r in batch_run.rows if r["patient_id"] == "BC-006")
    outline_mark = next(r for r in batch_run.rows if r["source"] == "nifti/example_ct.nii.gz")
    new_slice = int(target["l3_slice_index"]) + 2
    with sync_playwright() as playwright:
        browser = _launch(playwright)
        context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 5000})
        page = context.new_page()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto((out / "gallery" / "index.html").as_uri())
        _until(page, "() => document.querySelectorAll('article.tile').length === 13")
        # every thumbnail is a real picture (the level pictures of the 12 analysed, the overlays of
        # the 9 measured; the corrupt study has none)
        _until(
            page,
            "() => [...document.images].length === 21 && "
            "[...document.images].every(i => i.complete && i.naturalWidth > 100)",
        )
        page.screenshot(path=str(shots / "gallery.png"), full_page=True)

        # sorted: review first, lowest confidence first among them; then failed, L3 not found, ok
        order = _visible(page)
        assert [t["verdict"] for t in order] == [verdict[t["key"]] for t in order]
        ranks = [(RANK[t["verdict"]], _number(rows[t["key"]]["l3_confidence"]) or -1) for t in order]
        assert ranks == sorted(ranks) and order[0]["verdict"] == "review"

        # filters hide tiles
        page.select_option("#filter-verdict", "ok")
        assert {t["key"] for t in _visible(page)} == {k for k, v in verdict.items() if v == "ok"}
        assert page.inner_text("#shown") == "showing 2 of 13"
        page.select_option("#filter-verdict", "")
        page.select_option("#filter-flag", "fov_truncated")
        truncated = {k for k, r in rows.items() if "fov_truncated" in r["qc_flags"].split(";")}
        assert {t["key"] for t in _visible(page)} == truncated and 0 < len(truncated) < 13
        page.select_option("#filter-flag", "")

        # a click opens the full pictures
        page.click(f"article[data-key='{target['study_key']}'] img[data-kind='overlay']")
        _until(
            page,
            "() => !document.getElementById('viewer').hidden && "
            "[...document.querySelectorAll('#viewer-pictures img')]"
            ".every(i => i.complete && i.naturalWidth > 900)",
        )
        sources = page.eval_on_selector_all(
            "#viewer-pictures img", "els => els.map(e => e.getAttribute('src'))"
        )
        assert sources == [
            f"../studies/{target['study_key']}/l3_overlay.png",
            f"../studies/{target['study_key']}/l3_qc.png",
        ]
        page.screenshot(path=str(shots / "viewer.png"))
        page.keyboard.press("Escape")
        assert page.eval_on_selector("#viewer", "e => e.hidden")

        # the reader's marks, exported as corrections.csv
        tile = f"article[data-key='{target['study_key']}']"
        page.check(f"{tile} input[type=radio][value=wrong_level]")
        page.fill(f"{tile} input.mark-slice", str(new_slice))
        page.check(f"article[data-key='{ok_mark['study_key']}'] input[type=radio][value=ok]")
        page.check(f"article[data-key='{outline_mark['study_key']}'] input[type=radio][value=wrong_outline]")
        page.select_option("#filter-mark", "wrong_level")
        assert [t["key"] for t in _visible(page)] == [target["study_key"]]
        page.select_option("#filter-mark", "")
        with page.expect_download() as download:
            page.click("#export")
        corrections = tmp_path / "corrections.csv"
        download.value.save_as(corrections)
        assert download.value.suggested_filename == "corrections.csv"
        page.screenshot(path=str(shots / "marked.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert all(url.startswith("file://") for url in requests), [
        u for u in requests if not u.startswith("file:")
    ]
    marks = read_corrections(corrections)
    assert {k: (c.mark, c.slice_index) for k, c in marks.items()} == {
        target["study_key"]: ("wrong_level", new_slice),
        ok_mark["study_key"]: ("ok", None),
        outline_mark["study_key"]: ("wrong_outline", None),
    }

    # fed back: the wrong-level study is measured at the reader's slice, nothing else is redone
    results = {p: p.stat().st_mtime_ns for p in out.glob("studies/*/result.json")}
    command = ["batch", str(cohort.root), "--out", str(out), "--jobs", "2", "--heights", str(cohort.heights)]
    assert main([*command, "--corrections", str(corrections)]) == 1
    redone = [p for p, mtime in results.items() if p.stat().st_mtime_ns != mtime]
    assert redone == [out / "studies" / target["study_key"] / "result.json"]
    result = json.loads(redone[0].read_text())
    assert result["l3"]["method"] == "manual" and result["l3"]["manual"] is True
    assert result["l3"]["slice_index"] == new_slice
    after = {r["study_key"]: r for r in _rows(out)}
    check_row(after[target["study_key"]], result)
    assert (after[target["study_key"]]["reader_mark"], after[target["study_key"]]["reader_slice_index"]) == (
        "wrong_level",
        str(new_slice),
    )
    assert (
        after[target["study_key"]]["l3_method"] == "manual"
        and after[target["study_key"]]["l3_confidence"] == ""
    )
    assert after[ok_mark["study_key"]]["reader_mark"] == "ok"
    assert after[outline_mark["study_key"]]["reader_mark"] == "wrong_outline"
    # the corrections are kept in the output folder: a later run does not undo them
    assert read_corrections(out / "corrections.csv") == marks
    mtime = redone[0].stat().st_mtime_ns
    assert main(command) == 1
    assert redone[0].stat().st_mtime_ns == mtime
    assert {r["study_key"]: r for r in _rows(out)}[target["study_key"]] == after[target["study_key"]]
