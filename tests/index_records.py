"""Record a DICOM file in the node's index as the SCP does, for tests of what comes after receiving."""

from __future__ import annotations

from pathlib import Path

import pydicom

from node.store.index import Index, InstanceRecord, digest_file


def record_file(index: Index, path: Path, calling_ae: str, now: float | None = None) -> str:
    """Record ``path`` (already in its place in the spool) under its own UIDs and header values;
    return the index's outcome (``new``, ``duplicate``, ...)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    record = InstanceRecord(
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.SOPClassUID),
        path,
        path.stat().st_size,
        digest_file(path),
        calling_ae,
        modality=str(ds.get("Modality", "")),
        description=str(ds.get("SeriesDescription", "")),
        patient_id=str(ds.get("PatientID", "")),
    )
    return index.record_instance(record, now=now)
