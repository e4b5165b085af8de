"""When is a study complete? After it has been idle for ``stable_seconds``.

DICOM has no "end of study" message. A PACS may send one study over several associations (one per
series, as Orthanc does), several studies over one association, or pause in the middle; so the
signal is an idle timer per study since its last received instance (default 30 s, like Orthanc's
``StableAge`` and the MONAI gateway's ``timeout``). Association release is only a hint: it wakes
the scheduler so that it looks at the timers now instead of at its next tick, never marks a study
complete by itself.

The timer state lives in the index (``last_received``, ``changed``), so after a restart studies
that became stable while the node was down are dispatched at once, and those still receiving
keep waiting.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass

from node.index import Index


@dataclass(frozen=True)
class StableStudy:
    study_uid: str
    calling_ae: str
    input_hash: str


def is_stable(last_received: float, now: float, stable_seconds: float) -> bool:
    """The rule itself: idle for at least ``stable_seconds``."""
    return now - last_received >= stable_seconds


def seconds_until_next(rows: list[sqlite3.Row], now: float, stable_seconds: float) -> float | None:
    """How long until the next changed study becomes stable (None: none is waiting)."""
    waits = [max(0.0, float(r["last_received"]) + stable_seconds - now) for r in rows]
    return min(waits) if waits else None


def claim_stable_studies(index: Index, stable_seconds: float, now: float | None = None) -> list[StableStudy]:
    """Studies idle for ``stable_seconds`` whose content changed since the last decision.

    Each is claimed atomically (state ``stable``): a study that received an instance between the
    query and the claim is left for the next round.
    """
    now = time.time() if now is None else now
    stable = []
    for row in index.changed_studies():
        if not is_stable(float(row["last_received"]), now, stable_seconds):
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
