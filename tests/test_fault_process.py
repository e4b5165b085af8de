"""Process faults (issue #8): the node, its worker or the PACS dies, stops or hangs.

Real processes on loopback only: ``bodycomp serve`` (embedded broker, its own worker), DCMTK
storescu as the modality and DCMTK storescp as the PACS. The PACS runs with ``+uf`` (a new file
per C-STORE received), so a result delivered twice shows up as two files: every count below comes
from the peers (storescu's responses, the spool files and the index, the files the PACS wrote),
never from the node's own idea of what it did. Each scenario records its figures with
:func:`tests.reliability.recorded` for ``docs/reliability.md``.

What must hold, per scenario:

* ``kill -9`` of the node mid-association, at seeded random points, 24 times (6 studies, each cut
  off 4 times): every instance that got Success is in the spool (same pixels) and the index after
  the restart; storescu re-sends the whole study (already stored instances included) and each
  instance is then there once; each study is analysed once and its SEG, SR and
  overlay reach the PACS (one set, the UIDs of the job's results). Every fifth restart comes after
  a downtime longer than the stable period (the node must not take downtime for idleness), and
  the node is killed while earlier studies are being analysed and delivered.
* ``kill -9`` of the analysing worker child, and of the worker's main process: the task runs
  again; one result set at the PACS.
* PACS down for minutes (with a node ``kill -9`` during the outage): receiving and analysis go on,
  the results wait in the outbox and are delivered once when the PACS returns.
* An analysis that hangs (its process stopped, caught by the hard time limit) and one whose
  analysing process is killed on every attempt: both ``failed`` with a clear reason in ``bodycomp
  status`` (the crashing one after two crashes, its instances moved to ``DATA/quarantine``, none
  lost), and a well-formed study sent at the same time is analysed and delivered.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest

from node.process import receive_tmp_dir
from tests.reliability import Tally, recorded
from tests.test_node_support import (
    BODYCOMP,
    DCMTK,
    NodeProc,
    copy_study,
    free_port,
    start_node,
    status,
    store_responses,
    storescp,
    storescu,
    wait_for,
)
from tests.timing import quiet_period
from workers.job import STARTED, JobSpec
from workers.tasks import WorkerConfig, job_lock, run_job

pytestmark = [pytest.mark.reliability, pytest.mark.network, pytest.mark.slow]

SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"
RESULT_CLASSES = sorted([SEG, SR, SC])
SEED = 20261203
STUDIES = 6
KILLS_PER_STUDY = 4  # 24 kills; a study's 5th send completes
STABLE = 4.0  # seconds; longer than a restart plus the start of storescu's re-send
CRASHES = 2  # workers.tasks.CRASHES_BEFORE_QUARANTINE: then the job fails and its input is quarantined
ANALYSIS_TIMEOUT = 240.0  # one analysis of example_ct on a shared 2-core machine, with a wide margin


# -- peers -----------------------------------------------------------------------------------------


def pacs(out_dir: Path, port: int | None = None, ae_title: str = "DEST") -> AbstractContextManager[int]:
    """DCMTK storescp writing one new file per C-STORE it receives (``+uf``)."""
    return storescp(out_dir, ae_title, port, unique_files=True)


@dataclass(frozen=True)
class Received:
    """One C-STORE the PACS received (one file)."""

    study_uid: str
    sop_uid: str
    sop_class: str


def pacs_received(out_dir: Path) -> list[Received]:
    """Every instance the PACS wrote (a file still being written is skipped until complete)."""
    out = []
    for path in sorted(out_dir.iterdir()) if out_dir.exists() else []:
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            out.append(Received(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), str(ds.SOPClassUID)))
        except Exception:  # a partial file: counted on the next look
            continue
    return out


def successes(output: str) -> set[str]:
    return {f for f, answer in store_responses(output).items() if answer.startswith("Success")}


def sop_of(files: Sequence[Path]) -> dict[str, str]:
    return {str(f): str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def send_and_kill(node: NodeProc, files: Sequence[Path], after: int, jitter: float) -> str:
    """storescu ``files``; ``kill -9`` the node ``jitter`` s after the ``after``-th Success
    (0: after storescu asked for the association). Returns storescu's output."""
    command = [str(DCMTK / "storescu"), "-v", "-xv", "-aet", "STORESCU", "-aec", "BODYCOMP"]
    proc = subprocess.Popen(
        [*command, "127.0.0.1", str(node.port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={"TCP_NODELAY": "1"},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    killed = threading.Event()

    def kill() -> None:
        time.sleep(jitter)
        node.process.kill()
        killed.set()

    responses = 0
    armed = True
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        lines.append(line)
        if "Received Store Response" in line:
            responses += 1
        trigger = "Requesting Association" in line if after == 0 else responses == after
        if armed and trigger:
            armed = False
            threading.Thread(target=kill, daemon=True).start()
    proc.wait(timeout=120)
    if not killed.wait(10):  # storescu ended before the trigger: kill now, the run still counts
        node.process.kill()
    node.process.wait(timeout=30)
    return "".join(lines)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


# -- the node's records ----------------------------------------------------------------------------


def index_instances(data_dir: Path) -> Counter[str]:
    """SOP Instance UID → rows in the node's index (read-only)."""
    db = sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return Counter(str(row[0]) for row in db.execute("SELECT sop_uid FROM instances"))
    finally:
        db.close()


def spool_files(data_dir: Path, study_uid: str) -> list[Path]:
    return sorted((data_dir / "spool" / "studies" / study_uid).glob("*/*.dcm"))


def same_pixels(a: Path, b: Path) -> bool:
    return bytes(pydicom.dcmread(a).PixelData) == bytes(pydicom.dcmread(b).PixelData)


def job_results(data_dir: Path, job: dict[str, Any]) -> set[str]:
    """SOP Instance UIDs of the DICOM results the job wrote (``out/dicom``)."""
    folder = data_dir / job["result_dir"] / "out" / "dicom"
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.glob("*.dcm")}


def studies_by_uid(data_dir: Path) -> dict[str, dict[str, Any]]:
    return {s["study_uid"]: s for s in status(data_dir)["studies"]}


@dataclass
class ResultCheck:
    """What the PACS holds for the studies of a scenario, against what each study's one job wrote."""

    delivered: int = 0  # distinct result SOP Instance UIDs at the PACS
    redelivered: int = 0  # receipts beyond the first of one SOP Instance UID
    duplicates: int = 0  # result sets beyond one per study (other UIDs), extra jobs
    missing: int = 0  # results of a done job that never arrived
    problems: list[str] = field(default_factory=list)


def check_results(data_dir: Path, dest: Path, study_uids: Sequence[str]) -> ResultCheck:
    check = ResultCheck()
    got = pacs_received(dest)
    studies = studies_by_uid(data_dir)
    for uid in study_uids:
        mine = [r for r in got if r.study_uid == uid]
        distinct = {r.sop_uid: r.sop_class for r in mine}
        check.delivered += len(distinct)
        check.redelivered += len(mine) - len(distinct)
        study = studies.get(uid)
        jobs = study["jobs"] if study else []
        check.duplicates += max(0, len(jobs) - 1)
        done = [j for j in jobs if j["state"] == "done"]
        expected = set().union(*(job_results(data_dir, j) for j in done)) if done else set()
        check.missing += len(expected - set(distinct))
        check.duplicates += len(set(distinct) - expected)
        if sorted(distinct.values()) != RESULT_CLASSES or set(distinct) != expected:
            check.problems.append(f"{uid}: at the PACS {sorted(distinct.values())}, expected {len(expected)}")
    return check


def wait_all_delivered(node: NodeProc, study_uids: Sequence[str], timeout: float) -> dict[str, Any]:
    """Until every study is ``done`` with its 3 outbox rows delivered; returns the status by UID."""

    def ready() -> dict[str, Any] | None:
        studies = studies_by_uid(node.data_dir)
        ok = all(
            (s := studies.get(uid)) and s["state"] == "done" and s["outbox"].get("delivered") == 3
            for uid in study_uids
        )
        return studies if ok else None

    return wait_for(f"{len(study_uids)} studies analysed and delivered", ready, timeout, node.log)


def kills_while(data_dir: Path, kill_times: Sequence[float]) -> dict[str, int]:
    """How many kills fell while a job was being analysed, or while results waited for delivery
    (from the index's job and outbox times)."""
    db = sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        jobs = [(a, b) for a, b in db.execute("SELECT started, finished FROM jobs") if a and b]
        rows = [(a, b) for a, b in db.execute("SELECT created, delivered FROM outbox") if a and b]
    finally:
        db.close()
    return {
        "kills_during_an_analysis": sum(any(a <= t <= b for a, b in jobs) for t in kill_times),
        "kills_with_results_undelivered": sum(any(a <= t <= b for a, b in rows) for t in kill_times),
    }


def logs_free_of_patient_data(data_dir: Path, files: Sequence[Path]) -> None:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    values = {str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))} - {""}
    for log in data_dir.parent.glob("serve*.log"):
        text = log.read_text(errors="replace")
        for value in values:
            assert value not in text, f"{log.name} contains a patient name or ID"


