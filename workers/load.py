"""Load the CT volume to analyse from a DICOM folder, an Enhanced CT file or a NIfTI file.

``load_series(path)`` is the one entry point the rest of bodycomp needs. For DICOM it scans the
path recursively (any file names, mixed series), chooses a series by the documented rules of
:mod:`workers.series_selection`, checks and orders its slices (:mod:`workers.stack`) and decodes
the pixels (:mod:`workers.dicom_loader`). NIfTI files go to :mod:`workers.nifti_loader`.
"""

from __future__ import annotations

from pathlib import Path

from workers.dicom_loader import load_dicom_series
from workers.dicom_scan import scan_dicom
from workers.errors import InputError
from workers.nifti_loader import load_nifti
from workers.series_selection import SelectionPolicy, select_series
from workers.stack import StackPolicy
from workers.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def load_series(
    path: str | Path,
    selection: SelectionPolicy | None = None,
    stack: StackPolicy | None = None,
    preview: bool = False,
) -> Volume:
    """Load the CT volume to analyse from ``path`` (folder, DICOM file or NIfTI file).

    Raises :class:`~workers.errors.InputError` (or a subclass) with a one-line reason when the
    input cannot be analysed. ``preview``: decode a JPEG 2000 series at reduced resolution and its
    measured slices on demand (:meth:`~workers.volume.Volume.ensure_full_resolution`); the analysis
    uses it, tools that read every voxel (``inspect``) do not.
    """
    path = Path(path)
    selection = selection or SelectionPolicy()
    stack = stack or StackPolicy()
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if is_nifti(path):
        return load_nifti(path)
    scan = scan_dicom(path)
    if not scan.files:
        what = ", ".join(f"{n} {reason}" for reason, n in scan.skipped.items()) or "no files"
        raise InputError(f"{path}: no DICOM files found ({what})")
    chosen, candidates = select_series(scan.files, selection)
    volume = load_dicom_series(chosen, stack, preview=preview)
    volume.source_path = path
    volume.candidates = candidates
    volume.skipped_files = dict(scan.skipped)
    return volume
