"""Process helpers shared by the node and its receiving processes: dying with the parent, the
private folder for pynetdicom's received files, and the receive mode on a nearly full disk.

Why a module of its own: a receiving process needs these and nothing else of the node; taken from
:mod:`node.operate.service`, they made the service and the receivers import each other.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import stat
import tempfile
from pathlib import Path

from pynetdicom import _config as pynetdicom_config

log = logging.getLogger("bodycomp.node")

#: Below this much free space in the temporary directory, incoming datasets are received into
#: memory (see :func:`update_receive_mode`).
RECEIVE_TMP_MIN_FREE_BYTES = 16 * 1024 * 1024


def die_with_parent() -> None:
    """In a child: ask Linux to send SIGTERM when the node dies, so no worker is orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


#: The temporary directory before :func:`use_private_receive_tmp` pointed ``tempfile`` elsewhere.
_system_tmp: str | None = None


def receive_tmp_dir(data_dir: Path, slot: int = 0) -> Path:
    """The folder of this node's own in the temporary directory, for pynetdicom's received files
    (``slot``: which receiving process, 0 the node process itself; see ``node.receivers``)."""
    global _system_tmp
    if _system_tmp is None:
        _system_tmp = tempfile.gettempdir()
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(_system_tmp) / (f"bodycomp-rx-{key}" + (f"-{slot}" if slot else ""))


def use_private_receive_tmp(data_dir: Path, slot: int = 0, adopt: bool = True) -> int:
    """Point this process' temporary files at :func:`receive_tmp_dir`, emptied; return files removed.

    Why: with ``stream_to_disk`` pynetdicom writes each incoming dataset to
    ``NamedTemporaryFile(delete=False)`` in the temporary directory and removes it after the
    C-STORE handler. A node killed mid-association left those files, whole instances with patient
    data, in ``/tmp`` for ever (123 after tests/test_fault_process.py). In a folder of its own the
    next start removes them. The folder stays in the same temporary directory (same file system,
    so ``TMPDIR`` and the receive-mode check keep their meaning); a folder with that name not
    created by this user, or open to others (someone could have prepared it in ``/tmp``), is not
    used: a fresh private one from :func:`tempfile.mkdtemp` is.

    ``adopt=False``: only empty the folder (the node process does that for its receiving
    processes' folders before they start).
    """
    folder = receive_tmp_dir(data_dir, slot)
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
        # lstat: a symbolic link planted under that name is not a directory here.
        safe = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and info.st_mode & 0o077 == 0
    except OSError:
        safe = False
    if not safe:
        log.warning("event=receive_tmp_unsafe path=%s (using a new private folder)", folder)
        if adopt:
            tempfile.tempdir = tempfile.mkdtemp(prefix="bodycomp-rx-", dir=_system_tmp)
        return 0
    removed = 0
    for leftover in folder.iterdir():
        if leftover.is_file() and not leftover.is_symlink():
            leftover.unlink(missing_ok=True)
            removed += 1
    if adopt:
        tempfile.tempdir = str(folder)
    return removed


def update_receive_mode(stream_to_disk: bool) -> None:
    """Receive into memory, not temporary files, while the temporary directory is nearly full.

    Why: with ``stream_to_disk`` pynetdicom writes each incoming dataset to a temporary file
    before the C-STORE handler runs. On a full disk that write fails inside pynetdicom, which
    aborts the association with a traceback in the log, instead of the node answering 0xA700
    (Out of Resources) as it promises. Held in memory, the dataset reaches the handler, whose
    spool write refuses it properly. Checked after each stored instance and every tick (in every
    receiving process: the setting is pynetdicom's, per process).
    """
    if not stream_to_disk:
        return
    try:
        stats = os.statvfs(tempfile.gettempdir())
    except OSError:
        return
    free = stats.f_bavail * stats.f_frsize
    chunked = free >= RECEIVE_TMP_MIN_FREE_BYTES
    if chunked != pynetdicom_config.STORE_RECV_CHUNKED_DATASET:
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = chunked
        log.warning(
            "event=receive_mode mode=%s tmp_free_mb=%.1f",
            "temporary-files" if chunked else "memory (temporary directory nearly full)",
            free / 1048576,
        )
