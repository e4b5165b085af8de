"""Health and Prometheus metrics of ``bodycomp serve`` (``--metrics-port``; off by default).

One small HTTP server in the node process, bound to ``metrics_host`` (127.0.0.1 unless
configured otherwise), with two paths:

* ``/healthz``: is this node able to do its job right now? Each check below, answered with HTTP
  200 and ``{"status": "ok", ...}`` when all pass, 503 and ``"status": "fail"`` with the failed
  checks' reasons in ``reasons`` otherwise (for a load balancer, Docker's HEALTHCHECK, a
  monitoring probe):

  - ``spool``: a file can be created, fsync'd and removed in ``DATA/spool/tmp``;
  - ``disk``: free space in the spool is above the ``min_free_mb`` reserve (below it C-STORE
    answers 0xA700);
  - ``index``: the SQLite index answers a query;
  - ``broker``: the Celery broker accepts a connection (Redis, RabbitMQ or the embedded SQLite
    file), checked at most every :data:`BROKER_CHECK_SECONDS`.

* ``/metrics``: Prometheus text format, from the maintained ``prometheus-client`` package.
  Counters live in this process since it started (``*_total``); gauges that describe the node's
  state (studies, jobs, outbox, disk) are read from the index and the file system at each scrape,
  so they survive restarts and agree with ``bodycomp status``.

The hooks the node calls are plain functions (:func:`instance_stored`, :func:`store_status`,
:func:`delivery`, :func:`jobs_collected`): a counter increment, nothing that can fail a C-STORE.
Labels carry states and status codes, never UIDs or patient data.

The server holds at most :attr:`_Server.max_connections` connections, each cut off after
:attr:`_QuietHandler.timeout` seconds of silence or :attr:`_Server.deadline` seconds in all: it
shares the process' descriptors and threads with C-ECHO and C-STORE.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from node.config import NodeSettings
from node.store.index import JOB_STATES, OUTBOX_STATES, STUDY_STATES, Index, OutboxState
from workers.job import JobState

log = logging.getLogger("bodycomp.metrics")

#: The broker check opens a connection; a scrape every second must not open one every second.
BROKER_CHECK_SECONDS = 10.0
#: Seconds; an analysis takes ~4 s (200 slices) to ~30 s (1000 slices of JPEG 2000) on 2 cores.
DURATION_BUCKETS = (2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, float("inf"))

STATUS_NAMES = {
    0x0000: "success",
    0x0110: "processing_failure",
    0x0124: "not_authorised",
    0xA700: "out_of_resources",
    0xA900: "sop_class_mismatch",
    0xC000: "cannot_understand",
    0xC001: "uid_conflict",
}

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "bodycomp_instances_received",
    "Instances stored durably and answered Success, by outcome (new, duplicate, replaced)",
    ["outcome"],
    registry=REGISTRY,
)
INSTANCES_REFUSED = Counter(
    "bodycomp_instances_refused",
    "C-STORE requests answered with a failure status (the sender keeps its copy), by status",
    ["status", "reason"],
    registry=REGISTRY,
)
ASSOCIATIONS_REJECTED = Counter(
    "bodycomp_associations_rejected",
    "Association requests the node rejected (A-ASSOCIATE-RJ), by reason",
    ["reason"],
    registry=REGISTRY,
)
#: (result source, diagnostic) of an A-ASSOCIATE-RJ (PS3.8 9.3.4) → the counter's reason label.
REJECT_REASONS = {
    (0x01, 0x03): "calling_ae_not_allowed",
    (0x01, 0x07): "called_ae_not_this_node",
    (0x01, 0x02): "application_context",
    (0x02, 0x02): "protocol_version",
    (0x03, 0x01): "congestion",
    (0x03, 0x02): "association_limit",
}
ANALYSIS_DURATION = Histogram(
    "bodycomp_analysis_duration_seconds",
    "Duration of the last attempt of each finished analysis (worker start to outcome), by state",
    ["state"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "bodycomp_jobs_finished",
    "Analyses recorded as finished, by state (done, failed)",
    ["state"],
    registry=REGISTRY,
)
DELIVERY_RETRIES = Counter(
    "bodycomp_delivery_retries",
    "Result deliveries that failed and were scheduled again (backoff)",
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "bodycomp_deliveries",
    "Result deliveries by final result (delivered, dead: dead-lettered)",
    ["result"],
    registry=REGISTRY,
)
BUILD = Info("bodycomp_build", "bodycomp version", registry=REGISTRY)

# Every expected series exists from the start (at 0), so rates and alerts need no "absent()".
for _outcome in ("new", "duplicate", "replaced"):
    INSTANCES_RECEIVED.labels(outcome=_outcome)
for _code, _name in STATUS_NAMES.items():
    if _code:
        INSTANCES_REFUSED.labels(status=f"0x{_code:04X}", reason=_name)
for _state in (JobState.DONE, JobState.FAILED):
    JOBS_FINISHED.labels(state=_state)
    ANALYSIS_DURATION.labels(state=_state)
for _result in (OutboxState.DELIVERED, OutboxState.DEAD):
    DELIVERIES.labels(result=_result)


# -- hooks called by the node ------------------------------------------------------------------------


def instance_stored(study_uid: str, outcome: str) -> None:
    """After an instance is on disk and in the index (``on_stored`` of :func:`node.receive.scp.serve`)."""
    INSTANCES_RECEIVED.labels(outcome=outcome).inc()


#: In a receiving process of ``node.receivers``: where its C-STORE statuses and rejected
#: associations go, as (kind, value) with kind ``status`` or ``rejected`` (the node process counts
#: them, it serves the metrics). None: counted here.
_relay: Callable[[str, Any], None] | None = None


def relay_counts(relay: Callable[[str, Any], None] | None) -> None:
    """Send this process' C-STORE statuses and rejections to ``relay`` instead of counting them here."""
    global _relay
    _relay = relay


