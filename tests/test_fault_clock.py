"""Wall-clock steps (#18): a node whose system clock is set back or forward changes nothing.

Found by a tester: the study-complete timer followed the wall clock, so a clock set back an hour
held studies an hour, and one stepped forward during a sender's pause analysed half a study. The
node now times studies on the monotonic clock (node/schedule/stability.py). Here the node runs under
libfaketime with the wall clock moved at run time through a timestamp file, while the
monotonic clock stays real (``FAKETIME_DONT_FAKE_MONOTONIC``), as with an NTP step or a restored VM.
The node runs without workers (Celery's own threads do not survive libfaketime's timed waits):
what is checked is the dispatch decision, i.e. the jobs it creates and their instances.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from tests.reliability import recorded
from tests.test_node_support import copy_study, start_node, storescu, wait_for
from tests.timing import quiet_period

pytestmark = [pytest.mark.network, pytest.mark.slow]

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
STABLE_SECONDS = 4.0


def jobs_of(data_dir: Path, study_uid: str) -> list[tuple[str, int | None]]:
    """(state, instances) of each job of a study, from the index and the job folders (None while
    a job's folder is being written)."""
    db = sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True)
    try:
        rows = list(
            db.execute("SELECT state, result_dir FROM jobs WHERE study_uid=? ORDER BY id", (study_uid,))
        )
    finally:
        db.close()
    out: list[tuple[str, int | None]] = []
    for state, rel in rows:
        spec = data_dir / rel / "job.json"
        out.append((state, json.loads(spec.read_text())["instances"] if spec.exists() else None))
    return out


def dispatched(data_dir: Path, study_uid: str) -> bool:
    jobs = jobs_of(data_dir, study_uid)
    return bool(jobs) and all(n is not None for _, n in jobs)


@pytest.mark.reliability
def test_clock_steps_neither_hold_a_study_nor_analyse_half_of_one(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} missing: ./scripts/test.sh installs libfaketime")
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    files_a, study_a = copy_study(example_ct_derived_dicom, tmp_path / "a")
    files_b, study_b = copy_study(example_ct_derived_dicom, tmp_path / "b")
    with recorded("wall clock set back 1 h after a study; forward 2 h in a sender's pause") as tally:
        tally.notes = (
            "libfaketime on the node, monotonic clock real; no workers: the dispatch decision is checked"
        )
        node = start_node(tmp_path / "data", "--workers", "0", stable_seconds=STABLE_SECONDS, env=env)
        try:
            time.sleep(STABLE_SECONDS)  # (the node dispatches nothing in its first stable period)
            # 1. the clock is set back an hour just after a study arrived: analysed as usual
            outputs = [storescu(node.port, files_a)]
            offset.write_text("-1h\n")
            wait_for(
                "study A to be dispatched despite the clock set back",
                lambda: dispatched(node.data_dir, study_a),
                6 * STABLE_SECONDS,
                node.log,
            )
            jobs_a = jobs_of(node.data_dir, study_a)
            # 2. half a study, then the clock jumps two hours forward during the sender's pause
            half = len(files_b) // 2
            outputs.append(storescu(node.port, files_b[:half]))
            offset.write_text("+1h\n")
            time.sleep(STABLE_SECONDS / 2)
            outputs.append(storescu(node.port, files_b[half:]))
            wait_for("study B to be dispatched", lambda: dispatched(node.data_dir, study_b), 60, node.log)
            quiet_period(2 * STABLE_SECONDS)  # (a first job of half the study would be superseded by now)
            jobs_b = jobs_of(node.data_dir, study_b)
            alive = node.process.poll() is None
        finally:
            node.stop()
        tally.sent = len(files_a) + len(files_b)
        tally.acknowledged = sum(out.count("Received Store Response (Success)") for out in outputs)
        tally.stored = len(list((tmp_path / "data" / "spool" / "studies").glob("*/*/*.dcm")))
        tally.extra = {"jobs_a": len(jobs_a), "jobs_b": len(jobs_b), "jobs_of_half_a_study": len(jobs_b) - 1}
        assert jobs_a == [("queued", len(files_a))]
        assert jobs_b == [("queued", len(files_b))], "half the study was analysed"
        assert alive
        assert tally.acknowledged == tally.sent == tally.stored
