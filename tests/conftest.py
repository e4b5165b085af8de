"""Shared fixtures: the real CT data in ../shared/data and series derived from it."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import pytest

from tests.dicom_builder import copy_with_uids, series_from_volume
from workers.load.source import load_series

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_CT = SHARED_DATA / "example_ct" / "example_ct.nii.gz"
EXAMPLE_CT_DICOM = SHARED_DATA / "example_ct_dicom" / "example_ct_dicom"


@lru_cache(maxsize=1)
def validation_script() -> ModuleType:
    """``scripts/validate_tissues.py`` as a module: its loaders and checks are the tests' too."""
    spec = importlib.util.spec_from_file_location(
        "validate_tissues", REPO / "scripts" / "validate_tissues.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fast tier (``pytest -m "not slow"``, README) replaces the default ``-m 'not long'``:
    a ``long`` or ``viewer`` test must therefore be ``slow`` too, or the fast tier would run it."""
    loose = [
        item.nodeid
        for item in items
        if item.get_closest_marker("slow") is None
        and (item.get_closest_marker("long") or item.get_closest_marker("viewer"))
    ]
    if loose:
        raise pytest.UsageError(f"marked long or viewer but not slow: {', '.join(loose)}")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _arrange_for_xdist(items)


def _arrange_for_xdist(items: list[pytest.Item]) -> None:
    """In a parallel run (pytest-xdist with ``--dist loadfile --no-loadscope-reorder``, as
    scripts/test.sh runs it), files are handed to the workers in collection order: modules with
    reliability scenarios (minutes each) come first, then the other ``slow`` modules, so that no
    long file starts last while the other worker idles. Each module's tests keep their order, and
    every worker sorts the same collection the same way (xdist checks that)."""
    rank: dict[str, int] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        mine = 0 if item.get_closest_marker("reliability") else 1 if item.get_closest_marker("slow") else 2
        rank[module] = min(rank.get(module, 2), mine)
    items.sort(key=lambda item: rank[item.nodeid.split("::", 1)[0]])


@pytest.fixture(autouse=True)
def _umask_kept() -> Iterator[None]:
    """Each test leaves the process umask as it found it.

    Why: the CLI sets the service's private umask (077) when a test calls it in-process, and every
    later subprocess inherited it: ``./scripts/run.sh`` then reinstalled bodycomp with files only
    root could read, and a test running a command as another user failed on the import.
    """
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


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
