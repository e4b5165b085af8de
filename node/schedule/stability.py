"""When is a study complete? After it has been idle for ``stable_seconds``.

DICOM has no "end of study" message. A PACS may send one study over several associations (one per
series, as Orthanc does), several studies over one association, or pause in the middle; so the
signal is an idle timer per study since its last received instance (default 30 s, like Orthanc's
``StableAge`` and the MONAI gateway's ``timeout``). Association release is only a hint: it wakes
the scheduler so that it looks at the timers now instead of at its next tick, never marks a study
complete by itself.

The idle time is measured on the monotonic clock, never the wall clock: a clock set back an hour
(NTP, a VM restored) held studies an hour, and one stepped forward during a sender's pause analysed
half a study. The index keeps ``last_received`` (wall time, for the operator) and ``changed``; the
scheduler's :class:`StabilityTimer` notes, on its monotonic clock, when it first saw each study's
current ``last_received``, and a study is stable once that is ``stable_seconds`` ago. After a
restart every waiting study is first seen at start, which costs nothing: the node dispatches
nothing before it has listened for a stable period anyway (a sender cut off by the stop sends
again).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from node.store.index import Index


@dataclass(frozen=True)
class StableStudy:
    study_uid: str
    calling_ae: str
    input_hash: str


class StabilityTimer:
    """How long each study has been idle, on a monotonic clock (see module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[str, tuple[float, float]] = {}  # study -> (last_received, first seen at)

    def idle_seconds(self, rows: list[sqlite3.Row]) -> dict[str, float]:
        """Idle time of each changed study in ``rows``; studies no longer waiting are forgotten."""
        now = self._clock()
        seen = {}
        for row in rows:
            uid, last = str(row["study_uid"]), float(row["last_received"])
            previous = self._seen.get(uid)
            # a new instance changes last_received (whichever way the wall clock went): idle from now
            seen[uid] = previous if previous is not None and previous[0] == last else (last, now)
        self._seen = seen
        return {uid: now - first for uid, (_, first) in seen.items()}


def claim_stable_studies(
    index: Index, stable_seconds: float, timer: StabilityTimer, claim: bool = True
) -> list[StableStudy]:
    """Studies idle for ``stable_seconds`` whose content changed since the last decision.

    Each is claimed atomically (state ``stable``): a study that received an instance between the
    query and the claim is left for the next round. ``claim=False`` only runs the timers (while
    the node may not dispatch yet: its first stable period, a full disk).
    """
    rows = index.changed_studies()
    idle = timer.idle_seconds(rows)
    if not claim:
        return []
    stable = []
    for row in rows:
        if idle[str(row["study_uid"])] < stable_seconds:
            continue
        digest = index.claim_stable_study(row["study_uid"], row["last_received"])
        if digest is not None:
            stable.append(StableStudy(row["study_uid"], row["calling_ae"], digest))
    return stable


class Wakeup:
    """A hint channel: the SCP's association-release handler pokes it, the scheduler waits on it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def poke(self) -> None:
        self._event.set()

    def wait(self, timeout: float) -> bool:
        woke = self._event.wait(timeout)
        self._event.clear()
        return woke
