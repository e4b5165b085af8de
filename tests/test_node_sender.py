"""The outbox and its sender against real peers on loopback (a pynetdicom SCP that answers with
the statuses a PACS may use, and no peer at all), plus the index rules that make it idempotent."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from node.config import NodeSettings
from node.schedule.stability import StabilityTimer, claim_stable_studies
from node.send.sender import backoff, deliver_due
from node.store.index import Index, InstanceRecord
from tests.clock import ManualClock, claim_after_idle
from tests.test_node_support import BODYCOMP, free_port

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


def result_file(path: Path, sop_class: str, study_uid: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID = sop_class, generate_uid(), study_uid
    ds.SeriesInstanceUID, ds.Modality = generate_uid(), "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        sop_class,
        ds.SOPInstanceUID,
    )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@contextmanager
def pacs(
    status: int | list[int], classes: tuple[str, ...] = (SEG, SR, SC)
) -> Iterator[tuple[int, list[str]]]:
    """A real storage SCP on loopback answering every C-STORE with ``status`` (a list: its first
    item at the time, so a test can change the answer while the SCP runs)."""
    got: list[str] = []

    def handle(event: Any) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return status[0] if isinstance(status, list) else status

    ae = AE(ae_title="PACS")
    for sop_class in classes:
        ae.add_supported_context(sop_class)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        yield port, got
    finally:
        server.shutdown()


def outbox_with_results(tmp_path: Path, port: int, **settings: Any) -> tuple[Index, NodeSettings, list[str]]:
    node = NodeSettings(data_dir=tmp_path, destinations=(f"PACS@127.0.0.1:{port}",), **settings)
    index = Index(node.index_path)
    study = generate_uid()
    files = [result_file(tmp_path / f"{n}.dcm", c, study) for n, c in (("seg", SEG), ("sr", SR), ("sc", SC))]
    items = []
    for f in files:
        ds = pydicom.dcmread(f)
        items.append((str(f), str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
    with index.transaction() as db:
        db.execute(
            "INSERT INTO studies (study_uid, calling_ae, first_received, last_received, updated)"
            " VALUES (?, 'X', 0, 0, 0)",
            (study,),
        )
        db.execute(
            "INSERT INTO jobs (id, study_uid, series_uid, input_hash, result_dir, created)"
            " VALUES (1, ?, 's', 'h', 'r', 0)",
            (study,),
        )
    index.add_outbox(1, study, items, node.destinations)
    index.add_outbox(1, study, items, node.destinations)  # a task that ran twice: no duplicates
    return index, node, [i[1] for i in items]


def states(index: Index) -> list[str]:
    return [r["state"] for r in index.outbox_rows()]


def retry_while_pending(index: Index, node: NodeSettings, timeout: float = 10) -> None:
    """Run delivery rounds until no row is pending (a short give-up time dead-letters them)."""
    deadline = time.monotonic() + timeout
    while "pending" in states(index) and time.monotonic() < deadline:
        time.sleep(0.2)
        deliver_due(index, node)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``bodycomp ARGS`` in its own process, as an operator runs it."""
    return subprocess.run([BODYCOMP, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xB007, 0x0111])
def test_success_warning_and_duplicate_statuses_count_as_delivered(tmp_path: Path, status: int) -> None:
    with pacs(status) as (port, got):
        index, node, sops = outbox_with_results(tmp_path, port)
        assert deliver_due(index, node) == 3
    assert sorted(got) == sorted(sops)
    assert states(index) == ["delivered"] * 3
    assert deliver_due(index, node) == 0, "delivered rows are not sent again"


def test_failure_status_is_retried_with_backoff_then_dead_lettered(tmp_path: Path) -> None:
    with pacs(0xA700) as (port, got):
        index, node, _ = outbox_with_results(
            tmp_path, port, send_retry_seconds=0.2, send_retry_max_seconds=0.4, send_give_up_hours=1.5 / 3600
        )
        assert deliver_due(index, node) == 0
        rows = index.outbox_rows()
        assert {r["attempts"] for r in rows} == {1} and {r["last_error"] for r in rows} == {"status 0xA700"}
        assert deliver_due(index, node) == 0 and len(got) == 3, "not due yet: nothing sent"
        retry_while_pending(index, node)
    assert states(index) == ["dead"] * 3
    assert [backoff(n, 10, 600) for n in (1, 2, 3, 8)] == [10, 20, 40, 600]


