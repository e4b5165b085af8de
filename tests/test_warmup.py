"""The worker's preload (workers/warmup.py) covers every module an analysis imports.

Each analysis runs in a fresh Celery child forked from the worker's main process; a module the
preload misses is imported again for every study (docs/benchmarks.md: ~1.2 s per study before the
preload). The check runs in a fresh interpreter: preload, then a full analysis with DICOM output of
a raw and a JPEG 2000 series, and no module of the analysis' packages may be imported after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.make_series import make_series
from tests.conftest import REPO
from workers.warmup import ANALYSIS_IMPORTS, preload

PROBE = """
import json, sys
from pathlib import Path
from workers.warmup import preload
preload()
from workers.pipeline import AnalysisOptions, analyse
before = set(sys.modules)
result = analyse(sys.argv[1], AnalysisOptions(write_dicom=True), Path(sys.argv[2]))
print(json.dumps({"status": result["status"], "dicom": sorted(result.get("files", {})),
                  "new": sorted(set(sys.modules) - before)}))
"""

WATCHED = ("workers", "skimage", "scipy", "highdicom", "pydicom", "PIL", "pylibjpeg", "openjpeg", "numpy")


@pytest.mark.parametrize("syntax", ["raw", "j2k"])
def test_an_analysis_after_preload_imports_nothing_more(syntax: str, tmp_path: Path) -> None:
    series = make_series(120, tmp_path / "series", syntax=syntax)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(series), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] in ("ok", "review"), report  # measured (QC may ask for a review)
    assert {"dicom_seg", "dicom_sr", "dicom_overlay"} <= set(report["dicom"]), report
    late = [m for m in report["new"] if m.split(".")[0] in WATCHED]
    assert late == [], f"imported during the analysis, add to workers.warmup.ANALYSIS_IMPORTS: {late}"


def test_preload_raises_on_a_missing_module_or_attribute() -> None:
    assert preload(("json",)) >= 0
    with pytest.raises(ModuleNotFoundError):
        preload(("bodycomp_no_such_module",))
    with pytest.raises(AttributeError):
        preload(("json:no_such_function",))
    assert "workers.encode" in ANALYSIS_IMPORTS
