"""Is a received dataset a storable instance? Cheap checks on its header, before it is spooled.

Why at receive time: a corrupt instance acknowledged with Success is deleted by the sender, and
the damage shows only later, as a failed analysis nobody can repair. Refused at once, the sender
keeps its copy and its operator sees the failure status. The checks read only the header (the
pixel data's *length*, never its bytes), so they cost microseconds per instance:

* the dataset's SOP Class UID and SOP Instance UID equal the request's Affected SOP Class and
  Instance UIDs (otherwise the sender would believe an instance stored that the node filed under
  another identity);
* Study, Series and SOP Instance UID are valid UIDs (they name the spool's folders and files),
  and they and the pixel module's numbers carry their dictionary VR (``UI``, ``US``): a UID
  written as a number, or Rows as text, is a corrupt encoder, not a value to guess from;
* the dataset is complete: the last element's value ends inside the received data (pydicom
  silently accepts a dataset cut short), and an image storage SOP class carries Rows, Columns
  and Pixel Data;
* an image's pixel module is coherent: Rows and Columns ≥ 1, Bits Allocated one of 1/8/16/32/64,
  1 ≤ Bits Stored ≤ Bits Allocated, Samples per Pixel 1, 3 or 4, Number of Frames ≥ 1, one frame
  at most :data:`MAX_FRAME_BYTES` decoded; and for native (uncompressed) transfer syntaxes the
  Pixel Data is exactly Rows × Columns × Samples × Frames × Bits / 8 bytes (even-padded), while
  encapsulated (compressed) ones carry it with undefined length, as PS3.5 A.4 requires.

A failed check yields a :class:`Refusal`: the status the C-STORE answers and a reason for the
log line, which names attributes and sizes, never values (a hostile value may be a patient name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydicom.tag import Tag
from pydicom.uid import UID

from node.store.spool import InvalidUIDError, checked_uid

#: Error: Data Set does not match SOP Class (the dataset contradicts its request or its IOD).
STATUS_DOES_NOT_MATCH = 0xA900
#: Error: Cannot understand (a value the node cannot use, such as a UID that is not one).
STATUS_CANNOT_UNDERSTAND = 0xC000

#: Transfer syntaxes whose Pixel Data is native (its length follows from the pixel module).
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    }
)
#: One decoded frame larger than this (e.g. Rows = Columns = 65535 at 64 bits) would exhaust a
#: worker's memory when analysed; no modality produces one (a 16k × 16k RGB frame is 768 MiB).
MAX_FRAME_BYTES = 1024**3
UNDEFINED_LENGTH = 0xFFFFFFFF
PIXEL_TAGS = (Tag(0x7FE0, 0x0010), Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))
DEFLATED = "1.2.840.10008.1.2.1.99"
#: Attributes the node reads to file an instance or check its pixels, with their only valid VR.
KEY_VRS = {
    "SOPClassUID": "UI",
    "SOPInstanceUID": "UI",
    "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI",
    "Rows": "US",
    "Columns": "US",
    "BitsAllocated": "US",
    "BitsStored": "US",
    "SamplesPerPixel": "US",
}


@dataclass(frozen=True)
class Refusal:
    """Why an instance is not stored: the C-STORE status and a reason free of patient data."""

    status: int
    reason: str


def _uid_text(value: object) -> str:
    return str(value or "").strip().rstrip("\0").strip()


def _int(ds: Any, keyword: str, default: int | None = None) -> int | None:
    """An integer attribute, ``default`` when absent; ValueError when present but not a number."""
    if keyword not in ds:
        return default
    value = ds[keyword].value
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple):
        raise ValueError(f"{keyword} has several values")
    return int(value)


def _pixel_length(ds: Any) -> tuple[Any, int, int] | None:
    """(tag, length, bits per sample forced by the element or 0) of the pixel data, or None."""
    for tag in PIXEL_TAGS:
        if tag not in ds:
            continue
        elem = ds.get_item(tag, keep_deferred=True)
        length = getattr(elem, "length", None)
        if getattr(elem, "is_undefined_length", False):
            length = UNDEFINED_LENGTH
        if length is None:
            value = elem.value
            length = len(value) if value is not None else 0
        forced = {0x0008: 32, 0x0009: 64}.get(tag.element, 0)
        return tag, int(length), forced
    return None


def _truncated(ds: Any, size: int) -> bool:
    """Does the last element's value run past the end of the data (``size`` bytes)?"""
    if not len(ds):
        return False
    elem = ds.get_item(max(ds.keys()), keep_deferred=True)
    tell, length = getattr(elem, "value_tell", None), getattr(elem, "length", None)
    if tell is None or length is None or length == UNDEFINED_LENGTH:
        return False
    return int(tell) + int(length) > size


