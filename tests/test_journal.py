"""The receive journal (issue #27): one flush per instance before Success, nothing lost after.

Crashes are real: ``bodycomp serve`` kills itself (``SIGKILL``) between the journal's flush and
the spool/index update (:mod:`node.receive.failpoints`), and a Python process that wrote a journal
kills itself before its syncer ran. Every count comes from DCMTK's storescu (what was
acknowledged), the spool's files and the index, never from the node's own account.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from node.receive.journal import INLINE_BYTES, Payload, ReceiveJournal, read_records, replay
from node.store.index import Index, InstanceRecord, digest_file
from node.store.spool import Spool
from tests.test_node_support import start_node, store_responses, storescu


def _sop(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def _index_counts(index_path: Path) -> Counter[str]:
    index = Index.read_only(index_path)
    try:
        return Counter(str(row["sop_uid"]) for row in index.query("SELECT sop_uid FROM instances"))
    finally:
        index.close()


def _spooled_digest(data_dir: Path, ds: pydicom.Dataset) -> str | None:
    path = (
        data_dir
        / "spool"
        / "studies"
        / ds.StudyInstanceUID
        / ds.SeriesInstanceUID
        / f"{ds.SOPInstanceUID}.dcm"
    )
    return digest_file(path, split_dataset(path)[1]) if path.is_file() else None


def _digest(path: Path) -> str:
    return digest_file(path, split_dataset(path)[1])


def _raw_copies(files: list[Path], out: Path) -> list[Path]:
    """The slices decoded and written Explicit VR Little Endian: 512 KB each, above INLINE_BYTES."""
    out.mkdir()
    copies = []
    for path in files:
        ds = pydicom.dcmread(path)
        ds.decompress()
        copies.append(out / path.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


@pytest.mark.slow
@pytest.mark.parametrize("syntax", ["j2k", "raw"])
def test_a_crash_between_the_journal_flush_and_the_spool_leaves_every_acknowledged_instance_once(
    tmp_path: Path, example_ct_dicom: Path, syntax: str
) -> None:
    """The node dies right after the 5th instance's journal flush, before its spool file (J2K,
    ~160 KB: its bytes are in the journal) or before its index row (raw, 512 KB > INLINE_BYTES:
    flushed in the spool first, the journal holds its row): after the restart the 4 acknowledged
    instances and the 5th, complete in the journal, are in the spool with their content and in
    the index once; the sender's re-send of all 10 then records each exactly once, and a clean
    stop leaves no journal."""
    files = sorted(example_ct_dicom.iterdir())[:10]
    if syntax == "raw":
        files = _raw_copies(files, tmp_path / "raw")
    assert (files[0].stat().st_size > INLINE_BYTES) == (syntax == "raw")
    data = tmp_path / "data"
    node = start_node(
        data, "--workers", "0", stable_seconds=3600, env={"BODYCOMP_FAILPOINT": "journal-flushed:5"}
    )
    output = storescu(node.port, files)
    node.process.wait(timeout=30)
    assert node.process.returncode == -9
    answers = store_responses(output)
    acknowledged = [Path(f) for f, answer in answers.items() if answer.startswith("Success")]
    assert acknowledged == files[:4], output
    fifth = _sop(files[4])
    segments = list((data / "spool" / "journal").glob("*.journal"))
    journaled = {r.record.sop_uid for s in segments for r in read_records(s, Spool(data / "spool", 0))}
    assert fifth.SOPInstanceUID in journaled
    assert _index_counts(data / "index.sqlite")[fifth.SOPInstanceUID] == 0, "the crash came before its row"
    if syntax == "j2k":
        assert _spooled_digest(data, fifth) is None, "the crash came before its spool file"

    node = start_node(data, "--workers", "0", stable_seconds=3600, log_name="serve-2.log")
    try:
        assert "event=journal_replayed" in node.text()
        counts = _index_counts(data / "index.sqlite")
        for path in files[:5]:
            ds = _sop(path)
            assert counts[ds.SOPInstanceUID] == 1, path.name
            assert _spooled_digest(data, ds) == _digest(path), path.name
        assert len(counts) == 5 and set(counts.values()) == {1}

        resent = store_responses(storescu(node.port, files))
        assert all(answer.startswith("Success") for answer in resent.values()), resent
        counts = _index_counts(data / "index.sqlite")
        assert len(counts) == 10 and set(counts.values()) == {1}
        for path in files:
            assert _spooled_digest(data, _sop(path)) == _digest(path), path.name
    finally:
        assert node.stop() == 0, node.text()
    assert list((data / "spool" / "journal").glob("*.journal")) == [], "a clean stop syncs and deletes it"
    assert Index.read_only(data / "index.sqlite").query("SELECT * FROM journal_segments") == []


WRITER = r"""
import os, signal, sys
from pathlib import Path
from pynetdicom.dsutils import split_dataset
from node.store.index import Index, InstanceRecord, digest_file
from node.receive.journal import Payload, ReceiveJournal
from node.store.spool import Spool
import pydicom