def store_status(status: int) -> None:
    """Every C-STORE response status; failures count as refused."""
    if _relay is not None:
        _relay("status", status)
        return
    if status != 0x0000:
        INSTANCES_REFUSED.labels(status=f"0x{status:04X}", reason=STATUS_NAMES.get(status, "other")).inc()


def association_rejected(reason: str) -> None:
    """An A-ASSOCIATE-RJ the node sent (``reason``: one of :data:`REJECT_REASONS`' values)."""
    if _relay is not None:
        _relay("rejected", reason)
        return
    ASSOCIATIONS_REJECTED.labels(reason=reason).inc()


def delivery(result: str) -> None:
    """``retry``, ``delivered`` or ``dead`` for one outbox row."""
    if result == "retry":
        DELIVERY_RETRIES.inc()
    else:
        DELIVERIES.labels(result=result).inc()


def jobs_collected(settings: NodeSettings, finished: Iterable[Any]) -> None:
    """Observe the duration of jobs the scheduler just recorded as done or failed.

    ``finished``: their index rows. Duration is from the attempt's ``started.json`` to the
    ``finished`` time of ``outcome.json`` (both written by the worker, so one clock).
    """
    from workers.job import STARTED, read_outcome
    from workers.jsonfile import read_json

    for job in finished:
        state = str(job["state"])
        if state not in (JobState.DONE, JobState.FAILED):
            continue
        JOBS_FINISHED.labels(state=state).inc()
        job_dir = settings.data_dir / job["result_dir"]
        started, outcome = read_json(job_dir / STARTED), read_outcome(job_dir)
        if started and outcome and "time" in started:
            duration = outcome.finished - float(started["time"])
            if duration >= 0:
                ANALYSIS_DURATION.labels(state=state).observe(duration)


