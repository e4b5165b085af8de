"""The DICOM storage SCP: C-ECHO and C-STORE into the spool.

Modelled on pynetdicom's own ``storescp`` app: one AE, plain event handlers. The C-STORE handler
returns Success (0x0000) only after :meth:`node.store.spool.Spool.store` has made the instance durable
*and* :meth:`node.store.index.Index.record_instance` has committed it to the index; an unusable dataset
gets "Cannot understand" (0xC000 range), a full disk "Out of resources" (0xA700) and an AE that
connects from the wrong host "Not authorised" (0x0124), so the sender keeps its copy and retries.
Logs carry UIDs, never patient names or IDs.

With ``stream_to_disk`` (default) pynetdicom writes each incoming dataset to a temporary file
(``STORE_RECV_CHUNKED_DATASET``) in the node's private receive folder; the handler maps it into
memory once (:class:`ReceivedFile`), parses its header from there (values longer than
:data:`DEFER_SIZE`, the pixels, are skipped), takes the digest from the same mapping and moves the
file into the spool, so a 1 GB Enhanced CT or ten concurrent associations never sit in the
process' memory. The content digest that recognises a re-sent instance covers the dataset bytes
as received (not the File Meta Information) and is the same in both modes.

Before the response only what the status depends on runs: the checks, the spool's flushes and the
index commit. The ``event=stored`` log line, the ``on_stored`` hint and the metrics follow it
(:func:`node.receive.reactor.after_response`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import mmap
import os
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import privacy, prometheus, tls
from node.config import NodeSettings
from node.receive import connection, failpoints, reactor
from node.receive.instance_check import Refusal, check_instance
from node.receive.journal import INLINE_BYTES, Payload, ReceiveJournal, replay
from node.receive.uid_locks import UidLocks
from node.store.index import Index, InstanceRecord, digest_bytes
from node.store.spool import InvalidUIDError, Spool, SpoolFullError, StoredInstance, checked_uid
from workers.load.deflate import (
    DEFLATED,
    InflateLimitError,
    InflateTooLargeError,
    dataset_offset,
    inflate_to_file,
    inflated_size,
)

log = logging.getLogger("bodycomp.scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORISED = 0x0124
STATUS_SOP_CLASS_MISMATCH = 0xA900
#: Refused: the SOP Instance UID is already recorded in another study or series (see
#: :meth:`node.store.index.Index.record_instance`); 0xCxxx is "cannot understand" in PS3.4 B.2.3.
STATUS_UID_CONFLICT = 0xC001
#: Values longer than this are not read when a received dataset is parsed (only their length).
DEFER_SIZE = 4096

#: Transfer syntaxes a PACS sends CT in: uncompressed, deflate, JPEG 2000, JPEG-LS, JPEG, RLE.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.5",  # RLE lossless
]


def _set_nodelay(event: Any) -> None:
    """Disable Nagle: pynetdicom never does, and each DIMSE message then waits ~40 ms."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # a socket already closed by the peer
        log.debug("TCP_NODELAY not set: %s", exc)


def handle_echo(event: Any) -> int:
    log.info("event=echo from=%s", event.assoc.requestor.ae_title)
    return STATUS_SUCCESS


def association_rejected(event: Any) -> None:
    """One log line and a counter for each association the node rejected (who, from where, why).

    Why: an integration engineer whose modality is refused must find the reason in the node's log,
    not only in the sender's; a scan of the port shows in the counter. No patient data is in an
    association request; the AE titles are escaped (a title may carry control characters).
    """
    primitive = event.assoc.acceptor.primitive
    key = (getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None))
    reason = prometheus.REJECT_REASONS.get(key, "other")  # type: ignore[arg-type]
    log.warning(
        "event=association_rejected from=%s address=%s called=%s reason=%s",
        privacy.escape_controls(str(event.assoc.requestor.ae_title)),
        event.assoc.requestor.address,
        privacy.escape_controls(str(getattr(event.assoc.requestor.primitive, "called_ae_title", ""))),
        reason,
    )
    prometheus.association_rejected(reason)


