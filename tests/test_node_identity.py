"""A study is the unit of identity (#18): two patients are never analysed as one.

Found by a tester: two studies of two patients that share a Series Instance UID (buggy modalities
and anonymisers do this) were merged. The second study's analysis took the slices of both, and it
superseded the first study's job and cancelled its undelivered results, because instances were
selected and jobs superseded by series UID alone. These tests run the node's own index and dispatch
on real DICOM files written to a spool (the network path is the same SCP as everywhere else; what
was wrong is what the index returns).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pydicom
import pytest

from node.config import NodeSettings
from node.schedule.dispatch import SERIES_UID_SHARED, dispatch_study
from node.schedule.stability import StabilityTimer, claim_stable_studies
from node.store.index import SCHEMA_VERSION, Index, InstanceRecord, digest_file
from tests.clock import ManualClock, claim_after_idle
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.index_records import record_file
from tests.reliability import recorded
from tests.test_node_support import copy_study, start_node, storescu, study_status, wait_for
from workers.job import INPUT, JOB
from workers.jsonfile import read_json
from workers.load.selection import SelectionPolicy
from workers.measure.verdict import assess

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _receive(index: Index, node: NodeSettings, options: SeriesOptions, n: int, now: float) -> list[Path]:
    """Write a CT series into the node's spool as the SCP does, and record each instance."""
    g = axial_geometry(n_slices=n)
    study_dir = node.spool_dir / "studies" / options.study_uid
    paths = write_series(study_dir / options.series_uid, sample(block_phantom(), g), g, options)
    for path in paths:
        assert record_file(index, path, "CT1", now) == "new"
    return paths


def _dispatch_all(index: Index, node: NodeSettings) -> dict[str, list[int]]:
    published: list[dict[str, object]] = []
    return {
        s.study_uid: dispatch_study(s, index, node, SelectionPolicy(), published.append)
        for s in claim_after_idle(index)
    }


