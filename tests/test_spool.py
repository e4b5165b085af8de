"""Spool.store_file's digest, taken while copying, equals a second read of the stored file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.index import digest_file
from node.spool import Spool

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