def host_allowed(settings: NodeSettings, calling_ae: str, address: str) -> bool:
    """With ``check_host``, an AE listed in ``destinations`` must connect from its host."""
    if not settings.check_host:
        return True
    hosts = {d.host for d in settings.destination_list() if d.ae_title == calling_ae}
    if not hosts:
        return True
    try:
        resolved = {socket.gethostbyname(h) for h in hosts}
    except OSError:
        resolved = set()
    return address in hosts or address in resolved


def _loggable_uid(value: object) -> str:
    """A request's UID for a log line when it is a valid UID, else ``-`` (it may be anything)."""
    try:
        return checked_uid(value, "UID")
    except InvalidUIDError:
        return "-"


#: Header values the index records for each instance (series choice, status, export).
INDEXED_KEYWORDS = ("Modality", "SeriesNumber", "SeriesDescription", "PatientID", "StudyDate")


def _received_size(request: Any) -> int | None:
    """Bytes of a dataset received in memory (pynetdicom keeps them in ``request.DataSet``)."""
    data: Any = getattr(request, "DataSet", None)
    return len(data.getvalue()) if hasattr(data, "getvalue") else None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "").strip()


class ReceivedFile:
    """The temporary file pynetdicom's chunked receive wrote (preamble, File Meta Information and
    the dataset as received), mapped into memory once: the header is parsed from the mapping and
    the content digest taken from it, so each instance is read once, from the page cache.

    Why: parsing the file, parsing its File Meta Information again to find where the dataset
    starts (``split_dataset``) and reading it a third time for the digest was most of the
    handler's own CPU time (docs/benchmarks.md). A mapping is not a copy: a 1 GB Enhanced CT is
    never held in the process' own memory.
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(fd).st_size
            # (an empty file cannot be mapped; pynetdicom never writes one: "undecodable")
            self.data = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)  # the mapping keeps its own reference
        try:
            #: Where the dataset starts: after the preamble, ``DICM`` and the File Meta
            #: Information, which pynetdicom wrote itself, its group length first.
            self.dataset_offset = dataset_offset(self.data[:1024])
        except BaseException:
            self.data.close()
            raise

    def digest(self) -> str:
        """SHA-256 of the dataset as received (after the File Meta Information), as
        :func:`node.store.index.digest_file` gives for the spooled file."""
        with memoryview(self.data) as view, view[self.dataset_offset :] as dataset:
            return hashlib.sha256(dataset).hexdigest()

    def close(self) -> None:
        self.data.close()


@dataclass(frozen=True)
class Header:
    """What the handler reads from a received instance's header, once."""

    ds: Any
    described: dict[str, str]


def read_header(event: Any, received: ReceivedFile | None, limit: int) -> Header | Refusal:
    """Parse and check the received instance's header; a :class:`Refusal` when it cannot be stored.

    The header is parsed once: chunked, from the mapped file (or the inflated copy of a deflated
    one), values above :data:`DEFER_SIZE` (the pixels) skipped, only their lengths read; in memory,
    pynetdicom's own decoding of the received bytes. A deflated dataset is never inflated whole in
    memory: streamed to a file, or counted, under ``limit`` bytes.
    """
    request = event.request
    inflated: Path | None = None
    try:
        chunked = getattr(request, "_dataset_path", None) is not None
        if chunked and received is None:
            raise InvalidDicomError("the received file cannot be read")
        transfer_syntax = str(event.context.transfer_syntax)
        size = received.size if received is not None else _received_size(request)
        if transfer_syntax == DEFLATED and chunked:
            target = event.dataset_path.with_name(event.dataset_path.name + ".inflated")
            inflated = inflate_to_file(event.dataset_path, target, limit)
            size = inflated.stat().st_size
        elif transfer_syntax == DEFLATED:
            size = inflated_size(io.BytesIO(request.DataSet.getvalue()), limit)
        if received is not None:
            source = inflated if inflated is not None else cast(BinaryIO, received.data)  # file-like
            ds = pydicom.dcmread(source, defer_size=DEFER_SIZE)
        else:
            ds = event.dataset
        refusal = check_instance(
            ds,
            str(request.AffectedSOPClassUID),
            str(request.AffectedSOPInstanceUID),
            transfer_syntax if inflated is None else str(ExplicitVRLittleEndian),
            size,
        )
        # The values the index keeps are read now: a deferred value that cannot be parsed
        # (pydicom raises OSError for "No tag to read") is a bad dataset, not a full disk.
        described = {keyword: _text(ds, keyword) for keyword in INDEXED_KEYWORDS}
    except InflateLimitError as exc:
        too_large = isinstance(exc, InflateTooLargeError)
        return Refusal(STATUS_OUT_OF_RESOURCES if too_large else STATUS_CANNOT_UNDERSTAND, str(exc))
    except Exception as exc:  # pydicom raises many types on hostile input; all mean the same
        return Refusal(STATUS_CANNOT_UNDERSTAND, f"undecodable dataset ({type(exc).__name__})")
    finally:
        if inflated is not None:
            inflated.unlink(missing_ok=True)
    return refusal if refusal is not None else Header(ds, described)


