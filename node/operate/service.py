"""``bodycomp serve``: the SCP, the scheduler, the sender and (by default) a worker, together.

Threads in the node process:

* the SCP (pynetdicom's server threads, one per association): spool + index, nothing else;
* the scheduler: every tick (1 s, or at once when an association ends) it claims the studies idle
  for ``stable_seconds`` and dispatches them (:mod:`node.schedule.dispatch`), records worker outcomes
  (:mod:`node.schedule.results`) and re-publishes jobs a dead worker dropped;
* the sender: delivers the due outbox rows (:mod:`node.send.sender`).

With the embedded broker (or ``embedded_workers`` > 0) the node also starts ``bodycomp worker``
child processes, restarts them if they die, and stops them on shutdown; they die with the node
even when it is killed (Linux parent-death signal). With Redis or RabbitMQ the workers are
separate ``bodycomp worker`` processes, on this host or others sharing the data directory.

Shutdown (SIGTERM or Ctrl-C): stop accepting associations (in-flight C-STOREs finish: every file
is written under a temporary name and renamed, so none is half-written), stop the threads, give
the workers time to finish their analysis (Celery's warm shutdown), then close the index. On the
next start, open jobs are re-published, undelivered results resent and the studies waiting are
dispatched once the node has listened for a stable period (downtime is not idle time: a sender cut
off by a crash sends the rest after the restart): all of that state is in the index.
"""

from __future__ import annotations

import errno
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from node import prometheus
from node.config import Settings
from node.hl7.listener import HL7Listener
from node.process import die_with_parent, update_receive_mode, use_private_receive_tmp
from node.receive.journal import replay as replay_journal
from node.receive.processes import ReceiverPool, port_in_use
from node.receive.scp import journal_dir
from node.receive.scp import serve as start_scp
from node.schedule.dispatch import DISK, dispatch_study, is_disk_full
from node.schedule.late_height import supersede_for_patient
from node.schedule.reader_objects import reader_corrections
from node.schedule.results import collect, republish
from node.schedule.stability import StabilityTimer, Wakeup, claim_stable_studies
from node.send.hl7 import deliver_due_hl7
from node.send.sender import deliver_due
from node.store.index import Index
from node.store.spool import Spool
from workers.app import configure_app, prepare_broker, purge_consumed
from workers.job import StudyState

log = logging.getLogger("bodycomp.node")

TICK_SECONDS = 1.0
#: How often, and after how long, messages taken from the embedded broker are deleted (workers.app).
BROKER_PURGE_SECONDS = 3600.0


def worker_command(settings: Settings, config_path: str | None) -> list[str]:
    node = settings.node
    command = [
        sys.executable,
        "-m",
        "node.operate.cli",
        "worker",
        "--data-dir",
        str(node.data_dir),
        "--broker-url",
        node.effective_broker_url,
    ]
    if config_path:
        command += ["--config", config_path]
    return command


