"""The HL7 outbox, delivered: each ORU^R01 over MLLP to its destination, with retries.

Modelled on the DICOM sender (:mod:`node.send.sender`): one connection per destination and round, a
message is delivered when the receiver answers ``AA`` (or ``CA``) for its control ID; an ``AE``,
``AR``, no answer or a refused connection schedules a retry with exponential backoff
(``send_retry_seconds`` doubling up to ``send_retry_max_seconds``) until ``send_give_up_hours``
after the message was queued, then it is dead-lettered (``bodycomp status`` shows it). An ``AR``
(the receiver rejects the message itself) is dead-lettered at once: the same bytes will be
rejected again. Logged: control IDs, destinations, ACK codes and reasons; never message contents.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import time
from pathlib import Path

from node.config import NodeSettings, parse_hl7_destination
from node.send.sender import deliver_by_destination, next_attempt
from node.store.index import Index

log = logging.getLogger("bodycomp.hl7.sender")

START, END = b"\x0b", b"\x1c\x0d"
TIMEOUT_SECONDS = 30.0


class DeliveryError(Exception):
    """The destination did not accept the message; ``final``: retrying cannot help."""

    def __init__(self, reason: str, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


def _read_frame(conn: socket.socket) -> bytes:
    data = b""
    while END not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise DeliveryError("connection closed before the ACK")
        data += chunk
        if len(data) > 1 << 20:
            raise DeliveryError("ACK too long")
    start = data.find(START)
    return data[start + 1 : data.index(END)]


def ack_of(frame: bytes) -> tuple[str, str, str]:
    """(MSA-1 code, MSA-2 control ID, MSA-3 text) of an ACK frame."""
    for segment in frame.decode("utf-8", errors="replace").split("\r"):
        fields = segment.split("|")
        if fields[0] == "MSA":
            fields += ["", "", ""]
            return fields[1].strip(), fields[2].strip(), fields[3].strip()
    raise DeliveryError("the answer has no MSA segment")


def send_message(conn: socket.socket, text: str, control_id: str) -> str:
    """Send one framed message, wait for its ACK; return the ACK code or raise DeliveryError."""
    conn.sendall(START + text.encode("utf-8") + END)
    code, acked, reason = ack_of(_read_frame(conn))
    if acked and acked != control_id:
        raise DeliveryError(f"ACK for another message ({acked[:40]})")
    if code in ("AA", "CA"):
        return code
    raise DeliveryError(f"{code or 'no code'}: {reason[:200]}", final=code in ("AR", "CR"))


def _fail(
    index: Index, settings: NodeSettings, row: sqlite3.Row, error: str, final: bool, now: float
) -> None:
    attempts, next_try = next_attempt(row, settings, now)
    if final or next_try is None:
        index.hl7_outbox_failed(row["id"], error, None)
        log.error(
            "event=hl7_delivery_dead control_id=%s destination=%s attempts=%d reason=%s",
            row["control_id"],
            row["destination"],
            attempts,
            error,
        )
    else:
        index.hl7_outbox_failed(row["id"], error, next_try)
        log.warning(
            "event=hl7_delivery_retry control_id=%s destination=%s attempts=%d in=%.0fs reason=%s",
            row["control_id"],
            row["destination"],
            attempts,
            next_try - now,
            error,
        )


def send_to_destination(
    index: Index, settings: NodeSettings, destination: str, rows: list[sqlite3.Row]
) -> int:
    """Send ``rows`` over one connection to ``destination``; return how many were delivered."""
    host, port = parse_hl7_destination(destination)
    now = time.time()
    try:
        conn = socket.create_connection((host, port), timeout=TIMEOUT_SECONDS)
    except OSError as exc:
        for row in rows:
            _fail(index, settings, row, f"cannot connect to {destination}: {exc.strerror or exc}", False, now)
        return 0
    delivered = 0
    with conn:
        for position, row in enumerate(rows):
            try:
                # bytes, decoded: read_text() would turn the segment separators (CR) into LF
                text = Path(row["path"]).read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                _fail(index, settings, row, f"message file unreadable: {exc}", True, now)
                continue
            try:
                code = send_message(conn, text, str(row["control_id"]))
            except (DeliveryError, OSError) as exc:
                final = isinstance(exc, DeliveryError) and exc.final
                _fail(index, settings, row, str(exc) or type(exc).__name__, final, now)
                if not isinstance(exc, DeliveryError) or not final:
                    for rest in rows[position + 1 :]:  # the connection is in doubt: the rest next round
                        _fail(index, settings, rest, "connection lost", False, now)
                    break
                continue
            index.hl7_outbox_delivered(row["id"], "" if code == "AA" else code)
            delivered += 1
            log.info(
                "event=hl7_delivered study=%s control_id=%s destination=%s ack=%s",
                row["study_uid"],
                row["control_id"],
                destination,
                code,
            )
    return delivered


def deliver_due_hl7(index: Index, settings: NodeSettings, now: float | None = None) -> int:
    """One round: every due HL7 outbox row, grouped by destination; return how many were delivered."""
    return deliver_by_destination(
        index.due_hl7_outbox(now),
        lambda destination, rows: send_to_destination(index, settings, destination, rows),
        lambda row, error: _fail(index, settings, row, error, False, time.time()),
        "hl7_delivery_error",
    )
