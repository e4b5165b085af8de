"""Spool.store_file's digest, taken while copying, equals a second read of the stored file; and
Spool.adopt_file moves a received file into the spool (copies it across file systems) with the
same content and digest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.store.index import digest_file
from node.store.spool import Spool, SpoolFullError

MB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "offset"),
    [(0, 0), (10, 0), (1000, 132), (MB, 500), (MB + 7, MB), (3 * MB + 5, MB + 3), (2 * MB, 2 * MB)],
)
def test_digest_during_copy_matches_digest_of_stored_file(tmp_path: Path, size: int, offset: int) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(os.urandom(size))
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    stored = spool.store_file(source, "1.2.3", "1.2.3.4", "1.2.3.4.5", hash_from=offset)
    assert stored.path.read_bytes() == source.read_bytes()
    assert stored.digest == digest_file(stored.path, offset)


def test_no_digest_unless_asked(tmp_path: Path) -> None:
    source = tmp_path / "in.dcm"
    source.write_bytes(b"x" * 100)
    stored = Spool(tmp_path / "spool", min_free_bytes=0).store_file(source, "1.2", "1.2.3", "1.2.3.4")
    assert stored.digest == ""


@pytest.mark.parametrize(("size", "offset"), [(0, 0), (1000, 132), (MB + 7, MB), (3 * MB + 5, MB + 3)])
def test_adopt_moves_the_file_on_one_file_system(tmp_path: Path, size: int, offset: int) -> None:
    data = os.urandom(size)
    source = tmp_path / "received.dcm"
    source.write_bytes(data)
    inode = source.stat().st_ino
    stored = Spool(tmp_path / "spool", min_free_bytes=0).adopt_file(source, "1.2", "1.2.3", "1.2.3.4", offset)
    assert not source.exists(), "moved, not copied"
    assert stored.path.stat().st_ino == inode
    assert stored.path.read_bytes() == data
    assert stored.size == size
    assert stored.digest == digest_file(stored.path, offset)
    assert stored.path == tmp_path / "spool" / "studies" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_adopt_copies_across_file_systems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's folder")
    data = os.urandom(MB + 3)
    source = shm / f"bodycomp-test-{os.getpid()}.dcm"
    source.write_bytes(data)
    try:
        stored = Spool(tmp_path / "spool", min_free_bytes=0).adopt_file(
            source, "1.2", "1.2.3", "1.2.3.4", 128
        )
        assert source.exists(), "the source stays where it was: its owner removes it"
        assert stored.path.read_bytes() == data
        assert stored.digest == digest_file(stored.path, 128)
    finally:
        source.unlink(missing_ok=True)


def test_adopt_refuses_below_the_reserve_and_keeps_the_source(tmp_path: Path) -> None:
    source = tmp_path / "received.dcm"
    source.write_bytes(b"x" * 100)
    spool = Spool(tmp_path / "spool", min_free_bytes=1 << 62)
    with pytest.raises(SpoolFullError):
        spool.adopt_file(source, "1.2", "1.2.3", "1.2.3.4")
    assert source.read_bytes() == b"x" * 100
    assert not (tmp_path / "spool" / "studies" / "1.2").exists()


def test_adopt_takes_the_digest_the_caller_computed_from_memory(tmp_path: Path) -> None:
    """The SCP hashes the mapped received file itself: adopt_file must not read it again."""
    source = tmp_path / "received.dcm"
    source.write_bytes(b"x" * 1000)
    stored = Spool(tmp_path / "spool", min_free_bytes=0).adopt_file(
        source, "1.2", "1.2.3", "1.2.3.4", 132, digest="given"
    )
    assert stored.digest == "given", "taken as given, not recomputed"
    assert stored.path.read_bytes() == b"x" * 1000 and stored.size == 1000


def test_place_file_moves_within_and_copies_across_file_systems(tmp_path: Path) -> None:
    """The receive journal's unflushed placement: a rename on the spool's file system, a copy from
    another one (pynetdicom's temporary folder may be on tmpfs), the series folder made either way."""
    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    here = tmp_path / "received.dcm"
    here.write_bytes(b"a" * 1000)
    moved = spool.place_file(here, "1.2", "1.2.3", "1.2.3.4", 1000)
    assert moved.path.read_bytes() == b"a" * 1000 and not here.exists()
    shm = Path("/dev/shm")
    assert shm.stat().st_dev != tmp_path.stat().st_dev, "this test needs /dev/shm on another file system"
    elsewhere = shm / f"bodycomp-test-{os.getpid()}.dcm"
    elsewhere.write_bytes(b"b" * 1000)
    try:
        copied = spool.place_file(elsewhere, "1.2", "1.2.4", "1.2.4.5", 1000)
        assert copied.path.read_bytes() == b"b" * 1000
        assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    finally:
        elsewhere.unlink(missing_ok=True)