def test_two_patients_sharing_a_series_uid_are_analysed_from_their_own_instances(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = NodeSettings(data_dir=tmp_path / "data")
    index = Index(node.index_path)
    a = SeriesOptions(extra={"PatientID": "PAT-A-4711"})
    b = SeriesOptions(series_uid=a.series_uid, extra={"PatientID": "PAT-B-0815"})
    assert a.study_uid != b.study_uid
    _receive(index, node, a, 6, now=0)
    jobs_a = _dispatch_all(index, node)[a.study_uid]
    _receive(index, node, b, 4, now=200)
    with caplog.at_level(logging.WARNING):
        jobs_b = _dispatch_all(index, node)[b.study_uid]
    [job_a], [job_b] = jobs_a, jobs_b
    for job_id, study, n in ((job_a, a, 6), (job_b, b, 4)):
        row = index.job(job_id)
        assert row is not None and row["study_uid"] == study.study_uid
        assert row["state"] == "queued", "the other study's dispatch superseded this job"
        inputs = sorted((node.data_dir / row["result_dir"] / INPUT).iterdir())
        assert len(inputs) == n, "the job's input holds another study's instances"
        assert {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in inputs} == {
            study.study_uid
        }
    spec_b = read_json(node.data_dir / str(index.job(job_b)["result_dir"]) / JOB)
    assert spec_b is not None and spec_b["flags"] == [SERIES_UID_SHARED]
    assert any("event=series_uid_shared" in r.getMessage() for r in caplog.records)
    assert "PAT-" not in caplog.text, "a patient ID reached the log"
    # the first study's job was created before the second arrived; a rebuild sees the sharing too
    assert index.studies_sharing_series(a.study_uid, a.series_uid) == 1


def test_a_series_holding_two_patients_is_not_analysed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = NodeSettings(data_dir=tmp_path / "data")
    index = Index(node.index_path)
    first = SeriesOptions(extra={"PatientID": "PAT-A-4711"})
    # a second sender files another patient's slices under the same study and series UIDs
    intruder = SeriesOptions(
        study_uid=first.study_uid, series_uid=first.series_uid, seed=1, extra={"PatientID": "PAT-B-0815"}
    )
    _receive(index, node, first, 4, now=0)
    g = axial_geometry(n_slices=2)
    paths = write_series(
        tmp_path / "intruder", sample(block_phantom(), g), g, intruder
    )  # other SOP Instance UIDs, same series
    for path in paths:
        target = node.spool_dir / "studies" / first.study_uid / first.series_uid / path.name
        path.replace(target)
        assert record_file(index, target, "CT2", now=10) == "new"
    with caplog.at_level(logging.ERROR):
        assert _dispatch_all(index, node) == {first.study_uid: []}
    study = index.study(first.study_uid)
    assert study is not None and study["state"] == "failed"
    assert "instances of 2 patients" in study["reason"]
    assert any("event=series_refused" in r.getMessage() for r in caplog.records)
    assert "PAT-" not in caplog.text


def test_a_re_sent_identical_instance_does_not_reset_the_stable_timer(tmp_path: Path) -> None:
    node = NodeSettings(data_dir=tmp_path / "data")
    index = Index(node.index_path)
    options = SeriesOptions()
    paths = _receive(index, node, options, 3, now=0)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    again = InstanceRecord(
        options.study_uid,
        options.series_uid,
        ds.SOPInstanceUID,
        ds.SOPClassUID,
        paths[0],
        paths[0].stat().st_size,
        digest_file(paths[0]),
        "CT1",
    )
    clock = ManualClock()
    timer = StabilityTimer(clock)
    assert claim_stable_studies(index, 30, timer) == []  # the scheduler sees the study
    for _ in range(3):  # a sender that keeps repeating itself, every 9 s
        clock.advance(9)
        assert index.record_instance(again, now=1000 + clock.now) == "duplicate"
        assert claim_stable_studies(index, 30, timer) == []
    clock.advance(3)
    assert [s.study_uid for s in claim_stable_studies(index, 30, timer)] == [options.study_uid]


#: The index as nodes before schema version 1 wrote it (series keyed by its UID alone).
SCHEMA_V0 = """
CREATE TABLE studies (study_uid TEXT PRIMARY KEY, calling_ae TEXT NOT NULL,
    patient_id TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '', first_received REAL NOT NULL, last_received REAL NOT NULL,
    changed INTEGER NOT NULL DEFAULT 1, state TEXT NOT NULL DEFAULT 'received',
    reason TEXT NOT NULL DEFAULT '',
    input_hash TEXT NOT NULL DEFAULT '', updated REAL NOT NULL);
CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT NOT NULL DEFAULT '', series_number TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '');
CREATE TABLE instances (sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL REFERENCES studies(study_uid), sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL, digest TEXT NOT NULL, calling_ae TEXT NOT NULL, received REAL NOT NULL);
CREATE INDEX instances_series ON instances(series_uid);
CREATE INDEX instances_study ON instances(study_uid);
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    series_uid TEXT NOT NULL, input_hash TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'queued',
    reason TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL DEFAULT 0, result_dir TEXT NOT NULL,
    calling_ae TEXT NOT NULL DEFAULT '', created REAL NOT NULL, enqueued REAL, started REAL,
    finished REAL,
    UNIQUE (series_uid, input_hash));
CREATE INDEX jobs_state ON jobs(state);
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL REFERENCES jobs(id),
    study_uid TEXT NOT NULL, path TEXT NOT NULL, sop_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
    destination TEXT NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL, created REAL NOT NULL, delivered REAL, last_error TEXT NOT NULL DEFAULT '',
    UNIQUE (sop_uid, destination));
INSERT INTO studies VALUES ('1.2', 'CT1', 'PAT-A', '20260101', 1, 2, 0, 'done', '', 'h', 3);
INSERT INTO series VALUES ('1.2.3', '1.2', 'CT', '3', 'abdomen');
INSERT INTO instances VALUES ('1.2.3.1', '1.2.3', '1.2', '1.2.840.10008.5.1.4.1.1.2', '/x/1', 10,
    'd1', 'CT1', 1);
INSERT INTO jobs (study_uid, series_uid, input_hash, state, result_dir, created)
    VALUES ('1.2', '1.2.3', 'h', 'done', 'results/1.2/1.2.3/h', 1);
INSERT INTO outbox (job_id, study_uid, path, sop_uid, sop_class_uid, destination, next_try, created)
    VALUES (1, '1.2', 'p', '1.2.9', '1.2.840.10008.5.1.4.1.1.66.4', 'PACS@127.0.0.1:104', 0, 1);
"""


def test_an_index_written_by_an_earlier_node_is_migrated_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_V0)
    old.close()
    index = Index(path)
    assert index.query("PRAGMA user_version")[0][0] == SCHEMA_VERSION
    [inst] = index.series_instances("1.2", "1.2.3")
    assert (inst["sop_uid"], inst["patient_id"]) == ("1.2.3.1", "PAT-A")
    [job] = index.query("SELECT * FROM jobs")
    assert (job["id"], job["state"]) == (1, "done")
    assert len(index.query("SELECT * FROM outbox WHERE job_id=1")) == 1
    assert index.query("PRAGMA foreign_key_check") == []
    # the same Series Instance UID in another study is now another series, with its own job
    index.record_instance(
        InstanceRecord("9.8", "1.2.3", "9.8.3.1", "1.2.840.10008.5.1.4.1.1.2", Path("/x/2"), 10, "d2", "CT1")
    )
    assert index.create_job("9.8", "1.2.3", "h", "results/9.8/1.2.3/h", "CT1")[1] is True
    assert index.job(1)["state"] == "done"
    index.close()
    Index(path).close()  # opening a migrated index again changes nothing


def test_the_shared_uid_flag_asks_for_review_with_a_reason() -> None:
    report = assess([], 0.9, [], [], [], [], {}, manual_slice=False, node_flags=[SERIES_UID_SHARED])
    assert report.status == "review"
    assert any("another study uses this Series Instance UID" in r for r in report.reasons)


