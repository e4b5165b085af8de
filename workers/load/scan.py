"""Find DICOM files under a path and read their headers (never their pixel data).

The first pass over a folder reads only headers (``stop_before_pixels``): series selection needs
nothing else, and keeping headers without pixels is what lets a 1,000-slice study load with a
single copy of its pixels in memory. Files that are not DICOM are counted, not fatal: PACS exports
carry DICOMDIRs, NIfTI side-cars, README files and thumbnails.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from workers.load.deflate import (
    DEFAULT_MAX_INFLATED_BYTES,
    DEFLATED,
    InflateLimitError,
    InflateTooLargeError,
    dataset_offset,
    inflate_to_file,
)

log = logging.getLogger(__name__)

#: Values above this are not read into a header (a deflated file's private blobs).
HEADER_DEFER_BYTES = 1 << 20

#: Media Storage Directory (DICOMDIR): an index of files, never an image.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"


@dataclass(frozen=True)
class DicomFile:
    """One DICOM file found on disk with its header (pixel data not loaded)."""

    path: Path
    header: Dataset

    @property
    def transfer_syntax(self) -> str:
        meta = getattr(self.header, "file_meta", None)
        return str(getattr(meta, "TransferSyntaxUID", "") or "")

    def _uid(self, keyword: str, meta_keyword: str) -> str:
        """A UID from the dataset, or from the file meta information when the dataset's is empty
        (some exports blank the dataset UIDs but keep the meta ones)."""
        value = self.header.get(keyword) or ""
        if not value:
            meta = getattr(self.header, "file_meta", None)
            value = getattr(meta, meta_keyword, "") or ""
        return str(value)

    @property
    def sop_class_uid(self) -> str:
        return self._uid("SOPClassUID", "MediaStorageSOPClassUID")

    @property
    def sop_instance_uid(self) -> str:
        return self._uid("SOPInstanceUID", "MediaStorageSOPInstanceUID")


@dataclass
class ScanResult:
    """DICOM files found under a path, and what was skipped and why."""

    files: list[DicomFile] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def iter_candidate_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` (recursive, any name), in a stable order."""
    if root.is_file():
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                yield path


def read_header(path: Path, max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES) -> Dataset | None:
    """Read a file's DICOM header, or return None when the file is not DICOM.

    Files without the 128-byte preamble are accepted only if pydicom can still parse a
    plausible dataset from them (``force=True`` with a sanity check), because some PACS
    exports write bare datasets. A deflated dataset that inflates beyond ``max_inflated_bytes``
    raises :class:`InflateTooLargeError` (it is stopped there, never held).
    """
    try:
        if _is_deflated(path):
            return _deflated_header(path, max_inflated_bytes)
        return pydicom.dcmread(path, stop_before_pixels=True)
    except InflateTooLargeError:
        raise
    except InvalidDicomError:
        pass
    except Exception as exc:  # truncated or garbled: pydicom raises many types here
        log.debug("cannot parse %s as DICOM: %s", path.name, exc)
        return None
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return None
    finally:
        pydicom_log.setLevel(level)
    # A forced read of a random file yields garbage tags; require the basics of an image.
    if "SOPClassUID" in ds and "Rows" in ds and "Columns" in ds:
        return ds
    return None


def _is_deflated(path: Path) -> bool:
    """Whether ``path`` is a Part 10 file in Deflated Explicit VR Little Endian."""
    try:
        with path.open("rb") as handle:
            head = handle.read(1024)
        return DEFLATED.encode() in head[: dataset_offset(head)]
    except (OSError, InflateLimitError):
        return False


def _deflated_header(path: Path, limit: int) -> Dataset:
    """The header of a deflated file without holding the inflated dataset (pydicom inflates a
    deflated file whole in memory): inflated to a temporary file under ``limit`` (one pass: beyond
    it :class:`InflateTooLargeError`), read with large values deferred."""
    with tempfile.TemporaryDirectory(prefix="bodycomp-inflate-") as tmp:
        plain = inflate_to_file(path, Path(tmp) / "dataset.dcm", limit)
        header = pydicom.dcmread(plain, stop_before_pixels=True, defer_size=HEADER_DEFER_BYTES)
        # deferred values are dropped unread (reading one would load it; its file is about to go)
        raw: MutableMapping[Any, Any] = header._dict
        for tag in [
            t for t, e in raw.items() if isinstance(e, RawDataElement) and e.value is None and e.length
        ]:
            del raw[tag]
        header.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        return header


def scan_dicom(root: Path, max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES) -> ScanResult:
    """Read the headers of all DICOM files under ``root`` (deflated datasets that inflate beyond
    ``max_inflated_bytes`` are skipped, never inflated)."""
    result = ScanResult()
    for path in iter_candidate_files(root):
        with warnings.catch_warnings():
            # pydicom warns about every oddity of non-DICOM files; what matters is the verdict.
            warnings.simplefilter("ignore")
            try:
                header = read_header(path, max_inflated_bytes)
            except InflateTooLargeError:
                log.warning(
                    "event=file_skipped reason=deflated dataset beyond %d MB", max_inflated_bytes >> 20
                )
                result.skip("deflated dataset beyond the size limit")
                continue
        if header is None:
            result.skip("not DICOM")
            continue
        dicom_file = DicomFile(path=path, header=header)
        if not dicom_file.sop_class_uid:
            result.skip("not DICOM")
            continue
        if dicom_file.sop_class_uid == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in header:
            result.skip("DICOMDIR")
            continue
        result.files.append(dicom_file)
    return result
