"""Broker outage: Redis or RabbitMQ stopped for 60 s while studies arrive (issue #8).

Real processes on loopback: a private broker the test owns (:mod:`tests.servers`, never the
machine's shared 6379/5672), ``bodycomp serve --broker-url`` with a separate ``bodycomp worker``,
DCMTK storescu as the modality and DCMTK storescp as the PACS. The broker is stopped while the
first study is being analysed; during the minute it is away three more studies arrive and become
stable; then it comes back and one more study arrives. What must hold:

* receiving goes on: every instance gets Success and is in the spool and the index;
* no study is ever ``failed`` because the broker was away (its job waits, unpublished);
* the node says once that the broker is unavailable, and once that it is back: no traceback,
  no error line per scheduler tick;
* the queue drains when the broker returns: every study analysed once (one job, done), and its
  SEG, SR and overlay delivered once to the destination (unique SOP Instance UIDs).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom
import pytest
from kombu.exceptions import OperationalError

from node.config import NodeSettings
from node.schedule import dispatch, results
from node.schedule.dispatch import BrokerHealth, dispatch_study
from node.store.index import Index, InstanceRecord, digest_file
from tests.clock import claim_after_idle
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.reliability import Tally, recorded
from tests.servers import SERVERS, RabbitMQServer
from tests.test_node_support import (
    copy_study,
    received,
    start_node,
    start_worker,
    status,
    store_responses,
    storescp,
    storescu,
    wait_for,
)
from tests.timing import quiet_period
from workers.load.selection import SelectionPolicy

# Fault scenarios (private Redis and RabbitMQ servers): the full suite only, like every test_fault_*.
pytestmark = pytest.mark.slow

OUTAGE_SECONDS = 60.0
STABLE_SECONDS = 3.0
#: Seconds into the outage at which the studies that arrive during it are sent.
ARRIVALS = (2.0, 25.0, 45.0)
DRAIN_TIMEOUT = 420.0  # five analyses of example_ct one after another on a shared 2-core machine
RESULTS_PER_STUDY = 3  # SEG, SR, colour overlay


def acknowledged(answers: dict[str, str]) -> set[str]:
    return {f for f, s in answers.items() if s.startswith("Success") or s.startswith("Warning")}


def sop_uids(files: Sequence[Path]) -> dict[str, str]:
    """File path → its SOP Instance UID."""
    return {str(f): str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def spool_sops(data_dir: Path) -> Counter[str]:
    """SOP Instance UIDs of the instances under their final names in the spool (duplicates count)."""
    return Counter(p.stem for p in (data_dir / "spool" / "studies").rglob("*.dcm"))


def published(data_dir: Path, study_uid: str) -> bool:
    """The study's job was handed to the broker (``jobs.enqueued`` set in the node's index)."""
    db = sqlite3.connect(f"file:{data_dir / 'index.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT enqueued FROM jobs WHERE study_uid=?", (study_uid,)).fetchall()
    except sqlite3.Error:
        return False
    finally:
        db.close()
    return bool(rows) and all(r[0] is not None for r in rows)


class StateWatch:
    """Polls ``bodycomp status --json`` in the background and remembers every study state seen."""

    def __init__(self, data_dir: Path, period: float = 2.0) -> None:
        self.data_dir = data_dir
        self.period = period
        self.seen: dict[str, set[str]] = {}
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop_event.is_set():
            try:
                for study in status(self.data_dir)["studies"]:
                    self.seen.setdefault(study["study_uid"], set()).add(study["state"])
            except Exception:  # a status run racing the node's start: try again next period
                pass
            self.stop_event.wait(self.period)

    def __enter__(self) -> StateWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_event.set()
        self.thread.join(timeout=90)


def broker_outage(broker: str, example: Path, tmp_path: Path, tally: Tally) -> None:
    server = SERVERS[broker](tmp_path / broker)
    server.start()
    studies = [copy_study(example, tmp_path / f"study-{i}") for i in range(3 + len(ARRIVALS))]
    arriving = studies[2:-1]
    sops = {uid: sop_uids(files) for files, uid in studies}
    data = tmp_path / "data"
    dest = tmp_path / "pacs"
    outputs: list[str] = []
    try:
        with storescp(dest) as dest_port:
            worker = start_worker(data, server.url, tmp_path / "worker.log")
            node = start_node(
                data,
                "--destination",
                f"DEST@127.0.0.1:{dest_port}",
                "--broker-url",
                server.url,
                stable_seconds=STABLE_SECONDS,
            )
            try:
                with StateWatch(data) as watch:
                    # 1. Before the outage: the first study is being analysed and the second waits in
                    #    the broker's queue behind it (one worker, one analysis at a time) when the
                    #    broker stops: the broker must keep that message across its restart.
                    (first_files, first_uid), (queued_files, queued_uid) = studies[:2]
                    outputs.append(storescu(node.port, first_files))
                    outputs.append(storescu(node.port, queued_files))
                    wait_for(
                        "the first analysis to start and the second study to be published",
                        lambda: (
                            next((data / "results" / first_uid).glob("*/*/started.json"), None) is not None
                            and published(data, queued_uid)
                        ),
                        180,
                        [node.log, worker.log],
                    )
                    server.stop()
                    down = time.monotonic()
                    in_queue_at_stop = (
                        next((data / "results" / queued_uid).glob("*/*/started.json"), None) is None
                    )
                    # 2. During the outage: studies arrive and become stable.
                    for offset, (files, _) in zip(ARRIVALS, arriving, strict=True):
                        time.sleep(max(0.0, down + offset - time.monotonic()))
                        outputs.append(storescu(node.port, files))
                    time.sleep(max(0.0, down + OUTAGE_SECONDS - time.monotonic()))
                    during = {s["study_uid"]: s for s in status(data)["studies"]}
                    server.start()
                    # 3. After: one more study, and everything drains.
                    last_files, _ = studies[-1]
                    outputs.append(storescu(node.port, last_files))

                    def drained() -> bool:
                        current = {s["study_uid"]: s for s in status(data)["studies"]}
                        return all(
                            uid in current
                            and current[uid]["state"] in ("done", "failed")
                            and current[uid]["outbox"].get("pending", 0) == 0
                            for _, uid in studies
                        )

                    wait_for(
                        "every study analysed and delivered", drained, DRAIN_TIMEOUT, [node.log, worker.log]
                    )
                    quiet_period(3)  # a duplicate delivery, if any, would arrive now
            finally:
                node.stop()
                worker.stop()
    finally:
        server.close()

    # -- the figures, from the peers --------------------------------------------------------------
    answers: dict[str, str] = {}
    for output in outputs:
        answers.update(store_responses(output))
    all_files = {f: uid for uid, files in sops.items() for f in files}
    sent = {sops[uid][f] for f, uid in all_files.items()}
    acked = {_sop(sops, f) for f in acknowledged(answers)}
    in_spool = spool_sops(data)
    final = {s["study_uid"]: s for s in status(data)["studies"]}
    results = received(dest)
    result_uids = Counter(str(ds.SOPInstanceUID) for ds in results)
    tally.sent = len(sent)
    tally.acknowledged = len(acked)
    tally.refused = len(sent) - len(acked)
    tally.stored = len(set(in_spool) & sent)
    tally.expected_analysed = len(studies)
    tally.analysed = sum(
        1 for _, uid in studies if uid in final and [j["state"] for j in final[uid]["jobs"]] == ["done"]
    )
    tally.expected_delivered = RESULTS_PER_STUDY * len(studies)
    tally.delivered = len(result_uids)
    tally.duplicates = sum(n - 1 for n in in_spool.values() if n > 1) + sum(
        n - 1 for n in result_uids.values() if n > 1
    )
    tally.lost = len(acked - set(in_spool)) + max(0, tally.expected_delivered - tally.delivered)
    failed_seen = sorted(uid for uid, states in watch.seen.items() if "failed" in states)
    node_text = node.text()
    tally.extra = {
        "outage_s": int(OUTAGE_SECONDS),
        "studies": len(studies),
        "arrived_during_outage": len(ARRIVALS),
        "messages_kept_by_broker_across_stop": int(in_queue_at_stop),
        "jobs_waiting_at_end_of_outage": sum(
            1 for s in during.values() for j in s["jobs"] if j["state"] == "queued"
        ),
        "attempts_max": max((j["attempts"] for s in final.values() for j in s["jobs"]), default=0),
        "broker_unavailable_log_lines": node_text.count("event=broker_unavailable"),
    }
    tally.notes = (
        f"{broker} (private instance) stopped {OUTAGE_SECONDS:.0f} s while the first study was being "
        "analysed and the second queued behind it; "
        f"{len(ARRIVALS)} studies arrived and became stable during the outage, one after"
    )

    # -- what must hold ---------------------------------------------------------------------------
    assert tally.acknowledged == tally.sent, {f: s for f, s in answers.items() if not s.startswith("Success")}
    assert tally.stored == tally.sent and tally.lost == 0, (sorted(acked - set(in_spool))[:5], tally)
    assert failed_seen == [], f"studies marked failed during the outage: {failed_seen}"
    if in_queue_at_stop:  # the broker kept it: the node did not have to publish it again
        job = final[queued_uid]["jobs"][0]
        assert f"event=job_republished job={job['id']}\n" not in node_text, "message lost by the broker"
    for _, uid in arriving:  # stable during the outage: waiting, not failed
        assert during[uid]["state"] in ("queued", "received", "stable"), during[uid]
    for files, uid in studies:
        study = final[uid]
        assert study["instances"] == len(files), study
        assert [j["state"] for j in study["jobs"]] == ["done"], study["jobs"]
        # One attempt: the analysis running when the broker went was not cancelled and run again.
        assert [j["attempts"] for j in study["jobs"]] == [1], study["jobs"]
        assert study["outbox"] == {"delivered": RESULTS_PER_STUDY}, study
        mine = [ds for ds in results if ds.StudyInstanceUID == uid]
        assert len(mine) == RESULTS_PER_STUDY, (uid, len(mine))
    assert tally.delivered == tally.expected_delivered and tally.duplicates == 0, tally
    assert "Traceback" not in node_text, node_text[-4000:]
    assert node_text.count("event=broker_unavailable") == 1, "the outage is logged once"
    assert node_text.count("event=broker_available") >= 1, "and its end"
    assert node_text.count("event=enqueue_failed") == 0, "no error line per job and tick"
    assert "PHANTOM" not in node_text, "UIDs in the log, never patient names or IDs"


def _sop(sops: dict[str, dict[str, str]], path: str) -> str:
    for files in sops.values():
        if path in files:
            return files[path]
    raise KeyError(path)


@pytest.mark.reliability
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_broker_stopped_60s_while_studies_arrive_loses_nothing_and_drains(
    broker: str, example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    if broker == "rabbitmq" and not RabbitMQServer.installed():
        pytest.fail("rabbitmq-server is not installed (scripts/test.sh installs it)")
    with recorded(f"broker ({broker}) stopped 60 s while studies arrive") as tally:
        broker_outage(broker, example_ct_derived_dicom, tmp_path, tally)


# -- the node's side of an outage, without servers (fast; in the default run) ----------------------


class FlakyBroker:
    """A ``publish`` that fails like kombu does while ``down`` is set, and records what it took."""

    def __init__(self) -> None:
        self.down = True
        self.attempts = 0
        self.published: list[int] = []

    def __call__(self, spec: dict[str, Any]) -> None:
        self.attempts += 1
        if self.down:
            raise OperationalError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
        self.published.append(int(spec["job_id"]))


def stable_ct_studies(node: NodeSettings, index: Index, count: int) -> list[str]:
    """``count`` small CT studies in the spool and the index, idle long enough to be stable."""
    g = axial_geometry(n_slices=4)
    uids = []
    for _ in range(count):
        options = SeriesOptions()
        study_dir = node.spool_dir / "studies" / options.study_uid / options.series_uid
        for path in write_series(study_dir, sample(block_phantom(), g), g, options):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rec = InstanceRecord(
                options.study_uid,
                options.series_uid,
                str(ds.SOPInstanceUID),
                str(ds.SOPClassUID),
                path,
                path.stat().st_size,
                digest_file(path),
                "MODALITY",
            )
            index.record_instance(rec, now=0)
        uids.append(options.study_uid)
    return uids


def test_broker_down_jobs_wait_unpublished_outage_logged_once_then_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Weakness found: every scheduler tick tried every unpublished job (a 2 s client retry each)
    and logged an error per job per tick for the whole outage. Now: one line when the broker goes,
    one when it is back, one probe per period, no job or study failed, all published after."""
    health = BrokerHealth(probe_seconds=0.0)  # a probe on every call: the test drives the time
    monkeypatch.setattr(dispatch, "BROKER", health)
    monkeypatch.setattr(results, "BROKER", health)
    caplog.set_level(logging.DEBUG, logger="bodycomp")
    node = NodeSettings(data_dir=tmp_path / "data", jobs_per_sender=3)  # (one sender: all three at once)
    index = Index(node.index_path)
    broker = FlakyBroker()
    studies = stable_ct_studies(node, index, 3)
    stable = claim_after_idle(index)
    assert len(stable) == 3
    jobs = [job for study in stable for job in dispatch_study(study, index, node, SelectionPolicy(), broker)]
    assert len(jobs) == 3
    for _ in range(10):  # ten scheduler ticks during the outage
        assert results.republish(index, node, broker) == 0
    for uid in studies:
        study = index.study(uid)
        assert study is not None and study["state"] == "queued", dict(study or {})
    assert [(j["state"], j["enqueued"]) for j in index.open_jobs()] == [("queued", None)] * 3
    assert broker.attempts == 3 + 10, "one try per dispatch and one per tick, not one per job per tick"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().split(" ")[0] for r in errors] == ["event=broker_unavailable"], errors
    assert not any(r.exc_info for r in caplog.records), "no traceback"

    broker.down = False
    assert results.republish(index, node, broker) == 3
    assert sorted(broker.published) == sorted(jobs)
    assert all(j["enqueued"] is not None for j in index.open_jobs())
    assert sum("event=broker_available" in r.getMessage() for r in caplog.records) == 1
    assert results.republish(index, node, broker) == 0, "published once"


