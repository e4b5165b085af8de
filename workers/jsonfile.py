"""JSON files the node, its workers and ``bodycomp batch`` share: written atomically, read leniently.

Why one module: job specs, outcomes, results and a cohort's records are read by another process
while they may be being written, and survive a power cut only if flushed before their final name;
two copies of that procedure (the Celery task's and the cohort runner's) had drifted apart (a
fixed temporary name in one, none of the file mode in the other).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Mapping[str, object]) -> None:
    """``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part
    (also after a power cut: the data is on disk before the rename). The file is private to the
    service user (0600): results hold patient data."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "w") as handle:
            json.dump(data, handle, indent=2, default=str)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
