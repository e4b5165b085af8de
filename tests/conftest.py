"""Shared fixtures: the real CT data in ../shared/data and series derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom_builder import copy_with_uids, series_from_volume
from workers.load import load_series

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_CT = SHARED_DATA / "example_ct" / "example_ct.nii.gz"
EXAMPLE_CT_DICOM = SHARED_DATA / "example_ct_dicom" / "example_ct_dicom"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"shared test data missing: {path} (the repository expects ../shared/data beside it)")
    return path


@pytest.fixture(scope="session")
def example_ct_path() -> Path:
    return _require(EXAMPLE_CT)


@pytest.fixture(scope="session")
def example_ct_dicom_raw() -> Path:
    return _require(EXAMPLE_CT_DICOM)


@pytest.fixture(scope="session")
def example_ct_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The vendor JPEG 2000 series with its empty UIDs filled in (a temporary copy)."""
    out = tmp_path_factory.mktemp("example_ct_dicom")
    copy_with_uids(_require(EXAMPLE_CT_DICOM), out)
    return out


@pytest.fixture(scope="session")
def example_ct_derived_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """example_ct.nii.gz written as an axial DICOM series marked DERIVED (for end-to-end tests)."""
    out = tmp_path_factory.mktemp("example_ct_derived")
    series_from_volume(load_series(_require(EXAMPLE_CT)), out)
    return out
