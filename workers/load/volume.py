"""The CT volume every analysis step works on.

:func:`workers.load.source.load_series` returns a
:class:`Volume`: Hounsfield units in the source's own voxel order (slices sorted inferior →
superior), the exact voxel→patient (LPS) geometry, and for DICOM the SOP Instance UID and the
pixel-free header of every slice, which the SEG/SR encoders need to reference the source.

Memory: DICOM headers are read first without pixel data; pixels are then decoded one slice at a
time into a single preallocated array, so a study is in memory once (int16 for ordinary CT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from workers.errors import InputError
from workers.load.orientation import Orientation, orientation_code
from workers.load.selection import SeriesCandidate
from workers.load.stack import Gap
from workers.result import HeaderPatientJson, VolumeJson


@dataclass(frozen=True)
class PatientInfo:
    """Inputs to the clinical metrics as found in the source, with where they came from.

    Values are reported as stored; plausibility checks (a height of 170 "metres") belong to the
    metrics, which must say why a value was not used rather than silently fixing it.
    """

    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    source: str = "none"

    def to_json(self) -> HeaderPatientJson:
        return {
            "height_m": self.height_m,
            "weight_kg": self.weight_kg,
            "sex": self.sex,
            "source": self.source,
        }


@dataclass(frozen=True)
class CanonicalView:
    """The volume as analysis code wants it: ``hu[z, y, x]`` with z inferior→superior, y
    anterior→posterior, x patient right→left (a radiological axial display), as a numpy view.
    """

    hu: npt.NDArray[Any]
    z_mm: npt.NDArray[np.float64]
    spacing_yx_mm: tuple[float, float]
    affine: npt.NDArray[np.float64]
    orientation: Orientation


@dataclass
class Volume:
    """A CT volume in the source's voxel order with its geometry and provenance."""

    hu: npt.NDArray[Any]
    """(slices, a, b) HU; int16 unless rescaling needs float32. Slices inferior → superior.
    For DICOM (a, b) are the image rows and columns; for NIfTI the two in-plane file axes in file order."""
    affine: npt.NDArray[np.float64]
    """4×4 voxel (slice, a, b) → patient LPS mm. Exact for evenly spaced stacks; see ``slice_positions``."""
    slice_positions: npt.NDArray[np.float64]
    """(slices, 3) LPS position of voxel (k, 0, 0) of each slice: exact even with gaps or uneven spacing."""
    source_kind: str
    """'dicom', 'dicom-multiframe' or 'nifti'."""
    source_path: Path
    source_slice_index: npt.NDArray[np.int64]
    """For each slice k, its index in the source: DICOM series position (== k), multi-frame frame
    index (0-based), NIfTI index along the slice axis of the file."""
    source_slice_axis: int = 2
    """NIfTI: which file voxel axis the slices are taken along (2 for ordinary axial files)."""
    sop_instance_uids: list[str] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list)
    """Pixel-free DICOM headers, one per slice (single-frame) or one in all (multi-frame)."""
    series: SeriesCandidate | None = None
    candidates: list[SeriesCandidate] = field(default_factory=list)
    patient: PatientInfo = field(default_factory=PatientInfo)
    acquisition: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    tilt_deg: float = 0.0
    skipped_files: dict[str, int] = field(default_factory=dict)
    preview: Volume | None = None
    """A reduced-resolution copy of every slice (see :mod:`workers.load.preview`) for finding L3. When it
    is set, ``hu`` is allocated at full size but holds pixels only for the slices marked in
    ``full_resolution``: call :meth:`ensure_full_resolution` before reading any slice of ``hu``."""
    full_resolution: npt.NDArray[np.bool_] | None = None
    """Which slices of ``hu`` are decoded (None: all of them)."""
    decode_full: Callable[[Sequence[int]], object] | None = field(default=None, repr=False)
    """Decodes the given slices into ``hu`` at full resolution (set by the loader with ``preview``)."""

    def ensure_full_resolution(self, slices: Iterable[int]) -> None:
        """Decode the given slices at full resolution if only their preview exists yet."""
        if self.full_resolution is None:
            return
        missing = sorted({int(k) for k in slices if not self.full_resolution[int(k)]})
        if missing:
            assert self.decode_full is not None
            self.decode_full(missing)
            self.full_resolution[missing] = True

    def hu_range(self) -> tuple[float, float]:
        """Lowest and highest HU of the decoded pixels (of the preview when only it is decoded)."""
        hu = self.preview.hu if self.preview is not None else self.hu
        return float(np.min(hu)), float(np.max(hu))

    @property
    def shape(self) -> tuple[int, int, int]:
        n, a, b = self.hu.shape
        return (int(n), int(a), int(b))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along (slice, a, b) in mm."""
        return tuple(float(np.linalg.norm(self.affine[:3, i])) for i in range(3))  # type: ignore[return-value]

    @property
    def orientation(self) -> Orientation:
        return Orientation.from_affine(self.affine)

    def voxel_to_patient(self, index: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Exact LPS position of voxel(s) ``(k, a, b)`` (uses each slice's own position)."""
        idx = np.atleast_2d(np.asarray(index, dtype=float))
        k = np.clip(np.rint(idx[:, 0]).astype(int), 0, self.shape[0] - 1)
        in_plane = idx[:, 1:3] @ self.affine[:3, 1:3].T
        result: npt.NDArray[np.float64] = (
            self.slice_positions[k] + in_plane + (idx[:, 0] - k)[:, None] * self.affine[:3, 0]
        )
        return result

    def patient_to_voxel(self, point: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous voxel index of LPS point(s), using the nearest slice's exact position.

        Distances are taken along the slice-plane normal, which differs from the stacking
        direction in a gantry-tilted (sheared) stack.
        """
        p = np.atleast_2d(np.asarray(point, dtype=float))
        normal = np.cross(self.affine[:3, 1], self.affine[:3, 2])
        normal /= np.linalg.norm(normal)
        if normal @ self.affine[:3, 0] < 0:
            normal = -normal
        distance = self.slice_positions @ normal
        out = np.empty((p.shape[0], 3))
        in_plane = self.affine[:3, 1:3]
        for row, q in enumerate(p):
            k = int(np.argmin(np.abs(distance - q @ normal)))
            offset = q - self.slice_positions[k]
            along = float(offset @ normal) / float(self.affine[:3, 0] @ normal)
            ab, *_ = np.linalg.lstsq(in_plane, offset - along * self.affine[:3, 0], rcond=None)
            out[row] = (k + along, ab[0], ab[1])
        return out

    def slice_z_mm(self) -> npt.NDArray[np.float64]:
        """Patient z of the centre of each slice (ascending)."""
        centre = (np.asarray(self.shape[1:], dtype=float) - 1) / 2
        z: npt.NDArray[np.float64] = self.slice_positions[:, 2] + centre @ self.affine[2, 1:3]
        return z

    def canonical(self) -> CanonicalView:
        """A radiological view of the voxels (see :class:`CanonicalView`); no copy is made."""
        orientation = self.orientation
        if orientation.order[0] != 0 or orientation.flip[0]:
            raise InputError("the slice axis of this volume does not run inferior→superior")
        hu = orientation.to_canonical(self.hu)
        affine = orientation.canonical_affine(self.affine, self.shape)
        spacing = (float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 2])))
        return CanonicalView(
            hu=hu, z_mm=self.slice_z_mm(), spacing_yx_mm=spacing, affine=affine, orientation=orientation
        )

    def source_slice(self, k: int) -> npt.NDArray[Any]:
        """Slice ``k`` in the source's own 2-D array order (DICOM pixel array; NIfTI ``dataobj[:, :, i]``)."""
        return self.hu[k]

    def geometry_json(self) -> dict[str, Any]:
        z = self.slice_z_mm()
        return {
            "shape": list(self.shape),
            "spacing_mm": [round(s, 4) for s in self.spacing],
            "orientation": orientation_code(self.affine),
            "affine_lps": np.round(self.affine, 4).tolist(),
            "z_range_mm": [round(float(z[0]), 2), round(float(z[-1]), 2)],
            "tilt_deg": self.tilt_deg,
            "gaps": [g.to_json() for g in self.gaps],
            "dtype": str(self.hu.dtype),
        }

    def to_json(self) -> VolumeJson:
        """What ``inspect``/``analyze`` report about the loaded volume (no patient names or IDs)."""
        return {
            "source_kind": self.source_kind,
            "source_path": str(self.source_path),
            "series_instance_uid": self.series.series_instance_uid if self.series else None,
            "geometry": self.geometry_json(),
            "patient": self.patient.to_json(),
            "acquisition": self.acquisition,
            "flags": self.flags,
            "notes": self.notes,
            "skipped_files": self.skipped_files,
        }
