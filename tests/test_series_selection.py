"""Choosing the series to analyse from a whole study, with the reasons reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from workers.errors import NoSeriesError
from workers.load.selection import SelectionPolicy, classify_kernel
from workers.load.source import load_series

PHANTOM = block_phantom()


def write(path: Path, n_slices: int = 10, slice_spacing: float = 3.0, **options: object) -> str:
    g = axial_geometry(n_slices=n_slices, slice_spacing=slice_spacing)
    opts = SeriesOptions(**options)  # type: ignore[arg-type]
    write_series(path, sample(PHANTOM, g), g, opts)
    return opts.series_uid


@pytest.fixture()
def study(tmp_path: Path) -> dict[str, str]:
    """A routed study: scout, sharp-kernel, thin soft, thick soft, derived axial and an MR series."""
    return {
        "scout": write(
            tmp_path / "s1", n_slices=3, series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
        ),
        "bone": write(tmp_path / "s2", series_number=2, kernel="B70f", description="bone"),
        "soft": write(tmp_path / "s3", series_number=3, kernel="B30f", description="soft 3 mm"),
        "soft_thin": write(tmp_path / "s4", n_slices=60, slice_spacing=0.5, series_number=4, kernel="B30f"),
        "derived": write(tmp_path / "s5", series_number=5, image_type=("DERIVED", "SECONDARY", "AXIAL")),
        "mr": write(tmp_path / "s6", series_number=6, modality="MR"),
    }


def test_soft_tissue_original_series_in_the_spacing_band_is_chosen(
    study: dict[str, str], tmp_path: Path
) -> None:
    volume = load_series(tmp_path)
    assert volume.series is not None
    assert volume.series.series_instance_uid == study["soft"]
    verdicts = {c.series_instance_uid: c for c in volume.candidates}
    assert verdicts[study["scout"]].status == "rejected"
    assert "LOCALIZER" in verdicts[study["scout"]].rejections[0]
    assert verdicts[study["mr"]].status == "rejected"
    assert "kernel" in verdicts[study["bone"]].notes[-1]
    assert "ORIGINAL" in verdicts[study["derived"]].notes[-1]
    assert "spacing" in verdicts[study["soft_thin"]].notes[-1]
    assert "chosen: best of 4 eligible series" in volume.series.notes[-1]


def test_explicit_series_overrides_preferences(study: dict[str, str], tmp_path: Path) -> None:
    volume = load_series(tmp_path, SelectionPolicy(series_instance_uid=study["bone"]))
    assert volume.series is not None and volume.series.series_instance_uid == study["bone"]


def test_explicit_series_still_obeys_the_hard_rules(study: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(NoSeriesError):
        load_series(tmp_path, SelectionPolicy(series_instance_uid=study["scout"]))


def test_derived_series_is_a_fallback_only(tmp_path: Path) -> None:
    uid = write(tmp_path, image_type=("DERIVED", "SECONDARY", "AXIAL"))
    volume = load_series(tmp_path)
    assert volume.series is not None and volume.series.series_instance_uid == uid
    with pytest.raises(NoSeriesError, match="DERIVED"):
        load_series(tmp_path, SelectionPolicy(allow_derived=False))


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [
        ("B30f", 1),
        ("Br38f", 1),
        ("I31f", 1),
        ("B70f", -1),
        ("Br64d", -1),
        ("STANDARD", 1),
        ("SOFT", 1),
        ("BONE", -1),
        ("LUNG", -1),
        ("FC03", 1),
        ("FC52", -1),
        ("B", 1),
        ("YC", -1),
        ("", 0),
        ("XYZ", 0),
    ],
)
def test_kernel_classification(kernel: str, expected: int) -> None:
    assert classify_kernel(kernel) == expected
