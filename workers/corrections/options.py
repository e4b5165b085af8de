"""A correction job's analysis options: the slice, the masks and the patient values it names.

The node writes the correction into ``job.json`` (:class:`workers.revision.CorrectionSpec`); this
module turns it into :class:`workers.pipeline.AnalysisOptions` (a plain function: the Celery task
stays a thin shell). The superseded result is read from its job folder, which the worker sees
under the same data directory:

* another slice (``level``): analyse that instance (or the slice nearest ``z``), method ``manual``;
* a reader's SEG (``outline``): measure its masks on the CT instance it references;
* patient values only (``patient``): measure the superseded result's stored masks
  (``l3_labels.npy``) on its slice again with the new values: the same outlines, nothing segmented.
  When there are none (the first analysis failed, or averaged several slices) the series is
  analysed again as if new, with the new values.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from workers.corrections.reader_seg import read_reader_seg
from workers.errors import InputError
from workers.pipeline import AnalysisOptions, PatientOverrides
from workers.result import NOT_FOUND, PatientValuesJson, ResultDocument, ResultFileError, read_result
from workers.revision import LEVEL, OUTLINE, CorrectionSpec, Revision, kept_qc

#: The superseded job's files the correction reads (see :mod:`workers.tasks`).
PREVIOUS_RESULT, PREVIOUS_LABELS = "out/result.json", "out/l3_labels.npy"


def _previous_result(data_dir: Path, spec: CorrectionSpec) -> ResultDocument | None:
    """The superseded result (None: none named, or its folder has no ``result.json``).

    Raises :class:`InputError` naming the key when it has one but not a result document: a
    correction must not go on as if the earlier result had measured nothing."""
    if spec.previous_job_dir is None:
        return None
    path = data_dir / spec.previous_job_dir / PREVIOUS_RESULT
    if not path.exists():
        return None
    try:
        return read_result(path)
    except ResultFileError as exc:
        raise InputError(f"the result to correct is unreadable: {exc}") from None


def _previous_slice(previous: ResultDocument | None) -> str | None:
    """The SOP Instance UID of the superseded result's one analysed slice (None: several or none)."""
    if previous is None or previous["status"] == NOT_FOUND or len(previous["slices"]) != 1:
        return None
    uid = previous["slices"][0].get("sop_instance_uid")  # (absent for NIfTI input)
    return str(uid) if uid else None


def _patient_values(spec: CorrectionSpec, previous: ResultDocument | None) -> PatientValuesJson | None:
    """The patient values this correction gives, over those earlier corrections gave (None: none)."""
    earlier = None
    if previous is not None and previous["status"] != NOT_FOUND:
        correction = previous.get("correction")  # (only a corrected result has one)
        earlier = None if correction is None else correction["patient_values"]
    height = spec.height_m if spec.height_m is not None else earlier["height_m"] if earlier else None
    weight = spec.weight_kg if spec.weight_kg is not None else earlier["weight_kg"] if earlier else None
    sex = spec.sex if spec.sex is not None else earlier["sex"] if earlier else None
    if height is None and weight is None and sex is None:
        return None
    given = spec.height_m is not None or spec.weight_kg is not None or spec.sex is not None
    source = spec.source if given or earlier is None else earlier["source"]
    return {"height_m": height, "weight_kg": weight, "sex": sex, "source": source}


def correction_options(
    options: AnalysisOptions, spec: CorrectionSpec, job_dir: Path, data_dir: Path
) -> AnalysisOptions:
    """``options`` for the correction ``spec`` of the job in ``job_dir`` (see module docstring)."""
    previous = _previous_result(data_dir, spec)
    kinds = list(spec.kinds)
    changes: dict[str, Any] = {}
    patient = _patient_values(spec, previous)
    if patient is not None:
        changes["patient"] = PatientOverrides(
            height_m=patient["height_m"],
            weight_kg=patient["weight_kg"],
            sex=patient["sex"],
            source=str(patient["source"]),
        )
    if LEVEL in kinds:
        changes["slice_sop_uid"] = spec.slice_sop_uid
        changes["slice_z_mm"] = spec.z_mm
    elif OUTLINE in kinds:
        assert spec.edited_seg is not None
        masks = read_reader_seg(job_dir / spec.edited_seg)
        changes["slice_sop_uid"] = masks.source_sop_uid
        changes["labels"] = masks.labels
        changes["labels_source"] = f"reader SEG {spec.source_instance_uid}".strip()
        if masks.source_sop_uid != _previous_slice(previous):
            kinds.append(LEVEL)  # the reader outlined another slice: the level changed too
    else:
        stored = data_dir / spec.previous_job_dir / PREVIOUS_LABELS if spec.previous_job_dir else None
        uid = _previous_slice(previous)
        if stored is not None and stored.exists() and uid is not None:
            changes["slice_sop_uid"] = uid
            changes["labels"] = np.load(stored)
            changes["labels_source"] = "stored masks of the superseded result"
    previous_l3 = None if previous is None or previous["status"] == NOT_FOUND else previous["l3"]
    level_kept = LEVEL not in kinds and previous_l3 is not None
    changes["revision"] = Revision(
        key=spec.key,
        description=dataclasses.replace(spec, kinds=tuple(kinds)).describe(),
        kinds=tuple(kinds),
        source_instance_uid=spec.source_instance_uid,
        predecessor_sr=spec.previous_sr_uids,
        kept_qc=kept_qc(previous, tuple(kinds)),
        previous_l3=previous_l3 if level_kept else None,
        patient_values=patient,
    )
    return dataclasses.replace(options, slices=1, **changes)