class Node:
    """The running node: start it, then :meth:`wait` or :meth:`stop`."""

    def __init__(self, settings: Settings, config_path: str | None = None) -> None:
        self.settings = settings
        self.node = settings.node
        self.config_path = config_path
        self.stopping = threading.Event()
        self.wakeup = Wakeup()
        self.send_wakeup = Wakeup()
        self.workers: list[subprocess.Popen[bytes]] = []
        self.threads: list[threading.Thread] = []
        self.server: Any = None
        self.index: Index | None = None
        self.last_restart = 0.0
        self.last_broker_purge = -float("inf")
        self.started_at = time.monotonic()
        self.stability = StabilityTimer()
        self.metrics: prometheus.MetricsServer | None = None
        self.receivers: ReceiverPool | None = None
        self.hl7: HL7Listener | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start in the order that loses nothing: clean and replay what a crash left, reach the
        broker and re-publish what was in flight, then open the ports, then run the loops."""
        self._recover_files()
        self._connect_broker()
        self._open_ports()
        self._start_loops()

    def _recover_files(self) -> None:
        """Before any receiver runs: remove half-written temporary files (nothing of them was
        acknowledged) and replay every receiving process' journal, so that each instance
        acknowledged before a crash is in the spool and the index (:mod:`node.receive.journal`)."""
        node = self.node
        for sub in ("spool", "results"):
            (node.data_dir / sub).mkdir(parents=True, exist_ok=True)
        # A node killed mid-write leaves its temporary file behind; nothing was acknowledged from
        # it (the SCP answers after the rename), and the SCP is not listening yet.
        leftovers = list((node.spool_dir / "tmp").glob("rx-*.part"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        if leftovers:
            log.warning("event=spool_tmp_cleaned files=%d", len(leftovers))
        received_leftovers = use_private_receive_tmp(node.data_dir)
        for slot in range(1, node.receivers):  # the children's folders: nothing of theirs is live yet
            received_leftovers += use_private_receive_tmp(node.data_dir, slot, adopt=False)
        if received_leftovers:
            log.warning("event=receive_tmp_cleaned files=%d", received_leftovers)
        self.index = Index(node.index_path)
        replay_journal(journal_dir(node), Spool(node.spool_dir, min_free_bytes=0), self.index).log(
            "receiver=all"
        )
        interrupted = self.index.reopen_interrupted_dispatches()
        if interrupted:
            log.warning("event=dispatch_resumed studies=%d", interrupted)

    def _connect_broker(self) -> None:
        """Configure Celery, start the node's own workers and re-publish the jobs a crash left
        queued or running (a broker that is down now is retried by the scheduler)."""
        node = self.node
        assert self.index is not None
        app = configure_app(
            node.effective_broker_url,
            time_limit=node.task_time_limit,
            max_tasks_per_child=node.max_tasks_per_child,
            concurrency=node.concurrency,
            queue=node.queue,
        )
        try:  # before its workers start and it re-publishes (see prepare_broker)
            prepare_broker(app, node.queue)
        except Exception as exc:  # kombu/SQLAlchemy raise many types; publishing retries on its own
            log.warning("event=broker_unavailable reason=%s: %s", type(exc).__name__, exc)
        for _ in range(node.workers_to_start):
            self._start_worker()
        republished = republish(self.index, node, self.publish, held=node.broker_is_embedded)
        pending = len(self.index.changed_studies())
        log.info(
            "event=node_started broker=%s workers=%d republished_jobs=%d studies_waiting=%d destinations=%s",
            "embedded" if node.broker_is_embedded else node.broker_url.split("://")[0],
            node.workers_to_start,
            republished,
            pending,
            ",".join(node.destinations) or "none",
        )

    def _open_ports(self) -> None:
        """The metrics port first (when the DICOM port answers, so does it), then the DICOM port
        (shared by the receiving processes with ``node.receivers`` > 1), then HL7."""
        node = self.node
        if node.metrics_port is not None:
            self.metrics = prometheus.MetricsServer(node)
        self.started_at = time.monotonic()
        shared = node.receivers > 1
        if shared and port_in_use(node.host, node.port):
            # With SO_REUSEPORT the bind would succeed and share the port with whoever is there.
            raise OSError(errno.EADDRINUSE, "another process listens on that port already")
        self.server = start_scp(
            node,
            block=False,
            index=self.index,
            on_stored=self._stored,
            on_released=self.wakeup.poke,
            reuse_port=shared,
        )
        if shared:
            self.receivers = ReceiverPool(
                node,
                on_stored=self._stored,
                on_released=self.wakeup.poke,
                verbose=logging.getLogger().isEnabledFor(logging.DEBUG),
            )
            self.receivers.start()
        if node.hl7_port is not None:
            self._start_hl7()

    def _start_loops(self) -> None:
        """The scheduler, the DICOM sender and (with destinations) the HL7 sender, each a thread."""
        loops = [("scheduler", self._scheduler), ("sender", self._sender)]
        if self.node.hl7_destinations:
            loops.append(("hl7-sender", self._hl7_sender))
        for name, target in loops:
            thread = threading.Thread(target=target, name=f"bodycomp-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def wait(self) -> None:
        while not self.stopping.wait(1.0):
            pass

    def stop(self, worker_grace: float = 20.0) -> None:
        if self.stopping.is_set() and self.server is None:
            return
        self.stopping.set()
        log.info("event=node_stopping")
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.receivers is not None:
            self.receivers.stop()
            self.receivers = None
        if self.hl7 is not None:
            self.hl7.stop()
            self.hl7 = None
        self.wakeup.poke()
        self.send_wakeup.poke()
        for thread in self.threads:
            thread.join(timeout=30)
        if self.metrics is not None:
            self.metrics.stop()
            self.metrics = None
        for proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # Celery warm shutdown: finish the running task
        deadline = time.monotonic() + worker_grace
        for proc in self.workers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()  # its task is not acknowledged: it runs again after the restart
                proc.wait()
        if self.index is not None:
            self.index.close()
        log.info("event=node_stopped")

    # -- pieces ----------------------------------------------------------------------------------

    def publish(self, spec: dict[str, Any]) -> None:
        from workers.tasks import analyse_series

        analyse_series.apply_async(
            args=[spec],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.5, "interval_step": 1, "interval_max": 2},
        )

    def _stored(self, study_uid: str, outcome: str) -> None:
        prometheus.instance_stored(study_uid, outcome)
        self._receive_mode()

    def _receive_mode(self) -> None:
        update_receive_mode(self.node.stream_to_disk)

    def _start_worker(self) -> None:
        command = worker_command(self.settings, self.config_path)
        proc = subprocess.Popen(command, preexec_fn=die_with_parent)
        log.info("event=worker_started pid=%d", proc.pid)
        self.workers.append(proc)

    def _supervise_workers(self) -> None:
        """Restart a worker or receiver that died (at most every 10 s, so a broken set-up does not spin)."""
        if self.receivers is not None:
            self.receivers.supervise()
        if time.monotonic() - self.last_restart < 10:
            return
        for i, proc in enumerate(self.workers):
            code = proc.poll()
            if code is not None and not self.stopping.is_set():
                self.last_restart = time.monotonic()
                log.error("event=worker_exited pid=%d code=%s (restarting)", proc.pid, code)
                command = worker_command(self.settings, self.config_path)
                self.workers[i] = subprocess.Popen(command, preexec_fn=die_with_parent)
                if self.node.broker_is_embedded and self.index is not None:
                    # The embedded broker cannot give back the message the dead worker held (see
                    # workers.app): publish the open jobs again now rather than after the lease.
                    # A copy of a job that is done or running elsewhere is skipped by the worker.
                    republish(self.index, self.node, self.publish, held=True)

    def tick(self) -> None:
        """One scheduler round (a plain method, so tests and a debugger can step through it)."""
        assert self.index is not None
        node = self.node
        self._receive_mode()
        # Time the node was down is not idle time: a sender cut off by a crash sends again after
        # the restart, so no study is complete before the node has listened for a stable period.
        listening = time.monotonic() - self.started_at >= node.stable_seconds
        # A (nearly) full data disk pauses analyses: the studies wait, they do not fail (DiskGuard).
        room = DISK.room(node.data_dir)
        # (the timers run from the start, so that waiting for the first stable period or for disk
        # space does not hold a study back twice)
        may_dispatch = listening and room
        for study in claim_stable_studies(self.index, node.stable_seconds, self.stability, may_dispatch):
            log.info("event=study_stable study=%s hash=%s", study.study_uid, study.input_hash[:16])
            try:
                dispatch_study(
                    study, self.index, node, self.settings.selection, self.publish, reader_corrections
                )
            except Exception as exc:
                if is_disk_full(exc):
                    DISK.pause(f"dispatching study {study.study_uid}: {exc}", hold=True)
                    self.index.reopen_study(study.study_uid)
                    continue
                log.exception("event=dispatch_error study=%s", study.study_uid)
                self.index.set_study_state(study.study_uid, StudyState.FAILED, "dispatch error (see the log)")
        open_jobs = [int(job["id"]) for job in self.index.open_jobs()]
        if collect(self.index, node):
            self.send_wakeup.poke()
            finished = [self.index.job(job_id) for job_id in open_jobs]
            prometheus.jobs_collected(node, [job for job in finished if job is not None])
        if room:
            republish(self.index, node, self.publish)
        self._supervise_workers()
        self._purge_broker()

    def _purge_broker(self) -> None:
        """Hourly (and at the first tick): drop the messages workers took from the embedded broker
        (:func:`workers.app.purge_consumed` does nothing for Redis or RabbitMQ)."""
        if time.monotonic() - self.last_broker_purge < BROKER_PURGE_SECONDS:
            return
        self.last_broker_purge = time.monotonic()
        purged = purge_consumed(self.node.effective_broker_url, BROKER_PURGE_SECONDS)
        if purged:
            log.info("event=broker_purged messages=%d", purged)

    def _scheduler(self) -> None:
        while not self.stopping.is_set():
            try:
                self.tick()
            except Exception as exc:
                if is_disk_full(exc):  # the index cannot commit: said once, retried every tick
                    DISK.pause(f"scheduler: {exc}", hold=True)
                else:
                    log.exception("event=scheduler_error")
            self.wakeup.wait(TICK_SECONDS)

    def _start_hl7(self) -> None:
        """The HL7 v2 listener (:mod:`node.hl7.listener`); a height for a patient whose done
        studies had none asks for superseding results (:mod:`node.schedule.late_height`)."""
        index, node, port = self.index, self.node, self.node.hl7_port
        assert index is not None and port is not None

        def late(patient_id: str) -> None:
            if supersede_for_patient(index, node, patient_id):
                self.wakeup.poke()

        self.hl7 = HL7Listener(node.hl7_host, port, index, node.hl7_max_age_days, on_accepted=late)
        try:
            self.hl7.start()
        except OSError as exc:
            log.error("event=hl7_listen_failed host=%s port=%d reason=%s", node.hl7_host, port, exc)
            self.hl7.stop()
            self.hl7 = None
            raise

    def _hl7_sender(self) -> None:
        assert self.index is not None
        while not self.stopping.is_set():
            try:
                deliver_due_hl7(self.index, self.node)
            except Exception:
                log.exception("event=hl7_sender_error")
            self.stopping.wait(TICK_SECONDS)

    def _sender(self) -> None:
        assert self.index is not None
        while not self.stopping.is_set():
            try:
                deliver_due(self.index, self.node)
            except Exception:
                log.exception("event=sender_error")
            self.send_wakeup.wait(TICK_SECONDS)


def run(settings: Settings, config_path: str | None = None) -> int:
    """Run the node until SIGTERM/SIGINT; return the exit code."""
    node = Node(settings, config_path)

    def on_signal(signum: int, frame: Any) -> None:
        node.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        node.start()
        node.wait()
    finally:
        node.stop()
    return 0
