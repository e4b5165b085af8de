"""The receive journal: one flush per instance before Success, the rest made durable in batches.

Why: Success to a C-STORE promises that the instance survives a power cut. Made durable where it
finally lives, that took three flushes per instance on the response path: the file's ``fsync``,
its directory's and the index commit's (SQLite ``synchronous=FULL``), ~1.5-3 ms of a ~3 ms
handler on this project's 2-core VM, and the reason a C++ receiver without any flush (Orthanc) was
faster (issue #27, docs/benchmarks.md). Databases answer the same problem with a write-ahead log;
this is one for the spool and the index:

1. The handler appends a *record* to this process' current journal segment: the instance's index
   record (:class:`~node.store.index.InstanceRecord`; its spool path is rebuilt from the UIDs) and the
   instance's bytes as they will be spooled. One ``fdatasync`` of the segment, shared by every
   association of the process that appended meanwhile (group commit), makes it durable. Then the
   file is moved to its spool path and the index row committed, both *without* a flush (the
   receiver's index connection runs ``synchronous=NORMAL``), and Success is sent. An instance
   larger than :data:`INLINE_BYTES` is flushed where it lives first (its bytes are written once)
   and its record holds the index row only.
2. A background :class:`Syncer` makes the spool and the index durable in batches: one ``syncfs``
   of the spool's file system (every file and directory written meanwhile) and one index commit with
   ``synchronous=FULL``, which also flushes the write-ahead log holding the receivers' commits and
   records how far each segment is *synced*. A segment this process no longer appends to, synced
   to its end, is deleted.
3. After a crash, :func:`replay` (``bodycomp serve`` at start, a restarted receiving process for its
   own slot) reads each segment past its synced offset and brings the spool and the index up to
   date: a file missing or different is written again from the journal, an index row missing is
   recorded; what is there already is left alone (a record is idempotent). So every acknowledged
   instance is in the spool and the index exactly once, whatever moment the crash hit.

A record is ``MAGIC | header length (u32) | payload length (u64) | CRC-32 of the header (u32) |
header (JSON) | payload``. A torn record at a segment's end (the crash came before its flush, so
it was never acknowledged) fails its CRC or the payload's digest and ends the replay of that
segment. Linux-specific calls (``syncfs``, ``copy_file_range``) have portable fallbacks.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from node.store.index import Index, InstanceRecord, digest_file
from node.store.spool import Spool, SpoolFullError, fsync_dir

log = logging.getLogger("bodycomp.journal")

MAGIC = b"BCJ1"
_PREFIX = struct.Struct("<4sIQI")  # magic, header length, payload length, header CRC-32
#: A header longer than this is not one the node wrote: the rest of the segment is not trusted.
MAX_HEADER_BYTES = 1 << 20
#: A new segment is started once the current one holds this many bytes; the old one is deleted as
#: soon as it is synced. Small enough that the journal never holds much beside the spool, large
#: enough that starting segments (one directory flush each) costs nothing next to the instances.
SEGMENT_BYTES = 64 << 20
#: Instances up to this size travel in the journal (bytes). A larger one is made durable where it
#: lives (its file flushed, renamed, its directory flushed) and the journal takes only its index
#: record: its bytes would be written to disk twice, and measured on this project's VM (virtio,
#: ext4) the second write of a 525 KB uncompressed CT slice cost more than the two flushes it saves;
#: a 73 KB JPEG 2000 slice, the common case of a PACS, gains (docs/benchmarks.md section 1).
INLINE_BYTES = 256 << 10
#: The syncer waits this long for more records after the first before flushing a batch (seconds):
#: a batch of a few ms of instances costs one ``syncfs`` instead of one per instance.
BATCH_WAIT_S = 0.05


@dataclass(frozen=True)
class Ticket:
    """Where one record went: its segment, where it starts and the offset just past it."""

    segment: Segment
    start: int
    end: int


class Segment:
    """One journal file, appended to by one process.

    ``durable``: flushed up to there (``fdatasync``). ``complete_to``: every record before it has
    its file in the spool and its row in the index (the syncer may make those durable and call the
    segment synced up to there). Records complete out of order when associations run concurrently,
    so the records still incomplete are tracked by their start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.end = 0
        self.durable = 0
        self.synced = 0
        self.closed_for_appends = False
        self.incomplete: set[int] = set()
        self._flush_lock = threading.Lock()

    @property
    def complete_to(self) -> int:
        return min(self.incomplete) if self.incomplete else self.end

    def flush_to(self, end: int, current_end: Callable[[], int]) -> None:
        """Make the segment durable at least up to ``end`` (group commit: one ``fdatasync`` covers
        every record appended before it started, so concurrent associations share it)."""
        if self.durable >= end:
            return
        with self._flush_lock:
            if self.durable >= end:
                return
            target = current_end()
            os.fdatasync(self.fd)
            self.durable = target

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _header(record: InstanceRecord, hash_from: int, in_place: bool) -> bytes:
    fields: dict[str, object] = dataclasses.asdict(record)
    del fields["path"]  # rebuilt from the UIDs by the spool on replay: never trusted from a file
    fields["hash_from"] = hash_from
    fields["in_place"] = in_place
    return json.dumps(fields, separators=(",", ":")).encode()


