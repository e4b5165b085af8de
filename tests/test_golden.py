"""The whole pipeline's outputs equal the golden file (tests/golden.py says what is compared).

Why: a restructuring (issue #22) must change no result. When the analysis changes on purpose,
write the golden file again (``.venv/bin/python -m tests.golden --write``) and say why in the
commit; the diff of tests/golden/outputs.json then shows exactly which values moved.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.golden import EXAMPLE_CT, GOLDEN_FILE, HCC_DICOM, differences, run_cases


def test_outputs_equal_the_golden_file(tmp_path: Path) -> None:
    for needed in (EXAMPLE_CT, HCC_DICOM, GOLDEN_FILE):
        if not needed.exists():
            pytest.fail(f"golden comparison needs {needed}")
    found = differences(json.loads(GOLDEN_FILE.read_text()), run_cases(tmp_path))
    assert not found, "outputs differ from tests/golden/outputs.json:\n" + "\n".join(found)


def test_the_comparison_sees_a_moved_value() -> None:
    """A changed area, a new key and a missing key are each reported (the check can fail)."""
    golden = json.loads(GOLDEN_FILE.read_text())["example_ct"]["result.json"]
    changed = json.loads(json.dumps(golden))
    changed["metrics"]["new_key"] = 1
    changed["metrics"]["bmi"] += 0.01
    del changed["metrics"]["flags"]
    found = differences(golden, changed)
    assert any("/metrics/new_key: new" in f for f in found)
    assert any("/metrics/flags: missing now" in f for f in found)
    assert any(f.startswith("/metrics/bmi: ") for f in found)
