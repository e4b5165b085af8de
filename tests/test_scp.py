"""The storage SCP against DCMTK, the independent DICOM peer (loopback only)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from node.config import NodeSettings
from node.receive.scp import serve
from node.store.index import Index, digest_file
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.timing import free_port

DCMTK_BIN = Path("/usr/bin")  # not the venv's pynetdicom apps of the same names


def dcmtk(tool: str) -> str:
    path = DCMTK_BIN / tool
    if not path.exists():
        found = shutil.which(tool, path="/usr/local/bin:/usr/bin:/bin")
        if not found:
            pytest.fail(f"DCMTK {tool} is required by the test suite: run the README's test command")
        return found
    return str(path)


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[NodeSettings]:
    settings = NodeSettings(port=free_port(), data_dir=tmp_path / "data", min_free_mb=1)
    server = serve(settings, block=False)
    try:
        yield settings
    finally:
        server.shutdown()


def storescu(
    settings: NodeSettings, *files: Path, calling: str = "STORESCU", extra: tuple[str, ...] = ()
) -> str:
    result = subprocess.run(
        [
            dcmtk("storescu"),
            "-v",
            *extra,
            "-aet",
            calling,
            "-aec",
            settings.ae_title,
            settings.host,
            str(settings.port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"TCP_NODELAY": "1"},
    )
    return result.stdout + result.stderr


def spooled(settings: NodeSettings) -> list[Path]:
    return sorted((settings.spool_dir / "studies").rglob("*.dcm"))


def test_echo(node: NodeSettings) -> None:
    result = subprocess.run(
        [dcmtk("echoscu"), "-aec", node.ae_title, node.host, str(node.port)], capture_output=True, timeout=30
    )
    assert result.returncode == 0


@pytest.mark.parametrize("stream_to_disk", [True, False], ids=["chunked-to-disk", "in-memory"])
def test_vendor_jpeg2000_series_is_stored_unchanged(
    tmp_path: Path, example_ct_dicom: Path, stream_to_disk: bool
) -> None:
    """Both receive modes store the bytes as sent and record the same content digests."""
    node = NodeSettings(
        port=free_port(), data_dir=tmp_path / "data", min_free_mb=1, stream_to_disk=stream_to_disk
    )
    server = serve(node, block=False)
    try:
        _check_jpeg2000_series(node, example_ct_dicom)
    finally:
        server.shutdown()


def _check_jpeg2000_series(node: NodeSettings, example_ct_dicom: Path) -> None:
    files = sorted(example_ct_dicom.iterdir())
    output = storescu(node, *files, extra=("-xv",))
    assert "Failed" not in output, output
    stored = spooled(node)
    assert len(stored) == 20
    assert not list((node.spool_dir / "tmp").iterdir()), "no partial files left behind"
    for original in files:
        sent = pydicom.dcmread(original)
        path = (
            node.spool_dir
            / "studies"
            / sent.StudyInstanceUID
            / sent.SeriesInstanceUID
            / f"{sent.SOPInstanceUID}.dcm"
        )
        received = pydicom.dcmread(path)
        assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert received.PixelData == sent.PixelData
    index = Index(node.index_path)
    assert len(index.query("SELECT * FROM instances")) == 20, "each instance is recorded before Success"
    assert {r["calling_ae"] for r in index.query("SELECT calling_ae FROM instances")} == {"STORESCU"}


def test_uid_with_path_characters_is_refused_and_lands_nowhere(node: NodeSettings, tmp_path: Path) -> None:
    g = axial_geometry(n_slices=2)
    paths = write_series(tmp_path / "evil", sample(block_phantom(), g), g, SeriesOptions())
    ds = pydicom.dcmread(paths[0])
    ds.SeriesInstanceUID = "../../../escaped"
    ds.save_as(paths[0], enforce_file_format=True)
    output = storescu(node, paths[0])
    assert "Error: CannotUnderstand" in output, output
    assert spooled(node) == []
    assert not (tmp_path / "escaped").exists() and not (node.spool_dir / "escaped").exists()
    output = storescu(node, paths[1])
    assert len(spooled(node)) == 1, output


def test_unknown_calling_ae_is_rejected(tmp_path: Path, example_ct_dicom: Path) -> None:
    settings = NodeSettings(port=free_port(), data_dir=tmp_path / "data", allow_ae=("PACS",), min_free_mb=1)
    server = serve(settings, block=False)
    try:
        file = sorted(example_ct_dicom.iterdir())[0]
        output = storescu(settings, file, calling="INTRUDER", extra=("-xv",))
        assert "Association Rejected" in output, output
        assert spooled(settings) == []
        storescu(settings, file, calling="PACS", extra=("-xv",))
        assert len(spooled(settings)) == 1
    finally:
        server.shutdown()


def test_spool_below_reserve_answers_out_of_resources(tmp_path: Path, example_ct_dicom: Path) -> None:
    settings = NodeSettings(port=free_port(), data_dir=tmp_path / "data", min_free_mb=10**9)
    server = serve(settings, block=False)
    try:
        output = storescu(settings, sorted(example_ct_dicom.iterdir())[0], extra=("-xv",))
        assert "Refused: OutOfResources" in output, output
        assert spooled(settings) == []
    finally:
        server.shutdown()


def test_both_receive_modes_record_the_same_digest(tmp_path: Path, example_ct_dicom: Path) -> None:
    """The content digest (what decides "same instance re-sent") must not depend on the mode."""
    file = sorted(example_ct_dicom.iterdir())[0]
    digests = []
    for stream in (True, False):
        node = NodeSettings(
            port=free_port(), data_dir=tmp_path / f"{stream}", min_free_mb=1, stream_to_disk=stream
        )
        server = serve(node, block=False)
        try:
            assert "Failed" not in storescu(node, file, extra=("-xv",))
        finally:
            server.shutdown()
        [row] = Index(node.index_path).query("SELECT digest, path FROM instances")
        path = Path(row["path"])
        assert row["digest"] == digest_file(path, split_dataset(path)[1])
        digests.append(row["digest"])
    assert digests[0] == digests[1]


def test_each_instance_is_parsed_once_from_the_mapped_received_file(
    node: NodeSettings, example_ct_dicom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One header parse per instance, from the bytes in memory (issue #27): no second read of the
    file, no second parse of its File Meta Information to find the dataset for the digest."""
    parsed: list[str] = []
    original = pydicom.dcmread

    def counting(source: object, *args: object, **kwargs: object) -> object:
        parsed.append(type(source).__name__)
        return original(source, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pydicom, "dcmread", counting)
    files = sorted(example_ct_dicom.iterdir())[:3]
    output = storescu(node, *files, extra=("-xv",))
    assert "Failed" not in output, output
    assert parsed == ["mmap"] * 3
    rows = Index(node.index_path).query("SELECT digest, path FROM instances")
    assert len(rows) == 3
    for row in rows:
        path = Path(row["path"])
        assert row["digest"] == digest_file(path, split_dataset(path)[1])


def test_a_failed_flush_of_the_receive_journal_answers_out_of_resources_and_spools_nothing(
    node: NodeSettings, example_ct_dicom: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal's flush is the one the status waits for (node.receive.journal): when it fails (a full
    disk shows there with delayed allocation) the sender is refused and nothing is spooled."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full)
    output = storescu(node, sorted(example_ct_dicom.iterdir())[0], extra=("-xv",))
    assert "Refused: OutOfResources" in output, output
    assert spooled(node) == []
    assert Index(node.index_path).query("SELECT * FROM instances") == []
