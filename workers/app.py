"""The Celery app: one queue of analyses, acknowledged late, one at a time per worker child.

The broker comes from the node's settings (``broker_url``). The embedded default, used when none
is configured, is kombu's SQLAlchemy transport on a SQLite file in the data directory
(``sqla+sqlite:///DATA/broker.sqlite``), so ``bodycomp serve`` works on a bare machine. Why this
one and not kombu's filesystem transport: the filesystem transport writes each message file in
place, without a temporary name or fsync, so a worker polling at the wrong moment can read a
half-written message, and a crash can leave one; SQLite makes enqueue and dequeue atomic and
durable transactions. Neither virtual transport gives a message back when a worker's *main*
process dies while holding it unacknowledged (only Redis' visibility timeout and RabbitMQ do), so
the node does not rely on it: its index knows every job and re-publishes one that started and
never finished (:mod:`node.schedule.results`). A killed worker *child* (out of memory, time limit) is
covered by ``task_reject_on_worker_lost``, which requeues the message on every transport.

Settings that matter for a hospital node, all set in :func:`configure_app`:

* ``task_acks_late`` + ``task_reject_on_worker_lost``: a task is acknowledged after it ran, so a
  worker that dies mid-analysis means the task runs again (idempotent: deterministic result UIDs,
  outbox rows unique per SOP Instance UID and destination);
* ``worker_prefetch_multiplier=1``: a worker reserves only the analysis it is running;
* ``worker_max_tasks_per_child``: a fresh child process after N analyses releases its memory;
* ``task_time_limit`` / ``task_soft_time_limit``: a stuck analysis ends as a failed job;
* Redis ``visibility_timeout`` longer than the time limit, or Redis would hand a running task to
  a second worker;
* RabbitMQ publisher confirms, and analyses not cancelled when the broker connection drops
  (broker outages are survived without losing or stalling a job; see :func:`configure_app`).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy.engine import make_url

QUEUE = "bodycomp.analyses"

app = Celery("bodycomp", include=["workers.tasks"])


def configure_app(
    broker_url: str,
    *,
    time_limit: int = 1800,
    max_tasks_per_child: int = 1,
    concurrency: int = 1,
    queue: str = QUEUE,
) -> Celery:
    """Point the app at ``broker_url`` and apply the reliability settings (see module docstring)."""
    transport_options: dict[str, Any] = {}
    if broker_url.startswith(("redis://", "rediss://")):
        transport_options["visibility_timeout"] = time_limit + 600
    if broker_url.startswith(("amqp://", "amqps://", "pyamqp://")):
        # Publisher confirms: a publish returns only once RabbitMQ has the message, so one sent
        # into a connection the broker is closing raises (the job stays unpublished, the node
        # retries) instead of vanishing while the index says it was enqueued.
        transport_options["confirm_publish"] = True
    if broker_url.startswith("sqla+sqlite:"):
        transport_options["connect_args"] = {"timeout": 30}
    embedded = broker_url.startswith("sqla+")
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_default_queue=queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=concurrency,
        worker_max_tasks_per_child=max_tasks_per_child,
        task_time_limit=time_limit,
        # A minute before the hard limit, or a tenth of a short one (``max(1, limit - 60)`` made
        # every analysis fail after 1 s with a limit under a minute).
        task_soft_time_limit=time_limit - min(60, max(1, time_limit // 10)),
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # The SQLAlchemy transport has no fanout exchange, which remote control needs.
        worker_enable_remote_control=not embedded,
        worker_send_task_events=False,
        # An analysis running when the broker goes away finishes and writes its outcome (the node
        # reads it from the job folder, no broker needed). Cancelling it (Celery's future default)
        # left it killed while Redis kept its message invisible for ``visibility_timeout`` (40 min)
        # and the node's lease ran just as long; a redelivered copy is skipped (tasks.job_lock,
        # outcome.json).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
    )
    return app


def embedded_broker_file(broker_url: str) -> Path | None:
    """The SQLite file of a ``sqla+sqlite:///PATH`` broker URL; None for any other broker."""
    if not broker_url.startswith("sqla+sqlite:"):
        return None
    database = make_url(broker_url[len("sqla+") :]).database
    return Path(database) if database and database != ":memory:" else None


def prepare_broker(app: Celery, queue: str) -> None:
    """Create the SQLite broker's tables and its queue once, before this process publishes or consumes.

    Why: kombu's SQLAlchemy transport creates its tables and the queue's row on first use, each
    with a look-then-insert that is atomic within a process but not across processes. A worker
    declaring the queue while the node publishes its first job (a worker started with the node, a
    node re-publishing at start) can lose the race; the loser's ``UNIQUE constraint failed:
    kombu_queue.name`` is no connection error to Celery: "Unrecoverable error", and the worker
    stops while jobs wait. Every process that opens the embedded broker calls this first; an
    exclusive lock on ``<broker>.lock`` lets one of them create what is missing, and the others
    then find it. Redis and RabbitMQ declare queues atomically: nothing to do for them.
    """
    path = embedded_broker_file(str(app.conf.broker_url))
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close below
        with app.connection_for_write() as connection:
            connection.default_channel.queue_declare(queue=queue)
    finally:
        os.close(fd)


def purge_consumed(broker_url: str, older_than_s: float = 3600.0, now: datetime | None = None) -> int:
    """Delete the messages workers took from the embedded broker over ``older_than_s`` ago; return
    how many.

    Why: kombu's SQLAlchemy transport never deletes a message. Taking one sets ``visible`` to false
    (and its ``timestamp``), acknowledging it changes nothing, so ``broker.sqlite`` kept a row for
    every job ever run. No one reads such a row again: a message is taken once, and a job whose
    worker died is published anew by the node from its index (:mod:`node.schedule.results`). Deleting it
    while its analysis still runs is harmless too (the acknowledgement does not touch the table).
    SQLite reuses the freed pages, so the file stops growing. A busy or missing database is left
    for the next call (short lock timeout: the caller is the node's scheduler).
    """
    path = embedded_broker_file(broker_url)
    if path is None or not path.exists():
        return 0
    # kombu stores the timestamp as naive local time, written by SQLAlchemy as ISO text
    cutoff = ((now or datetime.now()) - timedelta(seconds=older_than_s)).isoformat(
        sep=" ", timespec="microseconds"
    )
    try:
        with closing(sqlite3.connect(path, timeout=1.0)) as db, db:
            deleted = db.execute(
                "DELETE FROM kombu_message WHERE visible = 0 AND timestamp IS NOT NULL AND timestamp < ?",
                (cutoff,),
            ).rowcount
    except sqlite3.Error:
        return 0
    return int(deleted)
