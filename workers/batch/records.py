"""What a study's folder under ``DIR/studies/<key>/`` holds when its analysis ended, as types.

* ``result.json`` — the pipeline's result with a ``batch`` section (:class:`BatchSection`): the
  study key and the fingerprint of the input and options it was made from. It is written last,
  atomically (temporary file, fsync, rename): if it exists, everything beside it is complete, and
  a re-run skips the study when the fingerprint still matches.
* ``failure.json`` — :class:`FailureRecord` instead, when the analysis failed (retried by every
  run).
* ``.partial/`` — the analysis in progress (staged input links and outputs); a run killed
  mid-way leaves it behind and the next run starts that study again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STUDIES = "studies"
"""``DIR/studies/<key>/``: one folder per study."""
RESULT = "result.json"
FAILURE = "failure.json"
PARTIAL = ".partial"


@dataclass(frozen=True)
class BatchSection:
    """The ``batch`` section of a study's ``result.json``."""

    study_key: str
    fingerprint: str
    """Of the input files (paths, sizes, times), the analysis options and bodycomp's version."""
    kind: str
    dicom_outputs: bool
    """Whether ``dicom/`` (SEG, SR, overlay) was written."""
    dicom_note: str | None
    """Why not, when ``--dicom`` asked for them."""
    heights_file_values: tuple[str, ...]
    """Patient values taken from ``--heights`` (``height_m``, ``weight_kg``, ``sex``)."""
    analysed_at: str
    """UTC, ISO 8601."""
    wall_s: float
    """Seconds in the analysing process, staging and writing included."""
    cpu_s: float
    """CPU seconds of the analysing process over the same span, all its threads (what a study
    costs a machine, whatever else runs on it: docs/benchmarks.md)."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["heights_file_values"] = list(self.heights_file_values)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchSection:
        return cls(
            study_key=str(data["study_key"]),
            fingerprint=str(data["fingerprint"]),
            kind=str(data["kind"]),
            dicom_outputs=bool(data["dicom_outputs"]),
            dicom_note=data["dicom_note"],
            heights_file_values=tuple(data["heights_file_values"]),
            analysed_at=str(data["analysed_at"]),
            wall_s=float(data["wall_s"]),
            cpu_s=float(data["cpu_s"]),
        )


@dataclass(frozen=True)
class FailureRecord:
    """``failure.json``: why a study's analysis failed."""

    study_key: str
    fingerprint: str
    error: str
    """One line, as bodycomp's errors are written (file names and UIDs, never patient names)."""
    error_type: str
    failed_at: str
    wall_s: float
    traceback: str | None = None
    """Only for unexpected errors (a bug to report), not for refused input."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FailureRecord:
        return cls(
            study_key=str(data["study_key"]),
            fingerprint=str(data["fingerprint"]),
            error=str(data["error"]),
            error_type=str(data["error_type"]),
            failed_at=str(data["failed_at"]),
            wall_s=float(data["wall_s"]),
            traceback=data["traceback"],
        )


def batch_section(result: dict[str, Any]) -> BatchSection | None:
    """The ``batch`` section of a result, or None when it has none (a result not made by batch,
    or one written by an older version): the study is then analysed again."""
    try:
        return BatchSection.from_json(result["batch"])
    except (KeyError, TypeError, ValueError):
        return None
