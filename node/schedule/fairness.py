"""Which waiting analyses go to the broker next: a share per sender, taken in turns.

Why: the broker's queue is first in, first out. A sender that floods the node (a modality
re-sending its archive, a misrouted batch, a tester's 40 junk studies) would put all of its jobs
in the queue ahead of everyone else's, and a patient's study from another sender would wait for
all of them (47 s instead of 8 s in #18). So the node keeps each sender's jobs in its own index
until they are due: at most ``per_sender`` jobs of one calling AE are in the broker or running at
once, and free places are given out in turns, one job per sender per turn, each sender's jobs in
the order they were created. A flood then delays only its own sender; a sender alone still keeps
every worker busy, since its next job is published as soon as one of its jobs finishes.

A plain function of the open jobs, so that the order can be tested without a broker.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar


class Job(Protocol):
    """What the order needs of a job: its sender (``sqlite3.Row`` and dicts qualify)."""

    def __getitem__(self, key: str) -> object: ...


J = TypeVar("J", bound=Job)


def published_per_sender(jobs: Iterable[Job]) -> Counter[str]:
    """How many of these open jobs each calling AE has in the broker or running."""
    return Counter(str(job["calling_ae"]) for job in jobs if job["enqueued"] is not None)


def admission_order(waiting: Sequence[J], published: Mapping[str, int], per_sender: int) -> list[J]:
    """The waiting jobs that may be published now, in the order to publish them.

    ``waiting``: jobs never published, oldest first. ``published``: each sender's jobs already in
    the broker or running (:func:`published_per_sender`). A sender whose share is taken gets
    nothing this round; the others take turns, the sender whose oldest waiting job is oldest first.
    """
    queues: dict[str, list[J]] = defaultdict(list)
    for job in waiting:  # (dicts keep insertion order: senders by their oldest waiting job)
        queues[str(job["calling_ae"])].append(job)
    free = {ae: max(0, per_sender - published.get(ae, 0)) for ae in queues}
    order: list[J] = []
    turn = 0
    while True:
        taken = [jobs[turn] for ae, jobs in queues.items() if turn < min(len(jobs), free[ae])]
        if not taken:
            return order
        order.extend(taken)
        turn += 1