# -- 1. kill -9 of the node mid-association --------------------------------------------------------


def test_kill_9_node_mid_association_keeps_every_acknowledged_instance_and_analyses_once(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    data = tmp_path / "data"
    dest = tmp_path / "pacs"
    figures: Counter[str] = Counter()
    sent: dict[str, str] = {}  # SOP → study
    acked_ever: set[str] = set()
    lost_after_restart: list[str] = []
    study_uids: list[str] = []
    all_files: list[Path] = []
    kill_times: list[float] = []
    kills = STUDIES * KILLS_PER_STUDY
    with recorded(f"kill -9 of the node mid-association ({kills} seeded random points)") as tally:
        tally.notes = (
            f"seed {SEED}; {STUDIES} studies, each sent {KILLS_PER_STUDY} times with the node killed "
            "after a random number of Success responses (+0-20 ms) and restarted, then sent whole; "
            "every 5th restart after a downtime longer than the stable period; each study's first "
            "association starts 0-1 s after the previous study's analysis started"
        )
        with pacs(dest) as pacs_port:
            destination = ["--destination", f"DEST@127.0.0.1:{pacs_port}"]
            node = start_node(data, *destination, stable_seconds=STABLE)
            try:
                # Prepared first, so that a kill follows the previous analysis' start closely.
                prepared = [
                    copy_study(example_ct_derived_dicom, tmp_path / f"study{n}") for n in range(STUDIES)
                ]
                uids_of = [sop_of(files) for files, _ in prepared]
                for (files, study_uid), sops in zip(prepared, uids_of, strict=True):
                    study_uids.append(study_uid)
                    all_files += files
                    sent.update(dict.fromkeys(sops.values(), study_uid))
                    acked: set[str] = set()  # files of this study acknowledged so far
                    for _ in range(KILLS_PER_STUDY):
                        after = rng.randrange(0, len(files) - 2)
                        output = send_and_kill(node, files, after, rng.uniform(0.0, 0.02))
                        kill_times.append(time.time())
                        figures["kills"] += 1
                        now_acked = successes(output)
                        acked |= now_acked
                        figures["acknowledged_before_kill"] += len(now_acked)
                        figures["mid_association_kills"] += len(now_acked) < len(files)
                        if figures["kills"] % 5 == 0:
                            time.sleep(STABLE + 2)  # down for longer than a stable period
                            figures["long_downtimes"] += 1
                        node = start_node(
                            data,
                            *destination,
                            stable_seconds=STABLE,
                            log_name=f"serve{figures['kills']:02d}.log",
                        )
                        # Before anything is sent again: each instance acknowledged so far is in
                        # the spool, whole (same pixels as sent), and once in the index.
                        indexed = index_instances(data)
                        spool = data / "spool" / "studies" / study_uid
                        for path in sorted(acked):
                            sop = sops[path]
                            stored = list(spool.glob(f"*/{sop}.dcm"))
                            if (
                                len(stored) != 1
                                or indexed[sop] != 1
                                or not same_pixels(stored[0], Path(path))
                            ):
                                lost_after_restart.append(sop)
                        figures["tmp_files_after_restart"] += len(list((data / "spool" / "tmp").glob("rx-*")))
                        # pynetdicom's files of the instances in flight: in the node's own folder,
                        # emptied at start (they used to stay in /tmp, patient data included).
                        receiving = receive_tmp_dir(data)
                        figures["receive_tmp_files_after_restart"] += (
                            sum(1 for f in receiving.iterdir() if f.is_file()) if receiving.is_dir() else 1000
                        )
                    # storescu simply sends the whole study again, and this time it goes through.
                    resend = storescu(node.port, files)
                    again = successes(resend)
                    acked_ever |= {sops[f] for f in acked | again}
                    assert again == set(map(str, files)), resend[-2000:]
                    # The next study's first kill should fall during this one's analysis or delivery.
                    wait_for(
                        "the analysis to start",
                        analysis_started(data, study_uid),
                        ANALYSIS_TIMEOUT,
                        node.log,
                    )
                    time.sleep(rng.uniform(0.0, 1.0))
                # Every study analysed once and its results delivered (the last node stays up).
                studies = wait_all_delivered(node, study_uids, ANALYSIS_TIMEOUT * 2)
                quiet_period(3)  # a late duplicate delivery would show up here
            finally:
                node.stop()
            results = check_results(data, dest, study_uids)

        indexed = index_instances(data)
        spooled = Counter(p.stem for uid in study_uids for p in spool_files(data, uid))
        tally.sent = len(sent)
        tally.acknowledged = len(acked_ever)
        tally.stored = sum(1 for sop in sent if spooled[sop] >= 1 and indexed[sop] >= 1)
        tally.analysed = sum(
            1 for uid in study_uids if [j["state"] for j in studies[uid]["jobs"]] == ["done"]
        )
        tally.expected_analysed = len(study_uids)
        tally.delivered = results.delivered
        tally.expected_delivered = 3 * len(study_uids)
        extra_rows = sum(n - 1 for sop, n in indexed.items() if sop in sent and n > 1)
        tally.duplicates = results.duplicates + extra_rows + sum(n - 1 for n in spooled.values() if n > 1)
        tally.lost = (
            len(lost_after_restart)
            + sum(1 for sop in sent if not (spooled[sop] and indexed[sop]))
            + results.missing
        )
        retried = sum(1 for uid in study_uids for j in studies[uid]["jobs"] if j["attempts"] > 1)
        figures.update(kills_while(data, kill_times))
        figures["receive_tmp_files_removed_at_start"] = sum(
            int(m)
            for log in tmp_path.glob("serve*.log")
            for m in re.findall(r"receive_tmp_cleaned files=(\d+)", log.read_text())
        )
        tally.extra = {
            **figures,
            "restarts": kills,
            "jobs_run_again_after_a_kill": retried,
            "redelivered_same_uid": results.redelivered,
        }
        assert figures["kills"] >= 20 and figures["mid_association_kills"] >= 20, figures
        assert figures["kills_during_an_analysis"] >= 1, figures
        assert lost_after_restart == [], f"acknowledged but missing after the restart: {lost_after_restart}"
        assert figures["tmp_files_after_restart"] == 0, "temporary files of killed writes left in the spool"
        assert figures["receive_tmp_files_after_restart"] == 0, "received files of a killed node left behind"
        assert tally.acknowledged == tally.sent == tally.stored == len(all_files)
        for uid in study_uids:
            assert studies[uid]["instances"] == len(files), studies[uid]
        assert results.problems == [], results.problems
        assert tally.analysed == tally.expected_analysed, [studies[u]["jobs"] for u in study_uids]
        assert tally.delivered == tally.expected_delivered
        assert tally.duplicates == 0 and tally.lost == 0
        logs_free_of_patient_data(data, all_files)


# -- 2. kill -9 of a worker mid-analysis -----------------------------------------------------------


@pytest.mark.parametrize("victim", ["child", "main"])
def test_kill_9_worker_mid_analysis_runs_again_and_delivers_one_result_set(
    victim: str, example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """``child``: the pool process running the analysis (Celery requeues the message, worker lost);
    ``main``: the worker's main process, which takes its pool child with it and holds the message
    the embedded broker cannot give back; the node restarts the worker and publishes the job again."""
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    dest = tmp_path / "pacs"
    what = "analysing child process" if victim == "child" else "main process (and its pool)"
    with recorded(f"kill -9 of the worker's {what} mid-analysis") as tally, pacs(dest) as pacs_port:
        node = start_node(tmp_path / "data", "--destination", f"DEST@127.0.0.1:{pacs_port}", stable_seconds=1)
        try:
            output = storescu(node.port, files)
            started_json = wait_for(
                "the analysis to start",
                lambda: next((node.data_dir / "results").glob("*/*/*/started.json"), None),
                ANALYSIS_TIMEOUT,
                node.log,
            )
            time.sleep(0.5)  # well into the analysis (it loads the series first)
            child = int(json.loads(started_json.read_text())["pid"])
            if victim == "child":
                os.kill(child, signal.SIGKILL)
            else:
                [worker] = [pid for pid in children(node.process.pid) if child in children(pid)]
                os.kill(worker, signal.SIGKILL)
            studies = wait_all_delivered(node, [study_uid], ANALYSIS_TIMEOUT)
            quiet_period(3)
        finally:
            node.stop()
        results = check_results(node.data_dir, dest, [study_uid])
        [job] = studies[study_uid]["jobs"]
        tally.sent = len(files)
        tally.acknowledged = len(successes(output))
        tally.stored = len(spool_files(node.data_dir, study_uid))
        tally.analysed = int(job["state"] == "done")
        tally.expected_analysed = 1
        tally.delivered = results.delivered
        tally.expected_delivered = 3
        tally.duplicates = results.duplicates + results.redelivered
        tally.lost = results.missing + (tally.acknowledged - tally.stored)
        tally.extra = {"attempts": job["attempts"]}
        tally.notes = f"kill -9 of the worker's {what} 0.5 s after the attempt started"
        assert tally.acknowledged == tally.sent == tally.stored
        assert job["state"] == "done" and job["attempts"] == 2, job
        assert results.problems == [] and tally.delivered == 3 and tally.duplicates == 0 and tally.lost == 0


def test_a_second_copy_of_a_running_job_steps_aside(tmp_path: Path) -> None:
    """The job lock: while another process runs a job, a second copy of its message (re-published
    after a restart) neither counts an attempt nor touches the job's files; once that process is
    killed the lock is free at once."""
    job_dir = tmp_path / "results" / "1.2" / "1.2.3" / "abcdef"
    job_dir.mkdir(parents=True)
    spec = JobSpec(1, "1.2", "1.2.3", "abcdef", "results/1.2/1.2.3/abcdef", 1)
    hold = "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    hold += "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(job_dir / ".lock")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        outcome = run_job(spec, WorkerConfig(data_dir=tmp_path))
        assert outcome is None, "another process holds the job: no outcome"
        assert not (job_dir / STARTED).exists() and not (job_dir / "outcome.json").exists()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with job_lock(job_dir) as held:
        assert held


# -- 3. the PACS down for minutes ------------------------------------------------------------------


def analysis_started(data_dir: Path, study_uid: str) -> Callable[[], bool]:
    return lambda: any((data_dir / "results" / study_uid).glob("*/*/started.json"))


def waiting_in_outbox(data_dir: Path, study_uid: str) -> Callable[[], bool]:
    def check() -> bool:
        study = studies_by_uid(data_dir).get(study_uid)
        return bool(study and study["state"] == "done" and study["outbox"].get("pending") == 3)

    return check


def log_has(node: NodeProc, text: str) -> Callable[[], bool]:
    return lambda: text in node.text()


def pacs_outage(example: Path, tmp_path: Path, tally: Tally, outage: float, studies_during: int) -> None:
    """The PACS is down from the start for ``outage`` seconds; studies arrive spread over it, are
    analysed and wait in the outbox; the node is killed (-9) and restarted half-way, and studies
    still arrive after that; then the PACS comes back."""
    data = tmp_path / "data"
    dest = tmp_path / "pacs"
    port = free_port()  # nothing listens here until the PACS "comes back"
    destination = ["--destination", f"DEST@127.0.0.1:{port}"]
    retry = {"BODYCOMP_SEND_RETRY_SECONDS": "2", "BODYCOMP_SEND_RETRY_MAX_SECONDS": "20"}
    down_since = time.monotonic()
    node = start_node(data, *destination, stable_seconds=1, env=retry)
    sent: dict[str, list[Path]] = {}
    acked = 0
    try:
        for n in range(studies_during):
            # Arrivals spread over the first 80 % of the outage.
            time.sleep(max(0.0, down_since + n * 0.8 * outage / studies_during - time.monotonic()))
            files, uid = copy_study(example, tmp_path / f"study{n}")
            sent[uid] = files
            acked += len(successes(storescu(node.port, files)))
            wait_for(
                "analysed, results in the outbox", waiting_in_outbox(data, uid), ANALYSIS_TIMEOUT, node.log
            )
            if n == (studies_during - 1) // 2:  # a restart (kill -9) during the outage
                wait_for("a failed delivery", log_has(node, "event=delivery_retry"), 60, node.log)
                node.process.kill()
                node.process.wait(timeout=30)
                node = start_node(data, *destination, stable_seconds=1, env=retry, log_name="serve-2.log")
                tally.extra["node_restarts"] = 1
        assert all(s["outbox"] == {"pending": 3} for uid, s in studies_by_uid(data).items() if uid in sent)
        assert pacs_received(dest) == []
        time.sleep(max(0.0, outage - (time.monotonic() - down_since)))
        tally.extra["outage_s"] = round(time.monotonic() - down_since)
        with pacs(dest, port=port):
            studies = wait_all_delivered(node, list(sent), 120)
            quiet_period(5)  # a second delivery would show up here
    finally:
        node.stop()
    results = check_results(data, dest, list(sent))
    tally.sent = sum(len(f) for f in sent.values())
    tally.acknowledged = acked
    tally.stored = sum(len(spool_files(data, uid)) for uid in sent)
    tally.analysed = sum(1 for uid in sent if [j["state"] for j in studies[uid]["jobs"]] == ["done"])
    tally.expected_analysed = len(sent)
    tally.delivered = results.delivered
    tally.expected_delivered = 3 * len(sent)
    tally.duplicates = results.duplicates + results.redelivered
    tally.lost = results.missing + (tally.sent - tally.stored)
    db = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        tally.extra["delivery_attempts_max"] = int(
            db.execute("SELECT MAX(attempts) FROM outbox").fetchone()[0]
        )
    finally:
        db.close()
    assert tally.acknowledged == tally.sent == tally.stored
    assert results.problems == [], results.problems
    assert tally.analysed == tally.expected_analysed
    assert tally.delivered == tally.expected_delivered and tally.duplicates == 0 and tally.lost == 0


def test_pacs_down_75s_results_wait_survive_a_restart_and_arrive_once(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    with recorded("destination PACS down 75 s (node kill -9 during the outage)") as tally:
        tally.notes = "retry 2 s doubling to 20 s; storescp +uf counts every receipt"
        pacs_outage(example_ct_derived_dicom, tmp_path, tally, outage=75, studies_during=2)


@pytest.mark.long
def test_pacs_down_6_minutes_results_wait_survive_a_restart_and_arrive_once(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    with recorded("destination PACS down 6 min (node kill -9 during the outage)") as tally:
        tally.notes = "retry 2 s doubling to 20 s; storescp +uf counts every receipt"
        pacs_outage(example_ct_derived_dicom, tmp_path, tally, outage=360, studies_during=4)


# -- 4. an analysis that hangs, one that crashes every time, one that is fine -----------------------


def test_hung_and_crashing_analyses_fail_with_a_reason_while_another_study_is_delivered(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    time_limit = 30
    names = ("hang", "crash", "good")
    sent = {name: copy_study(example_ct_derived_dicom, tmp_path / name) for name in names}
    uid = {name: sent[name][1] for name in names}
    dest = tmp_path / "pacs"
    outputs: dict[str, str] = {}
    actions: Counter[str] = Counter()
    with recorded("analysis hangs (stopped) / crashes on every attempt, another study alongside") as tally:
        tally.notes = (
            f"hard time limit {time_limit} s; the hang: SIGSTOP of the analysing process; the crash: "
            "kill -9 of the analysing process on every attempt"
        )
        with pacs(dest) as pacs_port:
            node = start_node(
                tmp_path / "data",
                "--destination",
                f"DEST@127.0.0.1:{pacs_port}",
                stable_seconds=2,
                env={"BODYCOMP_TASK_TIME_LIMIT": str(time_limit)},
            )
            stop = threading.Event()
            stopped: list[int] = []

            def saboteur() -> None:
                """Stop the hang study's first attempt; kill each attempt of the crash study."""
                seen = 0
                while not stop.wait(0.05):
                    for name in ("hang", "crash"):
                        found = next((node.data_dir / "results" / uid[name]).glob("*/*/started.json"), None)
                        if found is None or (found.parent / "outcome.json").exists():
                            continue
                        try:
                            started = json.loads(found.read_text())
                        except ValueError:
                            continue
                        if name == "hang" and not stopped:
                            os.kill(int(started["pid"]), signal.SIGSTOP)
                            stopped.append(int(started["pid"]))
                            actions["sigstop"] += 1
                        elif name == "crash" and seen < CRASHES and int(started["attempts"]) > seen:
                            # Attempts 1-2 analyse; a 3rd only records the crashes (quarantine).
                            seen = int(started["attempts"])
                            os.kill(int(started["pid"]), signal.SIGKILL)
                            actions["sigkill"] += 1

            thread = threading.Thread(target=saboteur, daemon=True)
            thread.start()
            try:
                senders = [
                    threading.Thread(
                        target=lambda n=n: outputs.__setitem__(n, storescu(node.port, sent[n][0]))
                    )
                    for n in names
                ]
                for t in senders:
                    t.start()
                for t in senders:
                    t.join()
                final = wait_for(
                    "all three studies in a final state, the good one delivered",
                    lambda: (
                        (s := studies_by_uid(node.data_dir))
                        and s.get(uid["hang"], {}).get("state") == "failed"
                        and s.get(uid["crash"], {}).get("state") == "failed"
                        and s.get(uid["good"], {}).get("outbox", {}).get("delivered") == 3
                        and s
                    ),
                    ANALYSIS_TIMEOUT + 3 * time_limit,
                    node.log,
                )
                quiet_period(3)
            finally:
                stop.set()
                thread.join(5)
                for pid in stopped:  # never leave a stopped process behind
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                node.stop()
        text = subprocess.run(
            [BODYCOMP, "status", "--data-dir", str(tmp_path / "data")],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        results = check_results(tmp_path / "data", dest, [uid["good"]])
        others = [r for r in pacs_received(dest) if r.study_uid != uid["good"]]
        [hang_job] = final[uid["hang"]]["jobs"]
        [crash_job] = final[uid["crash"]]["jobs"]
        tally.sent = sum(len(sent[n][0]) for n in names)
        tally.acknowledged = sum(len(successes(outputs[n])) for n in names)
        quarantined = sorted((tmp_path / "data" / "quarantine" / uid["crash"]).glob("*/job-*/*.dcm"))
        tally.stored = sum(len(spool_files(tmp_path / "data", uid[n])) for n in names) + len(quarantined)
        tally.analysed = sum(
            1
            for n, state in (("hang", "failed"), ("crash", "failed"), ("good", "done"))
            if final[uid[n]]["state"] == state
        )
        tally.expected_analysed = 3
        tally.delivered = results.delivered
        tally.expected_delivered = 3
        tally.duplicates = results.duplicates + results.redelivered + len(others)
        tally.lost = results.missing + (tally.sent - tally.stored)
        tally.extra = {
            **actions,
            "hang_reason": hang_job["reason"],
            "crash_reason": crash_job["reason"],
            "crash_attempts": crash_job["attempts"],
        }
        assert tally.acknowledged == tally.sent == tally.stored
        assert "time limit" in hang_job["reason"] and f"{time_limit} s" in hang_job["reason"], hang_job
        assert "crashed 2 times" in crash_job["reason"] and crash_job["attempts"] == 3, crash_job
        assert "quarantined" in crash_job["reason"], crash_job
        assert actions["sigkill"] == 2 and actions["sigstop"] == 1, actions
        # the crashing study's instances left the spool (nothing re-reads them) and nothing was lost
        assert spool_files(tmp_path / "data", uid["crash"]) == []
        assert len(quarantined) == len(sent["crash"][0]), "every instance of the crashing study kept"
        for name, job in (("hang", hang_job), ("crash", crash_job)):
            assert final[uid[name]]["reason"] == job["reason"]
            assert f"failed   {uid[name]}" in text and job["reason"][:40] in text, text
        assert results.problems == [] and tally.delivered == 3 and others == []
        assert tally.analysed == 3 and tally.duplicates == 0 and tally.lost == 0