@dataclass(frozen=True)
class Received:
    """The instance's bytes as the spool keeps them, where its dataset starts, and its digest
    (SHA-256 of the dataset after the File Meta Information)."""

    payload: Payload
    hash_from: int
    digest: str


def received_bytes(event: Any, received: ReceivedFile | None) -> Received:
    if received is not None:
        return Received(
            Payload(received.size, path=event.dataset_path), received.dataset_offset, received.digest()
        )
    dataset = event.encoded_dataset(include_meta=False)
    encoded = event.encoded_dataset(include_meta=True)
    return Received(Payload(len(encoded), data=encoded), len(encoded) - len(dataset), digest_bytes(dataset))


def make_durable(
    spool: Spool,
    index: Index,
    journal: ReceiveJournal,
    record: InstanceRecord,
    received: Received,
    known: sqlite3.Row | None = None,
) -> tuple[StoredInstance, str]:
    """Journal, spool and index one instance; return where it is and the index's outcome.

    ``known``: the index's row of this SOP Instance UID, if any. When it holds the same content and
    its file is there (a re-send: a PACS routes a whole series again when one instance comes late),
    nothing is written or flushed: that content was made durable, and acknowledged, before; only
    the index is told (a finished study sent again is looked at for delivery).

    Up to :data:`~node.receive.journal.INLINE_BYTES` the one flush before Success is the journal's, the
    record holding the bytes; the spool file and the index row follow unflushed and the journal's
    syncer flushes them in batches. A larger instance is flushed where it lives (its bytes written
    once) and only its index row goes through the journal.
    """
    payload = received.payload
    study, series, sop = record.study_uid, record.series_uid, record.sop_uid
    if known is not None and _already_durable(known, record):
        return StoredInstance(
            record.path, study, series, sop, record.size, record.digest
        ), index.record_instance(record)
    spool.check_room(payload.size)
    inline = payload.size <= INLINE_BYTES
    if not inline:
        if payload.path is not None:
            stored = spool.adopt_file(payload.path, study, series, sop, received.hash_from, received.digest)
        else:
            stored = spool.store(cast(bytes, payload.data), study, series, sop)
    ticket = journal.append(record, payload if inline else None, received.hash_from)
    try:
        journal.flush(ticket)
        failpoints.reach("journal-flushed")
        if inline and payload.path is not None:  # moved (copied across file systems)
            stored = spool.place_file(payload.path, study, series, sop, payload.size)
        elif inline:
            stored = spool.place_bytes(cast(bytes, payload.data), study, series, sop)
        return stored, index.record_instance(record)
    finally:
        journal.done(ticket)


