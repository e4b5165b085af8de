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

from node.config import Settings
from workers.app import configure_app
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
    # Before the pool forks: every analysis child inherits these modules (workers.warmup).
    preload_seconds = preload()
    log.warning(
        "event=worker_starting broker=%s data_dir=%s concurrency=%d preload_s=%.2f",
        "embedded" if node.broker_is_embedded else node.broker_url.split("://")[0],
        node.data_dir,
        node.concurrency,
        preload_seconds,
    )
    app.worker_main(
        [
            "worker",
            "--loglevel=INFO",
            f"--concurrency={node.concurrency}",
            f"--queues={node.queue}",
            f"--hostname=bodycomp-{os.getpid()}@{socket.gethostname()}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--pool=prefork",
        ]
    )
    return 0
