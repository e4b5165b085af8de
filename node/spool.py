"""Durable storage of received instances.

An instance is acknowledged to the sender only after this module returns: the bytes are written
to a temporary file in the spool, flushed and fsync'd, renamed atomically to their final name, and
the directory entry is fsync'd too. A crash at any point leaves either no file or a complete one,
never a partial instance under a final name.

File names are built only from UIDs that pass :func:`checked_uid`, so a dataset value such as
``../../etc`` can never choose where a file lands.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class SpoolFullError(OSError):
    """The spool cannot take another instance (disk full or below the reserve)."""


class InvalidUIDError(ValueError):
    """A dataset UID that is not a valid DICOM UID and so cannot name a file."""


def checked_uid(value: object, what: str) -> str:
    """Return ``value`` if it is a syntactically valid DICOM UID (≤ 64 chars, digits and dots)."""
    text = str(value or "").strip().rstrip("\0")
    if not text or len(text) > 64 or not UID_PATTERN.match(text):
        raise InvalidUIDError(f"{what} {text[:80]!r} is not a valid DICOM UID")
    return text


@dataclass(frozen=True)
class StoredInstance:
    path: Path
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    size: int
    #: SHA-256 of the bytes from ``hash_from`` on, when :meth:`Spool.store_file` was asked for it.
    digest: str = ""


class Spool:
    """``root/studies/<study>/<series>/<sop>.dcm``, written durably; ``root/tmp`` for partial writes."""

    def __init__(self, root: Path, min_free_bytes: int = 512 * 1024 * 1024) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self.studies = root / "studies"
        self.min_free_bytes = min_free_bytes
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.studies.mkdir(parents=True, exist_ok=True)
        self._studies_resolved = self.studies.resolve()

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        parts = [
            checked_uid(study_uid, "StudyInstanceUID"),
            checked_uid(series_uid, "SeriesInstanceUID"),
            checked_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm",
        ]
        path = self.studies.joinpath(*parts)
        # Belt and braces: the checked UIDs cannot contain separators, but never trust one check.
        if self._studies_resolved not in path.resolve().parents:
            raise InvalidUIDError("instance path escapes the spool")
        return path

    def store(self, data: bytes, study_uid: str, series_uid: str, sop_instance_uid: str) -> StoredInstance:
        """Write one encoded instance (with its File Meta Information) durably; return where."""
        return self._store(
            lambda handle: handle.write(data), len(data), study_uid, series_uid, sop_instance_uid
        )

    def store_file(
        self,
        source: Path,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        hash_from: int | None = None,
    ) -> StoredInstance:
        """Like :meth:`store` for an instance already in a file (pynetdicom's chunked receive),
        copied in blocks so that a large instance never sits in memory.

        With ``hash_from`` (the offset of the dataset after its File Meta Information) the
        returned ``digest`` is the SHA-256 of the bytes from there on, computed during the copy:
        the same value as :func:`node.index.digest_file` on the stored file, without reading it
        again.
        """
        sha = hashlib.sha256() if hash_from is not None else None
        start = hash_from or 0

        def copy(handle: Any) -> None:
            position = 0
            with source.open("rb") as src:
                while block := src.read(1024 * 1024):
                    handle.write(block)
                    if sha is not None and position + len(block) > start:
                        sha.update(memoryview(block)[max(0, start - position) :])
                    position += len(block)

        stored = self._store(copy, source.stat().st_size, study_uid, series_uid, sop_instance_uid)
        if sha is None:
            return stored
        return dataclasses.replace(stored, digest=sha.hexdigest())

    def adopt_file(
        self,
        source: Path,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        hash_from: int = 0,
    ) -> StoredInstance:
        """Like :meth:`store_file`, but *move* ``source`` into the spool when it is on the same
        file system (else copy it): the file is flushed to disk, renamed to its final name and the
        directory entry flushed, so each instance is written once instead of twice.

        Why: pynetdicom's chunked receive has already written the dataset to a temporary file;
        copying it again doubled the disk writes and cost ~0.5 ms per CT slice on the receive
        path (docs/benchmarks.md). ``source`` is gone afterwards when it was moved; the caller's
        clean-up of it must tolerate that (pynetdicom's does). The digest (SHA-256 from
        ``hash_from``) is read from the page cache.
        """
        target = self.path_for(study_uid, series_uid, sop_instance_uid)
        try:
            same_device = source.stat().st_dev == self.studies.stat().st_dev
        except OSError:
            same_device = False
        if not same_device:
            return self.store_file(source, study_uid, series_uid, sop_instance_uid, hash_from=hash_from)
        size = source.stat().st_size
        if self.free_bytes() < self.min_free_bytes:
            raise SpoolFullError(errno.ENOSPC, f"spool has less than {self.min_free_bytes} bytes free")
        sha = hashlib.sha256()
        try:
            with source.open("rb") as handle:
                handle.seek(hash_from)
                while block := handle.read(1024 * 1024):
                    sha.update(block)
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            source.replace(target)
            fsync_dir(target.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(exc.errno, str(exc)) from exc
            raise
        return StoredInstance(target, study_uid, series_uid, sop_instance_uid, size, sha.hexdigest())

    def _store(
        self,
        write: Callable[[Any], object],
        size: int,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
    ) -> StoredInstance:
        target = self.path_for(study_uid, series_uid, sop_instance_uid)
        if self.free_bytes() - size < self.min_free_bytes:
            raise SpoolFullError(errno.ENOSPC, f"spool has less than {self.min_free_bytes} bytes free")
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="rx-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            Path(tmp_name).replace(target)
            fsync_dir(target.parent)
        except OSError as exc:
            Path(tmp_name).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(exc.errno, str(exc)) from exc
            raise
        except BaseException:  # whatever stops the write, no partial file stays in tmp/
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredInstance(target, study_uid, series_uid, sop_instance_uid, size)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
