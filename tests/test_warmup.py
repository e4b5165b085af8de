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


@pytest.mark.slow  # two whole analyses in fresh interpreters: the full suite only
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


def test_preload_imports_each_module_and_touches_each_lazy_attribute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``module`` is imported; ``module:attribute`` also resolves the attribute (a lazy loader's
    ``__getattr__`` runs then, in the worker's main process, not in each analysis)."""
    (tmp_path / "bodycomp_probe_eager.py").write_text("ran = True\n")
    (tmp_path / "bodycomp_probe_lazy.py").write_text(
        "touched = []\n\n"
        "def __getattr__(name):\n"
        "    touched.append(name)\n"
        "    if name == 'heavy':\n"
        "        return 42\n"
        "    raise AttributeError(name)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "bodycomp_probe_eager" not in sys.modules
        seconds = preload(("bodycomp_probe_eager", "bodycomp_probe_lazy:heavy"))
        assert isinstance(seconds, float)
        assert sys.modules["bodycomp_probe_eager"].ran is True
        assert sys.modules["bodycomp_probe_lazy"].touched == ["heavy"]
        with pytest.raises(ModuleNotFoundError, match="bodycomp_no_such_module"):
            preload(("bodycomp_no_such_module",))
        with pytest.raises(AttributeError, match="no_such_function"):
            preload(("bodycomp_probe_lazy:no_such_function",))
        assert sys.modules["bodycomp_probe_lazy"].touched == ["heavy", "no_such_function"]
    finally:
        sys.modules.pop("bodycomp_probe_eager", None)
        sys.modules.pop("bodycomp_probe_lazy", None)


def test_the_worker_preloads_the_analysis_imports_by_default() -> None:
    """The default list is the analysis' own: the pipeline, both engines and the encoders."""
    assert preload.__defaults__ == (ANALYSIS_IMPORTS,)
    for name in ("workers.pipeline", "workers.l3.classical", "workers.tissues.classical", "workers.encode"):
        assert name in ANALYSIS_IMPORTS
