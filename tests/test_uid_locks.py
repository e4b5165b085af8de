"""Cross-process UID locks under contention (``node.receive.uid_locks``).

With ``--receivers 2`` and 16 associations a CI run once answered "Out of resources" because
``lockf`` failed with EDEADLK: the kernel's deadlock check for record locks works per process, so
threads of two processes waiting for different stripes look like a cycle. The lock must retry.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from pathlib import Path

from node.receive.uid_locks import UidLocks

THREADS = 8
ROUNDS = 300


def _hammer(lock_file: str, seed: int, errors: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    locks = UidLocks(Path(lock_file), stripes=8)
    failures: list[str] = []

    def work(k: int) -> None:
        rnd = random.Random(seed * 100 + k)
        for _ in range(ROUNDS):
            try:
                with locks.hold(f"1.2.3.{rnd.randrange(64)}"):
                    time.sleep(rnd.random() * 0.0003)
            except OSError as exc:
                failures.append(repr(exc))
                return

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors.put(failures)


def test_two_processes_of_threads_never_see_a_false_deadlock(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    errors: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path / "uid.lock"), s, errors)) for s in (1, 2)]
    for p in procs:
        p.start()
    results = [errors.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(p.exitcode == 0 for p in procs)
    assert results == [[], []], results


def test_a_stripe_is_exclusive_across_processes(tmp_path: Path) -> None:
    lock_file = tmp_path / "uid.lock"
    ctx = multiprocessing.get_context("fork")
    inside = ctx.Event()
    release = ctx.Event()

    def holder() -> None:
        with UidLocks(lock_file).hold("1.2.3.4"):
            inside.set()
            release.wait(30)

    p = ctx.Process(target=holder)
    p.start()
    try:
        assert inside.wait(30)
        locks = UidLocks(lock_file)
        got = threading.Event()

        def taker() -> None:
            with locks.hold("1.2.3.4"):
                got.set()

        t = threading.Thread(target=taker)
        t.start()
        assert not got.wait(0.5)  # held by the other process
        release.set()
        assert got.wait(30)
        t.join(30)
    finally:
        release.set()
        p.join(30)