def check_instance(
    ds: Any,
    request_sop_class: str,
    request_sop_instance: str,
    transfer_syntax: str,
    file_size: int | None = None,
) -> Refusal | None:
    """Return why ``ds`` (as read by pydicom, header at least) cannot be stored, or None.

    ``file_size``: size of the data ``ds`` was read from (the temporary file, or the received
    bytes in memory mode), to detect a dataset cut short (None: not checked).
    """
    # First, while the last element is still raw (it knows where its value starts in the data).
    if file_size is not None and str(transfer_syntax) != DEFLATED and _truncated(ds, file_size):
        return Refusal(STATUS_CANNOT_UNDERSTAND, "the dataset ends in the middle of an element")
    for keyword, vr in KEY_VRS.items():
        if keyword in ds and vr != ds[keyword].VR:
            return Refusal(STATUS_CANNOT_UNDERSTAND, f"{keyword} has VR {ds[keyword].VR}, not {vr}")
    sop_class = _uid_text(ds.get("SOPClassUID"))
    if not sop_class:
        return Refusal(STATUS_DOES_NOT_MATCH, "no SOP Class UID in the dataset")
    if sop_class != _uid_text(request_sop_class):
        return Refusal(STATUS_DOES_NOT_MATCH, "SOP Class UID differs from the request's")
    try:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            checked_uid(ds.get(keyword), keyword)
    except InvalidUIDError as exc:
        return Refusal(STATUS_CANNOT_UNDERSTAND, _uid_reason(exc))
    if _uid_text(ds.SOPInstanceUID) != _uid_text(request_sop_instance):
        return Refusal(STATUS_DOES_NOT_MATCH, "SOP Instance UID differs from the request's")
    if "Image Storage" in UID(sop_class).name and _pixel_length(ds) is None:
        return Refusal(STATUS_DOES_NOT_MATCH, "an image storage instance without pixel data")
    return _check_pixels(ds, transfer_syntax)


def _uid_reason(exc: InvalidUIDError) -> str:
    """The attribute's name only: the offending value may be anything, a patient's name too."""
    return f"{str(exc).split(' ', 1)[0]} is not a valid DICOM UID"


def _check_pixels(ds: Any, transfer_syntax: str) -> Refusal | None:
    pixel = _pixel_length(ds)
    if pixel is None:
        return None
    tag, length, forced_bits = pixel

    def refuse(reason: str) -> Refusal:
        return Refusal(STATUS_DOES_NOT_MATCH, reason)

    try:
        rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
        bits = _int(ds, "BitsAllocated", forced_bits or None)
        stored = _int(ds, "BitsStored", bits)
        samples = _int(ds, "SamplesPerPixel", 1)
        frames = _int(ds, "NumberOfFrames", 1)
    except (TypeError, ValueError, OverflowError):
        return refuse("a pixel module attribute is not a single number")
    if rows is None or columns is None or bits is None:
        return refuse("pixel data without Rows, Columns or Bits Allocated")
    if not (1 <= rows <= 0xFFFF and 1 <= columns <= 0xFFFF):
        return refuse(f"Rows × Columns {rows} × {columns} out of range")
    if bits not in (1, 8, 16, 32, 64) or (forced_bits and bits != forced_bits):
        return refuse(f"Bits Allocated {bits} is not valid")
    if stored is None or not 1 <= stored <= bits:
        return refuse(f"Bits Stored {stored} not within 1..{bits}")
    if samples not in (1, 3, 4):
        return refuse(f"Samples per Pixel {samples} is not 1, 3 or 4")
    if frames is None or frames < 1:
        return refuse(f"Number of Frames {frames} is not ≥ 1")
    frame_bits = rows * columns * samples * bits
    if frame_bits // 8 > MAX_FRAME_BYTES:
        return refuse(f"one frame would decode to {frame_bits // 8} bytes (at most {MAX_FRAME_BYTES})")
    if str(transfer_syntax) in NATIVE_TRANSFER_SYNTAXES:
        expected = (frame_bits * frames + 7) // 8
        if length == UNDEFINED_LENGTH:
            return refuse("native pixel data with undefined length")
        if length not in (expected, expected + expected % 2):
            return refuse(f"pixel data has {length} bytes, the pixel module needs {expected}")
    elif tag == PIXEL_TAGS[0] and length != UNDEFINED_LENGTH:
        return refuse("compressed transfer syntax but pixel data not encapsulated")
    return None
