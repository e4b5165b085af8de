"""The HL7 v2 listener of ``bodycomp serve`` (``hl7_port``): MLLP in, heights and weights into the
index, an ACK out for every message.

Built on python-hl7's asyncio MLLP server (:func:`hl7.mllp.start_hl7_server`), run on an event
loop in a thread of its own so that a slow interface engine never holds the DICOM side. Each
message is answered after its observations are committed to the index (``AA``), or refused
with the reason in MSA-3 and an ERR segment (``AE``/``AR``, :mod:`node.hl7.messages`), so an
interface engine that got ``AA`` may forget the message. The log says the control ID, the
message type, the answer and the reason; never a patient identifier or a message's contents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import hl7
import hl7.mllp

from node.hl7.messages import Header, RefusedError, ack, header, read_body_message
from node.patients.limits import CURRENT, PatientLimits
from node.patients.sources import HL7_SOURCE
from node.store.index import Index

log = logging.getLogger("bodycomp.hl7")

#: The ``source`` recorded for values from this feed (result.json, SR, export).
SOURCE = HL7_SOURCE


@dataclass(frozen=True)
class Answer:
    """What the listener answered and why (for the log and the tests)."""

    code: str
    reason: str
    stored: int
    error_code: str = ""
    """HL7 table 0357 code of a refusal (ERR-3)."""


def handle_message(
    message: hl7.Message,
    index: Index,
    max_age_days: float,
    limits: PatientLimits = CURRENT,
    on_accepted: Callable[[str], None] | None = None,
    now: float | None = None,
) -> tuple[Header | None, Answer]:
    """Read, check and store one message; return its header and the answer to give."""
    now = time.time() if now is None else now
    try:
        head = header(message)
    except RefusedError as refused:
        return None, Answer(refused.ack_code, refused.reason, 0, refused.error_code)
    try:
        body = read_body_message(message, limits, max_age_days, now)
    except RefusedError as refused:
        return head, Answer(refused.ack_code, refused.reason, 0, refused.error_code)
    stored = index.add_observations(
        (body.patient_id, body.accession, m.kind, m.value, m.observed, SOURCE, body.control_id)
        for m in body.measurements
    )
    if body.measurements and on_accepted is not None:
        try:
            on_accepted(body.patient_id)
        except Exception:  # the values are stored and acknowledged whatever happens after
            log.exception("event=hl7_after_store_error control_id=%s", body.control_id)
    return head, Answer("AA", "", stored)


class HL7Listener:
    """The MLLP server in its thread: :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        host: str,
        port: int,
        index: Index,
        max_age_days: float,
        on_accepted: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.index = index
        self.max_age_days = max_age_days
        self.on_accepted = on_accepted
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.thread = threading.Thread(target=self.loop.run_forever, name="bodycomp-hl7", daemon=True)
        self.bound_port = port

    def start(self) -> None:
        """Bind (raises OSError when the port cannot be had) and serve in the background."""
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(
            hl7.mllp.start_hl7_server(self._client, host=self.host, port=self.port), self.loop
        )
        self.server = future.result(timeout=30)
        sockets = self.server.sockets or []
        if sockets:
            self.bound_port = int(sockets[0].getsockname()[1])
        log.info("event=hl7_listening host=%s port=%d", self.host, self.bound_port)

    def stop(self) -> None:
        server = self.server
        if server is not None:

            async def close() -> None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 5)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
            self.server = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    async def _client(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        """One connection: read messages until the peer closes, answer each."""
        try:
            while not writer.is_closing():
                try:
                    message = await reader.readmessage()
                except asyncio.IncompleteReadError:
                    break  # the peer closed the connection
                except Exception as exc:  # not HL7 at all: nothing to answer with, drop it
                    log.warning("event=hl7_unreadable reason=%s", type(exc).__name__)
                    break
                loop = asyncio.get_running_loop()
                head, answer = await loop.run_in_executor(None, self._handle, message)
                if head is None:
                    log.warning("event=hl7_refused reason=%s", answer.reason)
                    break
                writer.writemessage(hl7.parse(ack(head, answer.code, answer.reason, answer.error_code)))
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _handle(self, message: hl7.Message) -> tuple[Header | None, Answer]:
        head, answer = handle_message(message, self.index, self.max_age_days, on_accepted=self.on_accepted)
        if head is not None:
            kind = f"{head.message_type}^{head.trigger}"
            if answer.code == "AA":
                log.info(
                    "event=hl7_accepted control_id=%s type=%s observations=%d",
                    head.control_id[:40],
                    kind[:20],
                    answer.stored,
                )
            else:
                log.warning(
                    "event=hl7_refused control_id=%s type=%s ack=%s reason=%s",
                    head.control_id[:40],
                    kind[:20],
                    answer.code,
                    answer.reason,
                )
        return head, answer