def _refused_for(exc: Exception, calling: str, sop_hint: str) -> int:
    """The status for an error while storing (the index's errors are handled by the caller)."""
    if isinstance(exc, SpoolFullError):
        log.error("refused an instance from %s: spool full (%s)", calling, exc)
        return STATUS_OUT_OF_RESOURCES
    if isinstance(exc, InvalidUIDError):
        log.warning("refused an instance from %s: %s", calling, exc)
        return STATUS_CANNOT_UNDERSTAND
    if isinstance(exc, (AttributeError, KeyError, ValueError, TypeError, InvalidDicomError)):
        log.warning("refused an undecodable instance from %s: %s", calling, type(exc).__name__)
        return STATUS_CANNOT_UNDERSTAND
    if isinstance(exc, OSError):
        log.error("could not store an instance from %s: %s", calling, exc)
        return STATUS_OUT_OF_RESOURCES
    # never raise: pynetdicom would answer 0xC211 and keep its temp file
    log.error("event=store_error sop=%s from=%s error=%s", sop_hint, calling, type(exc).__name__)
    return STATUS_PROCESSING_FAILURE


def counted(handler: Callable[[Any], int]) -> Callable[[Any], int]:
    """Wrap the C-STORE handler so each status it returns is counted (after the response is sent)."""

    def handle(event: Any) -> int:
        status = int(handler(event))
        reactor.after_response(event.assoc, lambda: prometheus.store_status(status))
        return status

    return handle


def make_store_handler(
    spool: Spool,
    index: Index,
    journal: ReceiveJournal,
    settings: NodeSettings,
    on_stored: Callable[[str, str], None] | None = None,
) -> Any:
    """The C-STORE handler. ``index`` is a receive-journal connection (``Index(...,
    receive_journal=True)``): Success waits for one flush, the journal's (:mod:`node.receive.journal`)."""
    # Two associations (perhaps in two receiving processes) sending one UID at once must not
    # leave the spool file of one and the index digest of the other.
    locks = UidLocks(spool.root / "uid.lock")
    limit = settings.max_inflated_mb << 20

    def handle_store(event: Any) -> int:
        """Success only once the instance is durable in the spool and committed to the index;
        the log line and the ``on_stored`` hint follow the response (:func:`reactor.after_response`)."""
        received: ReceivedFile | None = None
        try:
            if getattr(event.request, "_dataset_path", None) is not None:
                try:
                    received = ReceivedFile(event.dataset_path)
                except (OSError, ValueError) as exc:  # refused below, like any undecodable dataset
                    log.debug("received file not mapped: %s", type(exc).__name__)
            return store(event, received)
        finally:
            if received is not None:
                received.close()

    def store(event: Any, received: ReceivedFile | None) -> int:
        calling = event.assoc.requestor.ae_title
        sop_hint = _loggable_uid(event.request.AffectedSOPInstanceUID)
        if not host_allowed(settings, calling, event.assoc.requestor.address):
            log.warning("refused an instance: %s connected from an unexpected host", calling)
            return STATUS_NOT_AUTHORISED
        header = read_header(event, received, limit)
        if isinstance(header, Refusal):
            log.warning(
                "event=refused status=0x%04X sop=%s from=%s reason=%s",
                header.status,
                sop_hint,
                calling,
                header.reason,
            )
            return header.status
        unrecorded: Path | None = None
        try:
            ds = header.ds
            study, series, sop = (
                checked_uid(ds.StudyInstanceUID, "StudyInstanceUID"),
                checked_uid(ds.SeriesInstanceUID, "SeriesInstanceUID"),
                checked_uid(ds.SOPInstanceUID, "SOPInstanceUID"),
            )
            with locks.hold(sop):
                known = index.recorded_instance(sop)
                if known is not None and (known["study_uid"], known["series_uid"]) != (study, series):
                    log.warning(
                        "event=refused status=0x%04X sop=%s from=%s reason=SOP Instance UID already "
                        "recorded in study %s series %s",
                        STATUS_UID_CONFLICT,
                        sop,
                        calling,
                        known["study_uid"],
                        known["series_uid"],
                    )
                    return STATUS_UID_CONFLICT
                data = received_bytes(event, received)
                record = _record(header, study, series, sop, event, calling, spool, data)
                unrecorded = record.path if known is None else None  # removed if the index fails
                stored, outcome = make_durable(spool, index, journal, record, data, known)
                if outcome == "conflict":  # cannot happen under the lock; never trust one check
                    stored.path.unlink(missing_ok=True)
                    log.warning(
                        "event=refused status=0x%04X sop=%s reason=UID conflict", STATUS_UID_CONFLICT, sop
                    )
                    return STATUS_UID_CONFLICT
        except sqlite3.Error as exc:
            # The file is on disk but not recorded: refuse, so the sender retries and we record it.
            # A new instance's file goes too (under the UID's lock, unless another association
            # recorded it meanwhile): left there, the next dispatch scan would see a file the index
            # does not know, and a full disk would stay fuller.
            log.error("could not record an instance from %s in the index: %s", calling, exc)
            if unrecorded is not None:
                _remove_unrecorded(unrecorded, locks, index)
            full = "full" in str(exc).lower()
            return STATUS_OUT_OF_RESOURCES if full else STATUS_PROCESSING_FAILURE
        except Exception as exc:
            return _refused_for(exc, calling, sop_hint)

        def stored_log() -> None:
            """After the response: the instance is durable and recorded whatever happens here."""
            log.info(
                "event=stored study=%s series=%s sop=%s bytes=%d from=%s outcome=%s",
                stored.study_uid,
                stored.series_uid,
                stored.sop_instance_uid,
                stored.size,
                calling,
                outcome,
            )
            if on_stored is not None:
                on_stored(stored.study_uid, outcome)

        reactor.after_response(event.assoc, stored_log)
        return STATUS_SUCCESS

    return handle_store


