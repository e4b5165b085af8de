"""``bodycomp serve --metrics-port``: ``/healthz`` and Prometheus ``/metrics``, scraped for real.

The node runs as an operator starts it; DCMTK's storescu sends the instances; the endpoint is read
with urllib over loopback, exactly as Prometheus or a health probe would. The broker checks talk
to the Redis and RabbitMQ running on this host, and to a closed port.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node import prometheus as metrics
from node.config import ConfigError, NodeSettings, load_settings
from tests.reliability import recorded
from tests.test_node_support import (
    copy_study,
    free_port,
    port_open,
    start_node,
    storescu,
    study_status,
    wait_for,
)
from tests.timing import scaled

RESULT_TIMEOUT = 90


def get(port: int, path: str) -> tuple[int, str]:
    """HTTP GET on loopback; (status, body) also for 503."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics`` as {(name, sorted labels): value}."""
    code, text = get(port, "/metrics")
    assert code == 200, text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def refused(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], status: str, reason: str) -> float:
    return value(samples, "bodycomp_instances_refused_total", status=status, reason=reason)


def health(port: int) -> tuple[int, dict[str, Any]]:
    code, body = get(port, "/healthz")
    return code, dict(json.loads(body))


@pytest.mark.network
@pytest.mark.slow
def test_counters_follow_what_the_node_receives_analyses_and_fails_to_deliver(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    bad = tmp_path / "bad.dcm"  # a StudyInstanceUID that is not a UID: refused with 0xC000
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID, which is the point
        ds.StudyInstanceUID = "1.2.03.not-a-uid"
        ds.save_as(bad, enforce_file_format=True)
    metrics_port = free_port()
    down = f"DEST@127.0.0.1:{free_port()}"  # nothing listens: every delivery is retried
    node = start_node(tmp_path / "data", "--destination", down, "--metrics-port", str(metrics_port))
    try:
        assert f"event=metrics_listening address=127.0.0.1:{metrics_port}" in node.text()
        code, report = health(metrics_port)
        assert code == 200 and report["status"] == "ok" and report["reasons"] == [], report
        assert set(report["checks"]) == {"spool", "disk", "index", "broker"}

        output = storescu(node.port, files)
        assert "Failed" not in output and "Error" not in output, output
        storescu(node.port, files[:3])  # the same instances again: duplicates
        output = storescu(node.port, [bad])
        assert "Error: CannotUnderstand" in output, output
        samples = scrape(metrics_port)
        assert value(samples, "bodycomp_instances_received_total", outcome="new") == len(files)
        assert value(samples, "bodycomp_instances_received_total", outcome="duplicate") == 3
        assert refused(samples, "0xC000", "cannot_understand") == 1
        assert refused(samples, "0xA700", "out_of_resources") == 0

        def delivery_failing() -> Any:
            s = scrape(metrics_port)
            return value(s, "bodycomp_delivery_retries_total") >= 3 and s

        samples = wait_for("analysis done and deliveries retried", delivery_failing, RESULT_TIMEOUT, node.log)
        assert value(samples, "bodycomp_studies", state="done") == 1
        assert value(samples, "bodycomp_studies", state="received") == 0
        assert value(samples, "bodycomp_jobs", state="done") == 1
        assert value(samples, "bodycomp_jobs_finished_total", state="done") == 1
        assert value(samples, "bodycomp_queue_depth") == 0
        assert value(samples, "bodycomp_outbox", state="pending") == 3  # SEG, SR, SC
        assert value(samples, "bodycomp_outbox", state="delivered") == 0
        assert value(samples, "bodycomp_outbox_oldest_pending_age_seconds") > 0
        assert value(samples, "bodycomp_analysis_duration_seconds_count", state="done") == 1
        duration = value(samples, "bodycomp_analysis_duration_seconds_sum", state="done")
        assert 0 < duration < scaled(RESULT_TIMEOUT)
        assert value(samples, "bodycomp_disk_free_bytes", path="spool") > 0
        assert value(samples, "bodycomp_disk_reserve_bytes") == 512 * 1024 * 1024
        assert value(samples, "bodycomp_build_info", version=__import__("workers").__version__) == 1
        # A destination that is down makes deliveries wait, not the node unhealthy.
        assert health(metrics_port)[0] == 200
        assert get(metrics_port, "/")[0] == 404
        assert study_uid not in get(metrics_port, "/metrics")[1], "no UIDs in labels"
    finally:
        assert node.stop() == 0, node.text()[-3000:]
    assert not port_open(metrics_port), "the endpoint closes with the node"


@pytest.mark.network
@pytest.mark.slow
def test_healthz_is_503_with_reasons_when_disk_is_low_and_broker_is_down(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """Settings from the environment (BODYCOMP_METRICS_PORT) like every node setting."""
    metrics_port = free_port()
    broker = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {
        "BODYCOMP_METRICS_PORT": str(metrics_port),
        "BODYCOMP_METRICS_HOST": "127.0.0.1",
        "BODYCOMP_MIN_FREE_MB": str(1 << 40),  # far more than any disk: below the reserve
    }
    node = start_node(tmp_path / "data", "--broker-url", broker, "--workers", "0", env=env)
    try:
        code, report = health(metrics_port)
        assert code == 503 and report["status"] == "fail", report
        failed = {reason.split(":")[0] for reason in report["reasons"]}
        assert failed == {"disk", "broker"}, report
        assert "below the reserve" in report["checks"]["disk"]["detail"]
        assert "unreachable" in report["checks"]["broker"]["detail"]
        assert report["checks"]["spool"]["ok"] and report["checks"]["index"]["ok"]
        files, _ = copy_study(example_ct_derived_dicom, tmp_path / "study")
        output = storescu(node.port, files[:1])
        assert "Refused: OutOfResources" in output, output
        samples = scrape(metrics_port)
        assert refused(samples, "0xA700", "out_of_resources") == 1
        assert value(samples, "bodycomp_instances_received_total", outcome="new") == 0
    finally:
        assert node.stop() == 0, node.text()[-3000:]


@pytest.mark.network
@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "amqp://guest:guest@127.0.0.1:5672//"], ids=["redis", "rabbitmq"]
)
def test_broker_check_against_the_real_brokers(url: str) -> None:
    check = metrics.check_broker(url)
    assert check.ok, check.detail
    assert "guest:guest" not in check.detail, "no password in health output"


