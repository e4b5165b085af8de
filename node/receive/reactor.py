"""Event-driven acceptor threads for pynetdicom: wake on data instead of polling every millisecond.

Why: pynetdicom (3.0) runs two threads per association that poll. The DUL thread looks at the
socket and at its outgoing queue and sleeps 1 ms whenever both are empty; the association thread
sleeps 1 ms between looks at the queue of decoded DIMSE messages. A C-STORE on one association is
a ping-pong (the peer sends the next instance only after our answer), so each instance waits for
up to three of those sleeps — noticing the request, handing it to the handler, sending the
answer — and the polling burns CPU that the handler and the other associations need (a third of
all samples in the receive profile, docs/benchmarks.md). pynetdicom's own source marks the loop
"TODO: try and make this event based".

What changes, and only on the accepting side: the two loops are pynetdicom's own (copied from
3.0.4, MIT licence) with each idle sleep replaced by a wait that ends as soon as there is work:

* the DUL thread ``select``s on the peer's socket and on a wake-up socket pair that is poked
  when a primitive is queued for sending or the thread is told to stop;
* the association thread waits on an :class:`threading.Event` set when a DIMSE message, an
  A-RELEASE/A-ABORT indication or the DUL's end arrives.

Both waits still time out (:data:`IDLE_WAIT`) so that timers (ARTIM, the network idle timeout)
are checked as before. Everything else — the state machine, negotiation, events, handlers — is
pynetdicom's. :func:`make_server` returns a stock server class when the installed pynetdicom is
not the 3.0 series these loops were copied from, so an upgrade degrades to polling, never breaks.

One addition: :func:`after_response`. A handler hands it the work its peer need not wait for (the
C-STORE handler's log line, the scheduler's hint, the metrics), and the association thread runs it
once the response is queued for sending, before it serves the next request: the sender waits only
for what the status depends on.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from copy import deepcopy
from datetime import datetime
from typing import Any, cast

import pynetdicom
from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger(__name__)

#: Longest wait of an idle thread; bounds how late a timer (ARTIM, network idle timeout) is seen.
IDLE_WAIT = 0.05
#: The pynetdicom series whose loops are copied here.
SUPPORTED_SERIES = "3.0."


def supported() -> bool:
    """Whether the installed pynetdicom is the series the loops below were copied from."""
    return str(pynetdicom.__version__).startswith(SUPPORTED_SERIES)


class _SignallingQueue(queue.Queue):
    """A queue that calls ``notify`` after each ``put``: the consumer waits on the notification."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class WakeableDUL(DULServiceProvider):
    """pynetdicom's DUL provider whose idle wait ends when the socket is readable or work is queued."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        # A socket pair, not a pipe: poking after close raises instead of writing to a reused fd.
        self._wake_recv, self._wake_send = socket.socketpair()
        self._wake_recv.setblocking(False)
        self._wake_send.setblocking(False)
        self.to_provider_queue = _SignallingQueue(self.poke)

    def poke(self) -> None:
        """End the current idle wait (a primitive was queued or the thread is to stop)."""
        # A full pair already holds a poke; a closed one belongs to a finished thread.
        with contextlib.suppress(OSError):
            self._wake_send.send(b"\0")

    def kill_dul(self) -> None:
        super().kill_dul()
        self.poke()

    def stop_dul(self) -> bool:
        stopping = self.state_machine.current_state == "Sta1"
        if stopping:
            self._kill_thread = True
            self.poke()
        return bool(super().stop_dul())

    def _wait_for_work(self) -> None:
        """The idle wait: until the peer sent data, something was queued, or :data:`IDLE_WAIT`."""
        if not self.to_provider_queue.empty() or not self.event_queue.empty():
            return
        sock = self.socket.socket if self.socket is not None else None
        if sock is None:
            time.sleep(self._run_loop_delay)
            return
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return  # decrypted bytes that select cannot see
        try:
            ready, _, _ = select.select([sock, self._wake_recv], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # the socket was closed meanwhile: the loop notices it
            time.sleep(self._run_loop_delay)
            return
        if self._wake_recv in ready:
            with contextlib.suppress(OSError):
                while self._wake_recv.recv(4096):
                    pass

    def run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider.run_reactor`` with the idle sleep made a wait."""
        try:
            self._run_reactor_loop()
        finally:
            self._wake_send.close()
            self._wake_recv.close()
            wake = getattr(self.assoc, "wake", None)
            if wake is not None:
                wake()  # the association thread checks dul.is_alive() next

    def _run_reactor_loop(self) -> None:
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._wait_for_work()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                logging.getLogger("pynetdicom.dul").error("Exception in DUL.run(), aborting association")
                logging.getLogger("pynetdicom.dul").exception(exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                assert self.socket is not None
                self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            self.state_machine.do_action(event)
            sleep = False


def after_response(assoc: Any, action: Callable[[], None]) -> None:
    """Run ``action`` after the response to the request being served is queued for sending.

    With a :class:`WakeableAssociation` the association thread runs it right after the service
    class queued the response, before it serves the association's next request (so the actions of
    one association run in order, each before the next request's handler); with pynetdicom's own
    association class (``event_driven = false``, another pynetdicom) it runs at once.
    """
    defer = getattr(assoc, "defer_until_responded", None)
    if defer is None:
        action()
    else:
        defer(action)


class WakeableAssociation(Association):
    """pynetdicom's acceptor association whose reactor waits for messages instead of polling."""

    def __init__(self, ae: Any, mode: str) -> None:
        super().__init__(ae, mode)
        self._after_response: list[Callable[[], None]] = []
        self._wake = threading.Event()
        self.dul = WakeableDUL(self)  # replaces the (never started) polling one
        # The timeout setters configure the DUL's timers: apply them to the new one.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout
        self.dul.to_user_queue = _SignallingQueue(self._wake.set)
        self.dimse.msg_queue = _SignallingQueue(self._wake.set)

    def wake(self) -> None:
        """End the reactor's current idle wait."""
        self._wake.set()

    def defer_until_responded(self, action: Callable[[], None]) -> None:
        """See :func:`after_response`."""
        self._after_response.append(action)

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """pynetdicom's, then the actions its handler deferred (the response is queued by then)."""
        try:
            super()._serve_request(msg, context_id)
        finally:
            actions, self._after_response = self._after_response, []
            for action in actions:
                try:
                    action()
                except Exception:  # the instance is stored and answered: log, never end the association
                    log.exception("event=after_response_error")

    def kill(self) -> None:
        self._wake.set()
        super().kill()

    def _run_reactor(self) -> None:
        """pynetdicom 3.0.4's ``Association._run_reactor`` (acceptor) with the sleep made a wait."""
        assoc_log = logging.getLogger("pynetdicom.assoc")
        self._is_paused = False
        idle = True
        while not self._kill:
            if idle:
                self._wake.wait(IDLE_WAIT)
            self._wake.clear()  # before looking: a put from now on sets it again
            idle = True

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                idle = False
                self._serve_request(msg, cast(int, context_id))

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                assoc_log.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                assoc_log.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                assoc_log.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class WakeableRequestHandler(RequestHandler):
    """pynetdicom's request handler building a :class:`WakeableAssociation`."""

    def _create_association(self) -> Association:
        """pynetdicom 3.0.4's ``RequestHandler._create_association`` with the wakeable class."""
        assoc = WakeableAssociation(self.ae, "acceptor")
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(AssociationSocket(assoc, client_socket=self.request))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[Any], self.server._handlers[event]):
                    assoc.bind(event, handler[0], handler[1])
        return assoc


