"""Waits and ports for tests that run on slow machines and in parallel (pytest-xdist).

* :data:`TIMEOUT_SCALE` (``BODYCOMP_TEST_TIMEOUT_SCALE``, default 1): every deadline a test waits
  for something that *should* happen is multiplied by it (:func:`scaled`), so that a slow or busy
  machine gets more time without a code change, e.g. ``BODYCOMP_TEST_TIMEOUT_SCALE=3``. It never
  shortens a test: a wait on an event returns as soon as the event is there.
* :func:`wait_until`: poll a condition until it holds, with a deadline and a message naming what
  did not happen, instead of a fixed ``time.sleep``; :func:`quiet_period`: the wait before checking
  that something did *not* happen (scaled too).
* :func:`free_port`: a free loopback port. Under xdist each worker draws from its own slice of
  20000-32767, below Linux's ephemeral range (32768-60999): a port one worker picked and has not
  bound yet cannot be handed to another worker's ``bind(0)`` or outgoing connection meanwhile.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _scale() -> float:
    raw = os.environ.get("BODYCOMP_TEST_TIMEOUT_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise RuntimeError(f"BODYCOMP_TEST_TIMEOUT_SCALE={raw!r}: a number ≥ 1 expected") from None
    if not value >= 1:
        raise RuntimeError(f"BODYCOMP_TEST_TIMEOUT_SCALE={raw!r}: a number ≥ 1 expected")
    return value


#: Multiplier for the tests' deadlines (never below 1).
TIMEOUT_SCALE = _scale()


def scaled(seconds: float) -> float:
    """``seconds`` times :data:`TIMEOUT_SCALE`: the deadline for something expected to happen."""
    return seconds * TIMEOUT_SCALE


def quiet_period(seconds: float) -> None:
    """Wait ``scaled(seconds)``: the time in which something that must *not* happen (a second
    delivery, a new job) would have happened. No event marks its absence, so this is a plain sleep,
    longer on a machine that asks for more time."""
    time.sleep(scaled(seconds))


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.1,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns a truthy value, which is returned; after ``scaled(timeout)``
    fail naming ``what`` (and ``details()``, e.g. the tail of a log)."""
    limit = scaled(timeout)
    deadline = time.monotonic() + limit
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = details() if details is not None else ""
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


_LOW, _HIGH = 20000, 32768  # below the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range)


def _slice() -> tuple[int, int]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, …
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    size = (_HIGH - _LOW) // max(1, count)
    low = _LOW + (index % max(1, count)) * size
    return low, low + size


_rng = random.Random()  # never the global one: tests seed that
_next: int | None = None


def free_port() -> int:
    """A loopback TCP port nothing listens on now, from this xdist worker's own slice; successive
    calls go round the slice, so a port handed out is not handed out again soon (several ports
    are often picked before any is bound)."""
    global _next
    low, high = _slice()
    if _next is None or not low <= _next < high:
        _next = _rng.randrange(low, high)
    for _ in range(500):
        port = _next
        _next = low + (_next + 1 - low) % (high - low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # the slice is crowded: let the kernel choose
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
