"""Hypothesis strategies for corrupted and hostile DICOM instances, as the bytes of a Part 10 file.

Why: a node on a hospital network receives whatever a buggy modality, a broken router or an
attacker sends. ``tests/test_fuzz_store.py`` sends every instance drawn here over a real
association (pynetdicom with ``STORE_SEND_CHUNKED_DATASET``: the file's dataset bytes go out
undecoded) and checks the node's answer against the instance's :attr:`Hostile.expect`:

* ``accept``: a storable instance (Success, 0x0000);
* ``refuse``: not storable; one of :attr:`Hostile.statuses` (0xA900, 0xC000, 0xC001);
* ``either``: the instance is odd but its answer is a matter of policy (a non-key attribute
  with a wrong VR, a bit flip); only "a clear status, no crash" is required.

Each instance carries the patient sentinels :data:`PATIENT_NAME` and :data:`PATIENT_ID` (also
inside hostile UIDs) so the test can grep the node's log for them. Kinds (:data:`KINDS`):
valid instances in four transfer syntaxes and mixed series in one study (controls), truncated
files, wrong pixel data length, absurd pixel modules, wrong VRs, deeply nested and huge
sequences, invalid UIDs (path characters ``../`` ``/`` ``\\``, NUL, 65+ characters, empty),
missing UIDs, SOP Class/Instance UIDs that contradict the request, garbage in place of the
dataset, garbage after it, native pixels under a compressed transfer syntax, random byte flips.

Generation is deterministic (the test runs hypothesis with ``derandomize=True``); UIDs come
from a counter (:class:`UidSource`), so two draws never share a SOP Instance UID by accident.
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pydicom.config
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from node.store.spool import UID_PATTERN

PATIENT_NAME = "Fuzzsecret^Patientname"
PATIENT_ID = "FUZZSECRETPID"
REFUSED = frozenset({0xA900, 0xC000, 0xC001})
NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian)
ALL_SYNTAXES = (*NATIVE_SYNTAXES, DeflatedExplicitVRLittleEndian, JPEG2000Lossless)
SOP_CLASSES = (CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage)
ROOT = "1.2.826.0.1.3680043.8.498.77"  # pydicom's root + a branch for these tests

#: Hostile UID values; the sentinel makes a leak into the log visible.
HOSTILE_UIDS = (
    "../../../escaped",
    "../escaped",
    "/tmp/escaped",
    "/",
    "..",
    ".",
    "..\\..\\escaped",
    "C:\\escaped",
    "1.2.3\x00../escaped",
    "1.2\x00",
    "1" * 65,
    "1." * 40 + "1",
    "",
    " ",
    "1.02.3",
    "1..2",
    ".1.2",
    "1.2.",
    "1.2.abc",
    "1.2/3",
    "1.2.3\n4",
    PATIENT_ID,
    f"{PATIENT_NAME}/../x",
)


@contextmanager
def lenient_pydicom() -> Iterator[None]:
    """pydicom's default validation (warn, keep the value) whatever the process set before (the
    node, when it runs in this process, turns reading validation off, and then "abc" as IS fails)."""
    settings = pydicom.config.settings
    before = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.WARN
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = before


def uid_is_valid(value: str) -> bool:
    text = value.strip().rstrip("\0")
    return bool(text) and len(text) <= 64 and bool(UID_PATTERN.match(text))


class UidSource:
    """Fresh, valid, deterministic UIDs (``ROOT.<run>.<n>``)."""

    def __init__(self, run: int = 1) -> None:
        self.prefix = f"{ROOT}.{run}"
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self.prefix}.{next(self._counter)}"


@dataclass(frozen=True)
class Pool:
    """The few studies and series valid fuzz instances go to (few studies: few analyses)."""

    studies: tuple[str, ...]
    series: tuple[tuple[str, str], ...]  # (study, series)

    @classmethod
    def make(cls, uids: UidSource, n_studies: int = 2, series_per_study: int = 3) -> Pool:
        studies = tuple(uids() for _ in range(n_studies))
        return cls(studies, tuple((s, uids()) for s in studies for _ in range(series_per_study)))


@dataclass
class Hostile:
    """One instance to send: its file bytes and what the node must answer."""

    kind: str
    data: bytes
    expect: str  # accept | refuse | either
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    study: str = ""
    series: str = ""
    statuses: frozenset[int] = REFUSED
    note: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints failing examples: not the kilobytes of data
        return f"Hostile({self.kind!r}, {self.note!r}, expect={self.expect}, {len(self.data)} bytes)"

    def allowed(self, status: int | None) -> bool:
        """Is ``status`` (None: no answer) the answer this instance must get?"""
        if status is None:
            # A request whose Affected SOP Instance UID is empty once NULs and spaces go is not a
            # valid C-STORE-RQ (the element is required): aborting the association is a clear
            # answer too, and the sender (pynetdicom here) cannot even log its own request.
            return not self.sop_instance.replace("\x00", "").strip()
        if self.expect == "accept":
            return status == 0x0000
        if self.expect == "refuse":
            return status in self.statuses
        return status == 0x0000 or status in REFUSED


# -- building blocks --------------------------------------------------------------------------------


def base_dataset(
    sop_class: str, study: str, series: str, sop: str, rows: int, columns: int, bits: int, frames: int = 1
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20260101"
    ds.Modality = {CTImageStorage: "CT", MRImageStorage: "MR"}.get(sop_class, "OT")
    ds.SeriesDescription = "fuzz"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = "19700101"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = str(frames)
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    return ds


def pixels(rows: int, columns: int, bits: int, frames: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    dtype = np.uint8 if bits == 8 else np.uint16
    return rng.integers(0, 200, size=(frames, rows, columns)).astype(dtype).tobytes()


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """The dataset alone (no File Meta Information) in ``transfer_syntax``."""
    buffer = io.BytesIO()
    ds.file_meta = meta(CTImageStorage, "1.2.3", transfer_syntax)  # discarded: any valid UIDs
    ds.save_as(buffer, enforce_file_format=True)
    whole = buffer.getvalue()
    # Preamble (128) + DICM (4) + (0002,0000) UL element (12, its value the rest of the group).
    return whole[144 + struct.unpack("<L", whole[140:144])[0] :]


def meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    m = FileMetaDataset()
    m.MediaStorageSOPClassUID = sop_class
    m.MediaStorageSOPInstanceUID = sop_instance
    m.TransferSyntaxUID = transfer_syntax
    m.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    m.ImplementationVersionName = "BODYCOMP_FUZZ"
    return m


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and File Meta Information: what the SCU reads to fill the request."""
    buffer = io.BytesIO()
    buffer.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buffer, meta(sop_class, sop_instance, transfer_syntax), enforce_standard=True)  # type: ignore[arg-type]
    return buffer.getvalue()


