"""Corrections (issue #23): ``bodycomp reanalyze``, and the node's own results sent back to it.

Real processes on loopback: ``bodycomp serve`` with its embedded broker and worker, DCMTK storescu
as the modality and DCMTK storescp as the PACS. Each correction must give a new SEG, SR and overlay
(new UIDs) whose SR names the SR it supersedes, and the node's own results sent back to it must
start nothing.
"""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.test_node_e2e import SC, SEG, SR, sr_numbers
from tests.test_node_support import (
    BODYCOMP,
    DCMTK,
    copy_study,
    received,
    start_node,
    storescp,
    storescu,
    study_status,
    wait_for,
)
from tests.timing import quiet_period

pytestmark = [pytest.mark.network, pytest.mark.slow]

RESULT_TIMEOUT = 120


def by_z(files: list[Path]) -> list[tuple[float, str]]:
    """(z, SOP Instance UID) of each CT file, inferior → superior."""
    out = []
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append((float(ds.ImagePositionPatient[2]), str(ds.SOPInstanceUID)))
    return sorted(out)


def send_uncompressed(port: int, files: list[Path]) -> str:
    """DCMTK storescu proposing the uncompressed transfer syntaxes (SEG, SR and the overlay are)."""
    run = subprocess.run(
        [str(DCMTK / "storescu"), "-v", "-R", "-aec", "BODYCOMP", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return run.stdout + run.stderr


def reanalyze(data_dir: Path, study_uid: str, *args: str) -> str:
    run = subprocess.run(
        [BODYCOMP, "reanalyze", "--data-dir", str(data_dir), "--study", study_uid, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def result_sets(dest: Path, count: int, log: Path) -> list[pydicom.Dataset]:
    return list(
        wait_for(
            f"{count} result instances at the PACS",
            lambda: (r := received(dest)) and len(r) >= count and r,
            RESULT_TIMEOUT,
            log,
        )
    )


def newest(results: list[pydicom.Dataset], seen: set[str]) -> dict[str, pydicom.Dataset]:
    """The result set not seen before, by SOP Class UID (exactly one SEG, SR and overlay)."""
    fresh = [ds for ds in results if str(ds.SOPInstanceUID) not in seen]
    assert sorted(ds.SOPClassUID for ds in fresh) == sorted([SEG, SR, SC]), [ds.SOPClassUID for ds in fresh]
    return {str(ds.SOPClassUID): ds for ds in fresh}


def texts(sr: pydicom.Dataset) -> list[str]:
    out: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                out.append(f"{item.ConceptNameCodeSequence[0].CodeMeaning}: {item.TextValue}")
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out


def predecessor(sr: pydicom.Dataset) -> tuple[str, str, str]:
    [study] = sr.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [sop] = series.ReferencedSOPSequence
    return str(study.StudyInstanceUID), str(series.SeriesInstanceUID), str(sop.ReferencedSOPInstanceUID)


def identity(sr: pydicom.Dataset) -> tuple[str, str, str]:
    return str(sr.StudyInstanceUID), str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID)


def analysed_slice(seg: pydicom.Dataset) -> str:
    return str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)


def areas(sr: pydicom.Dataset) -> list[float]:
    return sorted(round(v, 2) for name, v in sr_numbers(sr) if name == "Area")


def number(sr: pydicom.Dataset, name: str) -> float:
    return next(v for n, v in sr_numbers(sr) if n == name)


def test_reanalyze_slice_z_and_patient_values_supersede_and_own_results_change_nothing(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    slices = by_z(files)
    dest = tmp_path / "pacs"
    with storescp(dest) as dest_port:
        node = start_node(tmp_path / "data", "--destination", f"DEST@127.0.0.1:{dest_port}")
        try:
            assert "Failed" not in storescu(node.port, files)
            first = newest(result_sets(dest, 3, node.log), set())
            seen = {str(ds.SOPInstanceUID) for ds in first.values()}
            auto_slice = analysed_slice(first[SEG])
            k = [uid for _, uid in slices].index(auto_slice)

            # 1. Another slice, by SOP Instance UID: method manual, the SR names its predecessor.
            target = slices[k + 3][1]
            reanalyze(node.data_dir, study_uid, "--slice-uid", target, "--reason", "level too low")
            second = newest(result_sets(dest, 6, node.log), seen)
            seen |= {str(ds.SOPInstanceUID) for ds in second.values()}
            assert analysed_slice(second[SEG]) == target
            assert predecessor(second[SR]) == identity(first[SR])
            said = texts(second[SR])
            assert "How the L3 level was found: manual" in said, said
            assert any(
                t.startswith(
                    "Correction of an earlier result: analysed slice corrected by bodycomp reanalyze"
                )
                and "level too low" in t
                for t in said
            ), said
            assert {ds.StudyInstanceUID for ds in second.values()} == {study_uid}
            assert {ds.SeriesInstanceUID for ds in second.values()}.isdisjoint(
                {ds.SeriesInstanceUID for ds in first.values()}
            )

            # 2. Another slice, by z (mm): the slice nearest it.
            z, target_z = slices[k - 2]
            reanalyze(node.data_dir, study_uid, "--z", f"{z + 0.4:.1f}")
            third = newest(result_sets(dest, 9, node.log), seen)
            seen |= {str(ds.SOPInstanceUID) for ds in third.values()}
            assert analysed_slice(third[SEG]) == target_z
            assert predecessor(third[SR]) == identity(second[SR])

            # 3. Patient values only: the stored masks measured again, nothing segmented.
            reanalyze(node.data_dir, study_uid, "--height-m", "1.80", "--weight-kg", "81", "--sex", "F")
            fourth = newest(result_sets(dest, 12, node.log), seen)
            seen |= {str(ds.SOPInstanceUID) for ds in fourth.values()}
            assert analysed_slice(fourth[SEG]) == target_z
            assert predecessor(fourth[SR]) == identity(third[SR])
            assert areas(fourth[SR]) == areas(third[SR])
            assert number(fourth[SR], "Body height") == pytest.approx(1.80)
            study = study_status(node.data_dir, study_uid)
            assert study is not None
            current = [j for j in study["jobs"] if j["state"] == "done"]
            assert len(current) == 1 and len(study["jobs"]) == 4, study["jobs"]
            assert [j["state"] for j in study["jobs"]][:3] == ["superseded"] * 3
            summary = current[0]["result"]
            sm = summary["areas_cm2"]["skeletal_muscle"]
            assert summary["smi_cm2_m2"] == pytest.approx(sm / 1.80**2, abs=0.01)
            assert summary["correction"].startswith("patient values corrected by bodycomp reanalyze")
            text = subprocess.run(
                [BODYCOMP, "status", "--data-dir", str(node.data_dir)], capture_output=True, text=True
            ).stdout
            assert text.count("superseded by job") == 3 and "corrects:" in text, text

            # 3b. Another slice again: the height given by the earlier correction is kept.
            reanalyze(node.data_dir, study_uid, "--slice-uid", auto_slice)
            fifth = newest(result_sets(dest, 15, node.log), seen)
            seen |= {str(ds.SOPInstanceUID) for ds in fifth.values()}
            assert analysed_slice(fifth[SEG]) == auto_slice
            assert predecessor(fifth[SR]) == identity(fourth[SR])
            assert number(fifth[SR], "Body height") == pytest.approx(1.80)
            assert areas(fifth[SR]) == areas(first[SR])  # the same slice, segmented the same way
            again = reanalyze(node.data_dir, study_uid, "--slice-uid", auto_slice)
            assert "asked before" in again, again

            # 4. The node's own results sent back to it: received, but no new job and nothing sent.
            mine = sorted(dest.iterdir())
            assert "Failed" not in send_uncompressed(node.port, mine)
            wait_for(
                "the results sent back to be stored",
                lambda: node.text().count("outcome=new") >= len(files) + len(mine),
                30,
                node.log,
            )
            quiet_period(1.5 + 4)  # the stable time, and more: a reaction would have started by now
            study = study_status(node.data_dir, study_uid)
            assert study is not None and len(study["jobs"]) == 5, study["jobs"]
            assert study["state"] == "done"
            assert len(received(dest)) == 15

            # export: the current result, with its history and what it corrected
            run = subprocess.run(
                [BODYCOMP, "export", "--data-dir", str(node.data_dir)], capture_output=True, text=True
            )
            [row] = [r for r in csv.DictReader(io.StringIO(run.stdout)) if r["study_uid"] == study_uid]
            assert row["job_id"] == str(study["jobs"][-1]["id"])
            assert row["history"].count("superseded") == 4, row["history"]
            assert row["correction.description"].startswith("analysed slice corrected by bodycomp reanalyze")
            assert row["correction.patient_values.height_m"] == "1.8"
        finally:
            node.stop()


def test_reanalyze_a_study_whose_first_analysis_failed(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """A series that stops above L3 (ribs and upper lumbar spine only) fails: "not in the field of
    view". The operator, who knows better, names a slice; the node analyses it and sends results."""
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    slices = by_z(files)
    keep = {uid for z, uid in slices if z > slices[0][0] + 252}  # ~28 slices from T12 up
    files = [f for f in files if str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) in keep]
    dest = tmp_path / "pacs"
    with storescp(dest) as dest_port:
        node = start_node(tmp_path / "data", "--destination", f"DEST@127.0.0.1:{dest_port}")
        try:
            assert "Failed" not in storescu(node.port, files)
            study = wait_for(
                "the analysis to fail",
                lambda: (s := study_status(node.data_dir, study_uid)) and s["state"] == "failed" and s,
                RESULT_TIMEOUT,
                node.log,
            )
            assert "not in the field of view" in study["reason"], study
            lowest = min((z, uid) for z, uid in by_z(files))[1]
            wrong = subprocess.run(
                [
                    BODYCOMP,
                    "reanalyze",
                    "--data-dir",
                    str(node.data_dir),
                    "--study",
                    study_uid,
                    "--slice-uid",
                    "1.2.3",
                ],
                capture_output=True,
                text=True,
            )
            assert wrong.returncode == 2 and "not a slice of the analysed series" in wrong.stderr, (
                wrong.stderr
            )
            reanalyze(node.data_dir, study_uid, "--slice-uid", lowest, "--height-m", "1.7")
            results = newest(result_sets(dest, 3, node.log), set())
            assert analysed_slice(results[SEG]) == lowest
            assert "PredecessorDocumentsSequence" not in results[SR]  # nothing was sent before
            study = wait_for(
                "the study done",
                lambda: (s := study_status(node.data_dir, study_uid)) and s["state"] == "done" and s,
                30,
                node.log,
            )
            assert [j["state"] for j in study["jobs"]] == ["superseded", "done"]
        finally:
            node.stop()


def test_reanalyze_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    """An unknown study or a contradictory request: exit 2 and one line saying why."""
    data = tmp_path / "data"
    data.mkdir()
    from node.store.index import Index

    Index(data / "index.sqlite").close()
    for args, message in (
        (["--study", "1.2.3", "--z", "10"], "no study 1.2.3"),
        (["--study", "1.2.3"], "nothing to correct"),
    ):
        run = subprocess.run(
            [BODYCOMP, "reanalyze", "--data-dir", str(data), *args], capture_output=True, text=True
        )
        assert run.returncode == 2 and message in run.stderr, run.stderr


def test_a_correction_has_its_own_uids_and_an_automatic_result_keeps_its_own() -> None:
    """A correction must not overwrite the original in the PACS; a retry must give the same UIDs."""
    from workers.encode.uids import OutputIdentity

    base = OutputIdentity.build("1.2.3", ["1.2.3.4"], "0.1", "tomovision-l3@1", "martin2013@1")
    assert base.key == "1.2.3|" + base.key.split("|")[1] + "|0.1|tomovision-l3@1|martin2013@1"
    one = OutputIdentity.build("1.2.3", ["1.2.3.4"], "0.1", "tomovision-l3@1", "martin2013@1", revision="a")
    again = OutputIdentity.build("1.2.3", ["1.2.3.4"], "0.1", "tomovision-l3@1", "martin2013@1", revision="a")
    other = OutputIdentity.build("1.2.3", ["1.2.3.4"], "0.1", "tomovision-l3@1", "martin2013@1", revision="b")
    uids = {i.instance_uid(kind) for i in (base, one, other) for kind in ("seg", "sr", "overlay")}
    assert len(uids) == 9
    assert one.instance_uid("sr") == again.instance_uid("sr")


def test_kept_qc_reasons_are_those_the_correction_does_not_touch() -> None:
    from workers.revision import LEVEL, OUTLINE, PATIENT, kept_qc

    previous = {
        "status": "review",
        "qc": {
            "flags": ["low_l3_confidence", "fov_truncated", "height_missing", "contrast_enhanced"],
            "reasons": [
                "L3 localisation confidence 0.40 is below 0.5",
                "segmentation: fov truncated",
                "patient input: height missing",
                "contrast agent recorded (X): muscle HU is higher than unenhanced",
            ],
        },
    }
    flags = {
        kinds: [flag for flag, _ in kept_qc(previous, kinds)] for kinds in ((LEVEL,), (OUTLINE,), (PATIENT,))
    }
    assert flags[(LEVEL,)] == ["height_missing", "contrast_enhanced"]
    assert flags[(OUTLINE,)] == ["low_l3_confidence", "height_missing", "contrast_enhanced"]
    assert flags[(PATIENT,)] == ["low_l3_confidence", "fov_truncated", "contrast_enhanced"]


def test_the_nodes_own_results_ask_for_no_correction(example_ct_derived_dicom: Path, tmp_path: Path) -> None:
    """Its SR has Finding Sites "L3 vertebra" and Tracking Identifiers "L3 SM" on image points, and its
    SEG has the tissue codes: without the own-output check they would look like a reader's."""
    from node.schedule.reader_objects import is_own, marked_l3_images
    from node.store.index import Index
    from workers.pipeline import AnalysisOptions, analyse

    analyse(example_ct_derived_dicom, AnalysisOptions(write_dicom=True), tmp_path / "out")
    index = Index(tmp_path / "index.sqlite")
    try:
        for name in ("seg", "sr", "overlay"):
            assert is_own(index, pydicom.dcmread(tmp_path / "out" / "dicom" / f"{name}.dcm"))
    finally:
        index.close()
    assert marked_l3_images(pydicom.dcmread(tmp_path / "out" / "dicom" / "sr.dcm")) == []
