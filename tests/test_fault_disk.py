"""Disk full: a small size-limited data directory (tmpfs), filled while a study arrives (issue #8).

The whole data directory (spool, index, embedded broker, results) is on a 48 MB tmpfs the test
mounts, so everything the node writes meets the limit. Two ways to run out of space:

* ``reserve``: the node's own free-space reserve (``min_free_mb``) is reached: the SCP refuses
  before writing anything;
* ``enospc``: no reserve (``min_free_mb`` 0) and a filler file leaves about a megabyte, so the
  spool's write/fsync (or SQLite's commit) really hits ENOSPC.

What must hold: C-STORE answers Out of Resources (0xA700), never Success for an instance that is
not safely stored; every instance acknowledged earlier is intact (same bytes, same digest as the
index says); no partial file under a final name, nothing left in ``spool/tmp``; the node and its
index keep working; and when space returns (the filler removed) the re-sent instances are accepted
and the study is analysed and delivered once. A separate test fills the disk under SQLite itself.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset

from node.config import NodeSettings, Settings
from node.operate import service
from node.operate.service import Node
from node.receive.scp import serve
from node.schedule import dispatch, results
from node.schedule.dispatch import BrokerHealth, DiskGuard
from node.store.index import Index, InstanceRecord, digest_file
from node.store.spool import Spool, SpoolFullError
from tests.reliability import recorded
from tests.test_fault_broker import acknowledged, sop_uids, stable_ct_studies
from tests.test_node_support import (
    DCMTK,
    copy_study,
    free_port,
    received,
    start_node,
    status,
    store_responses,
    storescp,
    study_status,
    wait_for,
)
from tests.timing import quiet_period

# Fault scenarios (size-limited tmpfs mounts, as root): the full suite only, like every test_fault_*.
pytestmark = pytest.mark.slow

MB = 1024 * 1024
VOLUME_MB = 48
RESERVE_MB = 16
HEADROOM = int(1.2 * MB)  # free space left by the filler: room for some 40 of a study's 112 slices
STABLE_SECONDS = 30.0  # the partly refused study must not go stable before it is re-sent
RESULT_TIMEOUT = 180.0


@pytest.fixture()
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 48 MB tmpfs mounted on a temporary folder (unmounted after the test); fails where none can
    be mounted: the full-disk scenarios need root or CAP_SYS_ADMIN, they are not skipped without."""
    mount_point = tmp_path / "vol"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_MB}m,mode=0700", "tmpfs", str(mount_point)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"cannot mount a size-limited tmpfs: {exc}")
    if result.returncode != 0:
        pytest.fail(
            f"cannot mount a size-limited tmpfs (needs root or CAP_SYS_ADMIN): {result.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        for _ in range(20):  # a child that still has a file open keeps the mount busy a moment
            if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=30).returncode == 0:
                break
            time.sleep(0.5)
        else:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(volume: Path, leave: int) -> Path:
    """Write a filler file until only ``leave`` bytes are free on ``volume``."""
    filler = volume / "filler.bin"
    block = b"\0" * MB
    with filler.open("ab") as handle:
        while (missing := free_bytes(volume) - leave) > 0:
            try:
                handle.write(block[: min(len(block), missing)])
                handle.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


