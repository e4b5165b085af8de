"""An instance that crashed the analysis twice is quarantined, never read again (#18).

Found by a tester: four small files carrying a private element that inflates to 384 MB were stored,
and when their study was scheduled the process reading them was killed, again after every start.
Reading is bounded now (tests/test_fault_memory.py); this is the last line: an analysis whose
process dies twice while its worker lives on fails, and the node moves the series' instances out of
the spool and its index. Worker and node run here as plain functions on real files;
tests/test_fault_process.py kills a real worker's analysing process on every attempt.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from node.config import NodeSettings
from node.schedule import results
from node.schedule.dispatch import dispatch_study, plan_study
from node.store.index import Index
from node.store.quarantine import MANIFEST
from tests.clock import claim_after_idle
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.index_records import record_file
from workers.job import OUTCOME, STARTED, JobSpec, JobState, Outcome
from workers.jsonfile import read_json, write_json
from workers.load.selection import SelectionPolicy
from workers.tasks import WorkerConfig, begin_attempt, end_attempt, process_start, run_job


def _dispatched(tmp_path: Path) -> tuple[NodeSettings, Index, JobSpec, list[Path]]:
    """A stable CT study in the node's spool, dispatched into one job (its spec returned)."""
    node = NodeSettings(data_dir=tmp_path / "data")
    index = Index(node.index_path)
    g = axial_geometry(n_slices=4)
    options = SeriesOptions()
    study_dir = node.spool_dir / "studies" / options.study_uid
    paths = write_series(study_dir / options.series_uid, sample(block_phantom(), g), g, options)
    for path in paths:
        assert record_file(index, path, "CT1", now=0) == "new"
    published: list[dict[str, object]] = []
    [stable] = claim_after_idle(index)
    [_] = dispatch_study(stable, index, node, SelectionPolicy(), published.append)
    [message] = published
    return node, index, JobSpec.from_json(message), paths


def _died_with_its_worker(job_dir: Path, worker_pid: int, worker_start: str | None) -> None:
    """What an attempt leaves when its whole worker died: ``started.json`` naming a gone worker."""
    write_json(
        job_dir / STARTED,
        {
            "attempts": 1,
            "crashes": 0,
            "host": socket.gethostname(),
            "pid": 1,
            "worker_pid": worker_pid,
            "worker_start": worker_start,
            "time": 0.0,
        },
    )


def _gone_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_two_crashes_under_a_living_worker_fail_the_job_for_quarantine(tmp_path: Path) -> None:
    node, _, spec, _ = _dispatched(tmp_path)
    job_dir = node.data_dir / spec.job_dir
    config = WorkerConfig(data_dir=node.data_dir)
    # two attempts that began and never ended, under a worker that lives on (here the test's parent
    # process, as a Celery pool child's parent is its worker): only the analysing process died
    begin_attempt(job_dir)
    begin_attempt(job_dir)
    outcome = run_job(spec, config)
    assert outcome is not None and outcome.state == JobState.FAILED and outcome.quarantine, outcome
    assert "crashed 2 times" in outcome.reason and outcome.attempts == 3


def test_attempts_interrupted_with_their_whole_worker_are_not_crashes(tmp_path: Path) -> None:
    """A node killed or restarted takes its workers along: that says nothing about the input."""
    node, _, spec, _ = _dispatched(tmp_path)
    job_dir = node.data_dir / spec.job_dir
    _died_with_its_worker(job_dir, _gone_pid(), "12345")
    assert begin_attempt(job_dir).crashes == 0
    me = os.getpid()
    _died_with_its_worker(job_dir, me, "not the start time of this process")  # a re-used pid
    assert begin_attempt(job_dir).crashes == 0
    _died_with_its_worker(job_dir, _gone_pid(), None)
    outcome = run_job(spec, WorkerConfig(data_dir=node.data_dir))
    assert outcome is not None and not outcome.quarantine, outcome
    assert read_json(job_dir / STARTED) is not None
    assert int((read_json(job_dir / STARTED) or {})["crashes"]) == 0


def test_a_retried_error_is_not_a_crash(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    begin_attempt(job_dir)
    end_attempt(job_dir)  # the analysis raised and Celery retries it
    assert begin_attempt(job_dir).crashes == 0


def test_the_node_moves_a_crashing_series_out_of_the_spool_and_never_reads_it_again(tmp_path: Path) -> None:
    node, index, spec, paths = _dispatched(tmp_path)
    job_dir = node.data_dir / spec.job_dir
    reason = "the analysis crashed 2 times (its process was killed); its instances were quarantined"
    outcome = Outcome(JobState.FAILED, reason, attempts=3, finished=1.0, host="worker", quarantine=True)
    write_json(job_dir / OUTCOME, outcome.to_json())
    assert results.collect(index, node) == 1
    job = index.job(spec.job_id)
    assert job is not None and job["state"] == "failed"
    folder = node.data_dir / "quarantine" / spec.study_uid / spec.series_uid / f"job-{job['id']}"
    assert str(folder) in job["reason"] and "crashed 2 times" in job["reason"]
    assert sorted(p.name for p in folder.glob("*.dcm")) == sorted(p.name for p in paths), "nothing lost"
    assert all(not p.exists() for p in paths), "still in the spool"
    assert (read_json(folder / MANIFEST) or {})["instances"] == len(paths)
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert index.series_instances(spec.study_uid, spec.series_uid) == []
    study = index.study(spec.study_uid)
    assert study is not None and study["state"] == "failed" and "quarantined" in study["reason"]
    # a re-planning of the study (a late instance, a restart) finds nothing of it to read
    assert plan_study(node.spool_dir / "studies" / spec.study_uid, SelectionPolicy(), False).series == ()
    # the same instances sent again are new to the node, but map to the failed job: not run again
    for path, moved in zip(sorted(paths), sorted(folder.glob("*.dcm")), strict=True):
        path.write_bytes(moved.read_bytes())
        assert record_file(index, path, "CT1", now=500) == "new"
    published: list[dict[str, object]] = []
    for stable in claim_after_idle(index):
        assert dispatch_study(stable, index, node, SelectionPolicy(), published.append) == []
    assert published == []


def test_process_start_names_one_live_process() -> None:
    assert process_start(os.getpid()) is not None
    assert process_start(_gone_pid()) is None