# -- state read at scrape time -----------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class StateCollector(Collector):
    """Studies, jobs and outbox rows by state, queue depth, disk space: read at each scrape."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        node = self.settings
        studies = GaugeMetricFamily("bodycomp_studies", "Studies in the index by state", labels=["state"])
        jobs = GaugeMetricFamily("bodycomp_jobs", "Analyses (jobs) in the index by state", labels=["state"])
        outbox = GaugeMetricFamily(
            "bodycomp_outbox", "Result deliveries (outbox rows) by state", labels=["state"]
        )
        depth = GaugeMetricFamily(
            "bodycomp_queue_depth", "Analyses queued and not yet started by a worker (jobs in state queued)"
        )
        due = GaugeMetricFamily("bodycomp_outbox_due", "Pending deliveries whose next attempt is due now")
        oldest = GaugeMetricFamily(
            "bodycomp_outbox_oldest_pending_age_seconds", "Age of the oldest pending delivery (0: none)"
        )
        counts: dict[str, dict[str, int]] = {"studies": {}, "jobs": {}, "outbox": {}}
        due_now, oldest_age = 0, 0.0
        if node.index_path.exists():
            index = Index.read_only(node.index_path)
            try:
                for table in counts:
                    counts[table] = index.state_counts(table)
                now = time.time()
                due_now, oldest_created = index.outbox_backlog(now)
                oldest_age = max(0.0, now - oldest_created) if oldest_created is not None else 0.0
            finally:
                index.close()
        for family, table, known in (
            (studies, "studies", STUDY_STATES),
            (jobs, "jobs", JOB_STATES),
            (outbox, "outbox", OUTBOX_STATES),
        ):
            for state in sorted(set(known) | set(counts[table])):
                family.add_metric([state], counts[table].get(state, 0))
        depth.add_metric([], counts["jobs"].get(JobState.QUEUED, 0))
        due.add_metric([], due_now)
        oldest.add_metric([], oldest_age)
        yield from (studies, jobs, outbox, depth, due, oldest)
        disk = GaugeMetricFamily("bodycomp_disk_free_bytes", "Free space for the node", labels=["path"])
        spool = node.spool_dir if node.spool_dir.exists() else node.data_dir
        disk.add_metric(["spool"], free_bytes(spool))
        yield disk
        reserve = GaugeMetricFamily(
            "bodycomp_disk_reserve_bytes", "Free space below which C-STORE answers 0xA700 (min_free_mb)"
        )
        reserve.add_metric([], node.min_free_mb * 1024 * 1024)
        yield reserve


# -- health --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


def check_spool(settings: NodeSettings) -> Check:
    tmp = settings.spool_dir / "tmp"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=tmp, prefix="healthz-", suffix=".part")
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            Path(name).unlink(missing_ok=True)
    except OSError as exc:
        return Check(False, f"spool {tmp} not writable: {exc.strerror or exc}")
    return Check(True, f"{tmp} writable")


def check_disk(settings: NodeSettings) -> Check:
    path = settings.spool_dir if settings.spool_dir.exists() else settings.data_dir
    try:
        free = free_bytes(path)
    except OSError as exc:
        return Check(False, f"cannot read free space of {path}: {exc.strerror or exc}")
    reserve = settings.min_free_mb * 1024 * 1024
    mb = free // (1024 * 1024)
    if free < reserve:
        return Check(False, f"{mb} MB free in {path}, below the reserve of {settings.min_free_mb} MB")
    return Check(True, f"{mb} MB free (reserve {settings.min_free_mb} MB)")


def check_index(settings: NodeSettings) -> Check:
    try:
        index = Index.read_only(settings.index_path)
        try:
            index.state_counts("studies")
        finally:
            index.close()
    except (sqlite3.Error, OSError) as exc:
        return Check(False, f"index {settings.index_path} unreadable: {exc}")
    return Check(True, "index answers")


def redact(url: str) -> str:
    """The broker URL without its password (health output may be shown to anyone on the host)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://{user}@{host}"


def check_broker(url: str, timeout: float = 3.0) -> Check:
    """Open (and close) one connection to the Celery broker."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=timeout) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:  # any transport error means "not reachable"
        return Check(False, f"broker {redact(url)} unreachable: {type(exc).__name__}: {exc}")
    return Check(True, f"broker {redact(url)} reachable")


class Health:
    """The ``/healthz`` checks, with the broker's answer cached for a few seconds."""

    def __init__(self, settings: NodeSettings) -> None:
        self.settings = settings
        self._broker: tuple[float, Check] | None = None
        self._lock = threading.Lock()

    def broker(self) -> Check:
        with self._lock:
            now = time.monotonic()
            if self._broker is None or now - self._broker[0] > BROKER_CHECK_SECONDS:
                self._broker = (now, check_broker(self.settings.effective_broker_url))
            return self._broker[1]

    def report(self) -> dict[str, Any]:
        checks = {
            "spool": check_spool(self.settings),
            "disk": check_disk(self.settings),
            "index": check_index(self.settings),
            "broker": self.broker(),
        }
        failed = [f"{name}: {c.detail}" for name, c in checks.items() if not c.ok]
        return {
            "status": "fail" if failed else "ok",
            "reasons": failed,
            "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()},
            "ae_title": self.settings.ae_title,
            "time": time.time(),
        }


