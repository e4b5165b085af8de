"""Extra receiving processes on the node's DICOM port (``node.receivers`` > 1).

Why: one Python process executes Python on one core at a time. Receiving costs ~5 ms of CPU per
CT slice (pynetdicom's PDU handling, the header checks, the spool and index writes), so
concurrent associations served by one process share one core however many the server has
(docs/benchmarks.md). With ``receivers = N`` the node process and N - 1 children each listen on
the same address with ``SO_REUSEPORT`` and the kernel spreads incoming connections over them.

Each child runs only the SCP: the same handler, spool and SQLite index (WAL: concurrent writers
queue on the write lock), its own private folder for pynetdicom's temporary files, and
:class:`node.receive.uid_locks.UidLocks` for instances of one UID arriving in two processes. What the
node process does after a store — the scheduler's early look at a study, the metrics counters —
it does for the children's instances too: they report each stored instance and each response
status through a queue. The node process restarts a child that dies; a child dies with the node
(``PR_SET_PDEATHSIG``).

Before sharing the port the node checks that nobody listens there already: with
``SO_REUSEPORT`` a stale node of the same user would otherwise silently take half the
associations.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from node.config import NodeSettings

log = logging.getLogger("bodycomp.receivers")

#: Seconds between two restarts of dead receivers (a broken set-up must not spin).
RESTART_INTERVAL = 10.0
#: Seconds a child gets to finish its associations' current instance when the node stops.
STOP_GRACE = 10.0

#: A child's report: ("stored", study_uid, outcome), ("status", status, ""), ("rejected", reason, "")
#: or ("released", "", "").
Report = tuple[str, Any, str]


def port_in_use(host: str, port: int) -> bool:
    """Is something listening on (host, port) already? A plain bind (no SO_REUSEPORT) tells."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def _child(settings: NodeSettings, slot: int, reports: Any, verbose: bool) -> None:
    """A receiving process (``multiprocessing`` spawn target): the SCP until SIGTERM."""
    import os

    from node import process, prometheus
    from node.logs import configure_logging
    from node.receive.scp import serve
    from node.store.index import Index

    process.die_with_parent()
    os.umask(0o077)
    configure_logging(verbose)
    logging.getLogger("bodycomp").setLevel(logging.INFO)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    removed = process.use_private_receive_tmp(settings.data_dir, slot)
    if removed:
        log.warning("event=receive_tmp_cleaned files=%d receiver=%d", removed, slot)
    prometheus.relay_counts(lambda kind, value: reports.put((kind, value, "")))

    def stored(study_uid: str, outcome: str) -> None:
        reports.put(("stored", study_uid, outcome))
        process.update_receive_mode(settings.stream_to_disk)

    index = Index(settings.index_path)
    try:
        server = serve(
            settings,
            block=False,
            index=index,
            on_stored=stored,
            on_released=lambda: reports.put(("released", "", "")),
            reuse_port=True,
            slot=slot,
        )
    except Exception as exc:  # the node process logs the exit and starts it again later
        log.error("event=receiver_failed receiver=%d error=%s: %s", slot, type(exc).__name__, exc)
        raise SystemExit(1) from None
    log.info("event=receiver_started receiver=%d pid=%d", slot, os.getpid())
    while not stop.wait(1.0):
        process.update_receive_mode(settings.stream_to_disk)
    server.shutdown()
    server.server_close()
    index.close()


class ReceiverPool:
    """The node's child receivers: start, restart the dead ones, relay their reports, stop."""

    def __init__(
        self,
        settings: NodeSettings,
        on_stored: Callable[[str, str], None],
        on_released: Callable[[], None],
        verbose: bool = False,
    ) -> None:
        self.settings = settings
        self.on_stored = on_stored
        self.on_released = on_released
        self.verbose = verbose
        self._context = multiprocessing.get_context("spawn")  # never fork a process with threads
        self._reports: Any = self._context.Queue()
        self._children: dict[int, Any] = {}
        self._stopping = threading.Event()
        self._relay: threading.Thread | None = None
        self._last_restart = 0.0

    def start(self) -> None:
        """Start receivers 1 … N - 1 (the node process itself is receiver 0)."""
        for slot in range(1, self.settings.receivers):
            self._start(slot)
        self._relay = threading.Thread(
            target=self._relay_reports, name="bodycomp-receiver-reports", daemon=True
        )
        self._relay.start()

    def _start(self, slot: int) -> None:
        child = self._context.Process(
            target=_child,
            args=(self.settings, slot, self._reports, self.verbose),
            name=f"bodycomp-receiver-{slot}",
            daemon=True,
        )
        child.start()
        self._children[slot] = child

    def pids(self) -> dict[int, int]:
        """Receiver slot → process id, for the living children."""
        return {slot: child.pid for slot, child in self._children.items() if child.is_alive()}

    def supervise(self) -> None:
        """Restart children that died (at most every :data:`RESTART_INTERVAL` seconds)."""
        if self._stopping.is_set() or time.monotonic() - self._last_restart < RESTART_INTERVAL:
            return
        for slot, child in list(self._children.items()):
            if child.is_alive():
                continue
            self._last_restart = time.monotonic()
            log.error(
                "event=receiver_exited receiver=%d pid=%s code=%s (restarting)",
                slot,
                child.pid,
                child.exitcode,
            )
            child.close()
            self._start(slot)

    def _relay_reports(self) -> None:
        while not self._stopping.is_set():
            try:
                kind, value, outcome = self._reports.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):  # the queue was closed by stop()
                return
            try:
                if kind == "stored":
                    self.on_stored(value, outcome)
                elif kind == "status":
                    from node import prometheus

                    prometheus.store_status(int(value))
                elif kind == "rejected":
                    from node import prometheus

                    prometheus.association_rejected(str(value))
                elif kind == "released":
                    self.on_released()
            except Exception:  # a hint or a counter: never worth stopping the relay
                log.exception("event=receiver_report_error kind=%s", kind)

    def stop(self) -> None:
        """SIGTERM every child, wait up to :data:`STOP_GRACE` seconds, then kill what is left."""
        self._stopping.set()
        for child in self._children.values():
            if child.is_alive():
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for child in self._children.values():
            child.join(max(0.1, deadline - time.monotonic()))
            if child.is_alive():
                child.kill()
                child.join(5)
        if self._relay is not None:
            self._relay.join(timeout=5)
        with contextlib.suppress(Exception):
            self._reports.close()
