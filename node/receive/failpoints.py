"""Fail points: end the process at a named point of the receive path, for the crash tests.

Why: a crash *between* two steps (the journal flushed, the spool file and the index row not yet
written) is the moment a write-ahead design must survive, and a ``kill -9`` sent from outside
hits it only by chance. Like etcd's ``gofail`` or FreeBSD's ``fail(9)``, the node can be told to
kill itself the ``N``-th time it reaches a point: ``BODYCOMP_FAILPOINT=journal-flushed:20``. Unset
(always, outside tests), :func:`reach` is one dictionary look-up; it is never a configuration
setting, and nothing but ``SIGKILL`` (no clean-up, no flush) is done.

Points: ``journal-flushed`` (:mod:`node.receive.scp`, after the journal's flush, before the spool file and
the index row).
"""

from __future__ import annotations

import os
import signal
import threading

_POINT, _, _NTH = os.environ.get("BODYCOMP_FAILPOINT", "").partition(":")
_lock = threading.Lock()
_reached = 0


def reach(point: str) -> None:
    """``SIGKILL`` this process when ``point`` is the armed one, reached for the armed time."""
    global _reached
    if point != _POINT:
        return
    with _lock:
        _reached += 1
        if _reached == int(_NTH or "1"):
            os.kill(os.getpid(), signal.SIGKILL)
