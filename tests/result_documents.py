"""Complete ``result.json`` documents for tests: what :func:`workers.result.read_result` accepts.

Why from the golden outputs: a hand-written document falls behind when the pipeline adds a key,
and :func:`workers.result.read_result` then refuses it; the golden ``example_ct`` result is the
pipeline's own (its times and paths, left out of the golden file, are filled in here).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

from tests.golden import GOLDEN_FILE


@cache
def _golden() -> dict[str, Any]:
    return dict(json.loads(GOLDEN_FILE.read_text())["example_ct"]["result.json"])


def measured_result() -> dict[str, Any]:
    """A measured result (``status`` ``review``) to change as a test needs: a fresh copy each call."""
    result = copy.deepcopy(_golden())
    result["timings_s"] = {"load": 0.5, "l3": 1.0, "segment": 0.7}
    result["files"] = {}
    return result
