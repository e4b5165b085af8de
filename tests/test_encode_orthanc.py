"""A real PACS (Orthanc) accepts the SEG, SR and overlay into the source study."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.orthanc import running_orthanc
from tests.test_encode import encode_slice
from workers.load.source import load_series

# A real Orthanc: the full suite only (the encoders' own checks in test_encode.py are fast).
pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_orthanc_files_the_three_objects_into_the_source_study(
    example_ct_dicom: Path, tmp_path: Path
) -> None:
    volume = load_series(example_ct_dicom)
    data, outputs = encode_slice(volume, 10)
    paths = outputs.write(tmp_path / "out")
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        files = [*sorted(example_ct_dicom.iterdir()), *paths.values()]
        sent = subprocess.run(
            [
                "/usr/bin/storescu",
                "-v",
                "-R",
                "-xv",
                "-aec",
                orthanc.ae_title,
                "127.0.0.1",
                str(orthanc.dicom_port),
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={"TCP_NODELAY": "1"},
        )
        assert "Failed" not in sent.stdout + sent.stderr, sent.stdout + sent.stderr
        studies = orthanc.series_by_modality()
    assert list(studies) == [data.central.StudyInstanceUID]
    series = studies[data.central.StudyInstanceUID]
    modalities = sorted(s["Modality"] for s in series)
    assert modalities == ["CT", "OT", "SEG", "SR"]
    numbers = {s["Modality"]: s.get("SeriesNumber") for s in series}
    assert numbers["SEG"] == "9001" and numbers["SR"] == "9002" and numbers["OT"] == "9003"
    assert np.all([s.get("SeriesDescription") for s in series])