# -- the HTTP server ---------------------------------------------------------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per connection, but never more than :attr:`max_connections`, none older than
    :attr:`deadline`: the endpoint shares the process' descriptors and threads with C-ECHO and
    C-STORE, so idle or trickling clients must not be able to use them all up."""

    daemon_threads = True
    #: Connections served at once; more are closed as soon as they are accepted. A probe and a
    #: scraper need one or two; 32 leaves the DICOM side its descriptors whatever a client does.
    max_connections = 32
    #: Listen backlog (socketserver's default is 5): a burst beyond the cap waits in the kernel's
    #: queue and is refused at once, instead of waiting for SYN retransmissions.
    request_queue_size = 2 * max_connections
    #: Seconds a connection may last in all (request and response): the handler's ``timeout``
    #: is per read, so a client sending a byte every few seconds (slow-loris) is cut off here.
    deadline = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: dict[socket.socket, float] = {}  # connection: its deadline (monotonic)
        self._lock = threading.Lock()
        self._full_logged = False  # "full" is logged once, until every connection has closed
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit a connection below the cap (False: the server closes it, no thread started)."""
        with self._lock:
            if len(self._open) < self.max_connections:
                self._open[request] = time.monotonic() + self.deadline
                return True
            if not self._full_logged:
                self._full_logged = True
                log.warning("event=metrics_connections_full limit=%d", self.max_connections)
        return False

    def service_actions(self) -> None:
        """Each poll of ``serve_forever``: shut down connections past their deadline.

        ``shutdown`` (not ``close``, which belongs to the handler's thread) wakes the thread's
        blocked read or write; under the lock, so the descriptor cannot have been reused.
        """
        super().service_actions()
        now = time.monotonic()
        with self._lock:
            for request, deadline in self._open.items():
                if deadline < now:
                    self._open[request] = float("inf")  # once
                    with contextlib.suppress(OSError):
                        request.shutdown(socket.SHUT_RDWR)

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection before closing it: its descriptor number may be reused at once."""
        with self._lock:
            self._open.pop(request, None)
            if not self._open:
                self._full_logged = False
        super().shutdown_request(request)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    #: Seconds each read or write may wait for the client (``settimeout`` of the connection):
    #: a client that connects and sends nothing is disconnected after this.
    timeout = 10.0

    def handle(self) -> None:
        """One request; a client that timed out, was cut off or went away just ends it."""
        try:
            super().handle()
        except OSError as exc:  # TimeoutError, BrokenPipeError, ConnectionResetError, ...
            log.debug("http connection ended: %s", type(exc).__name__)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s", format % args)


def make_app(settings: NodeSettings) -> Callable[..., Iterable[bytes]]:
    from workers import __version__

    BUILD.info({"version": __version__})
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Counters(REGISTRY))
    registry.register(StateCollector(settings))
    metrics_app = make_wsgi_app(registry)
    health = Health(settings)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            # read-only endpoint: a POST, PUT or DELETE must not look as if it did something
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"bodycomp: only GET and HEAD\n"]
        if path in ("/healthz", "/health"):
            report = health.report()
            code = "200 OK" if report["status"] == "ok" else "503 Service Unavailable"
            body = json.dumps(report, indent=2).encode()
            start_response(code, [("Content-Type", "application/json"), ("Cache-Control", "no-store")])
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
        if path == "/metrics":
            if environ.get("REQUEST_METHOD") == "HEAD":  # (prometheus_client's app knows GET only)
                list(metrics_app({**environ, "REQUEST_METHOD": "GET"}, start_response))
                return []
            return metrics_app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"bodycomp: /healthz or /metrics\n"]

    return app


class _Counters(Collector):
    """The module-level counters, plus whatever else is in :data:`REGISTRY`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        yield from self.registry.collect()


class MetricsServer:
    """The running HTTP server (a daemon thread); :meth:`stop` closes its socket."""

    def __init__(self, settings: NodeSettings) -> None:
        if settings.metrics_port is None:
            raise ValueError("metrics_port is not set")
        host = settings.metrics_host
        server_class = _IPv6Server if ":" in host else _Server
        try:
            self.httpd = make_server(
                host.strip("[]"),
                settings.metrics_port,
                make_app(settings),
                server_class=server_class,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"metrics endpoint cannot listen on {host}:{settings.metrics_port}: {exc.strerror}"
            ) from exc
        self.address = f"{host}:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="bodycomp-metrics", daemon=True)
        self.thread.start()
        log.warning("event=metrics_listening address=%s paths=/healthz,/metrics", self.address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