def element_bytes(tag: int, vr: str, value: bytes, little: bool = True, explicit: bool = True) -> bytes:
    """One element, encoded by hand (to write what pydicom refuses to: wrong VRs, any length)."""
    order = "<" if little else ">"
    group, elem = tag >> 16, tag & 0xFFFF
    head = struct.pack(f"{order}HH", group, elem)
    if not explicit:
        return head + struct.pack(f"{order}L", len(value)) + value
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        return head + vr.encode() + b"\0\0" + struct.pack(f"{order}L", len(value)) + value
    return head + vr.encode() + struct.pack(f"{order}H", len(value)) + value


def nested_sequence(depth: int, explicit: bool = True) -> bytes:
    """(0040,A730) Content Sequence nested ``depth`` deep, all undefined length (little endian)."""
    tag = struct.pack("<HH", 0x0040, 0xA730)
    start = tag + (b"SQ\0\0" if explicit else b"") + b"\xff\xff\xff\xff"
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    inner = element_bytes(0x0040A010, "CS", b"CONTAINS", explicit=explicit)
    return (start + item) * depth + inner + (item_end + seq_end) * depth


def split_before_pixels(encoded: bytes, little: bool = True) -> tuple[bytes, bytes]:
    """Split an encoded dataset at its Pixel Data element (the last element the builders write)."""
    marker = struct.pack("<HH" if little else ">HH", 0x7FE0, 0x0010)
    at = encoded.rfind(marker)
    assert at > 0, "no pixel data"
    return encoded[:at], encoded[at:]


