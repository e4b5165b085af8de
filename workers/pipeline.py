"""The analysis of one CT, top to bottom: load → find L3 → segment → measure → report.

``analyse(path, options)`` is a plain function (no Celery, no sockets), called by the
``bodycomp analyze`` command and, later, by the Celery task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers import __version__
from workers.load import load_series
from workers.report import describe
from workers.series_selection import SelectionPolicy
from workers.stack import StackPolicy


@dataclass(frozen=True)
class AnalysisOptions:
    selection: SelectionPolicy = field(default_factory=SelectionPolicy)
    stack: StackPolicy = field(default_factory=StackPolicy)


def analyse(path: str | Path, options: AnalysisOptions, out_dir: Path | None = None) -> dict[str, Any]:
    """Analyse the CT at ``path``; write ``result.json`` into ``out_dir`` when given."""
    volume = load_series(path, options.selection, options.stack)
    result: dict[str, Any] = {
        "bodycomp_version": __version__,
        "status": "loaded",
        "input": describe(volume),
        "l3": None,
    }
    if out_dir is not None:
        write_result(result, out_dir)
    return result


def write_result(result: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "result.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(target)
    return target
