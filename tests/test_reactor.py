"""The event-driven acceptor (node/receive/reactor.py): woken by data, not by a timer, and never spinning.

A real association over loopback (pynetdicom as the requestor, DCMTK storescu for C-STORE into the
node's SCP). The idle wait is stretched far beyond the DIMSE timeout of the requestor in the
tests that check wake-ups: an acceptor that waited for its timer instead of the data would time
those requests out, so the tests fail if a wake-up is lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.config import NodeSettings
from node.receive import reactor
from node.receive.scp import serve
from node.store.index import Index
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.test_node_support import free_port, store_responses, storescu


def _requestor(port: int, dimse_timeout: float = 3.0) -> pynetdicom.association.Association:
    ae = AE(ae_title="REQUESTOR")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = dimse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title="ACCEPTOR")
    assert assoc.is_established
    return assoc


@pytest.fixture()
def acceptor() -> Iterator[tuple[int, list[object]]]:
    """A bare acceptor on :func:`reactor.start_server`; yields its port and the associations seen."""
    seen: list[object] = []
    ae = AE(ae_title="ACCEPTOR")
    ae.add_supported_context(Verification)
    port = free_port()
    handlers = [(evt.EVT_C_ECHO, lambda event: seen.append(event.assoc) or 0x0000)]
    server = reactor.start_server(
        ae, ("127.0.0.1", port), block=False, evt_handlers=handlers, ssl_context=None
    )
    assert server is not None
    try:
        yield port, seen
    finally:
        server.shutdown()
        server.server_close()


def test_the_node_listens_with_the_wakeable_classes(tmp_path: Path) -> None:
    settings = NodeSettings(port=free_port(), data_dir=tmp_path / "data", min_free_mb=1)
    server = serve(settings, block=False)
    try:
        assert isinstance(server, reactor.WakeableServer)
        assert server.RequestHandlerClass is reactor.WakeableRequestHandler
    finally:
        server.shutdown()
        server.server_close()


def test_event_driven_off_serves_with_pynetdicoms_own_loops(tmp_path: Path) -> None:
    settings = NodeSettings(port=free_port(), data_dir=tmp_path / "data", min_free_mb=1, event_driven=False)
    server = serve(settings, block=False)
    try:
        assert not isinstance(server, reactor.WakeableServer)
        geometry = axial_geometry(rows=16, columns=16, n_slices=3)
        files = write_series(
            tmp_path / "series", sample(block_phantom(), geometry), geometry, SeriesOptions()
        )
        statuses = store_responses(storescu(settings.port, files, called=settings.ae_title))
        assert set(statuses.values()) == {"Success"} and len(statuses) == 3
    finally:
        server.shutdown()
        server.server_close()


def test_requests_are_served_when_they_arrive_not_when_the_idle_wait_ends(
    acceptor: tuple[int, list[object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reactor, "IDLE_WAIT", 20.0)  # far beyond the requestor's 3 s DIMSE timeout
    port, seen = acceptor
    assoc = _requestor(port)
    try:
        for _ in range(25):
            status = assoc.send_c_echo()
            assert status and status.Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released, "the A-RELEASE-RP came within the ACSE timeout"
    assert len(seen) == 25 and all(isinstance(a, reactor.WakeableAssociation) for a in seen)


def test_an_idle_association_waits_instead_of_polling(
    acceptor: tuple[int, list[object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's own loop looks at an idle socket ~1,000 times a second; this one ~1/IDLE_WAIT."""
    waits = {"count": 0}
    original = reactor.WakeableDUL._wait_for_work

    def counted(self: reactor.WakeableDUL) -> None:
        waits["count"] += 1
        original(self)

    monkeypatch.setattr(reactor.WakeableDUL, "_wait_for_work", counted)
    port, _ = acceptor
    assoc = _requestor(port)
    try:
        assert assoc.send_c_echo().Status == 0x0000
        before = waits["count"]
        time.sleep(2.0)
        idle_waits = waits["count"] - before
        assert assoc.send_c_echo().Status == 0x0000, "still answers after the idle spell"
    finally:
        assoc.release()
    assert idle_waits <= 2.0 / reactor.IDLE_WAIT * 1.5 + 5, idle_waits
    assert idle_waits >= 2, "the wait times out now and then, so timers are still looked at"