def test_broker_check_of_a_closed_port_fails_fast() -> None:
    check = metrics.check_broker(f"amqp://user:secret@127.0.0.1:{free_port()}//", timeout=2)
    assert not check.ok and "unreachable" in check.detail and "secret" not in check.detail


def test_metrics_settings_off_by_default_loopback_and_validated(tmp_path: Path) -> None:
    node = load_settings(environ={}).node
    assert node.metrics_port is None and node.metrics_host == "127.0.0.1"
    config = tmp_path / "node.toml"
    config.write_text('[node]\nmetrics_port = 9464\nmetrics_host = "0.0.0.0"\n')
    node = load_settings(config, environ={}).node
    assert (node.metrics_port, node.metrics_host) == (9464, "0.0.0.0")
    node = load_settings(
        config, {"node": {"metrics_port": 9500}}, environ={"BODYCOMP_METRICS_PORT": "9400"}
    ).node
    assert node.metrics_port == 9500, "flag > environment > file"
    with pytest.raises(ConfigError, match="metrics_port"):
        load_settings(environ={"BODYCOMP_METRICS_PORT": "70000"})


# -- the endpoint's own limits: in this process, on an ephemeral port, with short timeouts ---------


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[int]:
    """A :class:`metrics.MetricsServer` as ``bodycomp serve`` starts it; yields its port."""
    (tmp_path / "data").mkdir()
    server = metrics.MetricsServer(NodeSettings(data_dir=tmp_path / "data", metrics_port=0))
    try:
        yield int(server.httpd.server_port)
    finally:
        server.stop()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def closed_within(client: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``client`` (EOF or reset), None if still open after ``seconds``."""
    start = time.monotonic()
    client.settimeout(seconds)
    try:
        data = client.recv(1024)
    except TimeoutError:
        return None
    except ConnectionResetError:
        data = b""
    assert data == b"", f"the server sent {data!r} to a client that asked for nothing"
    return time.monotonic() - start


def test_idle_connection_is_closed_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch, endpoint: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert metrics._QuietHandler.timeout is not None and 0 < metrics._QuietHandler.timeout <= 30
    monkeypatch.setattr(metrics._QuietHandler, "timeout", 0.5)
    with connect(endpoint) as idle:
        elapsed = closed_within(idle, 5)
    assert elapsed is not None, "an idle client kept its connection (and the server's thread)"
    assert elapsed < 3
    assert health(endpoint)[1]["checks"], "the endpoint still answers"
    assert "Exception" not in capsys.readouterr().err, "a timeout is no traceback (with the client's address)"


def test_slow_client_is_cut_off_at_the_deadline(monkeypatch: pytest.MonkeyPatch, endpoint: int) -> None:
    """A byte every 0.2 s never waits out the per-read timeout (1 s); the total deadline ends it."""
    monkeypatch.setattr(metrics._QuietHandler, "timeout", 1.0)
    monkeypatch.setattr(metrics._Server, "deadline", 2.0)
    trickle = b"GET /healthz HTTP/1.0\r\n" + b"X-Slow: a\r\n" * 20  # 240 bytes: 48 s at this pace
    start = time.monotonic()
    elapsed = None
    with connect(endpoint) as slow:
        for byte in trickle:
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                elapsed = time.monotonic() - start
                break
            if select.select([slow], [], [], 0.2)[0]:
                elapsed = time.monotonic() - start
                assert closed_within(slow, 1) is not None
                break
            if time.monotonic() - start > 8:
                break
    assert elapsed is not None, "a client sending a byte every 0.2 s kept its connection"
    assert 1.5 < elapsed < 4, elapsed


def test_connections_beyond_the_cap_are_closed_and_healthz_answers_once_idle_ones_time_out(
    monkeypatch: pytest.MonkeyPatch, endpoint: int, caplog: pytest.LogCaptureFixture
) -> None:
    idle_timeout = 3.0
    monkeypatch.setattr(metrics._QuietHandler, "timeout", idle_timeout)
    cap = metrics._Server.max_connections
    caplog.set_level(logging.WARNING, logger="bodycomp.metrics")
    idle = [connect(endpoint) for _ in range(cap)]
    try:
        start = time.monotonic()
        for _ in range(3):  # accepted after the idle ones (one accept queue): refused at once
            with connect(endpoint) as extra:
                elapsed = closed_within(extra, 1.5)
            assert elapsed is not None, f"connection {cap + 1} got a thread of its own"
        with pytest.raises(OSError):
            get(endpoint, "/healthz")  # refused too while the idle ones hold every slot
        assert time.monotonic() - start < idle_timeout, "too slow to tell the cap from the timeout"

        def answers() -> dict[str, Any] | None:
            try:
                return health(endpoint)[1]
            except OSError:
                return None

        report = wait_for("/healthz once the idle connections time out", answers, idle_timeout + 5)
        assert set(report["checks"]) == {"spool", "disk", "index", "broker"}
        assert all(closed_within(client, 1) is not None for client in idle), "idle ones timed out"
    finally:
        for client in idle:
            client.close()
    full = [r.getMessage() for r in caplog.records if "metrics_connections_full" in r.getMessage()]
    assert full == [f"event=metrics_connections_full limit={cap}"], "logged once, with no client data"


IDLE_CLIENTS = 300
FD_LIMIT = 256


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.reliability
def test_idle_http_clients_cannot_starve_the_node(example_ct_derived_dicom: Path, tmp_path: Path) -> None:
    """The tester's finding on a real node: idle connections to the metrics port each held a thread
    and a descriptor forever, until C-ECHO, C-STORE and /healthz all failed (here the node may open
    256 descriptors, fewer than the clients). Now 300 idle clients
    cost the node at most the cap (32) of threads for at most the idle timeout: a study sent
    meanwhile is stored whole, /healthz answers once they time out, and the descriptors return."""
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    metrics_port = free_port()
    with recorded(f"{IDLE_CLIENTS} idle HTTP connections to the metrics port while a study arrives") as tally:
        tally.notes = (
            f"node under prlimit --nofile={FD_LIMIT}; idle clients send nothing; cap 32, idle timeout 10 s"
        )
        node = start_node(
            tmp_path / "data",
            "--metrics-port",
            str(metrics_port),
            stable_seconds=2,
            prefix=["prlimit", f"--nofile={FD_LIMIT}"],  # (before: 300 idle clients took them all)
        )
        idle: list[socket.socket] = []
        try:
            wait_for("the metrics port", lambda: port_open(metrics_port), 30, node.log)
            fds_before = len(list(Path(f"/proc/{node.process.pid}/fd").iterdir()))
            idle = [connect(metrics_port) for _ in range(IDLE_CLIENTS)]
            start = time.monotonic()
            out = storescu(node.port, files)
            report = wait_for(
                "/healthz once the idle connections time out",
                lambda: _answers(metrics_port),
                metrics._QuietHandler.timeout + 20,
                node.log,
            )
            healthz_after = time.monotonic() - start
            wait_for("the study to be analysed", lambda: _analysed(node.data_dir, study_uid), 120, node.log)
            for client in idle:
                client.close()
            time.sleep(1)
            fds_after = len(list(Path(f"/proc/{node.process.pid}/fd").iterdir()))
        finally:
            for client in idle:
                client.close()
            node.stop()
        tally.sent = len(files)
        tally.acknowledged = out.count("Received Store Response (Success)")
        tally.stored = len(list((tmp_path / "data" / "spool" / "studies").glob("*/*/*.dcm")))
        tally.analysed, tally.expected_analysed = 1, 1
        tally.extra = {
            "idle_clients": IDLE_CLIENTS,
            "healthz_answered_after_s": round(healthz_after, 1),
            "node_fds_before": fds_before,
            "node_fds_after": fds_after,
        }
        assert tally.acknowledged == tally.sent == tally.stored, out
        assert set(report["checks"]) == {"spool", "disk", "index", "broker"}
        assert fds_after <= fds_before + 4, "descriptors kept after the clients left"


def _answers(port: int) -> dict[str, Any] | None:
    try:
        return health(port)[1]
    except OSError:
        return None


def _analysed(data_dir: Path, study_uid: str) -> bool:
    return (study_status(data_dir, study_uid) or {}).get("state") == "done"