root, files = Path(sys.argv[1]), [Path(f) for f in sys.argv[2:]]
spool, index = Spool(root / "spool", 0), Index(root / "index.sqlite")
receive_index = Index(root / "index.sqlite", receive_journal=True)
journal = ReceiveJournal(root / "spool" / "journal", "rx0", spool, index, batch_wait_s=3600)
for n, path in enumerate(files):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    hash_from = split_dataset(path)[1]
    record = InstanceRecord(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
        spool.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID),
        path.stat().st_size, digest_file(path, hash_from), "TEST", "CT",
    )
    ticket = journal.append(record, Payload(path.stat().st_size, data=path.read_bytes()), hash_from)
    journal.flush(ticket)
    if n == 0:  # the first one fully applied (unflushed), the others only in the journal
        spool.place_bytes(path.read_bytes(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        receive_index.record_instance(record)
        journal.done(ticket)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_replay_applies_what_a_killed_process_left_once_and_stops_at_a_torn_record(
    tmp_path: Path, example_ct_dicom: Path
) -> None:
    """A process journals 4 instances (one also spooled and recorded, unflushed) and is killed
    before its syncer ran; the last record is torn (cut mid-payload, as a crash mid-write leaves
    it). Replay writes and records the three whole ones once, ignores the torn one, deletes the
    segment; a second replay finds nothing to do."""
    files = sorted(example_ct_dicom.iterdir())[:4]
    result = subprocess.run(
        [sys.executable, "-c", WRITER, str(tmp_path), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == -9, result.stderr
    (segment,) = (tmp_path / "spool" / "journal").glob("rx0-*.journal")
    size = segment.stat().st_size
    with segment.open("r+b") as handle:
        handle.truncate(size - 1000)

    spool, index = Spool(tmp_path / "spool", 0), Index(tmp_path / "index.sqlite")
    report = replay(tmp_path / "spool" / "journal", spool, index)
    assert (report.segments, report.records, report.torn) == (1, 3, 0), report
    assert report.rewritten == 2, "the first was in the spool already, with its content"
    assert report.recorded == 2, "the first was in the index already: a duplicate, nothing changed"
    counts = Counter(str(r["sop_uid"]) for r in index.query("SELECT sop_uid FROM instances"))
    assert sorted(counts) == sorted(str(_sop(f).SOPInstanceUID) for f in files[:3])
    assert set(counts.values()) == {1}
    for path in files[:3]:
        assert _spooled_digest(tmp_path, _sop(path)) == _digest(path)
    assert _spooled_digest(tmp_path, _sop(files[3])) is None
    assert list((tmp_path / "spool" / "journal").glob("*.journal")) == []
    assert replay(tmp_path / "spool" / "journal", spool, index).segments == 0
    index.close()


def test_concurrent_appends_share_flushes_rotate_segments_and_are_deleted_once_synced(
    tmp_path: Path, example_ct_dicom: Path
) -> None:
    """Four threads append 20 records (~160 KB each) to 320 KiB segments: every record reads back whole, the
    syncer deletes each segment no longer written to once its records are synced, and closing
    leaves no segment and no mark in the index."""
    files = sorted(example_ct_dicom.iterdir())
    assert len(files) == 20
    spool, index = Spool(tmp_path / "spool", 0), Index(tmp_path / "index.sqlite")
    receive_index = Index(tmp_path / "index.sqlite", receive_journal=True)
    folder = tmp_path / "spool" / "journal"
    journal = ReceiveJournal(folder, "rx0", spool, index, segment_bytes=320 << 10, batch_wait_s=3600)
    flushed: list[bool] = []

    def store(paths: list[Path]) -> None:
        for path in paths:
            ds = _sop(path)
            hash_from = split_dataset(path)[1]
            study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            record = InstanceRecord(
                study, series, sop, ds.SOPClassUID, spool.path_for(study, series, sop),
                path.stat().st_size, digest_file(path, hash_from), "TEST", "CT",
            )  # fmt: skip
            ticket = journal.append(record, Payload(path.stat().st_size, path=path), hash_from)
            journal.flush(ticket)
            flushed.append(ticket.segment.durable >= ticket.end)
            spool.place_bytes(path.read_bytes(), study, series, sop)
            receive_index.record_instance(record)
            journal.done(ticket)

    threads = [threading.Thread(target=store, args=(files[k::4],)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert flushed == [True] * 20
    segments = sorted(folder.glob("*.journal"))
    assert len(segments) > 2, "the segments rotated"
    records = [r for s in segments for r in read_records(s, spool)]
    assert sorted(r.record.sop_uid for r in records) == sorted(str(_sop(f).SOPInstanceUID) for f in files)
    journal.sync()
    assert len(list(folder.glob("*.journal"))) == 1, "all but the one still written to are gone"
    journal.close()
    assert list(folder.glob("*.journal")) == []
    assert index.journal_synced() == {}
    receive_index.close()
    index.close()


@pytest.mark.slow
@pytest.mark.parametrize("stream_to_disk", ["true", "false"])
def test_both_receive_modes_go_through_the_journal(
    tmp_path: Path, example_ct_dicom: Path, stream_to_disk: str
) -> None:
    """In memory (``stream_to_disk = false``) or streamed to a file, an instance is journaled,
    spooled with its content and recorded; the clean stop leaves no journal."""
    files = sorted(example_ct_dicom.iterdir())[:3]
    data = tmp_path / "data"
    node = start_node(
        data, "--workers", "0", stable_seconds=3600, env={"BODYCOMP_NODE__STREAM_TO_DISK": stream_to_disk}
    )
    try:
        answers = store_responses(storescu(node.port, files))
        assert all(a.startswith("Success") for a in answers.values()), answers
    finally:
        assert node.stop() == 0, node.text()
    for path in files:
        assert _spooled_digest(data, _sop(path)) == _digest(path)
    assert list((data / "spool" / "journal").glob("*.journal")) == []


@pytest.mark.slow
def test_a_resent_instance_already_durable_costs_no_journal_record_and_a_missing_file_is_rewritten(
    tmp_path: Path, example_ct_dicom: Path
) -> None:
    """Re-sent instances (a PACS routes a whole series again when one instance comes late) whose
    content the node holds are acknowledged without journaling or writing them again; one whose
    spool file is gone is stored again."""
    files = sorted(example_ct_dicom.iterdir())[:5]
    data = tmp_path / "data"
    node = start_node(data, "--workers", "0", stable_seconds=3600)
    journal = data / "spool" / "journal"
    try:
        assert all(a.startswith("Success") for a in store_responses(storescu(node.port, files)).values())
        written = sum(p.stat().st_size for p in journal.glob("*.journal"))
        assert written > sum(f.stat().st_size for f in files), "the first send went through the journal"
        assert all(a.startswith("Success") for a in store_responses(storescu(node.port, files)).values())
        assert sum(p.stat().st_size for p in journal.glob("*.journal")) == written, "nothing journaled again"
        assert node.text().count("outcome=duplicate") == 5
        gone = _sop(files[2])
        path = (
            data
            / "spool"
            / "studies"
            / gone.StudyInstanceUID
            / gone.SeriesInstanceUID
            / f"{gone.SOPInstanceUID}.dcm"
        )
        path.unlink()
        assert all(a.startswith("Success") for a in store_responses(storescu(node.port, files)).values())
        assert _spooled_digest(data, gone) == _digest(files[2])
        assert sum(p.stat().st_size for p in journal.glob("*.journal")) > written
    finally:
        assert node.stop() == 0, node.text()
    counts = _index_counts(data / "index.sqlite")
    assert len(counts) == 5 and set(counts.values()) == {1}
