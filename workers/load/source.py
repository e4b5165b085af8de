"""Load the CT volume to analyse from a DICOM folder, an Enhanced CT file or a NIfTI file.

``load_series(path)`` is the one entry point the rest of bodycomp needs. For DICOM it scans the
path recursively (any file names, mixed series), chooses a series by the documented rules of
:mod:`workers.load.selection`, checks and orders its slices (:mod:`workers.load.stack`) and decodes
the pixels (:mod:`workers.load.dicom`). NIfTI files go to :mod:`workers.load.nifti`.
"""

from __future__ import annotations

from pathlib import Path

from workers.errors import InputError
from workers.load.dicom import load_dicom_series
from workers.load.nifti import load_nifti
from workers.load.scan import scan_dicom
from workers.load.selection import SelectionPolicy, select_series
from workers.load.stack import StackPolicy
from workers.load.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def load_series(
    path: str | Path,
    selection: SelectionPolicy | None = None,
    stack: StackPolicy | None = None,
    preview_mm: float | None = None,
) -> Volume:
    """Load the CT volume to analyse from ``path`` (folder, DICOM file or NIfTI file).

    Raises :class:`~workers.errors.InputError` (or a subclass) with a one-line reason when the
    input cannot be analysed. ``preview_mm``: decode a JPEG 2000 series at the reduced resolution
    closest to a grid of this many mm (the L3 search's, :data:`workers.l3.grid.TARGET_INPLANE_MM`) and its
    measured slices on demand (:meth:`~workers.load.volume.Volume.ensure_full_resolution`); the analysis
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
    volume = load_dicom_series(chosen, stack, preview_mm=preview_mm)
    volume.source_path = path
    volume.candidates = candidates
    volume.skipped_files = dict(scan.skipped)
    return volume