def test_the_network_idle_timeout_still_ends_a_silent_association(monkeypatch: pytest.MonkeyPatch) -> None:
    ae = AE(ae_title="ACCEPTOR")
    ae.add_supported_context(Verification)
    ae.network_timeout = 1.0
    port = free_port()
    ended = threading.Event()
    handlers = [(evt.EVT_ABORTED, lambda event: ended.set()), (evt.EVT_RELEASED, lambda event: ended.set())]
    server = reactor.start_server(
        ae, ("127.0.0.1", port), block=False, evt_handlers=handlers, ssl_context=None
    )
    assert server is not None
    try:
        assoc = _requestor(port)
        assert ended.wait(15), "the acceptor's network timeout (1 s) never ended the silent association"
        deadline = time.monotonic() + 15
        while assoc.is_established and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not assoc.is_established
    finally:
        server.shutdown()
        server.server_close()


def test_a_series_stored_through_the_wakeable_node_is_all_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reactor, "IDLE_WAIT", 20.0)
    geometry = axial_geometry(rows=32, columns=32, n_slices=12)
    files = write_series(tmp_path / "series", sample(block_phantom(), geometry), geometry, SeriesOptions())
    settings = NodeSettings(port=free_port(), data_dir=tmp_path / "data", min_free_mb=1)
    server = serve(settings, block=False)
    try:
        output = storescu(settings.port, files, called=settings.ae_title)
    finally:
        server.shutdown()
        server.server_close()
    statuses = store_responses(output)
    assert len(statuses) == 12 and set(statuses.values()) == {"Success"}, output[-2000:]
    rows = Index(settings.index_path).query("SELECT path FROM instances")
    assert len(rows) == 12 and all(Path(r["path"]).is_file() for r in rows)


def test_another_pynetdicom_series_falls_back_to_its_own_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
    with caplog.at_level(logging.WARNING, logger="node.receive.reactor"):
        assert reactor.server_class() is ThreadedAssociationServer
    assert "event=polling_reactor" in caplog.text
    monkeypatch.setattr(pynetdicom, "__version__", "3.0.4")
    assert reactor.server_class() is reactor.WakeableServer


def test_work_after_the_response_runs_once_the_response_is_sent_and_before_the_next_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """:func:`reactor.after_response`: the C-STORE handler's log line and hints wait for the answer.

    The deferred action blocks until the requestor has had its answer: run before the response, it
    would hold the answer back beyond the requestor's 3 s DIMSE timeout. Each request's actions
    end before the next request is served; one that raises is logged and the association goes on.
    """
    order: list[str] = []
    answered = threading.Event()

    def after(n: int) -> None:
        assert answered.wait(10), "the requestor never had its answer"
        answered.clear()
        order.append(f"after {n}")
        if n == 1:
            raise RuntimeError("a failing hint")

    def handle_echo(event: evt.Event) -> int:
        n = sum(1 for o in order if o.startswith("request")) + 1
        order.append(f"request {n}")
        reactor.after_response(event.assoc, lambda: after(n))
        return 0x0000

    ae = AE(ae_title="ACCEPTOR")
    ae.add_supported_context(Verification)
    port = free_port()
    server = reactor.start_server(
        ae, ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, handle_echo)], ssl_context=None
    )
    assert server is not None
    try:
        assoc = _requestor(port)
        try:
            with caplog.at_level(logging.ERROR, logger="node.receive.reactor"):
                for _ in range(3):
                    status = assoc.send_c_echo()
                    assert status and status.Status == 0x0000
                    answered.set()
                deadline = time.monotonic() + 10
                while len(order) < 6 and time.monotonic() < deadline:
                    time.sleep(0.01)
        finally:
            assoc.release()
    finally:
        server.shutdown()
        server.server_close()
    assert order == ["request 1", "after 1", "request 2", "after 2", "request 3", "after 3"]
    assert "event=after_response_error" in caplog.text


def test_work_after_the_response_runs_at_once_without_the_wakeable_association() -> None:
    """pynetdicom's own association (``event_driven = false``): nothing to defer to, so it runs now."""
    ran: list[int] = []
    reactor.after_response(object(), lambda: ran.append(1))
    assert ran == [1]
