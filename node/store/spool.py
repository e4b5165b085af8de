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
import shutil
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
        self._studies_device = self.studies.stat().st_dev

    def free_bytes(self) -> int:
        stats = os.statvfs(self.root)
        return stats.f_bavail * stats.f_frsize

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        parts = [
            checked_uid(study_uid, "StudyInstanceUID"),
            checked_uid(series_uid, "SeriesInstanceUID"),
            checked_uid(sop_instance_uid, "SOPInstanceUID") + ".dcm",
        ]
        # Belt and braces: the checked UIDs cannot contain separators, but never trust one check.
        # Checked on the names alone (no file system calls: this runs for every instance received).
        path = self.studies.joinpath(*parts)
        if path.parent.parent.parent != self.studies or ".." in path.parts[-3:]:
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
        the same value as :func:`node.store.index.digest_file` on the stored file, without reading it
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
        digest: str | None = None,
    ) -> StoredInstance:
        """Like :meth:`store_file`, but *move* ``source`` into the spool when it is on the same
        file system (else copy it): the file is flushed to disk, renamed to its final name and the
        directory entry flushed, so each instance is written once instead of twice.

        Why: pynetdicom's chunked receive has already written the dataset to a temporary file;
        copying it again doubled the disk writes and cost ~0.5 ms per CT slice on the receive
        path (docs/benchmarks.md). ``source`` is gone afterwards when it was moved; the caller's
        clean-up of it must tolerate that (pynetdicom's does). The digest (SHA-256 from
        ``hash_from``) is read from the page cache, unless the caller, who has the bytes in
        memory already, passes it as ``digest``.
        """
        target = self.path_for(study_uid, series_uid, sop_instance_uid)
        try:
            status = source.stat()
        except OSError:
            status = None
        if status is None or status.st_dev != self._studies_device:
            return self.store_file(source, study_uid, series_uid, sop_instance_uid, hash_from=hash_from)
        if self.free_bytes() < self.min_free_bytes:
            raise SpoolFullError(errno.ENOSPC, f"spool has less than {self.min_free_bytes} bytes free")
        try:
            with source.open("rb") as handle:
                if digest is None:
                    sha = hashlib.sha256()
                    handle.seek(hash_from)
                    while block := handle.read(1024 * 1024):
                        sha.update(block)
                    digest = sha.hexdigest()
                os.fsync(handle.fileno())
            target.parent.mkdir(parents=True, exist_ok=True)
            source.replace(target)
            fsync_dir(target.parent)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(exc.errno, str(exc)) from exc
            raise
        return StoredInstance(target, study_uid, series_uid, sop_instance_uid, status.st_size, digest)

    def place_file(
        self, source: Path, study_uid: str, series_uid: str, sop_instance_uid: str, size: int
    ) -> StoredInstance:
        """Move ``source`` to its spool path (copy it when it is on another file system) *without*
        flushing anything (the caller checked :meth:`check_room`): only for an instance already
        durable in the receive journal
        (:mod:`node.receive.journal`), whose syncer flushes the spool later and whose replay rewrites the
        file after a crash. ``source`` is gone afterwards when it was moved."""
        target = self.path_for(study_uid, series_uid, sop_instance_uid)
        try:
            try:
                source.replace(target)
            except FileNotFoundError:  # the series' first instance (one rename, not a mkdir, else)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._move_or_copy(source, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                self._move_or_copy(source, target)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(exc.errno, str(exc)) from exc
            raise
        return StoredInstance(target, study_uid, series_uid, sop_instance_uid, size)

    def _move_or_copy(self, source: Path, target: Path) -> None:
        """Rename ``source`` to ``target`` (its folder exists), or copy it across file systems."""
        try:
            source.replace(target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            with source.open("rb") as src:
                self._place(lambda handle: shutil.copyfileobj(src, handle, 1 << 20), target)

    def place_bytes(
        self, data: bytes, study_uid: str, series_uid: str, sop_instance_uid: str
    ) -> StoredInstance:
        """:meth:`place_file` for an instance received in memory (``stream_to_disk = false``)."""
        target = self.path_for(study_uid, series_uid, sop_instance_uid)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._place(lambda handle: handle.write(data), target)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(exc.errno, str(exc)) from exc
            raise
        return StoredInstance(target, study_uid, series_uid, sop_instance_uid, len(data))

    def _place(self, write: Callable[[Any], object], target: Path) -> None:
        """Write through a temporary name, renamed over ``target`` (readers never see half a file)."""
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="rx-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
            Path(tmp_name).replace(target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def check_room(self, size: int) -> None:
        """Raise :class:`SpoolFullError` unless ``size`` more bytes leave the reserve free."""
        if self.free_bytes() - size < self.min_free_bytes:
            raise SpoolFullError(errno.ENOSPC, f"spool has less than {self.min_free_bytes} bytes free")

    def write_durably(
        self,
        write: Callable[[Any], object],
        size: int,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
    ) -> StoredInstance:
        """Write an instance with ``write(handle)`` durably (flushed, renamed, directory flushed)."""
        return self._store(write, size, study_uid, series_uid, sop_instance_uid)

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
