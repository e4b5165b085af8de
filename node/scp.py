"""The DICOM storage SCP: C-ECHO and C-STORE into the spool.

Modelled on pynetdicom's own ``storescp`` app: one AE, plain event handlers. The C-STORE handler
returns Success (0x0000) only after :meth:`node.spool.Spool.store` has made the instance durable
*and* :meth:`node.index.Index.record_instance` has committed it to the index; an unusable dataset
gets "Cannot understand" (0xC000 range), a full disk "Out of resources" (0xA700) and an AE that
connects from the wrong host "Not authorised" (0x0124), so the sender keeps its copy and retries.
Logs carry UIDs, never patient names or IDs.

With ``stream_to_disk`` (default) pynetdicom writes each incoming dataset to a temporary file
(``STORE_RECV_CHUNKED_DATASET``) and the handler reads only its header and copies it into the
spool in blocks, so a 1 GB Enhanced CT or ten concurrent associations never sit in memory. The
content digest that recognises a re-sent instance covers the dataset bytes as received (not the
File Meta Information) and is the same in both modes.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import connection, metrics, privacy, reactor, tls
from node.config import NodeSettings
from node.index import Index, InstanceRecord, digest_bytes
from node.instance_check import Refusal, check_instance
from node.spool import InvalidUIDError, Spool, SpoolFullError, checked_uid
from node.uid_locks import UidLocks
from workers.deflate import DEFLATED, InflateLimitError, InflateTooLargeError, inflate_to_file, inflated_size

log = logging.getLogger("bodycomp.scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORISED = 0x0124
STATUS_SOP_CLASS_MISMATCH = 0xA900
#: Refused: the SOP Instance UID is already recorded in another study or series (see
#: :meth:`node.index.Index.record_instance`); 0xCxxx is "cannot understand" in PS3.4 B.2.3.
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
    reason = metrics.REJECT_REASONS.get(key, "other")  # type: ignore[arg-type]
    log.warning(
        "event=association_rejected from=%s address=%s called=%s reason=%s",
        privacy.escape_controls(str(event.assoc.requestor.ae_title)),
        event.assoc.requestor.address,
        privacy.escape_controls(str(getattr(event.assoc.requestor.primitive, "called_ae_title", ""))),
        reason,
    )
    metrics.association_rejected(reason)


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


def make_store_handler(
    spool: Spool, index: Index, settings: NodeSettings, on_stored: Callable[[str, str], None] | None = None
) -> Any:
    # Two associations (perhaps in two receiving processes) sending one UID at once must not
    # leave the spool file of one and the index digest of the other.
    locks = UidLocks(spool.root / "uid.lock")
    limit = settings.max_inflated_mb << 20

    def handle_store(event: Any) -> int:
        calling = event.assoc.requestor.ae_title
        request = event.request
        sop_hint = _loggable_uid(request.AffectedSOPInstanceUID)
        if not host_allowed(settings, calling, event.assoc.requestor.address):
            log.warning("refused an instance: %s connected from an unexpected host", calling)
            return STATUS_NOT_AUTHORISED
        inflated: Path | None = None
        try:
            chunked = getattr(request, "_dataset_path", None) is not None
            transfer_syntax = str(event.context.transfer_syntax)
            size = event.dataset_path.stat().st_size if chunked else _received_size(request)
            if transfer_syntax == DEFLATED:
                # never inflated whole in memory: streamed to a file, or counted, under the ceiling
                if chunked:
                    inflated = inflate_to_file(
                        event.dataset_path,
                        event.dataset_path.with_name(event.dataset_path.name + ".inflated"),
                        limit,
                    )
                    size = inflated.stat().st_size
                else:
                    size = inflated_size(io.BytesIO(request.DataSet.getvalue()), limit)
            # Chunked: the dataset is in a temporary file; parse its structure, but values above
            # DEFER_SIZE (the pixels) are skipped, only their lengths read.
            if chunked:
                ds = pydicom.dcmread(inflated or event.dataset_path, defer_size=DEFER_SIZE)
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
            refusal = Refusal(STATUS_OUT_OF_RESOURCES if too_large else STATUS_CANNOT_UNDERSTAND, str(exc))
        except Exception as exc:  # pydicom raises many types on hostile input; all mean the same
            refusal = Refusal(STATUS_CANNOT_UNDERSTAND, f"undecodable dataset ({type(exc).__name__})")
        finally:
            if inflated is not None:
                inflated.unlink(missing_ok=True)
        if refusal is not None:
            log.warning(
                "event=refused status=0x%04X sop=%s from=%s reason=%s",
                refusal.status,
                sop_hint,
                calling,
                refusal.reason,
            )
            return refusal.status
        unrecorded: Path | None = None
        try:
            study, series, sop = (
                checked_uid(ds.StudyInstanceUID, "StudyInstanceUID"),
                checked_uid(ds.SeriesInstanceUID, "SeriesInstanceUID"),
                checked_uid(ds.SOPInstanceUID, "SOPInstanceUID"),
            )
            with locks.hold(sop):
                known = index.instance_location(sop)
                if known is not None and known != (study, series):
                    log.warning(
                        "event=refused status=0x%04X sop=%s from=%s reason=SOP Instance UID already "
                        "recorded in study %s series %s",
                        STATUS_UID_CONFLICT,
                        sop,
                        calling,
                        *known,
                    )
                    return STATUS_UID_CONFLICT
                if chunked:
                    # Moved into the spool (copied across file systems); the digest covers the
                    # dataset after the File Meta Information.
                    source = event.dataset_path
                    stored = spool.adopt_file(source, study, series, sop, hash_from=split_dataset(source)[1])
                    digest = stored.digest
                else:
                    stored = spool.store(event.encoded_dataset(include_meta=True), study, series, sop)
                    digest = digest_bytes(event.encoded_dataset(include_meta=False))
                unrecorded = stored.path if known is None else None  # removed if the index fails
                record = InstanceRecord(
                    study_uid=stored.study_uid,
                    series_uid=stored.series_uid,
                    sop_uid=stored.sop_instance_uid,
                    sop_class_uid=str(request.AffectedSOPClassUID),
                    path=stored.path,
                    size=stored.size,
                    digest=digest,
                    calling_ae=calling,
                    modality=described["Modality"],
                    series_number=described["SeriesNumber"],
                    description=described["SeriesDescription"],
                    patient_id=described["PatientID"],
                    study_date=described["StudyDate"],
                )
                outcome = index.record_instance(record)
                if outcome == "conflict":  # cannot happen under the lock; never trust one check
                    stored.path.unlink(missing_ok=True)
                    log.warning(
                        "event=refused status=0x%04X sop=%s reason=UID conflict", STATUS_UID_CONFLICT, sop
                    )
                    return STATUS_UID_CONFLICT
        except SpoolFullError as exc:
            log.error("refused an instance from %s: spool full (%s)", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        except InvalidUIDError as exc:
            log.warning("refused an instance from %s: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        except (AttributeError, KeyError, ValueError, TypeError, InvalidDicomError) as exc:
            log.warning("refused an undecodable instance from %s: %s", calling, type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("could not store an instance from %s: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        except sqlite3.Error as exc:
            # The file is on disk but not recorded: refuse, so the sender retries and we record it.
            # A new instance's file goes too (under the UID's lock, unless another association
            # recorded it meanwhile): left there, the next dispatch scan would see a file the index
            # does not know, and a full disk would stay fuller.
            log.error("could not record an instance from %s in the index: %s", calling, exc)
            if unrecorded is not None:
                with locks.hold(unrecorded.stem):
                    try:
                        if index.instance_location(unrecorded.stem) is None:
                            unrecorded.unlink(missing_ok=True)
                    except (sqlite3.Error, OSError):
                        pass  # kept: a re-send replaces it, and it is a complete file
            full = "full" in str(exc).lower()
            return STATUS_OUT_OF_RESOURCES if full else STATUS_PROCESSING_FAILURE
        except Exception as exc:  # never raise: pynetdicom would answer 0xC211 and keep its temp file
            log.error("event=store_error sop=%s from=%s error=%s", sop_hint, calling, type(exc).__name__)
            return STATUS_PROCESSING_FAILURE
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
        return STATUS_SUCCESS

    return handle_store


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
    # node.connection), and no idle timeout shorter than a slow PACS' pause between instances.
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
) -> Any:
    """Start the SCP; returns the running server when ``block`` is False (tests, embedding).

    ``on_stored(study_uid, outcome)`` runs after each committed instance and ``on_released()``
    after each association ends: the scheduler uses them as hints to look at the studies early.
    ``reuse_port``: share the port with the node's other receiving processes (``receivers``).
    """
    ssl_context = tls.server_context(settings)  # first: unusable certificates stop here (ConfigError)
    spool = Spool(settings.spool_dir, min_free_bytes=settings.min_free_mb * 1024 * 1024)
    index = index or Index(settings.index_path)
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
        (evt.EVT_C_STORE, metrics.counted(make_store_handler(spool, index, settings, on_stored))),
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

    return reactor.start_server(
        ae,
        (settings.host, settings.port),
        block=block,
        evt_handlers=handlers,
        ssl_context=ssl_context,
        reuse_port=reuse_port,
        event_driven=settings.event_driven,
        on_listening=listening,
    )


def _tls_mode(settings: NodeSettings, uses_tls: bool) -> str:
    """``off``, ``on``, ``on+client-cert`` or ``on+client-cert+crl``: the ``listening`` line's ``tls``."""
    if not uses_tls:
        return "off"
    if not settings.tls_verify_client:
        return "on"
    return "on+client-cert+crl" if settings.tls_crl else "on+client-cert"
