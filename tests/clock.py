"""A monotonic clock that tests move by hand, for the node's stable timers (node/schedule/stability.py)."""

from __future__ import annotations

from node.schedule.stability import StabilityTimer, StableStudy, claim_stable_studies
from node.store.index import Index


class ManualClock:
    """Stands in for ``time.monotonic``: it moves only when the test says so."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def claim_after_idle(index: Index, stable_seconds: float = 30.0) -> list[StableStudy]:
    """What a scheduler claims when it has seen the changed studies and they stayed idle for
    ``stable_seconds`` (two ticks of a fresh timer, ``stable_seconds`` apart)."""
    clock = ManualClock()
    timer = StabilityTimer(clock)
    assert claim_stable_studies(index, stable_seconds, timer) == [] or stable_seconds == 0
    clock.advance(stable_seconds)
    return claim_stable_studies(index, stable_seconds, timer)
