"""A correction of an earlier result, as the worker and the encoders need it (no node, no Celery).

A result is an automatic measurement for review; a reader (or the operator, or a new height from
the hospital's system) may correct it: another slice, edited outlines, other patient values. The
node writes the correction into the job's ``job.json`` (:mod:`node.schedule.corrections`); the worker turns
it into :class:`workers.pipeline.AnalysisOptions` (:mod:`workers.corrections.options`), and the encoders use
:class:`Revision` to give the new result set new UIDs, the SR its Predecessor Documents Sequence and
a statement of what was corrected and from which instance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from workers.result import NOT_FOUND, CorrectionJson, L3Json, PatientValuesJson, ResultDocument

#: What a correction can change, as ``job.json`` and ``result.json`` name it.
LEVEL, OUTLINE, PATIENT = "level", "outline", "patient"
#: Words for each kind in the SR and in ``bodycomp status``.
KIND_TEXT = {LEVEL: "analysed slice", OUTLINE: "tissue outlines", PATIENT: "patient values"}
#: The QC reasons each kind of correction replaces (by the prefix :func:`workers.measure.verdict.assess`
#: gives them); the other reasons of the predecessor still apply and are kept.
REPLACED_REASONS = {
    LEVEL: ("vertebral level:", "L3 localisation confidence", "segmentation:", "measurement:"),
    OUTLINE: ("segmentation:", "measurement:"),
    PATIENT: ("patient input:", "measurement:"),
}


@dataclass(frozen=True)
class CorrectionSpec:
    """A correction job's instructions, as ``job.json`` carries them under ``correction``.

    Exactly what the worker needs and nothing read with defaults: written by
    :func:`node.schedule.corrections.request_correction`, read by :meth:`from_json`.
    """

    kinds: tuple[str, ...]
    """What is corrected: any of :data:`LEVEL`, :data:`OUTLINE`, :data:`PATIENT`."""
    key: str
    """Distinguishes this correction's outputs (their UIDs) from the original's and other corrections'."""
    source: str
    """Who asked, in words: ``bodycomp reanalyze``, ``reader SR``, ``reader SEG``, ``HL7 ADT``..."""
    reason: str = ""
    source_instance_uid: str = ""
    """The SOP Instance UID of the reader's SR or SEG, when the correction came from one."""
    slice_sop_uid: str | None = None
    z_mm: float | None = None
    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    edited_seg: str | None = None
    """The reader's SEG, relative to the job folder."""
    previous_job_dir: str | None = None
    """The job folder (relative to the data directory) of the result this one supersedes."""
    previous_sr_uids: tuple[str, str, str, str] | None = None
    """(Study, Series, SOP Instance, SOP Class UID) of the superseded SR."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CorrectionSpec:
        uids = data.get("previous_sr_uids")
        return cls(
            kinds=tuple(str(k) for k in data["kinds"]),
            key=str(data["key"]),
            source=str(data["source"]),
            reason=str(data.get("reason") or ""),
            source_instance_uid=str(data.get("source_instance_uid") or ""),
            slice_sop_uid=data.get("slice_sop_uid"),
            z_mm=None if data.get("z_mm") is None else float(data["z_mm"]),
            height_m=None if data.get("height_m") is None else float(data["height_m"]),
            weight_kg=None if data.get("weight_kg") is None else float(data["weight_kg"]),
            sex=data.get("sex"),
            edited_seg=data.get("edited_seg"),
            previous_job_dir=data.get("previous_job_dir"),
            previous_sr_uids=None if not uids else (str(uids[0]), str(uids[1]), str(uids[2]), str(uids[3])),
        )

    def describe(self) -> str:
        """One line for the SR, the result and ``status``: what was corrected, by whom, from what."""
        what = " and ".join(KIND_TEXT[k] for k in self.kinds if k in KIND_TEXT) or "result"
        origin = f"{self.source} {self.source_instance_uid}".strip()
        reason = f": {self.reason}" if self.reason else ""
        return f"{what} corrected by {origin}{reason}"


@dataclass(frozen=True)
class Revision:
    """What a corrected result set says about the one it supersedes (for the encoders)."""

    key: str
    """Mixed into the outputs' UIDs (:class:`workers.encode.uids.OutputIdentity`)."""
    description: str
    """What was corrected, by whom, from which instance (:meth:`CorrectionSpec.describe`)."""
    kinds: tuple[str, ...] = ()
    source_instance_uid: str = ""
    predecessor_sr: tuple[str, str, str, str] | None = None
    """(Study, Series, SOP Instance, SOP Class UID) of the SR this one supersedes."""
    kept_qc: tuple[tuple[str, str], ...] = field(default=())
    """(flag, reason) of the predecessor's QC that still apply."""
    previous_l3: L3Json | None = field(default=None, compare=False)
    """The predecessor's ``l3`` (how the level was found), kept when the level is not corrected."""
    patient_values: PatientValuesJson | None = field(default=None, compare=False)
    """Height, weight, sex given by this or an earlier correction, and by whom: a later correction
    (another slice, a reader's outline) keeps them rather than going back to the header's."""

    def to_json(self) -> CorrectionJson:
        return {
            "description": self.description,
            "kinds": list(self.kinds),
            "source_instance_uid": self.source_instance_uid,
            "predecessor_sr": list(self.predecessor_sr) if self.predecessor_sr else None,
            "kept_qc_reasons": [reason for _, reason in self.kept_qc],
            "patient_values": self.patient_values,
        }


def kept_qc(previous_result: ResultDocument | None, kinds: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The predecessor's QC (flag, reason) pairs a correction of ``kinds`` leaves standing (none
    when there is no predecessor or it was not measured: L3 not found)."""
    if previous_result is None or previous_result["status"] == NOT_FOUND:
        return ()
    qc = previous_result["qc"]
    replaced = tuple(p for k in kinds for p in REPLACED_REASONS.get(k, ()))
    kept = []
    for flag, reason in zip(qc["flags"], qc["reasons"], strict=False):
        if not str(reason).startswith(replaced) and not str(reason).startswith("correction:"):
            kept.append((str(flag), str(reason)))
    return tuple(kept)


def relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root))