def test_wall_clock_steps_do_not_move_the_stable_timer(tmp_path: Path) -> None:
    """#18: a clock set back an hour held studies an hour; one stepped forward during a sender's
    pause analysed half a study. The timer runs on the monotonic clock; the wall time recorded
    with each instance only says that something changed."""
    index = Index(tmp_path / "index.sqlite")
    clock = ManualClock()
    timer = StabilityTimer(clock)
    sop = "1.2.3.4.1"

    def receive(wall: float) -> None:
        nonlocal sop
        sop += "1"
        rec = InstanceRecord("1.2.3", "1.2.3.4", sop, "1.2.840.10008.5.1.4.1.1.2", Path("/x"), 1, sop, "CT1")
        assert index.record_instance(rec, now=wall) == "new"

    receive(wall=10_000)
    assert claim_stable_studies(index, 30, timer) == []
    clock.advance(10)
    receive(wall=10_000 - 3600)  # the wall clock was set back an hour
    assert claim_stable_studies(index, 30, timer) == []
    clock.advance(30)
    assert [s.study_uid for s in claim_stable_studies(index, 30, timer)] == ["1.2.3"], "held back"
    receive(wall=20_000)  # a late instance, then the sender pauses ...
    assert claim_stable_studies(index, 30, timer) == []
    clock.advance(5)  # ... while the wall clock jumps forward an hour: nothing the timer reads
    assert claim_stable_studies(index, 30, timer) == [], "half a study would be analysed"
    clock.advance(25)
    assert len(claim_stable_studies(index, 30, timer)) == 1


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.reliability
def test_a_real_node_keeps_two_patients_sharing_a_series_uid_apart(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """The tester's scenario end to end: ``bodycomp serve`` with its worker, DCMTK storescu sending
    patient A's study, then patient B's study whose series carries A's Series Instance UID. Each is
    analysed from its own slices (the SEG and SR reference only their own study's instances), A's
    results stay current, B's say the UID is shared, and no patient ID reaches the log."""
    files_a, study_a = copy_study(example_ct_derived_dicom, tmp_path / "a")
    files_b, study_b = copy_study(example_ct_derived_dicom, tmp_path / "b")
    shared = str(pydicom.dcmread(files_a[0], stop_before_pixels=True).SeriesInstanceUID)
    for files, patient, series in ((files_a, "PAT-A-4711", None), (files_b, "PAT-B-0815", shared)):
        for path in files:
            ds = pydicom.dcmread(path)
            ds.PatientID = patient
            if series:
                ds.SeriesInstanceUID = series
            ds.save_as(path, enforce_file_format=True)
    sops = {
        study: {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        for study, files in ((study_a, files_a), (study_b, files_b))
    }
    data_dir = tmp_path / "data"
    with recorded("two patients' studies sharing one Series Instance UID") as tally:
        tally.notes = (
            "patient B's series carries patient A's Series Instance UID; A sent first, B after A's analysis"
        )
        node = start_node(data_dir, stable_seconds=2)
        try:
            outputs = []
            for study, files in ((study_a, files_a), (study_b, files_b)):
                outputs.append(storescu(node.port, files))
                wait_for(
                    "the study to be analysed",
                    lambda study=study: (
                        (study_status(data_dir, study) or {}).get("state") in ("done", "failed")
                    ),
                    180,
                    node.log,
                )
        finally:
            node.stop()
        log_text = node.text()
        tally.sent = len(files_a) + len(files_b)
        tally.acknowledged = sum(out.count("Received Store Response (Success)") for out in outputs)
        tally.stored = len(list((data_dir / "spool" / "studies").glob("*/*/*.dcm")))
        tally.expected_analysed = 2
        referenced: dict[str, set[str]] = {}
        for study in (study_a, study_b):
            status = study_status(data_dir, study) or {}
            [job] = status["jobs"]
            tally.analysed += job["state"] == "done"
            out = data_dir / job["result_dir"] / "out"
            refs: set[str] = set()
            for path in (out / "dicom").glob("*.dcm"):
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                assert ds.StudyInstanceUID == study and ds.PatientID in ("PAT-A-4711", "PAT-B-0815")
                items = [
                    i for s in ds.get("ReferencedSeriesSequence", []) for i in s.ReferencedInstanceSequence
                ]
                items += [
                    i
                    for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", [])
                    for s in evidence.ReferencedSeriesSequence
                    for i in s.ReferencedSOPSequence
                ]
                # the CT images each result was made from (the SR also references the SEG)
                refs |= {
                    str(i.ReferencedSOPInstanceUID) for i in items if i.ReferencedSOPClassUID == CT_IMAGE
                }
            referenced[study] = refs
            result = json.loads((out / "result.json").read_text())
            tally.extra[f"flags_{'a' if study == study_a else 'b'}"] = ",".join(result["qc"]["flags"]) or "-"
        tally.extra["references_a"] = len(referenced[study_a])
        tally.extra["references_b"] = len(referenced[study_b])
        assert tally.acknowledged == tally.sent == tally.stored
        assert tally.analysed == 2, "a study's analysis was superseded or failed"
        for study in (study_a, study_b):
            assert referenced[study], "the results reference no source image"
            assert referenced[study] <= sops[study], "results reference the other patient's images"
        assert SERIES_UID_SHARED in str(tally.extra["flags_b"])
        assert "PAT-" not in log_text, "a patient ID reached the log"
