"""The closed loop with the embedded broker: DCMTK storescu → ``bodycomp serve`` → DCMTK storescp.

Real processes on loopback: the node as a user starts it (``bodycomp serve``, which runs its own
Celery worker on the SQLite broker), DCMTK as the modality and as the PACS receiving the results.
"""

from __future__ import annotations

import csv
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.test_node_support import (
    BODYCOMP,
    copy_study,
    free_port,
    received,
    start_node,
    status,
    storescp,
    storescu,
    study_status,
    wait_for,
)
from tests.timing import quiet_period, scaled

# The first test is the fast tier's one end-to-end test (`pytest -m "not slow"`, README); the
# others are marked slow one by one and run with the full suite.
pytestmark = pytest.mark.network

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
RESULT_TIMEOUT = 90  # stable time + analysis of example_ct (a few seconds) + delivery, with margin


def sr_numbers(sr: pydicom.Dataset) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []

    def walk(items: Any) -> None:
        for item in items:
            if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
                name = item.ConceptNameCodeSequence[0].CodeMeaning
                out.append((str(name), float(item.MeasuredValueSequence[0].NumericValue)))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return out


def check_result_set(results: list[pydicom.Dataset], study_uid: str, series_uid: str, data_dir: Path) -> None:
    """SEG, SR and overlay, in the source study, referencing the source series, with the numbers."""
    assert sorted(ds.SOPClassUID for ds in results) == sorted([SEG, SR, SC])
    assert {ds.StudyInstanceUID for ds in results} == {study_uid}
    by_class = {ds.SOPClassUID: ds for ds in results}
    seg = by_class[SEG]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert any("muscle" in label.lower() for label in labels), labels
    # The numbers in the SR are those of the analysis kept in the data directory.
    result = json.loads(
        next(data_dir.glob(f"results/{study_uid}/{series_uid}/*/out/result.json")).read_text()
    )
    areas = {round(v, 2) for name, v in sr_numbers(by_class[SR]) if name == "Area"}
    expected = {round(t["area_cm2"], 2) for t in result["tissues"].values()}
    assert expected <= areas, (expected, areas)
    muscle = result["tissues"]["skeletal_muscle"]["area_cm2"]
    assert 50 < muscle < 300, "an adult's L3 muscle area is tens to a few hundred cm²"


