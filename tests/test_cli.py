"""The ``bodycomp`` command as a user runs it, on the shared real data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.operate.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed console script in a child process, as a user would."""
    exe = Path(sys.executable).with_name("bodycomp")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_inspect_vendor_dicom_prints_geometry(example_ct_dicom_raw: Path) -> None:
    result = run("inspect", str(example_ct_dicom_raw.parent))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[chosen]" in out and '"CT Body 3.0"' in out
    assert "shape 20 × 512 × 512" in out
    assert "voxel spacing 2 × 0.9766 × 0.9766 mm" in out
    assert "z range -804.5 .. -766.5 mm" in out
    assert "JPEG 2000 Image Compression (Lossless Only)" in out
    assert "weight 79.0 kg" in out and "height not recorded" in out
    assert "Skipped files: 1 not DICOM" in out


def test_inspect_nifti_json(example_ct_path: Path) -> None:
    result = run("inspect", str(example_ct_path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    geometry = report["volume"]["geometry"]
    assert geometry["shape"] == [112, 122, 101]
    assert geometry["spacing_mm"] == [3.0, 3.0, 3.0]
    assert geometry["orientation"] == "SRA"
    assert geometry["z_range_mm"] == pytest.approx([94.3, 427.3], abs=0.01)
    assert report["hu_range"] == [-1207.0, 3382.0]


def test_inspect_json_lists_every_series_with_a_verdict(example_ct_dicom: Path) -> None:
    result = run("inspect", str(example_ct_dicom), "--json")
    report = json.loads(result.stdout)
    assert [s["status"] for s in report["series"]] == ["chosen"]
    assert report["chosen_series_instance_uid"] == report["series"][0]["series_instance_uid"]


def test_analyze_writes_result_json(example_ct_path: Path, tmp_path: Path) -> None:
    code = main(["analyze", str(example_ct_path), "--out", str(tmp_path / "out")])
    assert code in (0, 3)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["input"]["volume"]["geometry"]["shape"] == [112, 122, 101]
    assert "l3" in result


def test_bad_config_is_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bodycomp.toml"
    config.write_text("[stack]\nmax_gap_mmm = 3\n")
    assert main(["inspect", str(tmp_path), "--config", str(config)]) == 2
    assert "unknown key stack.max_gap_mmm" in capsys.readouterr().err


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("bodycomp ")
