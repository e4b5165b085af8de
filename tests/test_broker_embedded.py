"""The embedded SQLite broker opened by several processes at once, and the worker's exit code.

kombu's SQLAlchemy transport creates its tables and the queue's row on first use with a
look-then-insert that is not atomic across processes: two processes opening a new broker file at
the same moment (the node publishing its first job while a worker declares the queue) failed in
about one round in three here, with ``table kombu_queue already exists`` or ``UNIQUE constraint
failed: kombu_queue.name``. Celery takes the second for an "Unrecoverable error" and the worker
stopped, exiting 0, so nothing restarted it (a CI run timed out waiting for results that way).
"""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import subprocess
from contextlib import closing
from datetime import datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from celery import Celery

from node.config import NodeSettings, Settings
from node.operate.service import Node
from node.store.index import Index
from tests.test_node_support import BODYCOMP, start, wait_for
from workers.app import configure_app, embedded_broker_file, prepare_broker, purge_consumed

QUEUE = "bodycomp.analyses"
ROUNDS = 20
PROCESSES = 3


def _open_at_once(url: str, barrier: Barrier, results: multiprocessing.Queue[str]) -> None:
    """One process's first use of the broker: prepare, then declare the queue as Celery's
    consumer (or producer) does next, starting together with the other processes."""
    try:
        app = configure_app(url, queue=QUEUE)
        barrier.wait(timeout=30)
        prepare_broker(app, QUEUE)
        with app.connection_for_write() as connection:
            connection.default_channel.queue_declare(queue=QUEUE)
        results.put("ok")
    except Exception as exc:  # reported to the test, which shows it
        results.put(f"{type(exc).__name__}: {exc}".splitlines()[0])


@pytest.mark.slow  # real processes
def test_processes_opening_a_new_broker_together_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # kombu and SQLAlchemy already imported
    failures: list[str] = []
    for round_ in range(ROUNDS):
        broker = tmp_path / f"broker-{round_}.sqlite"
        url = f"sqla+sqlite:///{broker}"
        barrier = context.Barrier(PROCESSES)
        results: multiprocessing.Queue[str] = context.Queue()
        processes = [
            context.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(PROCESSES)
        ]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=90) for _ in processes]
        for process in processes:
            process.join(timeout=30)
        failures += [f"round {round_}: {o}" for o in outcomes if o != "ok"]
        with sqlite3.connect(broker) as db:
            assert db.execute("SELECT name FROM kombu_queue").fetchall() == [(QUEUE,)]
    assert not failures, "\n".join(failures)


def test_embedded_broker_file_from_url(tmp_path: Path) -> None:
    assert embedded_broker_file(f"sqla+sqlite:///{tmp_path}/b.sqlite") == tmp_path / "b.sqlite"
    assert embedded_broker_file("sqla+sqlite:///relative.sqlite") == Path("relative.sqlite")
    assert embedded_broker_file("sqla+sqlite://") is None  # in memory: nothing to share
    assert embedded_broker_file("redis://127.0.0.1:6379/0") is None
    assert embedded_broker_file("amqp://guest:guest@127.0.0.1:5672//") is None


@pytest.mark.slow  # real processes
def test_worker_exit_code_says_whether_it_failed(tmp_path: Path) -> None:
    """A worker that cannot use its broker exits 1 (systemd's ``Restart=on-failure`` restarts it);
    one stopped by SIGTERM after a warm shutdown exits 0."""
    broken = tmp_path / "broken"
    broken.mkdir(mode=0o700)
    (broken / "broker.sqlite").write_bytes(b"not a database, " * 256)
    run = subprocess.run(
        [BODYCOMP, "worker", "--data-dir", str(broken)], capture_output=True, text=True, timeout=180
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert "Unrecoverable error" in output and "file is not a database" in output, output[-3000:]

    fine = tmp_path / "fine"
    fine.mkdir(mode=0o700)
    worker = start([BODYCOMP, "worker", "--data-dir", str(fine)], tmp_path / "worker.log")
    try:
        wait_for("the worker to be ready", lambda: " ready." in worker.text(), 120, worker.log)
    finally:
        code = worker.stop()
    assert code == 0, worker.text()[-3000:]
    assert "Warm shutdown" in worker.text()


def rows(broker: Path) -> list[tuple[int, int]]:
    """(visible, count) of the broker's messages."""
    with closing(sqlite3.connect(broker)) as db:
        query = "SELECT visible, COUNT(*) FROM kombu_message GROUP BY visible ORDER BY visible"
        return [(int(v), int(n)) for v, n in db.execute(query)]


def put_and_take(app: Celery, jobs: int, take: int) -> list[int]:
    """Publish ``jobs`` messages and take (and acknowledge) the first ``take``, as a worker does."""
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(QUEUE)
        for job in range(jobs):
            queue.put({"job": job})
        taken = [queue.get(timeout=10) for _ in range(take)]
        for message in taken:
            message.ack()
        queue.close()
    return [int(m.payload["job"]) for m in taken]


def test_taken_messages_are_purged_and_waiting_ones_kept(tmp_path: Path) -> None:
    """kombu marks a taken message invisible and keeps it for ever; the node's hourly purge drops
    those over an hour old and never a message still waiting for a worker."""
    broker = tmp_path / "broker.sqlite"
    url = f"sqla+sqlite:///{broker}"
    app = configure_app(url, queue=QUEUE)
    prepare_broker(app, QUEUE)
    assert put_and_take(app, jobs=5, take=3) == [0, 1, 2]
    assert rows(broker) == [(0, 3), (1, 2)]  # what kombu leaves behind
    assert purge_consumed(url, older_than_s=3600) == 0  # taken just now
    assert purge_consumed(url, older_than_s=3600, now=datetime.now() + timedelta(hours=2)) == 3
    assert rows(broker) == [(1, 2)]
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue(QUEUE)
        assert [queue.get(timeout=10).payload["job"] for _ in range(2)] == [3, 4]
        queue.close()
    assert purge_consumed("redis://127.0.0.1:6379/0") == 0
    assert purge_consumed(f"sqla+sqlite:///{tmp_path / 'absent.sqlite'}") == 0
    assert not (tmp_path / "absent.sqlite").exists()


def test_node_scheduler_purges_the_embedded_broker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(node=NodeSettings(data_dir=tmp_path / "data", stable_seconds=0))
    settings.node.data_dir.mkdir(parents=True)
    node = Node(settings)
    node.index = Index(settings.node.index_path)
    app = configure_app(settings.node.effective_broker_url, queue=settings.node.queue)
    prepare_broker(app, settings.node.queue)
    assert put_and_take(app, jobs=2, take=1) == [0]
    broker = settings.node.data_dir / "broker.sqlite"
    with closing(sqlite3.connect(broker)) as db, db:  # taken yesterday
        db.execute(
            "UPDATE kombu_message SET timestamp = datetime('now', 'localtime', '-1 day') WHERE visible = 0"
        )
    with caplog.at_level(logging.INFO, logger="bodycomp.node"):
        node.tick()
    assert rows(broker) == [(1, 1)]
    assert "event=broker_purged messages=1" in caplog.text
    node.index.close()