def check_cli(data_dir: Path, study_uid: str, dest_port: int, tmp_path: Path) -> None:
    """``status`` (text), ``export --csv`` and ``echo`` as an operator runs them."""
    text = subprocess.run([BODYCOMP, "status", "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert text.returncode == 0 and f"done     {study_uid}" in text.stdout, text.stdout + text.stderr
    csv_path = tmp_path / "export.csv"
    run = subprocess.run(
        [BODYCOMP, "export", "--data-dir", str(data_dir), "--csv", str(csv_path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    [row] = list(csv.DictReader(csv_path.open()))
    assert row["study_uid"] == study_uid and row["patient_id"] == "PHANTOM-001"
    assert float(row["tissues.skeletal_muscle.area_cm2"]) > 50
    ok = subprocess.run([BODYCOMP, "echo", f"DEST@127.0.0.1:{dest_port}"], capture_output=True, text=True)
    assert ok.returncode == 0 and "success" in ok.stdout
    bad = subprocess.run([BODYCOMP, "echo", f"DEST@127.0.0.1:{free_port()}"], capture_output=True, text=True)
    assert bad.returncode == 1 and "failed" in bad.stderr


def test_storescu_to_node_results_arrive_and_a_resent_study_gives_one_result_set(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study", keep_sop=True)
    series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    dest = tmp_path / "pacs"
    with storescp(dest) as dest_port:
        node = start_node(tmp_path / "data", "--destination", f"DEST@127.0.0.1:{dest_port}")
        try:
            started = time.monotonic()
            output = storescu(node.port, files)
            assert "Failed" not in output and "Error" not in output, output
            results = wait_for(
                "SEG, SR and overlay at storescp",
                lambda: len(received(dest)) >= 3 and received(dest),
                RESULT_TIMEOUT,
                node.log,
            )
            elapsed = time.monotonic() - started
            check_result_set(results, study_uid, series_uid, node.data_dir)
            study = wait_for(
                "study done",
                lambda: (
                    (s := study_status(node.data_dir, study_uid)) and s["outbox"].get("delivered") == 3 and s
                ),
                30,
                node.log,
            )
            assert study["state"] == "done" and study["instances"] == len(files)
            assert [j["state"] for j in study["jobs"]] == ["done"]
            check_cli(node.data_dir, study_uid, dest_port, tmp_path)

            # The same study again (same UIDs, same bytes): received, but not analysed or sent again.
            output = storescu(node.port, files)
            assert "Failed" not in output, output
            wait_for(
                "the resent study to be seen",
                lambda: node.text().count("outcome=duplicate") >= len(files),
                30,
                node.log,
            )
            quiet_period(1.5 + 3)  # the stable time, and more
            study = study_status(node.data_dir, study_uid)
            assert study is not None and len(study["jobs"]) == 1, study
            assert study["outbox"] == {"delivered": 3}
            assert len(received(dest)) == 3
        finally:
            assert node.stop() == 0, node.text()[-3000:]
    assert elapsed < scaled(RESULT_TIMEOUT)
    assert "PHANTOM" not in node.text() and "Phantom" not in node.text(), "no patient names or IDs in logs"


@pytest.mark.slow
def test_two_studies_interleaved_over_two_concurrent_associations(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    a, study_a = copy_study(example_ct_derived_dicom, tmp_path / "a")
    b, study_b = copy_study(example_ct_derived_dicom, tmp_path / "b")
    # Each association carries half of each study, interleaved instance by instance.
    first = [f for pair in zip(a[0::2], b[0::2], strict=False) for f in pair]
    second = [f for pair in zip(b[1::2], a[1::2], strict=False) for f in pair]
    dest = tmp_path / "pacs"
    with storescp(dest) as dest_port:
        node = start_node(tmp_path / "data", "--destination", f"DEST@127.0.0.1:{dest_port}")
        try:
            outputs: list[str] = []
            threads = [
                threading.Thread(target=lambda f=f: outputs.append(storescu(node.port, f)))
                for f in (first, second)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all("Failed" not in o for o in outputs), outputs
            wait_for("two result sets", lambda: len(received(dest)) >= 6, 2 * RESULT_TIMEOUT, node.log)
            quiet_period(1)
            results = received(dest)
            assert len(results) == 6
            for study_uid, files in ((study_a, a), (study_b, b)):
                mine = [ds for ds in results if ds.StudyInstanceUID == study_uid]
                check_result_set(
                    mine, study_uid, str(pydicom.dcmread(files[0]).SeriesInstanceUID), node.data_dir
                )
                study = study_status(node.data_dir, study_uid)
                assert study is not None and study["instances"] == len(files) and len(study["jobs"]) == 1
        finally:
            node.stop()


@pytest.mark.slow
def test_non_ct_study_is_accepted_and_ignored(tmp_path: Path) -> None:
    g = axial_geometry(n_slices=6)
    options = SeriesOptions(modality="MR")
    paths = write_series(tmp_path / "mr", sample(block_phantom(), g), g, options)
    for path in paths:  # a real MR Image Storage instance, not a CT labelled MR
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.save_as(path, enforce_file_format=True)
    node = start_node(tmp_path / "data", stable_seconds=0.5)
    try:
        output = storescu(node.port, paths)
        assert "Failed" not in output and "Error" not in output, output
        study = wait_for(
            "study ignored",
            lambda: (s := study_status(node.data_dir, options.study_uid)) and s["state"] == "ignored" and s,
            30,
            node.log,
        )
        assert "not CT" in study["reason"] and study["jobs"] == [] and study["instances"] == 6
        assert f"event=study_ignored study={options.study_uid}" in node.text()
        assert len(list((node.data_dir / "spool" / "studies").rglob("*.dcm"))) == 6, "kept by default"
    finally:
        node.stop()


@pytest.mark.slow
def test_unknown_calling_ae_is_rejected(example_ct_dicom: Path, tmp_path: Path) -> None:
    files = sorted(example_ct_dicom.iterdir())[:2]
    node = start_node(tmp_path / "data", env={"BODYCOMP_ALLOW_AE": "PACS"})  # the flat env form
    try:
        output = storescu(node.port, files, calling="INTRUDER")
        assert "Association Rejected" in output, output
        assert status(node.data_dir)["studies"] == []
        output = storescu(node.port, files, calling="PACS")
        assert "Failed" not in output, output
        assert len(status(node.data_dir)["studies"]) == 1
    finally:
        node.stop()


@pytest.mark.slow
def test_restart_dispatches_stable_studies_and_resends_undelivered_results(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """Stop the node mid-way twice; nothing is lost, nothing is done twice."""
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    data = tmp_path / "data"
    dest = tmp_path / "pacs"
    dest_port = free_port()
    destination = ["--destination", f"DEST@127.0.0.1:{dest_port}"]
    # 1. Received, not yet stable (long timer) when the node stops.
    node = start_node(data, *destination, stable_seconds=600)
    assert "Failed" not in storescu(node.port, files)
    assert node.stop() == 0
    assert study_status(data, study_uid)["state"] == "received"  # type: ignore[index]
    # 2. Restarted with a short timer: analysed at once; the destination is down, delivery retried.
    node = start_node(data, *destination, stable_seconds=1, log_name="serve2.log")
    try:
        study = wait_for(
            "job done and delivery failing",
            lambda: (
                (s := study_status(data, study_uid))
                and s["state"] == "done"
                and s["outbox"].get("pending") == 3
                and s
            ),
            RESULT_TIMEOUT,
            node.log,
        )
        wait_for("a failed attempt", lambda: "event=delivery_retry" in node.text(), 30, node.log)
    finally:
        assert node.stop() == 0
    # 3. Destination up, node restarted: the outbox is sent, exactly once.
    with storescp(dest, port=dest_port):
        node = start_node(data, *destination, stable_seconds=1, log_name="serve3.log")
        try:
            results = wait_for(
                "results after restart", lambda: len(received(dest)) >= 3 and received(dest), 60, node.log
            )
            check_result_set(results, study_uid, str(pydicom.dcmread(files[0]).SeriesInstanceUID), data)
            study = wait_for(
                "delivered",
                lambda: (s := study_status(data, study_uid)) and s["outbox"].get("delivered") == 3 and s,
                30,
                node.log,
            )
            assert len(study["jobs"]) == 1
        finally:
            node.stop()


@pytest.mark.slow
def test_worker_killed_mid_analysis_runs_again_and_sends_one_result_set(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """acks_late + reject_on_worker_lost: the task comes back; deterministic UIDs: one result set."""
    import os
    import signal

    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    dest = tmp_path / "pacs"
    with storescp(dest) as dest_port:
        node = start_node(
            tmp_path / "data", "--destination", f"DEST@127.0.0.1:{dest_port}", stable_seconds=0.5
        )
        try:
            assert "Failed" not in storescu(node.port, files)
            started = wait_for(
                "the analysis to start",
                lambda: next((node.data_dir / "results").glob("*/*/*/started.json"), None),
                RESULT_TIMEOUT,
                node.log,
            )
            os.kill(json.loads(started.read_text())["pid"], signal.SIGKILL)  # the worker child, mid-task
            results = wait_for(
                "results after the retry",
                lambda: len(received(dest)) >= 3 and received(dest),
                RESULT_TIMEOUT,
                node.log,
            )
            study = wait_for(
                "delivered",
                lambda: (
                    (s := study_status(node.data_dir, study_uid)) and s["outbox"].get("delivered") == 3 and s
                ),
                30,
                node.log,
            )
            quiet_period(2)
            assert len(received(dest)) == 3 and len(results) == 3
            [job] = study["jobs"]
            assert job["state"] == "done" and job["attempts"] == 2, job
        finally:
            node.stop()


@pytest.mark.slow
def test_ct_without_l3_fails_with_the_reason_in_status(tmp_path: Path) -> None:
    """An input the analysis cannot use fails at once (no retries), with its reason shown."""
    g = axial_geometry(n_slices=8)
    options = SeriesOptions()
    paths = write_series(tmp_path / "ct", sample(block_phantom(), g), g, options)
    node = start_node(tmp_path / "data", stable_seconds=0.5)
    try:
        assert "Failed" not in storescu(node.port, paths)
        study = wait_for(
            "the job to fail",
            lambda: (s := study_status(node.data_dir, options.study_uid)) and s["state"] == "failed" and s,
            RESULT_TIMEOUT,
            node.log,
        )
        [job] = study["jobs"]
        assert job["state"] == "failed" and job["reason"] and job["attempts"] == 1, job
        assert study["reason"] == job["reason"]
        text = subprocess.run(
            [BODYCOMP, "status", "--data-dir", str(node.data_dir)], capture_output=True, text=True
        )
        assert "failed" in text.stdout and job["reason"][:40] in text.stdout
    finally:
        node.stop()
