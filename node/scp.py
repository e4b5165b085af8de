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

import logging
import socket
import sqlite3
from collections.abc import Callable
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import metrics
from node.config import NodeSettings
from node.index import Index, InstanceRecord, digest_bytes
from node.spool import InvalidUIDError, Spool, SpoolFullError

log = logging.getLogger("bodycomp.scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORISED = 0x0124
STATUS_SOP_CLASS_MISMATCH = 0xA900

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


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value if value is not None else "").strip()


def make_store_handler(
    spool: Spool, index: Index, settings: NodeSettings, on_stored: Callable[[str, str], None] | None = None
) -> Any:
    def handle_store(event: Any) -> int:
        calling = event.assoc.requestor.ae_title
        if not host_allowed(settings, calling, event.assoc.requestor.address):
            log.warning("refused an instance: %s connected from an unexpected host", calling)
            return STATUS_NOT_AUTHORISED
        try:
            chunked = getattr(event.request, "_dataset_path", None) is not None
            # Chunked: the dataset is in a temporary file; read its header only, never the pixels.
            ds = pydicom.dcmread(event.dataset_path, stop_before_pixels=True) if chunked else event.dataset
            study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            if ds.get("SOPClassUID") and ds.SOPClassUID != event.request.AffectedSOPClassUID:
                log.warning("refused instance %s from %s: SOP class does not match the request", sop, calling)
                return STATUS_SOP_CLASS_MISMATCH
            if chunked:
                # The digest is taken while copying (the dataset after the File Meta Information).
                source = event.dataset_path
                stored = spool.store_file(
                    source, str(study), str(series), str(sop), hash_from=split_dataset(source)[1]
                )
                digest = stored.digest
            else:
                stored = spool.store(
                    event.encoded_dataset(include_meta=True), str(study), str(series), str(sop)
                )
                digest = digest_bytes(event.encoded_dataset(include_meta=False))
            record = InstanceRecord(
                study_uid=stored.study_uid,
                series_uid=stored.series_uid,
                sop_uid=stored.sop_instance_uid,
                sop_class_uid=str(event.request.AffectedSOPClassUID),
                path=stored.path,
                size=stored.size,
                digest=digest,
                calling_ae=calling,
                modality=_text(ds, "Modality"),
                series_number=_text(ds, "SeriesNumber"),
                description=_text(ds, "SeriesDescription"),
                patient_id=_text(ds, "PatientID"),
                study_date=_text(ds, "StudyDate"),
            )
            outcome = index.record_instance(record)
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
            log.error("could not record an instance from %s in the index: %s", calling, exc)
            full = "full" in str(exc).lower()
            return STATUS_OUT_OF_RESOURCES if full else STATUS_PROCESSING_FAILURE
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
    # Large CT studies: no limit on PDU size from our side, and no idle timeout shorter than a
    # slow PACS' pause between instances.
    ae.maximum_pdu_size = 0
    ae.network_timeout = 120
    ae.dimse_timeout = 120
    ae.acse_timeout = 30
    return ae


def serve(
    settings: NodeSettings,
    block: bool = True,
    index: Index | None = None,
    on_stored: Callable[[str, str], None] | None = None,
    on_released: Callable[[], None] | None = None,
) -> Any:
    """Start the SCP; returns the running server when ``block`` is False (tests, embedding).

    ``on_stored(study_uid, outcome)`` runs after each committed instance and ``on_released()``
    after each association ends: the scheduler uses them as hints to look at the studies early.
    """
    spool = Spool(settings.spool_dir, min_free_bytes=settings.min_free_mb * 1024 * 1024)
    index = index or Index(settings.index_path)
    # Process-wide in pynetdicom; the handler copes with either mode.
    _config.STORE_RECV_CHUNKED_DATASET = settings.stream_to_disk
    ae = build_ae(settings)

    def released(event: Any) -> None:
        log.info("event=association_end from=%s", event.assoc.requestor.ae_title)
        if on_released is not None:
            on_released()

    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, _set_nodelay),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, metrics.counted(make_store_handler(spool, index, settings, on_stored))),
        (evt.EVT_RELEASED, released),
        (evt.EVT_ABORTED, released),
    ]
    log.warning(
        "event=listening ae=%s address=%s:%d data_dir=%s",
        settings.ae_title,
        settings.host,
        settings.port,
        settings.data_dir,
    )
    return ae.start_server((settings.host, settings.port), block=block, evt_handlers=handlers)
