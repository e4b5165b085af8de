"""Bounds on what one TCP connection may cost the node, whatever the peer sends or withholds.

pynetdicom (3.0) reads a PDU by its announced length with a blocking ``recv`` loop on a socket
that has no timeout, and the association's idle timer is not looked at meanwhile. Found by
``tests/test_fuzz_pdu.py``: a peer that announces a PDU and then sends nothing (or one byte
every few seconds) held two threads and a file descriptor for as long as it kept the connection
open; a P-DATA announcing 4 GiB was read into memory as it came; a connection closed in the
middle of a C-STORE left its partly received dataset in a temporary file forever.
:func:`handlers` returns the event handlers that fix this, on every accepted connection:

* ``EVT_CONN_OPEN``: the socket gets a timeout (``network_timeout``) and its ``recv`` is
  replaced by :func:`_bounded_recv`, which refuses a PDU longer than :data:`PDU_READ_LIMIT`
  (twice the maximum PDU the node proposes: a peer must not send more than that) and gives a
  whole PDU at most ``network_timeout`` seconds to arrive (a slow drip cannot keep it open);
  pynetdicom then treats the connection as closed (A-P-ABORT) and releases it;
* ``EVT_CONN_CLOSE``: the partly received dataset of an interrupted C-STORE is closed and
  deleted, and the socket closed (pynetdicom skips the close when ``shutdown`` fails on a socket
  the peer reset); a connection closed before its A-ASSOCIATE-RQ (a TCP probe) ends at once
  instead of holding one of the ``max_associations`` slots for the ACSE timeout (found by
  ``tests/test_load.py``: the start-up probe of the test made the 6th of 6 storescu rejected).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pynetdicom import evt

log = logging.getLogger("bodycomp.scp")

#: The largest P-DATA-TF PDU the node proposes to receive (A-ASSOCIATE maximum length): large
#: enough that PDU overhead does not matter, small enough that a PDU read into memory is cheap.
MAXIMUM_PDU_SIZE = 1024 * 1024
#: The longest PDU the node reads at all (an A-ASSOCIATE-RQ is not bound by the negotiated maximum,
#: but even one proposing every storage SOP class is below 64 KiB).
PDU_READ_LIMIT = 2 * MAXIMUM_PDU_SIZE


def _bounded_recv(assoc_socket: Any, timeout: float, limit: int, nr_bytes: int) -> bytearray:
    """``AssociationSocket.recv`` with a size limit and a deadline for the whole read."""
    if nr_bytes > limit:
        raise OSError(errno.EMSGSIZE, f"the peer announced a PDU of {nr_bytes} bytes (limit {limit})")
    sock = assoc_socket.socket
    if sock is None:
        return bytearray()
    # Read straight into the PDU's buffer (a 512 KB slice arrives in ~10 reads; appending chunks
    # would copy it each time). Memory follows what arrives: a peer announcing the limit and
    # sending nothing gets 64 KiB, the buffer grows only with received bytes.
    data = bytearray(min(nr_bytes, 65536))
    received = 0
    deadline = time.monotonic() + timeout
    try:
        while received < nr_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{received} of {nr_bytes} bytes of a PDU after {timeout:g} s")
            if received == len(data):
                data.extend(bytes(min(nr_bytes - received, len(data))))  # doubles, up to nr_bytes
            sock.settimeout(remaining)
            view = memoryview(data)[received:]
            try:
                count = sock.recv_into(view)
            finally:
                view.release()  # or the buffer could not grow
            if not count:
                break
            received += count
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)  # sends get the whole timeout, not what this read left over
    del data[received:]
    return data


def _guard(timeout: float, limit: int, event: Any) -> None:
    assoc_socket = event.assoc.dul.socket
    sock = getattr(assoc_socket, "socket", None)
    if sock is None:  # closed already (e.g. a failed TLS handshake)
        return
    try:
        sock.settimeout(timeout)
    except OSError:
        return
    assoc_socket.recv = functools.partial(_bounded_recv, assoc_socket, timeout, limit)
    # Kept for EVT_CONN_CLOSE: pynetdicom drops its reference when it closes the connection.
    event.assoc.bodycomp_socket = sock


def _release(event: Any) -> None:
    assoc = event.assoc
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    partial = getattr(message, "_data_set_file", None)
    if message is not None and partial is not None:  # the connection ended during a C-STORE dataset
        try:
            partial.close()
            Path(partial.name).unlink()
            log.warning("event=partial_dataset_removed reason=connection closed during a C-STORE")
        except OSError as exc:
            log.error("could not remove a partly received dataset: %s", exc)
        message._data_set_file = None
    sock = getattr(assoc, "bodycomp_socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
    dul = getattr(assoc, "dul", None)
    if dul is not None and not assoc.is_established and getattr(assoc.requestor, "primitive", 0) is None:
        # Closed before any A-ASSOCIATE-RQ (a port probe, a scanner): pynetdicom's acceptor would
        # wait the whole ACSE timeout for one, holding an association slot; wake it now (None
        # is what its wait returns on timeout, and it then ends the association).
        dul.to_user_queue.put(None)


class _RedactValues(logging.Filter):
    """Replace quoted values in pynetdicom's log messages (``Non-conformant 'Affected SOP
    Instance UID' value '<anything>'``): a hostile peer can put a patient's name in a UID field,
    and a service log must not carry it. Found by ``tests/test_fuzz_store.py``."""

    QUOTED = re.compile(r"(value|Value) '[^']*'")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self.QUOTED.sub(r"\1 '<redacted>'", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def redact_pynetdicom_logs() -> None:
    """Install :class:`_RedactValues` on pynetdicom's module loggers (once)."""
    names = [n for n in logging.Logger.manager.loggerDict if n == "pynetdicom" or n.startswith("pynetdicom.")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactValues) for f in logger.filters):
            logger.addFilter(_RedactValues())


def handlers(network_timeout: float) -> list[tuple[Any, Callable[[Any], None]]]:
    """``(event, handler)`` pairs for ``AE.start_server``; after any TLS handshake handler."""
    return [
        (evt.EVT_CONN_OPEN, functools.partial(_guard, network_timeout, PDU_READ_LIMIT)),
        (evt.EVT_CONN_CLOSE, _release),
    ]