class ReceiveJournal:
    """The journal of one receiving process (``owner``: ``rx<slot>``) and its syncer thread.

    ``sync`` makes the spool and the index durable and records the offsets given (the node passes
    :meth:`Syncer.sync_spool_and_index`); it runs on the syncer thread, never on a handler's.
    """

    def __init__(
        self,
        folder: Path,
        owner: str,
        spool: Spool,
        index: Index,
        segment_bytes: int = SEGMENT_BYTES,
        batch_wait_s: float = BATCH_WAIT_S,
    ) -> None:
        self.folder = folder
        self.owner = owner
        self.spool = spool
        self.index = index
        self.segment_bytes = segment_bytes
        self.batch_wait_s = batch_wait_s
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sequence = itertools.count()
        self._segments: list[Segment] = []
        self._segment = self._new_segment()
        self._work = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._sync_loop, name=f"bodycomp-journal-{owner}", daemon=True)
        self._thread.start()

    def _new_segment(self) -> Segment:
        name = f"{self.owner}-{os.getpid()}-{time.time_ns()}-{next(self._sequence)}.journal"
        segment = Segment(self.folder / name)
        fsync_dir(self.folder)  # the segment's name must survive a crash too
        self._segments.append(segment)
        return segment

    # -- the handler's side ------------------------------------------------------------------------

    def append(self, record: InstanceRecord, payload: Payload | None, hash_from: int) -> Ticket:
        """Append one record, not yet durable (:meth:`flush`); every ticket must end in :meth:`done`.

        ``payload``: the instance's bytes, or None when the instance is durable in the spool already
        (larger than :data:`INLINE_BYTES`): then the record holds its index row only.

        Raises :class:`SpoolFullError` when the disk is full: the segment's end stays where it
        was, so the torn bytes are overwritten by the next record and never replayed.
        """
        header = _header(record, hash_from, in_place=payload is None)
        payload_size = 0 if payload is None else payload.size
        prefix = _PREFIX.pack(MAGIC, len(header), payload_size, zlib.crc32(header))
        with self._lock:
            segment = self._segment
            if segment.end >= self.segment_bytes:
                segment.closed_for_appends = True
                segment = self._segment = self._new_segment()
            start = segment.end
            try:
                _pwrite_all(segment.fd, prefix + header, start)
                if payload is not None:
                    payload.copy_to(segment.fd, start + len(prefix) + len(header))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise SpoolFullError(exc.errno, str(exc)) from exc
                raise
            segment.end = start + len(prefix) + len(header) + payload_size
            segment.incomplete.add(start)
            return Ticket(segment, start, segment.end)

    def flush(self, ticket: Ticket) -> None:
        """Return once the record of ``ticket`` is on disk (one ``fdatasync``, shared)."""
        try:
            ticket.segment.flush_to(ticket.end, lambda: self._end_of(ticket.segment))
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(exc.errno, str(exc)) from exc
            raise

    def done(self, ticket: Ticket) -> None:
        """The record's file is in the spool and its row in the index (or it was refused after
        all): the syncer may count it. Cheap; the syncing happens on the syncer's thread."""
        with self._lock:
            ticket.segment.incomplete.discard(ticket.start)
        self._work.set()

    def _end_of(self, segment: Segment) -> int:
        with self._lock:
            return segment.end

    # -- the syncer's side -------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stopping.is_set():
            self._work.wait()
            if self._stopping.wait(self.batch_wait_s):
                break
            self._work.clear()
            try:
                self.sync()
            except Exception as exc:  # retried with the next batch; replay covers a crash meanwhile
                log.error("event=journal_sync_error error=%s: %s", type(exc).__name__, exc)
                self._stopping.wait(1.0)
                self._work.set()

    def sync(self) -> int:
        """Make the spool and the index durable for every completed record, record that in the
        index, and delete segments synced to their end that take no more records; return how many
        segments were deleted."""
        with self._lock:
            marks = {s.name: s.complete_to for s in self._segments if s.complete_to > s.synced}
        if marks:
            syncfs(self.spool.studies)
            self.index.mark_journal_synced(marks)  # synchronous=FULL: flushes the receivers' commits too
            with self._lock:
                for segment in self._segments:
                    if segment.name in marks:
                        segment.synced = marks[segment.name]
        with self._lock:
            finished = [s for s in self._segments if s.closed_for_appends and s.synced >= s.end]
            self._segments = [s for s in self._segments if s not in finished]
        for segment in finished:
            segment.close()
            segment.path.unlink(missing_ok=True)
            self.index.forget_journal_segments([segment.name])
        return len(finished)

    def close(self) -> None:
        """Stop the syncer after a last sync: a node stopped cleanly leaves no journal behind."""
        with self._lock:
            for segment in self._segments:
                segment.closed_for_appends = True
        self._stopping.set()
        self._work.set()
        self._thread.join(timeout=30)
        try:
            self.sync()
        except Exception as exc:  # replayed at the next start
            log.error("event=journal_sync_error error=%s: %s", type(exc).__name__, exc)