def test_destination_down_then_up(tmp_path: Path) -> None:
    port = free_port()
    index, node, sops = outbox_with_results(tmp_path, port, send_retry_seconds=0.1)
    started = time.monotonic()
    assert deliver_due(index, node) == 0
    assert time.monotonic() - started < 10, "a closed port fails fast"
    assert states(index) == ["pending"] * 3
    assert "association" in index.outbox_rows()[0]["last_error"]
    time.sleep(0.2)
    with pacs(
        0x0000,
    ) as (new_port, got):
        # The same port is not guaranteed free for the peer; move the destination instead.
        with index.transaction() as db:
            db.execute("UPDATE outbox SET destination=?", (f"PACS@127.0.0.1:{new_port}",))
        assert deliver_due(index, node) == 3
    assert sorted(got) == sorted(sops)


def test_refused_sop_class_is_dead_lettered_and_the_rest_still_delivered(tmp_path: Path) -> None:
    with pacs(0x0000, classes=(SR, SC)) as (port, got):
        index, node, _ = outbox_with_results(tmp_path, port)
        assert deliver_due(index, node) == 2
    by_class = {r["sop_class_uid"]: r for r in index.outbox_rows()}
    assert by_class[SEG]["state"] == "dead" and "does not accept" in by_class[SEG]["last_error"]
    assert by_class[SR]["state"] == by_class[SC]["state"] == "delivered"
    assert len(got) == 2


def record(index: Index, study: str, series: str, sop: str, digest: str, now: float) -> str:
    rec = InstanceRecord(study, series, sop, "1.2.840.10008.5.1.4.1.1.2", Path("/x"), 1, digest, "PACS")
    return index.record_instance(rec, now=now)


