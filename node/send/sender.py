"""The outbox, delivered: C-STORE SCU of each result to its destination, with retries.

Modelled on pynetdicom's ``storescu`` app. One association per destination and round; the
presentation contexts proposed are the SOP classes of the files to send (SEG, Comprehensive 3D
SR, Secondary Capture, ...) with Explicit and Implicit VR Little Endian. Every status is checked:

* Success (0x0000) and the warnings (0x0001, 0xB000, 0xB006, 0xB007) count as delivered, as does
  0x0111 (duplicate SOP instance): the PACS holds the instance;
* a failure status, a refused or aborted association, or a timeout schedules a retry with
  exponential backoff (``send_retry_seconds`` doubling up to ``send_retry_max_seconds``) until
  ``send_give_up_hours`` after the result was queued, then the row is dead-lettered;
* a SOP class the destination refuses at negotiation is dead-lettered at once (retrying cannot
  help) and the other results still go, so a PACS without SEG support still gets SR and overlay.

The sender runs in its own thread and opens outgoing associations only: a destination that is
down never blocks receiving. Its state is the outbox in the index, so it resumes after a restart.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt

from node import prometheus, tls
from node.config import NodeSettings, parse_destination
from node.store.index import Index, OutboxState

log = logging.getLogger("bodycomp.sender")

DELIVERED_STATUSES = {0x0000, 0x0001, 0x0111, 0xB000, 0xB006, 0xB007}


def backoff(attempts: int, base: float, cap: float) -> float:
    """Delay before the next try after ``attempts`` failures: base·2^(attempts-1), capped."""
    return min(cap, base * 2 ** max(0, attempts - 1))


def _nodelay(event: Any) -> None:
    """Disable Nagle on the outgoing socket as well (see :mod:`node.receive.scp`)."""
    with contextlib.suppress(AttributeError, OSError):
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def next_attempt(row: sqlite3.Row, settings: NodeSettings, now: float) -> tuple[int, float | None]:
    """After a failed delivery of an outbox row (DICOM or HL7): its attempts so far, and when to
    try again (backoff), or None when that would be past ``send_give_up_hours`` (a dead letter)."""
    attempts = int(row["attempts"]) + 1
    give_up = float(row["created"]) + settings.send_give_up_hours * 3600
    next_try = now + backoff(attempts, settings.send_retry_seconds, settings.send_retry_max_seconds)
    return attempts, None if next_try > give_up else next_try


def _fail(index: Index, settings: NodeSettings, row: sqlite3.Row, error: str, now: float) -> None:
    attempts, next_try = next_attempt(row, settings, now)
    if next_try is None:
        index.outbox_failed(row["id"], error, None)
        prometheus.delivery(OutboxState.DEAD)
        log.error(
            "event=delivery_dead sop=%s destination=%s attempts=%d reason=%s",
            row["sop_uid"],
            row["destination"],
            attempts,
            error,
        )
    else:
        index.outbox_failed(row["id"], error, next_try)
        prometheus.delivery("retry")
        log.warning(
            "event=delivery_retry sop=%s destination=%s attempts=%d in=%.0fs reason=%s",
            row["sop_uid"],
            row["destination"],
            attempts,
            next_try - now,
            error,
        )


def send_to_destination(
    index: Index, settings: NodeSettings, destination: str, rows: list[sqlite3.Row]
) -> int:
    """Send ``rows`` over one association to ``destination``; return how many were delivered."""
    dest = parse_destination(destination)
    now = time.time()
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = 30
    ae.dimse_timeout = 120
    ae.network_timeout = 60
    # TCP connect and, for +tls, the TLS handshake: without a limit a peer that accepts the
    # connection and never answers the handshake would hold the sender thread forever.
    ae.connection_timeout = 30
    for sop_class in sorted({r["sop_class_uid"] for r in rows}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    # +tls: verified TLS or nothing; a failed handshake is a failed attempt, never plaintext.
    context = tls.client_context(settings) if dest.tls else None
    assoc = ae.associate(
        dest.host,
        dest.port,
        ae_title=dest.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
        tls_args=(context, dest.host) if context is not None else None,
    )
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "association aborted or no answer"
        if context is not None and context.handshake_error:
            why = f"TLS handshake failed: {context.handshake_error}"
        for row in rows:
            _fail(index, settings, row, f"{why} by {destination}", now)
        return 0
    delivered = 0
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        for row in rows:
            if not assoc.is_established:
                _fail(index, settings, row, "association lost", now)
                continue
            if row["sop_class_uid"] not in accepted:
                refused = f"{destination} does not accept SOP class {row['sop_class_uid']}"
                index.outbox_failed(row["id"], refused, None)
                prometheus.delivery(OutboxState.DEAD)
                log.error(
                    "event=delivery_dead sop=%s destination=%s reason=SOP class %s refused",
                    row["sop_uid"],
                    destination,
                    row["sop_class_uid"],
                )
                continue
            try:
                ds = pydicom.dcmread(row["path"])
            except (OSError, ValueError) as exc:
                index.outbox_failed(row["id"], f"result file unreadable: {exc}", None)
                prometheus.delivery(OutboxState.DEAD)
                continue
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status and "Status" in status else None
            if code in DELIVERED_STATUSES:
                index.outbox_delivered(row["id"], "" if code == 0 else f"status 0x{code:04X}")
                delivered += 1
                prometheus.delivery("delivered")
                log.info(
                    "event=delivered study=%s sop=%s destination=%s status=0x%04X",
                    row["study_uid"],
                    row["sop_uid"],
                    destination,
                    code,
                )
            else:
                _fail(index, settings, row, "no response" if code is None else f"status 0x{code:04X}", now)
    finally:
        if assoc.is_established:
            assoc.release()
    return delivered


def deliver_by_destination(
    rows: Iterable[sqlite3.Row],
    send: Callable[[str, list[sqlite3.Row]], int],
    fail: Callable[[sqlite3.Row, str], None],
    error_event: str,
) -> int:
    """One round of an outbox (DICOM here, HL7 in :mod:`node.send.hl7`): the due rows grouped by
    destination, each group sent by ``send``; a destination whose sending raises has its rows
    failed (retried later) and never stops the others or the thread. Returns how many were
    delivered."""
    groups: dict[str, list[sqlite3.Row]] = defaultdict(list)
    for row in rows:
        groups[row["destination"]].append(row)
    delivered = 0
    for destination, group in groups.items():
        try:
            delivered += send(destination, group)
        except Exception as exc:
            log.exception("event=%s destination=%s", error_event, destination)
            for row in group:
                fail(row, f"{type(exc).__name__}: {exc}")
    return delivered


def deliver_due(index: Index, settings: NodeSettings, now: float | None = None) -> int:
    """One round: every due outbox row, grouped by destination; return how many were delivered."""
    return deliver_by_destination(
        index.due_outbox(now),
        lambda destination, rows: send_to_destination(index, settings, destination, rows),
        lambda row, error: _fail(index, settings, row, error, time.time()),
        "delivery_error",
    )