class WakeableServer(ThreadedAssociationServer):
    """pynetdicom's threaded server whose associations wait for work instead of polling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("request_handler", WakeableRequestHandler)
        super().__init__(*args, **kwargs)


def server_class(reuse_port: bool = False, event_driven: bool = True) -> type[ThreadedAssociationServer]:
    """:class:`WakeableServer`, or pynetdicom's own when its version is not the supported series.

    ``reuse_port``: the listening socket gets ``SO_REUSEPORT`` before it binds, so that several
    receiving processes of one node (same user: Linux refuses another user's socket) share the
    port and the kernel spreads the connections over them (``node.receivers``).
    """
    base: type[ThreadedAssociationServer] = WakeableServer if event_driven else ThreadedAssociationServer
    if event_driven and not supported():
        log.warning(
            "event=polling_reactor pynetdicom=%s reason=event-driven loops are for %sx",
            pynetdicom.__version__,
            SUPPORTED_SERIES,
        )
        base = ThreadedAssociationServer
    if not reuse_port:
        return base

    class ReusePortServer(base):  # type: ignore[valid-type,misc]
        def server_bind(self) -> None:
            # pynetdicom's server_bind does not look at socketserver's ``allow_reuse_port``.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    return ReusePortServer


def start_server(
    ae: pynetdicom.AE,
    address: tuple[str, int],
    *,
    block: bool,
    evt_handlers: list[Any],
    ssl_context: ssl.SSLContext | None,
    reuse_port: bool = False,
    event_driven: bool = True,
    on_listening: Callable[[tuple[str, int]], None] | None = None,
) -> ThreadedAssociationServer | None:
    """``AE.start_server`` with :func:`server_class` (pynetdicom 3.0.4's body, the class swapped).

    ``on_listening`` gets the bound address once the socket listens (with port 0, the port the
    system chose).

    Blocking: serves until the server is shut down and returns ``None``; otherwise serves in a
    daemon thread and returns the running server (``server.shutdown()`` stops it).
    """
    server = ae.make_server(
        address,
        ssl_context=ssl_context,
        evt_handlers=evt_handlers,
        server_class=server_class(reuse_port, event_driven),
    )
    ae._servers.append(server)
    if on_listening is not None:
        on_listening(server.server_address[:2])
    if block:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            server.shutdown()
        return None
    name = f"AcceptorServer@{datetime.now():%Y%m%d%H%M%S}"
    thread = threading.Thread(target=server.serve_forever, name=name)
    thread.daemon = True
    thread.start()
    return server