def test_resent_instances_change_nothing_and_a_new_one_makes_a_new_superseding_job(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    clock = ManualClock()
    timer = StabilityTimer(clock)
    record(index, "1.1", "1.1.1", "1.1.1.1", "a", now=100)
    record(index, "1.1", "1.1.1", "1.1.1.2", "b", now=101)
    assert claim_stable_studies(index, 30, timer) == []
    clock.advance(29)
    assert claim_stable_studies(index, 30, timer) == [], "not idle long enough"
    clock.advance(1)
    [stable] = claim_stable_studies(index, 30, timer)
    first_hash = stable.input_hash
    job1, created = index.create_job("1.1", "1.1.1", index.series_hash("1.1", "1.1.1"), "r1", "PACS")
    assert created
    # The whole study again, unchanged (as Orthanc re-sends a series): nothing to decide.
    assert record(index, "1.1", "1.1.1", "1.1.1.1", "a", now=200) == "duplicate"
    assert record(index, "1.1", "1.1.1", "1.1.1.2", "b", now=200) == "duplicate"
    assert index.changed_studies() == [] and index.study_hash("1.1") == first_hash
    clock.advance(1000)
    assert claim_stable_studies(index, 30, timer) == []
    # A late instance: a new input hash, a new job that supersedes the first.
    assert record(index, "1.1", "1.1.1", "1.1.1.3", "c", now=300) == "new"
    assert claim_stable_studies(index, 30, timer) == [], "a new instance restarts the timer"
    clock.advance(30)
    [stable] = claim_stable_studies(index, 30, timer)
    assert stable.input_hash != first_hash
    job2, created = index.create_job("1.1", "1.1.1", index.series_hash("1.1", "1.1.1"), "r2", "PACS")
    assert created and job2 != job1
    assert index.job(job1)["state"] == "superseded"  # type: ignore[index]
    assert index.create_job("1.1", "1.1.1", index.series_hash("1.1", "1.1.1"), "r2", "PACS") == (job2, False)
    # Changed bytes under the same SOP Instance UID count as a change too.
    assert record(index, "1.1", "1.1.1", "1.1.1.3", "d", now=400) == "replaced"
    index.close()
    # Everything survives a restart (a new connection on the same file).
    again = Index(tmp_path / "index.sqlite")
    assert [r["study_uid"] for r in again.changed_studies()] == ["1.1"]


def test_host_check_ties_a_destination_ae_to_its_host() -> None:
    from node.receive.scp import host_allowed

    node = NodeSettings(destinations=("PACS@127.0.0.1:104",), check_host=True)
    assert host_allowed(node, "PACS", "127.0.0.1")
    assert not host_allowed(node, "PACS", "10.1.2.3")
    assert host_allowed(node, "OTHER", "10.1.2.3"), "AEs without a host are left to allow_ae"
    assert host_allowed(NodeSettings(destinations=node.destinations), "PACS", "10.1.2.3")


def test_a_dispatch_interrupted_by_a_crash_is_resumed(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    record(index, "1.2", "1.2.1", "1.2.1.1", "a", now=100)
    assert len(claim_after_idle(index, 1)) == 1
    assert index.changed_studies() == []
    index.close()  # the node dies before creating the jobs
    index = Index(tmp_path / "index.sqlite")
    assert index.reopen_interrupted_dispatches() == 1
    assert [s.study_uid for s in claim_after_idle(index, 1)] == ["1.2"]


@pytest.mark.slow  # the real `bodycomp resend` process
def test_resend_queues_dead_letters_again_and_the_sender_delivers_them(tmp_path: Path) -> None:
    """``bodycomp resend`` (the real command, in its own process, as an operator runs it after
    fixing the PACS): dead letters of the chosen study/destination go back to pending with a new
    give-up window, and the next round delivers them."""
    answer = [0xA700]
    with pacs(answer) as (port, got):
        index, node, sops = outbox_with_results(
            tmp_path, port, send_retry_seconds=0.2, send_retry_max_seconds=0.4, send_give_up_hours=1.5 / 3600
        )
        retry_while_pending(index, node)
        assert states(index) == ["dead"] * 3
        study = index.outbox_rows()[0]["study_uid"]
        destination = f"PACS@127.0.0.1:{port}"

        def resend(*args: str) -> subprocess.CompletedProcess[str]:
            return cli("resend", "--data-dir", str(tmp_path), *args)

        status = cli("status", "--data-dir", str(tmp_path))
        assert "dead letter:" in status.stdout and "bodycomp resend" in status.stdout, status
        other = resend("--study", "1.2.3.4", "--destination", destination)
        assert other.returncode == 2 and "no study 1.2.3.4 in the node's index" in other.stderr, other
        assert states(index) == ["dead"] * 3
        typo = resend("--destination", "PACS@127.0.0.1")
        assert typo.returncode == 2 and "configuration error" in typo.stderr, typo
        # (with --study: the study's current results, dead or delivered, #21)
        done = resend("--study", study, "--destination", destination)
        assert done.returncode == 0 and done.stdout.startswith("3 result(s) of study"), done
        rows = index.outbox_rows()
        assert states(index) == ["pending"] * 3 and {r["attempts"] for r in rows} == {0}
        assert all(r["created"] > time.time() - 30 for r in rows), "a new give-up window"
        answer[0] = 0x0000  # the PACS is fixed
        sent_before = len(got)
        assert deliver_due(index, node) == 3
        assert sorted(got[sent_before:]) == sorted(sops)
    assert states(index) == ["delivered"] * 3
    again = resend()
    assert again.returncode == 0 and again.stdout.strip() == "no dead-lettered results", again
    nowhere = cli("resend", "--data-dir", str(tmp_path / "absent"))
    assert nowhere.returncode != 0 and "no node index" in nowhere.stderr, nowhere
    assert not (tmp_path / "absent").exists()
