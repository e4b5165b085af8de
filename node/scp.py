"""The DICOM storage SCP: C-ECHO and C-STORE into the spool.

Modelled on pynetdicom's own ``storescp`` app: one AE, plain event handlers. The C-STORE handler
returns Success (0x0000) only after :meth:`node.spool.Spool.store` has made the instance durable;
an unusable dataset gets "Cannot understand" (0xC000 range) and a full disk "Out of resources"
(0xA700), so the sender keeps its copy and retries. Logs carry UIDs, never patient names or IDs.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.spool import InvalidUIDError, Spool, SpoolFullError

log = logging.getLogger("bodycomp.scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110

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


@dataclass(frozen=True)
class ScpSettings:
    ae_title: str = "BODYCOMP"
    host: str = "127.0.0.1"
    port: int = 11112
    spool_dir: Path = Path("var/spool")
    min_free_mb: int = 512
    calling_ae_whitelist: tuple[str, ...] = field(default_factory=tuple)
    """Empty: any calling AE may store. Otherwise only these AE titles."""
    require_called_ae: bool = True


def _set_nodelay(event: Any) -> None:
    """Disable Nagle: pynetdicom never does, and each DIMSE message then waits ~40 ms."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError) as exc:  # a socket already closed by the peer
        log.debug("TCP_NODELAY not set: %s", exc)


def handle_echo(event: Any) -> int:
    log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return STATUS_SUCCESS


def make_store_handler(spool: Spool) -> Any:
    def handle_store(event: Any) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
            if ds.get("SOPClassUID") and ds.SOPClassUID != event.request.AffectedSOPClassUID:
                log.warning("refused instance %s from %s: SOP class does not match the request", sop, calling)
                return 0xA900
            stored = spool.store(event.encoded_dataset(include_meta=True), str(study), str(series), str(sop))
        except SpoolFullError as exc:
            log.error("refused an instance from %s: spool full (%s)", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        except InvalidUIDError as exc:
            log.warning("refused an instance from %s: %s", calling, exc)
            return STATUS_CANNOT_UNDERSTAND
        except (AttributeError, KeyError, ValueError, TypeError) as exc:
            log.warning("refused an undecodable instance from %s: %s", calling, type(exc).__name__)
            return STATUS_CANNOT_UNDERSTAND
        except OSError as exc:
            log.error("could not store an instance from %s: %s", calling, exc)
            return STATUS_OUT_OF_RESOURCES
        log.info(
            "stored %s (series %s, %d bytes) from %s", stored.sop_instance_uid, series, stored.size, calling
        )
        return STATUS_SUCCESS

    return handle_store


def build_ae(settings: ScpSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.require_called_aet = settings.require_called_ae
    if settings.calling_ae_whitelist:
        ae.require_calling_aet = list(settings.calling_ae_whitelist)
    return ae


def serve(settings: ScpSettings, block: bool = True) -> Any:
    """Start the SCP; returns the running server when ``block`` is False (tests, embedding)."""
    spool = Spool(settings.spool_dir, min_free_bytes=settings.min_free_mb * 1024 * 1024)
    ae = build_ae(settings)
    handlers: list[Any] = [
        (evt.EVT_CONN_OPEN, _set_nodelay),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, make_store_handler(spool)),
    ]
    log.warning(
        "bodycomp listening as %s on %s:%d, spool %s",
        settings.ae_title,
        settings.host,
        settings.port,
        spool.root,
    )
    return ae.start_server((settings.host, settings.port), block=block, evt_handlers=handlers)
