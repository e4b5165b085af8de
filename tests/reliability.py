"""The tally each fault, load, fuzz and security scenario records, for ``docs/reliability.md``.

Why: a hospital's integration team asks for figures, not adjectives. Every scenario test counts what
it sent, what the node acknowledged, stored, analysed and delivered, and what was duplicated or
lost, *measured from the real peers* (storescu's responses, the spool, the destination's folder),
and appends one :class:`Tally` per run to a JSON-lines file. ``scripts/reliability_report.py``
turns that file into the table of ``docs/reliability.md``; nobody types the numbers.

The file is ``$RELIABILITY_LOG`` or ``.cache/reliability/results.jsonl`` in the checkout.
A test records its tally only after its assertions passed or failed: a failing run is recorded too
(``passed`` false), so the report shows it rather than hiding it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LOG = ROOT / ".cache" / "reliability" / "results.jsonl"


#: One pytest run = one session; the report uses each scenario's latest session only. The workers
#: of a parallel run (pytest-xdist) share its run id, so a scenario's runs on different workers
#: stay one session.
SESSION = (
    os.environ.get("RELIABILITY_SESSION")
    or (f"xdist-{os.environ['PYTEST_XDIST_TESTRUNUID']}" if os.environ.get("PYTEST_XDIST_TESTRUNUID") else "")
    or time.strftime("%Y-%m-%dT%H:%M:%S") + f"-{os.getpid()}"
)


def log_path() -> Path:
    return Path(os.environ.get("RELIABILITY_LOG") or DEFAULT_LOG)


@dataclass
class Tally:
    """Counts for one run of one scenario (instances and result objects, not bytes).

    * ``sent``: distinct instances the sender offered (re-sends of one instance count once);
    * ``acknowledged``: distinct instances that got a Success status at least once;
    * ``refused``: distinct instances refused with a failure status (the expected answer for
      hostile input, out-of-resources, unauthorised callers);
    * ``stored``: distinct instances in the spool (and index) at the end;
    * ``analysed``: studies analysed to a final state (done, or failed with a reason when that is
      the expected outcome); ``expected_analysed``: how many should have been;
    * ``delivered``: result objects (SEG, SR, overlay) at the destination;
      ``expected_delivered``: how many should be there;
    * ``duplicates``: extra copies (same SOP Instance UID twice in the spool or at the destination,
      a study analysed twice into different UIDs);
    * ``lost``: acknowledged instances missing from the spool plus expected results never delivered.
    """

    scenario: str
    runs: int = 1
    sent: int = 0
    acknowledged: int = 0
    refused: int = 0
    stored: int = 0
    analysed: int = 0
    expected_analysed: int = 0
    delivered: int = 0
    expected_delivered: int = 0
    duplicates: int = 0
    lost: int = 0
    passed: bool = False
    seconds: float = 0.0
    notes: str = ""
    extra: dict[str, float | int | str] = field(default_factory=dict)
    recorded_at: float = 0.0
    session: str = ""

    def add(self, other: Tally) -> None:
        """Fold another run of the same scenario into this one (runs add up)."""
        for name in (
            "runs",
            "sent",
            "acknowledged",
            "refused",
            "stored",
            "analysed",
            "expected_analysed",
            "delivered",
            "expected_delivered",
            "duplicates",
            "lost",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def record(tally: Tally) -> None:
    """Append ``tally`` to the results file (one JSON object per line)."""
    tally.recorded_at = time.time()
    tally.session = tally.session or SESSION
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(dataclasses.asdict(tally), sort_keys=True) + "\n")


@contextmanager
def recorded(scenario: str, **initial: int | str) -> Iterator[Tally]:
    """Yield a :class:`Tally` to fill in; record it on exit, ``passed`` only when no exception left.

    Usage::

        with recorded("kill -9 node mid-association") as tally:
            tally.sent = ...
            assert tally.lost == 0
    """
    tally = Tally(scenario=scenario, **initial)  # type: ignore[arg-type]
    start = time.monotonic()
    try:
        yield tally
        tally.passed = True
    finally:
        tally.seconds = round(time.monotonic() - start, 1)
        record(tally)