# -- the strategy -------------------------------------------------------------------------------------


@dataclass
class Draw:
    """What one hypothesis draw needs: the draw function, the UID source and the study pool."""

    draw: Callable[[st.SearchStrategy[object]], object]
    uids: UidSource
    pool: Pool

    def int(self, lo: int, hi: int) -> int:
        return int(self.draw(st.integers(lo, hi)))  # type: ignore[call-overload]

    def pick(self, values: tuple[object, ...] | list[object]) -> object:
        return self.draw(st.sampled_from(values))

    def bytes(self, lo: int, hi: int) -> bytes:
        return bytes(self.draw(st.binary(min_size=lo, max_size=hi)))  # type: ignore[arg-type]


def _valid(
    d: Draw, syntaxes: tuple[str, ...] = (*NATIVE_SYNTAXES, DeflatedExplicitVRLittleEndian)
) -> Hostile:
    """A storable instance (the control group) in the pool's studies."""
    study, series = d.pick(d.pool.series)  # type: ignore[misc]
    sop_class = str(d.pick(SOP_CLASSES))
    ts = str(d.pick(syntaxes))
    rows, columns = d.int(1, 24), d.int(1, 24)
    bits = int(d.pick((8, 16)))  # type: ignore[call-overload]
    frames = d.int(1, 3)
    sop = d.uids()
    ds = base_dataset(sop_class, study, series, sop, rows, columns, bits, frames)
    data = pixels(rows, columns, bits, frames, d.int(0, 1000))
    if len(data) % 2:
        data += b"\0"
    ds.PixelData = data
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    if d.int(0, 3) == 0:  # a private block and a long text, storable as they are
        block = ds.private_block(0x0011, "BODYCOMP FUZZ", create=True)
        block.add_new(0x01, "LT", "x" * d.int(0, 5000))
    encoded = encode_dataset(ds, ts)
    return Hostile(
        "valid", part10_header(sop_class, sop, ts) + encoded, "accept", sop_class, sop, ts, study, series
    )


def _from_valid(d: Draw, kind: str, syntaxes: tuple[str, ...] = NATIVE_SYNTAXES) -> tuple[Hostile, bytes]:
    h = _valid(d, syntaxes)
    header = part10_header(h.sop_class, h.sop_instance, h.transfer_syntax)
    h.kind = kind
    return h, h.data[len(header) :]


def _mixed_series(d: Draw) -> Hostile:
    h = _valid(d)
    h.kind = "mixed series in one study"
    return h


def _truncated(d: Draw) -> Hostile:
    h, body = _from_valid(d, "truncated")
    cut = d.int(0, len(body) - 1)
    h.data = h.data[: len(h.data) - len(body) + cut]
    h.expect, h.note = "refuse", f"{cut} of {len(body)} bytes"
    return h


