"""Load (issue #8): as many concurrent associations as the node allows, one more, and a long run.

* N concurrent DCMTK storescu associations, N = the node's configured ``max_associations``,
  each sending its own CT study: every instance acknowledged and stored, every study analysed
  (``done``); the aggregate receive rate goes into the tally's ``extra``.
* With N associations held open, association N + 1 is rejected cleanly (A-ASSOCIATE-RJ,
  rejected-transient, "local limit exceeded", as PS3.8 asks of a busy acceptor) and the same
  storescu succeeds once a slot is free.
* ``long`` (about 10 minutes, ``./scripts/test.sh -m long``): studies stream in continuously
  while the node's VmRSS and open file descriptors are sampled from ``/proc``; the last minutes
  must not be above the first ones (with a tolerance): no leak per association or per study.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import AE

from tests.reliability import recorded
from tests.test_node_support import copy_study, start_node, status, storescu, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.network, pytest.mark.slow]

MAX_ASSOCIATIONS = 6  # the configured maximum under test (16 by default; 6 keeps the test short)


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def spooled(data_dir: Path) -> int:
    return len(list((data_dir / "spool" / "studies").rglob("*.dcm")))


def done_studies(data_dir: Path, uids: set[str]) -> dict[str, str]:
    return {s["study_uid"]: s["state"] for s in status(data_dir)["studies"] if s["study_uid"] in uids}


def test_max_concurrent_associations_all_received_and_analysed_and_one_more_is_rejected(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    studies = [copy_study(example_ct_derived_dicom, tmp_path / f"study{k}") for k in range(MAX_ASSOCIATIONS)]
    node = start_node(tmp_path / "data", "--max-associations", str(MAX_ASSOCIATIONS), stable_seconds=3)
    try:
        with recorded(f"load: {MAX_ASSOCIATIONS} concurrent associations (the configured maximum)") as tally:
            outputs: list[str] = [""] * len(studies)
            barrier = threading.Barrier(len(studies))

            def send(k: int) -> None:
                barrier.wait()
                outputs[k] = storescu(node.port, studies[k][0], calling=f"MODALITY{k}")

            threads = [threading.Thread(target=send, args=(k,)) for k in range(len(studies))]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            seconds = time.monotonic() - started
            files = [f for paths, _ in studies for f in paths]
            tally.sent = len(files)
            tally.acknowledged = len(files) - sum(o.count("Failed") + o.count("Error:") for o in outputs)
            tally.extra = {
                "associations": len(studies),
                "receive_s": round(seconds, 1),
                "instances_per_s": round(len(files) / seconds, 1),
                "MB_per_s": round(sum(f.stat().st_size for f in files) / seconds / 1e6, 1),
            }
            assert all("Rejected" not in o and "Failed" not in o for o in outputs), outputs
            tally.stored = spooled(node.data_dir)
            assert tally.stored == len(files)
            uids = {uid for _, uid in studies}
            states = wait_for(
                "every study analysed",
                lambda: (
                    (s := done_studies(node.data_dir, uids))
                    and len(s) == len(uids)
                    and all(v in ("done", "failed") for v in s.values())
                    and s
                ),
                120 + 60 * len(uids),
                node.log,
            )
            tally.analysed = sum(1 for v in states.values() if v == "done")
            tally.expected_analysed = len(uids)
            tally.lost = tally.sent - tally.stored
            assert tally.analysed == len(uids), states

        with recorded(f"load: association {MAX_ASSOCIATIONS + 1} beyond the maximum, then a retry") as tally:
            holder = AE(ae_title="HOLDER")
            holder.add_requested_context("1.2.840.10008.1.1")
            held = [
                holder.associate("127.0.0.1", node.port, ae_title="BODYCOMP") for _ in range(MAX_ASSOCIATIONS)
            ]
            assert all(a.is_established for a in held)
            extra_study, _ = studies[0]
            output = storescu(node.port, extra_study[:3], calling="ONEMORE")
            assert "Association Rejected" in output, output
            assert "Rejected Transient" in output and "local limit exceeded" in output.lower(), output
            rejected = "event=association_rejected from=ONEMORE address=127.0.0.1 called=BODYCOMP"
            assert f"{rejected} reason=association_limit" in node.text()
            held.pop().release()
            wait_for("a free slot", lambda: True, 1)
            retry = wait_for(
                "the retry to be accepted",
                lambda: (
                    (o := storescu(node.port, extra_study[:3], calling="ONEMORE"))
                    and "Rejected" not in o
                    and o
                ),
                30,
                node.log,
            )
            assert "Failed" not in retry, retry
            for assoc in held:
                assoc.release()
            tally.sent, tally.refused, tally.acknowledged = 3, 3, 3
            tally.stored = 3
            tally.notes = (
                "A-ASSOCIATE-RJ result 2 (transient), source 3, reason 2 (local limit exceeded); retry stored"
            )
            assert node.process.poll() is None
    finally:
        node.stop()


LONG_SECONDS = 600
SAMPLE_SECONDS = 5


@pytest.mark.long
def test_long_run_memory_and_descriptors_do_not_grow(example_ct_derived_dicom: Path, tmp_path: Path) -> None:
    """Studies stream in for ~10 minutes; VmRSS and open fds of the node stay flat."""
    node = start_node(tmp_path / "data", stable_seconds=3)
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            if node.process.poll() is not None:
                return
            samples.append(
                (time.monotonic(), proc_status(node.process.pid, "VmRSS"), open_fds(node.process.pid))
            )

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        with recorded("long run: ~10 min of streamed studies, RSS and fds") as tally:
            sampler.start()
            started = time.monotonic()
            uids: set[str] = set()
            sent = failed = 0
            k = 0
            while time.monotonic() - started < LONG_SECONDS:
                cycle = time.monotonic()
                files, uid = copy_study(example_ct_derived_dicom, tmp_path / f"s{k}")
                output = storescu(node.port, files)
                sent += len(files)
                failed += output.count("Failed")
                uids.add(uid)
                for f in files:
                    f.unlink()
                k += 1
                # About one study per analysis time: the queue must not grow without bound.
                time.sleep(max(0.0, 12 - (time.monotonic() - cycle)))
            stop.set()
            sampler.join(10)
            states = wait_for(
                "every streamed study analysed",
                lambda: (
                    (s := done_studies(node.data_dir, uids))
                    and len(s) == len(uids)
                    and all(v in ("done", "failed") for v in s.values())
                    and s
                ),
                600,
                node.log,
            )
            span = samples[-1][0] - samples[0][0]
            first = [s for s in samples if s[0] - samples[0][0] < span / 4]
            last = [s for s in samples if samples[-1][0] - s[0] < span / 4]
            rss_first, rss_last = (
                statistics.median(s[1] for s in first),
                statistics.median(s[1] for s in last),
            )
            fds_first, fds_last = max(s[2] for s in first), max(s[2] for s in last)
            tally.sent, tally.acknowledged = sent, sent - failed
            tally.stored = spooled(node.data_dir)
            tally.analysed = sum(1 for v in states.values() if v == "done")
            tally.expected_analysed = len(uids)
            tally.lost = tally.acknowledged - tally.stored
            tally.extra = {
                "minutes": round(span / 60, 1),
                "studies": len(uids),
                "samples": len(samples),
                "rss_first_quarter_MB": round(rss_first / 1024, 1),
                "rss_last_quarter_MB": round(rss_last / 1024, 1),
                "rss_max_MB": round(max(s[1] for s in samples) / 1024, 1),
                "fds_first_quarter_max": fds_first,
                "fds_last_quarter_max": fds_last,
            }
            tally.notes = "growth tolerance: RSS last quarter ≤ first quarter × 1.15 + 20 MB; fds + 4"
            assert tally.lost == 0 and failed == 0
            assert tally.analysed == len(uids), states
            assert rss_last <= rss_first * 1.15 + 20 * 1024, tally.extra
            assert fds_last <= fds_first + 4, tally.extra
    finally:
        stop.set()
        node.stop()


def test_max_associations_and_network_timeout_reach_the_ae(tmp_path: Path) -> None:
    """``--max-associations``/``--network-timeout`` (and their environment form) set pynetdicom's AE."""
    from node.config import ConfigError, load_settings
    from node.operate.cli import _settings, build_parser
    from node.receive.scp import build_ae

    args = build_parser().parse_args(["serve", "--max-associations", "3", "--network-timeout", "5"])
    node = _settings(args).node
    ae = build_ae(node)
    assert (ae.maximum_associations, ae.network_timeout, ae.acse_timeout) == (3, 5.0, 5.0)
    env = {"BODYCOMP_MAX_ASSOCIATIONS": "7", "BODYCOMP_NETWORK_TIMEOUT": "60"}
    assert build_ae(load_settings(environ=env).node).maximum_associations == 7
    with pytest.raises(ConfigError):
        load_settings(environ={"BODYCOMP_MAX_ASSOCIATIONS": "0"})