@dataclass(frozen=True)
class Payload:
    """The bytes of one instance as the spool will keep them: a file (pynetdicom's chunked
    receive) or bytes in memory (``stream_to_disk = false``)."""

    size: int
    path: Path | None = None
    data: bytes | None = None

    def copy_to(self, fd: int, offset: int) -> None:
        if self.data is not None:
            _pwrite_all(fd, self.data, offset)
            return
        assert self.path is not None
        with self.path.open("rb") as source:
            _copy_range(source.fileno(), fd, self.size, offset)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _copy_range(source: int, target: int, size: int, offset: int, source_offset: int = 0) -> None:
    """Copy ``size`` bytes of ``source`` from ``source_offset`` to ``target`` at ``offset``: in the
    kernel where it can (``copy_file_range``), else through a 1 MiB buffer."""
    done = 0
    try:
        while done < size:
            copied = os.copy_file_range(source, target, size - done, source_offset + done, offset + done)
            if copied == 0:
                break
            done += copied
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF):
            raise
    while done < size:
        block = os.pread(source, min(1 << 20, size - done), source_offset + done)
        if not block:
            raise OSError(errno.EIO, "the received file ended early")
        _pwrite_all(target, block, offset + done)
        done += len(block)


def _libc_syncfs() -> Callable[[int], int] | None:
    """glibc's ``syncfs`` (Linux; Python's ``os`` lacks it), or None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return cast(Callable[[int], int], function)


_SYNCFS = _libc_syncfs()


def syncfs(path: Path) -> None:
    """Flush every file and directory of the file system holding ``path`` (one call for a batch
    of instances); ``os.sync()`` where ``syncfs`` is missing. Raises :class:`OSError` when the
    kernel reports a write error."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


@dataclass(frozen=True)
class JournalRecord:
    """One record read back from a segment."""

    record: InstanceRecord
    hash_from: int
    payload_offset: int
    payload_size: int
    in_place: bool
    """The instance was made durable in the spool before the record (no payload)."""