def _record(
    header: Header, study: str, series: str, sop: str, event: Any, calling: str, spool: Spool, data: Received
) -> InstanceRecord:
    described = header.described
    return InstanceRecord(
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        sop_class_uid=str(event.request.AffectedSOPClassUID),
        path=spool.path_for(study, series, sop),
        size=data.payload.size,
        digest=data.digest,
        calling_ae=calling,
        modality=described["Modality"],
        series_number=described["SeriesNumber"],
        description=described["SeriesDescription"],
        patient_id=described["PatientID"],
        study_date=described["StudyDate"],
    )


def _already_durable(known: sqlite3.Row, record: InstanceRecord) -> bool:
    """The same content is recorded for this instance and its spool file is there, whole (its
    size: the content was checked by digest when it was stored)."""
    if known["digest"] != record.digest or Path(known["path"]) != record.path:
        return False
    try:
        return record.path.stat().st_size == record.size == int(known["size"])
    except OSError:
        return False


def _remove_unrecorded(path: Path, locks: UidLocks, index: Index) -> None:
    """Remove a new instance's spool file the index could not record (under its UID's lock, unless
    another association recorded it meanwhile)."""
    with locks.hold(path.stem):
        try:
            if index.instance_location(path.stem) is None:
                path.unlink(missing_ok=True)
        except (sqlite3.Error, OSError):
            pass  # kept: a re-send replaces it, and it is a complete file