def storescu_all(port: int, files: Sequence[Path]) -> str:
    """DCMTK storescu that carries on after a refused instance (``-nh``), as a PACS' retry would."""
    result = subprocess.run(
        [str(DCMTK / "storescu"), "-v", "-nh", "-xv", "-aet", "STORESCU", "-aec", "BODYCOMP", "127.0.0.1"]
        + [str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=300,
        env={"TCP_NODELAY": "1"},
    )
    return result.stdout + result.stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spool_report(data: Path) -> tuple[dict[str, Path], list[str]]:
    """SOP UID → spool file, and the problems: a file not in the index, a digest mismatch, a file
    that does not parse completely, anything left in ``spool/tmp``."""
    index = Index(data / "index.sqlite")
    try:
        recorded_digests = {
            r["sop_uid"]: r["digest"] for r in index.query("SELECT sop_uid, digest FROM instances")
        }
    finally:
        index.close()
    files = {p.stem: p for p in (data / "spool" / "studies").rglob("*.dcm")}
    problems = [f"left in tmp: {p.name}" for p in (data / "spool" / "tmp").iterdir()]
    for sop, path in files.items():
        if sop not in recorded_digests:
            problems.append(f"not in the index: {sop}")
            continue
        if digest_file(path, split_dataset(path)[1]) != recorded_digests[sop]:
            problems.append(f"digest differs from the index: {sop}")
        try:
            pydicom.dcmread(path).PixelData  # noqa: B018 - the whole file parses, pixels included
        except Exception as exc:
            problems.append(f"unreadable: {sop} ({type(exc).__name__})")
    problems += [f"recorded, not in the spool: {sop}" for sop in set(recorded_digests) - set(files)]
    return files, problems


@pytest.mark.reliability
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reserve", "enospc"])
def test_disk_full_answers_out_of_resources_keeps_data_and_recovers(
    mode: str, small_volume: Path, example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    scenario = {
        "reserve": "disk nearly full: spool below the free-space reserve",
        "enospc": "disk full: ENOSPC in write/fsync/SQLite (no reserve)",
    }[mode]
    reserve_mb = RESERVE_MB if mode == "reserve" else 0
    first, first_uid = copy_study(example_ct_derived_dicom, tmp_path / "first")
    second, second_uid = copy_study(example_ct_derived_dicom, tmp_path / "second")
    waiting, waiting_uid = copy_study(example_ct_derived_dicom, tmp_path / "waiting")
    sops = {**sop_uids(first), **sop_uids(second), **sop_uids(waiting)}
    data = small_volume / "data"
    dest = tmp_path / "pacs"
    with recorded(scenario) as tally, storescp(dest) as dest_port:
        node = start_node(
            data,
            "--destination",
            f"DEST@127.0.0.1:{dest_port}",
            stable_seconds=STABLE_SECONDS,
            env={"BODYCOMP_MIN_FREE_MB": str(reserve_mb)},
            log_name=str(tmp_path / "serve.log"),  # absolute: off the full disk, or its lines are lost
        )
        try:
            # 1. A study while there is room: analysed and delivered.
            answers = store_responses(storescu_all(node.port, first))
            assert acknowledged(answers) == {str(f) for f in first}, answers
            wait_for(
                "the first study delivered",
                lambda: (s := study_status(data, first_uid)) and s["outbox"].get("delivered") == 3,
                RESULT_TIMEOUT,
                node.log,
            )
            before = {p.stem: sha256(p) for p in (data / "spool" / "studies" / first_uid).rglob("*.dcm")}
            assert len(before) == len(first)

            # 2. A study arrives with room; the disk fills up before it is stable (it becomes stable
            #    while the disk is full); then the second study arrives.
            waiting_answers = store_responses(storescu_all(node.port, waiting))
            assert acknowledged(waiting_answers) == {str(f) for f in waiting}, waiting_answers
            filler = fill(small_volume, reserve_mb * MB + HEADROOM)
            time.sleep(STABLE_SECONDS + 3)  # its stable period ends, and a few ticks, on the full disk
            full_answers = store_responses(storescu_all(node.port, second))
            refused = {f for f, s in full_answers.items() if f not in acknowledged(full_answers)}
            statuses = {s for f, s in full_answers.items() if f in refused}
            files, problems = spool_report(data)
            assert problems == [], problems[:10]
            assert refused, "the full disk refused nothing"
            assert statuses == {"Refused: OutOfResources"}, statuses
            assert {sops[f] for f in acknowledged(full_answers)} <= set(files), "acknowledged = stored"
            assert not {sops[f] for f in refused} & set(files), "refused = not stored"
            assert {p: sha256(files[p]) for p in before} == before, "earlier instances intact"
            waiting_state = study_status(data, waiting_uid)
            assert waiting_state is not None and waiting_state["state"] != "failed", waiting_state
            log_text = node.text()
            assert node.process.poll() is None, "the node survives a full disk"

            # 3. Space returns: the sender re-sends the study; it is accepted and analysed once.
            filler.unlink()
            again = store_responses(storescu_all(node.port, second))
            assert acknowledged(again) == {str(f) for f in second}, again

            def delivered(uid: str) -> bool:
                study = study_status(data, uid)
                return study is not None and study["outbox"].get("delivered") == 3

            for uid in (second_uid, waiting_uid):
                wait_for(
                    f"study {uid} delivered", functools.partial(delivered, uid), RESULT_TIMEOUT, node.log
                )
            quiet_period(2)  # a duplicate delivery, if any, would arrive now
            final = {s["study_uid"]: s for s in status(data)["studies"]}
            files, problems = spool_report(data)
        finally:
            node.stop()
        results = received(dest)
        acked = {
            sops[f]
            for f in acknowledged(answers)
            | acknowledged(waiting_answers)
            | acknowledged(full_answers)
            | acknowledged(again)
        }
        result_uids = [str(ds.SOPInstanceUID) for ds in results]
        tally.sent = len(sops)
        tally.acknowledged = len(acked)
        tally.refused = len(refused)
        tally.stored = len(set(files) & set(sops.values()))
        tally.expected_analysed = 3
        tally.analysed = sum(
            1
            for uid in (first_uid, second_uid, waiting_uid)
            if [j["state"] for j in final[uid]["jobs"]] == ["done"]
        )
        tally.expected_delivered = 9
        tally.delivered = len(set(result_uids))
        tally.duplicates = len(result_uids) - len(set(result_uids))
        tally.lost = len(acked - set(files)) + max(0, tally.expected_delivered - tally.delivered)
        tally.extra = {
            "volume_mb": VOLUME_MB,
            "reserve_mb": reserve_mb,
            "accepted_while_full": len(acknowledged(full_answers)),
            "refused_while_full": len(refused),
            "sqlite_full_errors": log_text.count("in the index"),
            "analysis_paused_lines": log_text.count("event=analysis_paused"),
        }
        tally.notes = (
            f"{VOLUME_MB} MB tmpfs holding the whole data directory; filled to {HEADROOM / MB:.1f} MB above "
            f"the {reserve_mb} MB reserve while a 112-instance study arrived (re-sent after the filler "
            "went) and another, received earlier, became stable"
        )
        assert problems == [], problems[:10]
        assert tally.lost == 0 and tally.duplicates == 0, tally
        assert tally.stored == tally.sent and tally.analysed == 3 and tally.delivered == 9, tally
        assert [j["state"] for j in final[second_uid]["jobs"]] == ["done"], "one analysis of the whole study"
        assert final[second_uid]["instances"] == len(second)
        text = node.text()  # the node's own threads never failed (its embedded worker shares the log)
        for failure in ("event=scheduler_error", "event=dispatch_error", "event=sender_error", "pynetdicom/"):
            assert failure not in text, text[-4000:]
        if mode == "enospc":  # 1.2 MB free: analyses paused (said once), none failed on ENOSPC
            assert log_text.count("event=analysis_paused") == 1, log_text[-4000:]


def record(index: Index, sop: str, path: Path) -> str:
    return index.record_instance(
        InstanceRecord("1.2.3", "1.2.3.4", sop, "1.2.840.10008.5.1.4.1.1.2", path, 1, sop * 2, "AE")
    )


@pytest.mark.reliability
def test_index_stays_usable_when_sqlite_hits_enospc(small_volume: Path) -> None:
    """SQLite's own write fails with "database or disk is full": the transaction is rolled back,
    the earlier rows are intact, the same connection works again once there is space."""
    with recorded("disk full under the SQLite index") as tally:
        index = Index(small_volume / "index.sqlite")
        try:
            kept = [generate_uid() for _ in range(50)]
            for sop in kept:
                record(index, sop, small_volume / f"{sop}.dcm")
            filler = fill(small_volume, 0)
            failure: sqlite3.Error | None = None
            attempts = 0
            padding = uuid.uuid4().hex * 200  # wide rows: the WAL must grow
            while failure is None and attempts < 20000:
                attempts += 1
                try:
                    record(index, generate_uid(), small_volume / padding)
                except sqlite3.Error as exc:
                    failure = exc
            assert failure is not None and "full" in str(failure).lower(), (attempts, failure)
            integrity = index.query("PRAGMA integrity_check")[0][0]
            present = {r["sop_uid"] for r in index.query("SELECT sop_uid FROM instances")}
            assert integrity == "ok" and set(kept) <= present
            filler.unlink()
            after = generate_uid()
            assert record(index, after, small_volume / "after.dcm") == "new"
        finally:
            index.close()
        reopened = Index(small_volume / "index.sqlite")
        try:
            rows = {r["sop_uid"] for r in reopened.query("SELECT sop_uid FROM instances")}
            assert set(kept) <= rows and after in rows
            assert reopened.query("PRAGMA integrity_check")[0][0] == "ok"
        finally:
            reopened.close()
        tally.sent = tally.acknowledged = tally.stored = len(rows)
        tally.extra = {"writes_before_enospc": attempts}
        tally.notes = f"tmpfs filled to 0 bytes free; SQLite said: {failure}"


class IndexOnFullDisk(Index):
    """An index whose commit fails as SQLite does on a full disk (the spool write succeeded)."""

    def record_instance(self, rec: InstanceRecord, now: float | None = None, replay: bool = False) -> str:
        raise sqlite3.OperationalError("database or disk is full")


@pytest.mark.network
def test_instance_the_index_cannot_record_is_refused_and_not_left_in_the_spool(
    tmp_path: Path, example_ct_dicom: Path
) -> None:
    """Weakness found: when the index commit failed (SQLite full), the SCP answered 0xA700 but
    left the instance's file under its final name in the spool, unrecorded: the next dispatch
    scan saw a file the index did not know. Now the file goes with the refusal."""
    settings = NodeSettings(port=free_port(), data_dir=tmp_path / "data", min_free_mb=0)
    server = serve(
        settings, block=False, receive_index=IndexOnFullDisk(settings.index_path, receive_journal=True)
    )
    try:
        output = storescu_all(settings.port, sorted(example_ct_dicom.iterdir())[:2])
        answers = store_responses(output)
        assert set(answers.values()) == {"Refused: OutOfResources"}, output
        assert list((settings.spool_dir / "studies").rglob("*.dcm")) == []
        assert list((settings.spool_dir / "tmp").iterdir()) == []
    finally:
        server.shutdown()


# -- the scheduler on a full disk, without servers (fast; in the default run) ----------------------


def scheduler_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Node, list[dict[str, Any]]]:
    """A node's scheduler (no SCP, no worker) with its own DiskGuard and a recording publish."""
    guard = DiskGuard()
    monkeypatch.setattr(dispatch, "DISK", guard)
    monkeypatch.setattr(service, "DISK", guard)
    monkeypatch.setattr(dispatch, "BROKER", BrokerHealth())
    monkeypatch.setattr(results, "BROKER", dispatch.BROKER)
    settings = Settings(node=NodeSettings(data_dir=tmp_path / "data", stable_seconds=0))
    node = Node(settings)
    node.index = Index(settings.node.index_path)
    published: list[dict[str, Any]] = []
    monkeypatch.setattr(node, "publish", published.append)
    return node, published


def test_study_stable_on_a_full_disk_waits_and_is_analysed_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Weakness found: a study that became stable while the data disk was full was dispatched
    anyway; its analysis met ENOSPC, was retried twice within 15 s and failed for good. Now no
    analysis starts below the floor; the study waits and is dispatched when space returns."""
    node, published = scheduler_on(tmp_path, monkeypatch)
    assert node.index is not None
    [study] = stable_ct_studies(node.node, node.index, 1)
    free = {"bytes": MB}
    monkeypatch.setattr(dispatch.DISK, "free_bytes", lambda path: free["bytes"])
    caplog.set_level(logging.INFO, logger="bodycomp")
    for _ in range(5):
        node.tick()
    row = node.index.study(study)
    assert row is not None and row["state"] == "received" and published == []
    assert sum("event=analysis_paused" in r.getMessage() for r in caplog.records) == 1, "said once"
    free["bytes"] = 1024 * MB
    node.tick()
    row = node.index.study(study)
    assert row is not None and row["state"] == "queued" and len(published) == 1
    assert sum("event=analysis_resumed" in r.getMessage() for r in caplog.records) == 1


def test_dispatch_cut_short_by_enospc_is_finished_later_not_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Weakness found: ENOSPC while writing job.json (the job's row already committed) failed the
    study ("dispatch error"), and the job was then failed as "job folder missing" and never run.
    Now the study is looked at again, the job folder rebuilt from the index, the job published."""
    node, published = scheduler_on(tmp_path, monkeypatch)
    assert node.index is not None
    [study] = stable_ct_studies(node.node, node.index, 1)
    real_write_json = dispatch.write_json

    def disk_full(path: Path, data: dict[str, Any]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dispatch, "write_json", disk_full)
    caplog.set_level(logging.INFO, logger="bodycomp")
    node.tick()
    row = node.index.study(study)
    assert row is not None and row["state"] == "received", dict(row or {})
    [job] = node.index.open_jobs()
    assert job["state"] == "queued" and job["enqueued"] is None and published == []
    assert not any(r.exc_info for r in caplog.records), "no traceback"
    monkeypatch.setattr(dispatch, "write_json", real_write_json)
    monkeypatch.setattr(dispatch.DISK, "hold_until", 0.0)  # the 30 s hold after an ENOSPC, elapsed
    node.tick()
    node.tick()
    [job] = node.index.open_jobs()
    assert [p["job_id"] for p in published] == [job["id"]] and job["enqueued"] is not None
    assert (node.node.data_dir / job["result_dir"] / "job.json").exists()
    assert sum("event=job_folder_rebuilt" in r.getMessage() for r in caplog.records) == 1
    row = node.index.study(study)
    assert row is not None and row["state"] == "queued"


def test_job_folder_is_not_rebuilt_for_an_input_that_changed(tmp_path: Path) -> None:
    node = NodeSettings(data_dir=tmp_path / "data")
    index = Index(node.index_path)
    [study] = stable_ct_studies(node, index, 1)
    series = index.query("SELECT series_uid FROM instances WHERE study_uid=? LIMIT 1", (study,))[0][0]
    job_id, _ = index.create_job(study, series, "0" * 64, f"results/{study}/{series}/0", "AE")
    job = index.job(job_id)
    assert job is not None and dispatch.rebuild_job_dir(index, node, job) is None
    assert results.republish(index, node, lambda spec: None) == 0
    job = index.job(job_id)
    assert job is not None and job["state"] == "failed" and job["reason"] == "job folder missing"


@pytest.mark.reliability
@pytest.mark.network
@pytest.mark.slow
def test_full_temporary_directory_still_answers_out_of_resources(
    small_volume: Path, example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """Weakness found: with the temporary directory on the full disk (``/tmp`` on the data disk is
    common), pynetdicom's write of the incoming dataset to its temporary file failed inside
    pynetdicom: the association was aborted (storescu: "DIMSE Failed to send message") with a
    traceback in the log, instead of 0xA700. Now the node receives into memory while the
    temporary directory is nearly full, so the spool refuses properly, and goes back after."""
    files = sorted(example_ct_derived_dicom.iterdir())[:6]
    temporary = small_volume / "tmp"
    temporary.mkdir()
    with recorded("disk full under the temporary directory of the receiver") as tally:
        node = start_node(
            small_volume / "data",
            env={"BODYCOMP_MIN_FREE_MB": "0", "TMPDIR": str(temporary)},
            log_name=str(tmp_path / "serve.log"),
        )
        try:
            filler = fill(small_volume, 0)
            wait_for(
                "the node to notice", lambda: "event=receive_mode mode=memory" in node.text(), 30, node.log
            )
            full = store_responses(storescu_all(node.port, files[:3]))
            filler.unlink()
            wait_for("room again", lambda: "event=receive_mode mode=temporary" in node.text(), 30, node.log)
            again = store_responses(storescu_all(node.port, files))
            stored = list((small_volume / "data" / "spool" / "studies").rglob("*.dcm"))
        finally:
            node.stop()
        tally.sent = len(files)
        tally.refused = len(set(full) - acknowledged(full))
        tally.acknowledged = len(acknowledged(again))
        tally.stored = len(stored)
        tally.lost = tally.acknowledged - tally.stored
        tally.notes = "TMPDIR and data directory on one 48 MB tmpfs, filled to 0 bytes free, then emptied"
        assert set(full.values()) == {"Refused: OutOfResources"}, full
        assert acknowledged(again) == {str(f) for f in files} and len(stored) == len(files)
        # The receiver never failed inside pynetdicom (the embedded worker may complain about the
        # full disk: its broker file is there too).
        text = node.text()
        assert "pynetdicom/" not in text and "event=store_error" not in text, text[-4000:]


def test_spool_write_meeting_enospc_refuses_and_leaves_nothing(small_volume: Path) -> None:
    """The spool's real write path on a full disk (its free-space pre-check deceived): the write or
    fsync fails with ENOSPC, the caller gets SpoolFullError (→ 0xA700), no file under a final name,
    nothing left in tmp/; and the same spool stores again once there is room."""
    spool = Spool(small_volume / "spool", min_free_bytes=0)
    spool.free_bytes = lambda: 10**12  # type: ignore[method-assign]
    filler = fill(small_volume, 0)
    data = b"\0" * 200_000
    with pytest.raises(SpoolFullError):
        spool.store(data, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert list(spool.studies.rglob("*")) == [] and list(spool.tmp.iterdir()) == []
    filler.unlink()
    stored = spool.store(data, "1.2.3", "1.2.3.4", "1.2.3.4.5")
    assert stored.path.read_bytes() == data and list(spool.tmp.iterdir()) == []
