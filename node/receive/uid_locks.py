"""Striped locks on SOP Instance UIDs, held across threads and across the node's processes.

Why: two associations storing one SOP Instance UID at the same moment must not leave the spool
file of one and the index digest of the other. With ``node.receivers`` > 1 those associations
may be served by different processes, so a thread lock is not enough: each stripe is also a
POSIX record lock on one byte of ``<spool>/uid.lock`` (record locks belong to the process, hence
the thread lock first). The stripe is chosen by CRC-32, the same in every process (``hash()`` of
a string is randomised per process).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

DEADLOCK_RETRY_S = 0.001
DEADLOCK_RETRY_MAX_S = 0.05


class UidLocks:
    """``with locks.hold(uid):`` — exclusive for that UID's stripe in every process of the node."""

    def __init__(self, lock_file: Path, stripes: int = 64) -> None:
        self._threads = [threading.Lock() for _ in range(stripes)]
        # Kept open for the process' life: closing any descriptor of the file would drop all of
        # this process' record locks on it.
        self._fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)

    def stripe(self, uid: str) -> int:
        return zlib.crc32(uid.encode()) % len(self._threads)

    @contextmanager
    def hold(self, uid: str) -> Iterator[None]:
        index = self.stripe(uid)
        with self._threads[index]:
            self._lock_stripe(index)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, index)

    def _lock_stripe(self, index: int) -> None:
        """Block until this process holds the stripe's record lock.

        The kernel's deadlock check for record locks reasons per process, not per thread: thread A
        of this process holding stripe 1 while thread B waits for stripe 2, held by another process
        whose thread waits for stripe 1, reads as a cycle and fails with EDEADLK although A will let
        go without needing anything (no code holds two stripes). Such a refusal is retried.
        """
        delay = DEADLOCK_RETRY_S
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, index)
                return
            except OSError as exc:
                if exc.errno != errno.EDEADLK:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, DEADLOCK_RETRY_MAX_S)