def build_ae(settings: NodeSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_called_aet = settings.require_called_ae
    if settings.allow_ae:
        ae.require_calling_aet = list(settings.allow_ae)
    # PDUs up to 1 MiB (enough that their overhead does not matter; a larger one is refused, see
    # node.receive.connection), and no idle timeout shorter than a slow PACS' pause between instances.
    ae.maximum_pdu_size = connection.MAXIMUM_PDU_SIZE
    ae.network_timeout = settings.network_timeout
    ae.dimse_timeout = settings.network_timeout
    ae.acse_timeout = min(30.0, settings.network_timeout)
    ae.maximum_associations = settings.max_associations
    # pydicom's "invalid value" warnings quote the value, which may be a patient's name: a service
    # log must not carry it (the node reads a few attributes only, and validates those itself).
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    connection.redact_pynetdicom_logs()  # and pynetdicom's "non-conformant UID" warnings, too
    return ae


def serve(
    settings: NodeSettings,
    block: bool = True,
    index: Index | None = None,
    on_stored: Callable[[str, str], None] | None = None,
    on_released: Callable[[], None] | None = None,
    reuse_port: bool = False,
    slot: int = 0,
    receive_index: Index | None = None,
) -> Any:
    """Start the SCP; returns the running server when ``block`` is False (tests, embedding).

    ``slot``: which of the node's receiving processes this is (``receivers``); its receive journal
    is ``rx<slot>`` and what a dead process of the same slot left in it is replayed first.
    ``index`` (the node's own connection, ``synchronous=FULL``) replays and syncs the journal; the
    C-STORE handler commits through a connection of its own (:class:`Index` ``receive_journal``;
    ``receive_index`` replaces it, e.g. with one that fails as on a full disk).

    ``on_stored(study_uid, outcome)`` runs after each committed instance and ``on_released()``
    after each association ends: the scheduler uses them as hints to look at the studies early.
    ``reuse_port``: share the port with the node's other receiving processes (``receivers``).
    """
    ssl_context = tls.server_context(settings)  # first: unusable certificates stop here (ConfigError)
    spool = Spool(settings.spool_dir, min_free_bytes=settings.min_free_mb * 1024 * 1024)
    own_index = index is None
    index = index or Index(settings.index_path)
    # This process' receive journal: what an earlier process of this slot left is applied first.
    owner = f"rx{slot}"
    replay(journal_dir(settings), spool, index, owner=owner).log(f"receiver={slot}")
    own_receive_index = receive_index is None
    receive_index = receive_index or Index(settings.index_path, receive_journal=True)
    journal = ReceiveJournal(journal_dir(settings), owner, spool, index)

    def close() -> None:
        """After the server: the journal's last sync (nothing left to replay), then the indexes."""
        journal.close()
        if own_receive_index:
            receive_index.close()
        if own_index:
            index.close()

    # Process-wide in pynetdicom; the handler copes with either mode.
    _config.STORE_RECV_CHUNKED_DATASET = settings.stream_to_disk
    ae = build_ae(settings)

    def released(event: Any) -> None:
        log.info("event=association_end from=%s pid=%d", event.assoc.requestor.ae_title, os.getpid())
        if on_released is not None:
            on_released()

    handlers: list[Any] = [
        (evt.EVT_REJECTED, association_rejected),
        (evt.EVT_CONN_OPEN, _set_nodelay),
        (evt.EVT_C_ECHO, handle_echo),
        (
            evt.EVT_C_STORE,
            counted(make_store_handler(spool, receive_index, journal, settings, on_stored)),
        ),
        (evt.EVT_RELEASED, released),
        (evt.EVT_ABORTED, released),
    ]
    if ssl_context is not None:  # the handshake before anything else reads or writes the socket
        handlers.insert(0, (evt.EVT_CONN_OPEN, tls.handshake))
    handlers += connection.handlers(settings.network_timeout)  # after the handshake: bounds per socket

    def listening(address: tuple[str, int]) -> None:
        log.info(
            "event=listening ae=%s address=%s:%d data_dir=%s tls=%s",
            settings.ae_title,
            address[0],
            address[1],
            settings.data_dir,
            _tls_mode(settings, ssl_context is not None),
        )

    try:
        server = reactor.start_server(
            ae,
            (settings.host, settings.port),
            block=block,
            evt_handlers=handlers,
            ssl_context=ssl_context,
            reuse_port=reuse_port,
            event_driven=settings.event_driven,
            on_listening=listening,
        )
    except BaseException:
        close()
        raise
    if server is None:  # blocking: served until shut down
        close()
        return None
    # The caller stops the server with shutdown() and server_close(); the journal closes with it.
    server_close = server.server_close

    def close_all() -> None:
        server_close()
        close()

    server.server_close = close_all  # type: ignore[method-assign]
    return server


def journal_dir(settings: NodeSettings) -> Path:
    """Where the receive journal's segments are: beside the spool, on its file system."""
    return settings.spool_dir / "journal"


def _tls_mode(settings: NodeSettings, uses_tls: bool) -> str:
    """``off``, ``on``, ``on+client-cert`` or ``on+client-cert+crl``: the ``listening`` line's ``tls``."""
    if not uses_tls:
        return "off"
    if not settings.tls_verify_client:
        return "on"
    return "on+client-cert+crl" if settings.tls_crl else "on+client-cert"