def _pixel_length(d: Draw) -> Hostile:
    h, body = _from_valid(d, "wrong pixel data length")
    little = h.transfer_syntax != ExplicitVRBigEndian
    explicit = h.transfer_syntax != ImplicitVRLittleEndian
    head, pixel = split_before_pixels(body, little)
    length = len(pixel) - (12 if explicit else 8)
    delta = 2 * d.int(1, max(1, length // 2 + 8)) * int(d.pick((1, -1)))  # type: ignore[call-overload]
    new_length = max(0, length + delta)
    if new_length == length:
        new_length += 2
    data = (pixel[-length:] * (new_length // max(1, length) + 1))[:new_length]
    h.data = (
        h.data[: len(h.data) - len(body)] + head + element_bytes(0x7FE00010, "OW", data, little, explicit)
    )
    h.expect, h.statuses, h.note = "refuse", frozenset({0xA900}), f"{new_length} instead of {length}"
    return h


ABSURD = {
    "Rows": (0, 65535, 32768),
    "Columns": (0, 65535, 40000),
    "BitsAllocated": (0, 7, 12, 24, 48, 65535),
    "BitsStored": (0, 17, 65),
    "SamplesPerPixel": (0, 2, 5, 65535),
    "NumberOfFrames": ("0", "-3", "abc", "1e9", "99999999"),
}


def _absurd_pixel_module(d: Draw) -> Hostile:
    h, _ = _from_valid(d, "absurd pixel module")
    import pydicom

    keyword = str(d.pick(list(ABSURD)))
    value = d.pick(ABSURD[keyword])
    with lenient_pydicom():
        ds = pydicom.dcmread(io.BytesIO(h.data))
        setattr(ds, keyword, "7" if isinstance(value, str) else value)
        encoded = encode_dataset(ds, h.transfer_syntax)
    if isinstance(value, str):  # pydicom never writes "abc" as IS: put the bytes in by hand
        little = h.transfer_syntax != ExplicitVRBigEndian
        explicit = h.transfer_syntax != ImplicitVRLittleEndian
        old = element_bytes(0x00280008, "IS", b"7 ", little, explicit)
        raw = value.encode() + b" " * (len(value) % 2)
        assert encoded.count(old) == 1
        encoded = encoded.replace(old, element_bytes(0x00280008, "IS", raw, little, explicit))
    h.data = part10_header(h.sop_class, h.sop_instance, h.transfer_syntax) + encoded
    h.expect, h.statuses, h.note = "refuse", frozenset({0xA900}), f"{keyword}={value!r}"
    return h


def _wrong_vr(d: Draw) -> Hostile:
    h, body = _from_valid(d, "wrong VR", (ExplicitVRLittleEndian,))
    head, pixel = split_before_pixels(body)
    key = bool(d.int(0, 1))
    if key:
        tag, name, vr, value = d.pick(
            (
                (0x0020000D, "StudyInstanceUID", "US", b"\x05\x00"),
                (0x0020000D, "StudyInstanceUID", "LO", h.study.encode() + b"\0" * (len(h.study) % 2)),
                (0x0020000E, "SeriesInstanceUID", "FD", struct.pack("<d", 1.5)),
                (0x00280010, "Rows", "UI", b"16"),
                (0x00280011, "Columns", "LO", b"16"),
                (0x00280100, "BitsAllocated", "FD", struct.pack("<d", 16.0)),
                (0x00280010, "Rows", "SQ", b"\xfe\xff\x00\xe0\x04\x00\x00\x00abcd"),
            )
        )  # type: ignore[misc]
    else:
        tag, name, vr, value = d.pick(
            (
                (0x00100010, "PatientName", "US", b"\x01\x00"),
                (0x0008103E, "SeriesDescription", "SQ", d.bytes(0, 64)),
                (0x00080020, "StudyDate", "FL", b"\0\0\0\0"),
                (0x00200013, "InstanceNumber", "OB", d.bytes(0, 16)),
                (0x00080060, "Modality", "UN", b"CT"),
            )
        )  # type: ignore[misc]
    target = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    at = head.find(target)
    if at < 0:
        h.expect = "either"
        return h
    vr_here = head[at + 4 : at + 6].decode("latin-1")
    long_form = vr_here in ("OB", "OW", "OF", "SQ", "UN", "UT", "UC", "UR")
    old_len = (
        struct.unpack("<L", head[at + 8 : at + 12])[0]
        if long_form
        else struct.unpack("<H", head[at + 6 : at + 8])[0]
    )
    end = at + (12 if long_form else 8) + old_len
    value = value + b"\0" * (len(value) % 2)
    head = head[:at] + element_bytes(tag, str(vr), bytes(value)) + head[end:]
    h.data = part10_header(h.sop_class, h.sop_instance, h.transfer_syntax) + head + pixel
    h.expect = "refuse" if key else "either"
    h.note = f"{name} as {vr}"
    return h


def _nested(d: Draw) -> Hostile:
    h, body = _from_valid(d, "deeply nested sequence", (ExplicitVRLittleEndian, ImplicitVRLittleEndian))
    explicit = h.transfer_syntax == ExplicitVRLittleEndian
    head, pixel = split_before_pixels(body)
    depth = int(d.pick((1, 2, 10, 30, 100, 300, 1000, 3000, 20000)))  # type: ignore[call-overload]
    h.data = (
        part10_header(h.sop_class, h.sop_instance, h.transfer_syntax)
        + head
        + nested_sequence(depth, explicit)
        + pixel
    )
    h.expect = "accept" if depth <= 30 else "either"
    h.note = f"depth {depth}"
    return h


def _huge_sequence(d: Draw) -> Hostile:
    h, body = _from_valid(d, "huge sequence", (ExplicitVRLittleEndian,))
    head, pixel = split_before_pixels(body)
    items = int(d.pick((10, 1000, 5000, 20000)))  # type: ignore[call-overload]
    uid = b"1.2.840.10008.5.1.4.1.1.2\0"
    item_body = element_bytes(0x00081150, "UI", uid) + element_bytes(
        0x00081155, "UI", h.sop_instance.encode() + b"\0" * (len(h.sop_instance) % 2)
    )
    item = struct.pack("<HHL", 0xFFFE, 0xE000, len(item_body)) + item_body
    seq = item * items
    sequence = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\0\0" + struct.pack("<L", len(seq)) + seq
    # (0008,1140) sorts before (0008,...) elements written later: insert it in tag order.
    at = head.find(struct.pack("<HH", 0x0010, 0x0010))
    h.data = (
        part10_header(h.sop_class, h.sop_instance, h.transfer_syntax)
        + head[:at]
        + sequence
        + head[at:]
        + pixel
    )
    h.expect, h.note = "accept", f"{items} items"
    return h


def _invalid_uid(d: Draw) -> Hostile:
    h, _ = _from_valid(d, "invalid UID", (ExplicitVRLittleEndian,))
    import pydicom

    keyword = str(d.pick(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")))
    if d.int(0, 3) == 0:
        value = str(d.draw(st.text(alphabet="0123456789./\\\x00a ", min_size=0, max_size=70)))
    else:
        value = str(d.pick(HOSTILE_UIDS))
    ds = pydicom.dcmread(io.BytesIO(h.data))
    setattr(ds, keyword, value)
    ds[keyword].VR = "UI"
    sop_in_request = h.sop_instance
    if keyword == "SOPInstanceUID" and len(value.encode()) <= 64 and not set(value) & set("\n\\"):
        sop_in_request = value  # the request carries the hostile UID too (pynetdicom sends up to 64)
    try:
        encoded = encode_dataset(ds, h.transfer_syntax)
        header = part10_header(h.sop_class, sop_in_request, h.transfer_syntax)
    except Exception:  # pydicom refuses to write it: keep the request's UID valid
        sop_in_request = h.sop_instance
        ds.file_meta = meta(h.sop_class, h.sop_instance, h.transfer_syntax)
        encoded = encode_dataset(ds, h.transfer_syntax)
        header = part10_header(h.sop_class, sop_in_request, h.transfer_syntax)
    h.sop_instance = sop_in_request
    h.data = header + encoded
    valid = uid_is_valid(value)
    # A valid random "UID" for a study or series is just another study: storable.
    h.expect = "accept" if valid and keyword != "SOPInstanceUID" else "refuse"
    if valid and keyword == "SOPInstanceUID":
        h.expect = "either"  # a valid UID that may or may not match the request's
    if keyword == "StudyInstanceUID":
        h.study = value
    h.note = f"{keyword}={value!r}"
    return h


def _missing_uid(d: Draw) -> Hostile:
    h, _ = _from_valid(d, "missing UID")
    import pydicom

    keyword = str(d.pick(("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")))
    ds = pydicom.dcmread(io.BytesIO(h.data))
    del ds[keyword]
    h.data = part10_header(h.sop_class, h.sop_instance, h.transfer_syntax) + encode_dataset(
        ds, h.transfer_syntax
    )
    h.expect, h.note = "refuse", keyword
    return h


def _mismatch(d: Draw) -> Hostile:
    h, body = _from_valid(d, "dataset contradicts request")
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(h.data))
    if d.int(0, 1):
        other = MRImageStorage if h.sop_class != MRImageStorage else CTImageStorage
        h.data = part10_header(other, h.sop_instance, h.transfer_syntax) + body
        h.sop_class, h.note = other, "SOP Class UID"
    else:
        ds.SOPInstanceUID = d.uids()
        h.data = part10_header(h.sop_class, h.sop_instance, h.transfer_syntax) + encode_dataset(
            ds, h.transfer_syntax
        )
        h.note = "SOP Instance UID"
    h.expect, h.statuses = "refuse", frozenset({0xA900})
    return h


def _garbage(d: Draw) -> Hostile:
    sop_class, sop = str(d.pick(SOP_CLASSES)), d.uids()
    ts = str(d.pick(NATIVE_SYNTAXES))
    data = d.bytes(0, 4096)
    if d.int(0, 1):
        data = b"\0" * 128 + b"DICM" + data  # a second preamble where the dataset should start
    return Hostile("garbage dataset", part10_header(sop_class, sop, ts) + data, "refuse", sop_class, sop, ts)


def _trailing_garbage(d: Draw) -> Hostile:
    h, _ = _from_valid(d, "garbage after the dataset")
    h.data += d.bytes(1, 512)
    h.expect = "either"
    return h


def _native_in_compressed(d: Draw) -> Hostile:
    h, body = _from_valid(d, "native pixels, compressed transfer syntax", (ExplicitVRLittleEndian,))
    h.transfer_syntax = JPEG2000Lossless
    h.data = part10_header(h.sop_class, h.sop_instance, JPEG2000Lossless) + body
    h.expect, h.statuses = "refuse", frozenset({0xA900})
    return h


def _bit_flips(d: Draw) -> Hostile:
    h, body = _from_valid(d, "byte flips")
    header_len = len(h.data) - len(body)
    data = bytearray(h.data)
    for _ in range(d.int(1, 8)):
        at = header_len + d.int(0, min(len(body) - 1, 600))
        data[at] = d.int(0, 255)
    h.data = bytes(data)
    h.expect = "either"
    return h


KINDS: dict[str, Callable[[Draw], Hostile]] = {
    "valid": _valid,
    "mixed series in one study": _mixed_series,
    "truncated": _truncated,
    "wrong pixel data length": _pixel_length,
    "absurd pixel module": _absurd_pixel_module,
    "wrong VR": _wrong_vr,
    "deeply nested sequence": _nested,
    "huge sequence": _huge_sequence,
    "invalid UID": _invalid_uid,
    "missing UID": _missing_uid,
    "dataset contradicts request": _mismatch,
    "garbage dataset": _garbage,
    "garbage after the dataset": _trailing_garbage,
    "native pixels, compressed transfer syntax": _native_in_compressed,
    "byte flips": _bit_flips,
}


def hostile_instances(uids: UidSource, pool: Pool) -> st.SearchStrategy[Hostile]:
    """Instances of every kind in :data:`KINDS`, in equal shares."""

    @st.composite
    def build(draw: Callable[[st.SearchStrategy[object]], object]) -> Hostile:
        kind = str(draw(st.sampled_from(list(KINDS))))
        return KINDS[kind](Draw(draw, uids, pool))

    return build()