def read_records(path: Path, spool: Spool, start: int = 0) -> Iterator[JournalRecord]:
    """The records of one segment from ``start`` on, up to the first torn or foreign one."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        offset = start
        while offset + _PREFIX.size <= size:
            handle.seek(offset)
            magic, header_size, payload_size, crc = _PREFIX.unpack(handle.read(_PREFIX.size))
            if magic != MAGIC or header_size > MAX_HEADER_BYTES:
                return
            header = handle.read(header_size)
            payload_offset = offset + _PREFIX.size + header_size
            if (
                len(header) != header_size
                or zlib.crc32(header) != crc
                or payload_offset + payload_size > size
            ):
                return
            try:
                fields = json.loads(header)
                hash_from = int(fields.pop("hash_from"))
                in_place = bool(fields.pop("in_place"))
                record = InstanceRecord(
                    **fields,
                    path=spool.path_for(fields["study_uid"], fields["series_uid"], fields["sop_uid"]),
                )
            except (ValueError, TypeError, KeyError):
                return
            yield JournalRecord(record, hash_from, payload_offset, payload_size, in_place)
            offset = payload_offset + payload_size


def _payload_digest(segment: Path, entry: JournalRecord) -> str:
    sha = hashlib.sha256()
    with segment.open("rb") as handle:
        handle.seek(entry.payload_offset + entry.hash_from)
        left = entry.payload_size - entry.hash_from
        while left > 0 and (block := handle.read(min(1 << 20, left))):
            sha.update(block)
            left -= len(block)
    return sha.hexdigest()


@dataclass
class ReplayReport:
    """What :func:`replay` did, for the start-up log line."""

    segments: int = 0
    records: int = 0
    rewritten: int = 0
    recorded: int = 0
    torn: int = 0
    absent: int = 0

    def log(self, where: str) -> None:
        """One WARNING line when there was anything to replay (``where``: who replayed)."""
        if self.segments:
            log.warning(
                "event=journal_replayed %s segments=%d records=%d rewritten=%d recorded=%d torn=%d absent=%d",
                where,
                self.segments,
                self.records,
                self.rewritten,
                self.recorded,
                self.torn,
                self.absent,
            )


def replay(folder: Path, spool: Spool, index: Index, owner: str | None = None) -> ReplayReport:
    """Bring the spool and the index up to date from the journal segments in ``folder`` (those of
    ``owner`` only, when given), then delete them. Run before the receiver that owns them starts.

    For each record past the segment's synced offset: the spool file is written again from the
    journal unless it is there with the record's content (a record of an instance made durable
    in the spool before it, larger than :data:`INLINE_BYTES`, has no bytes: its file must be
    there, else it is skipped as ``absent``), and the instance is recorded in the
    index unless it is there already (:meth:`Index.record_instance` with ``replay``: a duplicate
    changes nothing). A record whose payload does not match its digest is torn (never
    acknowledged) and ends that segment. ``index`` must commit with ``synchronous=FULL``.
    """
    report = ReplayReport()
    if not folder.is_dir():
        return report
    synced = index.journal_synced()
    prefix = f"{owner}-" if owner else ""
    segments = sorted(
        (p for p in folder.glob(f"{prefix}*.journal") if p.is_file()), key=lambda p: _started(p.name)
    )
    for segment in segments:
        report.segments += 1
        for entry in read_records(segment, spool, synced.get(segment.name, 0)):
            if not entry.in_place and _payload_digest(segment, entry) != entry.record.digest:
                report.torn += 1
                break
            report.records += 1
            if _replay_one(segment, entry, spool, index, report):
                report.recorded += 1
    if segments:
        syncfs(spool.studies)  # the files written above, before the segments go
        for segment in segments:
            segment.unlink(missing_ok=True)
        index.forget_journal_segments([s.name for s in segments])
    return report


def _started(name: str) -> tuple[int, str]:
    """A segment's start time (``owner-pid-ns-seq.journal``), to replay segments in order."""
    parts = name.split("-")
    try:
        return int(parts[-2]), name
    except (IndexError, ValueError):
        return 0, name


def _replay_one(
    segment: Path, entry: JournalRecord, spool: Spool, index: Index, report: ReplayReport
) -> bool:
    record = entry.record
    target = record.path
    present = (
        target.is_file()
        and target.stat().st_size == record.size
        and digest_file(target, entry.hash_from) == record.digest
    )
    if not present and entry.in_place:
        # flushed in the spool before its record was written: gone since (a retention purge or
        # a quarantine after the analysis), or replaced by a later record; never brought back
        report.absent += 1
        return False
    if not present:
        known = index.instance_location(record.sop_uid)
        if known is not None and known != (record.study_uid, record.series_uid):
            return False  # a UID of another series: the handler refused it (nothing acknowledged)

        def copy(handle: BinaryIO) -> None:
            with segment.open("rb") as source:
                _copy_range(source.fileno(), handle.fileno(), entry.payload_size, 0, entry.payload_offset)

        spool.write_durably(copy, entry.payload_size, record.study_uid, record.series_uid, record.sop_uid)
        report.rewritten += 1
    outcome = index.record_instance(record, replay=True)
    if outcome == "conflict":
        return False
    return outcome != "duplicate"