def test_broker_health_waits_for_the_probe_period() -> None:
    health = BrokerHealth(probe_seconds=5.0)
    assert health.may_publish(now=0.0)
    health.failed(OSError("refused"), now=0.0)
    assert not health.may_publish(now=4.9) and health.may_publish(now=5.0)
    health.succeeded(now=6.0)
    assert health.may_publish(now=6.0) and health.down_since is None


def test_celery_settings_for_broker_outages() -> None:
    """RabbitMQ: publisher confirms (a publish into a closing connection raises instead of being
    lost while the index says enqueued). Any broker: an analysis is not cancelled when the broker
    connection drops (it was: killed mid-way, its Redis message invisible for 40 min)."""
    from workers.app import configure_app

    try:
        app = configure_app("amqp://guest:guest@127.0.0.1:1//")
        assert app.conf.broker_transport_options.get("confirm_publish") is True
        assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
        app = configure_app("redis://127.0.0.1:1/0")
        assert "confirm_publish" not in app.conf.broker_transport_options
        assert app.conf.broker_transport_options["visibility_timeout"] > app.conf.task_time_limit
    finally:
        configure_app("memory://")


@pytest.mark.network
def test_rabbitmq_publishes_with_confirms(tmp_path: Path) -> None:
    """The confirm_publish option really reaches the AMQP connection the node publishes on."""
    if not RabbitMQServer.installed():
        pytest.fail("rabbitmq-server is not installed (scripts/test.sh installs it)")
    from workers.app import configure_app

    with RabbitMQServer(tmp_path / "rabbitmq") as server:
        try:
            app = configure_app(server.url)
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=3)
                assert conn.connection.confirm_publish is True
        finally:
            configure_app("memory://")
