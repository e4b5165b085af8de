"""Deflated datasets under a ceiling: what a Deflated Explicit VR Little Endian dataset inflates to.

Why: deflate compresses runs of zeros about a thousandfold. A 1 MB C-STORE inflated to 1 GiB inside
the node (pydicom inflates a deflated dataset whole, in memory, even to read its header), and four
stored files of 0.39 MB, each a small CT slice plus a private element of 384 MB of zeros, killed the
node every time it planned their study. Here the dataset is inflated as a stream, in chunks of
:data:`CHUNK`, counting as it goes: beyond the ceiling it stops and says so, before the memory is
spent. :func:`inflate_to_file` writes the inflated dataset to disk (an Explicit VR Little Endian
Part 10 file) for a parser that must not hold it in memory either.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

DEFLATED = str(DeflatedExplicitVRLittleEndian)
#: Bytes inflated per step: what a check holds at once, whatever the dataset's size.
CHUNK = 1 << 20
#: Default ceiling of an inflated dataset (a 512² CT slice is 0.5 MB; deflate is a transfer syntax
#: for small, text-like objects, rare for images, and a large multi-frame CT is not sent deflated).
DEFAULT_MAX_INFLATED_BYTES = 256 << 20


class InflateLimitError(ValueError):
    """A deflated dataset that cannot be inflated here: beyond the ceiling, or not well formed."""


class InflateTooLargeError(InflateLimitError):
    """A deflated dataset inflates beyond the ceiling (out of resources, not a bad dataset)."""


def dataset_offset(head: bytes) -> int:
    """Where the dataset starts in a Part 10 file whose first bytes are ``head``: after the
    preamble, ``DICM`` and the File Meta Information group, whose length its first element gives."""
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise InflateLimitError("no Part 10 file meta information group length")
    (group_length,) = struct.unpack("<I", head[140:144])
    return 144 + int(group_length)


def _inflate(source: BinaryIO, limit: int, sink: BinaryIO | None) -> int:
    """Inflate ``source`` (raw deflate) chunk by chunk into ``sink``; return the inflated size."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = b""
    while True:
        if not pending:
            pending = source.read(CHUNK)
            if not pending:
                break
        try:
            out = inflater.decompress(pending, CHUNK)
        except zlib.error as exc:
            raise InflateLimitError(f"not a deflate stream ({exc})") from exc
        pending = inflater.unconsumed_tail
        total += len(out)
        if total > limit:
            raise InflateTooLargeError(f"the deflated dataset inflates beyond {limit >> 20} MB")
        if sink is not None:
            sink.write(out)
        if inflater.eof:
            break
    return total


def inflated_size(source: BinaryIO, limit: int = DEFAULT_MAX_INFLATED_BYTES) -> int:
    """Inflated size of the raw deflate stream ``source`` (a dataset after its file meta), holding
    at most one chunk; :class:`InflateTooLargeError` beyond ``limit``."""
    return _inflate(source, limit, None)


def file_inflated_size(path: Path, limit: int = DEFAULT_MAX_INFLATED_BYTES) -> int:
    """:func:`inflated_size` of a deflated Part 10 file's dataset."""
    with path.open("rb") as handle:
        handle.seek(dataset_offset(handle.read(1024)))
        return inflated_size(handle, limit)


def inflate_to_file(path: Path, target: Path, limit: int = DEFAULT_MAX_INFLATED_BYTES) -> Path:
    """Write ``path`` (deflated Part 10) to ``target`` as Explicit VR Little Endian, streaming.

    The file meta is kept but for its Transfer Syntax UID (same length padded: the group length
    stays valid), so that pydicom can read the result with ``defer_size`` and never hold it whole.
    """
    with path.open("rb") as handle, target.open("wb") as out:
        head = handle.read(1024)
        offset = dataset_offset(head)
        meta = head[:offset]
        old = DEFLATED.encode()  # 22 bytes: even, no padding
        new = str(ExplicitVRLittleEndian).encode()
        new += b"\x00" * (len(old) - len(new))
        if old not in meta:
            raise InflateLimitError("the file meta does not name the deflated transfer syntax")
        out.write(meta.replace(old, new, 1))
        handle.seek(offset)
        _inflate(handle, limit, out)
    return target
