"""``bodycomp worker``: a Celery worker that runs analyses for a node.

It needs the node's data directory (local, or shared storage when it runs on another host) and
its broker. It reads the job folders the node prepared and writes results and ``outcome.json``
there; it never opens the node's SQLite index (see :mod:`workers.tasks`).

Started with the options of :mod:`workers.app`: one analysis per child process at a time,
children recycled after ``max_tasks_per_child`` analyses and forked from a main process that has
already imported what an analysis needs (:mod:`workers.warmup`), no gossip/mingle/heartbeat events (a
hospital node has nothing to gain from them and they cost broker traffic).
"""

from __future__ import annotations

import logging
import os
import socket

from celery import Celery

from node.config import Settings
from workers.app import configure_app, prepare_broker
from workers.tasks import WorkerConfig, configure
from workers.warmup import preload

log = logging.getLogger("bodycomp.worker")


def run_worker(settings: Settings) -> int:
    node = settings.node
    app = configure_app(
        node.effective_broker_url,
        time_limit=node.task_time_limit,
        max_tasks_per_child=node.max_tasks_per_child,
        concurrency=node.concurrency,
        queue=node.queue,
    )
    configure(
        WorkerConfig(
            data_dir=node.data_dir.resolve(),
            selection=settings.selection,
            stack=settings.stack,
            max_retries=node.max_retries,
            extra_options={
                "write_dicom": True,
                "localiser": settings.analysis.localiser,
                "segmenter": settings.analysis.segmenter,
                "preset": settings.analysis.preset,
                "rule_set": settings.analysis.rule_set,
                "slices": settings.analysis.slices,
            },
        )
    )
    try:
        prepare_broker(app, node.queue)
    except Exception as exc:  # Celery's own connection retries take over from here
        log.warning("event=broker_unavailable reason=%s: %s", type(exc).__name__, exc)
    # Before the pool forks: every analysis child inherits these modules (workers.warmup).
    preload_seconds = preload()
    log.info(
        "event=worker_starting broker=%s data_dir=%s concurrency=%d preload_s=%.2f",
        "embedded" if node.broker_is_embedded else node.broker_url.split("://")[0],
        node.data_dir,
        node.concurrency,
        preload_seconds,
    )
    return celery_worker(
        app,
        [
            "--quiet",  # (celery's global option) no ASCII-art banner: event=worker_starting says it all
            "worker",
            "--loglevel=INFO",
            f"--concurrency={node.concurrency}",
            f"--queues={node.queue}",
            f"--hostname=bodycomp-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--pool=prefork",
        ],
    )


def celery_worker(app: Celery, argv: list[str]) -> int:
    """Run ``celery worker`` with ``argv`` for ``app``; return its exit code.

    Why not ``app.worker_main``: it (and ``app.start``, which it calls) drops the command's exit
    code, so a worker that stopped on an "Unrecoverable error" (Celery's exit code 1: a broker
    it cannot use, say) exited 0, and a service manager restarts only a worker that says it
    failed (``Restart=on-failure`` in deploy/systemd). This is ``app.start`` keeping the code.
    """
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # the ``--app`` option, as ``app.start`` sets it
    try:
        # outside standalone mode click returns the code the command exits with (``ctx.exit``)
        code = celery_command.main(args=argv, standalone_mode=False)
    finally:
        celery_command.params[0].default = None
    return code if isinstance(code, int) else 0
