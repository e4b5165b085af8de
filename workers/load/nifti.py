"""Load a NIfTI CT volume (research exports, TotalSegmentator-style test data).

NIfTI stores RAS+ world coordinates; bodycomp works in DICOM LPS, so the affine is flipped in x
and y. The slice axis is the voxel axis closest to the patient's z axis (the file's third axis for
ordinary axial files); slices are put in inferior→superior order while remembering each slice's
index in the file, so results can be reported in the file's own indexing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from workers.errors import GeometryError, InputError
from workers.load.hu import to_hu_array
from workers.load.orientation import Orientation
from workers.load.volume import Volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_nifti(path: Path) -> Volume:
    """Read ``path`` into a :class:`Volume` (values are taken as HU, after the file's scaling)."""
    try:
        image: Any = nib.load(str(path))
    except Exception as exc:
        raise InputError(f"{path.name}: not a readable NIfTI file ({exc})") from exc
    shape = tuple(int(n) for n in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{path.name}: expected a 3-D volume, found shape {shape}")
    affine_lps = RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)
    try:
        orientation = Orientation.from_affine(affine_lps)
    except ValueError as exc:
        raise GeometryError(f"{path.name}: {exc}") from exc
    slice_axis = orientation.order[0]
    in_plane = [axis for axis in range(3) if axis != slice_axis]
    try:
        raw = np.asanyarray(image.dataobj).reshape(shape)
    except Exception as exc:
        raise InputError(f"{path.name}: voxel data cannot be read ({exc})") from exc
    hu, notes = to_hu_array(raw)
    del raw
    hu = np.transpose(hu, (slice_axis, *in_plane))
    index = np.arange(shape[slice_axis])
    # Affine of the (slice, a, b) order.
    affine = affine_lps[:, [slice_axis, *in_plane, 3]]
    affine = np.column_stack([affine[:, 0], affine[:, 1], affine[:, 2], affine[:, 3]])
    if affine[2, 0] < 0:  # slices stored superior→inferior: reverse them
        hu = hu[::-1]
        index = index[::-1]
        affine[:, 3] = affine[:, 3] + affine[:, 0] * (shape[slice_axis] - 1)
        affine[:, 0] = -affine[:, 0]
    affine = np.vstack([affine[:3], [0.0, 0.0, 0.0, 1.0]])
    positions = affine[:3, 3][None, :] + np.arange(hu.shape[0])[:, None] * affine[:3, 0][None, :]
    volume = Volume(
        hu=hu,
        affine=affine,
        slice_positions=positions,
        source_kind="nifti",
        source_path=path,
        source_slice_index=index.astype(np.int64),
        source_slice_axis=slice_axis,
        notes=notes,
    )
    if slice_axis != 2:
        volume.notes.append(f"slices are taken along file axis {slice_axis}, not the third axis")
    tilt = float(np.degrees(np.arccos(min(1.0, abs(affine[2, 0]) / np.linalg.norm(affine[:3, 0])))))
    volume.tilt_deg = round(tilt, 3)
    if tilt > 0.5:
        volume.flags.append("gantry_tilt")
    return volume
