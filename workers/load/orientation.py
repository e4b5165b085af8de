"""Voxel-to-patient geometry shared by every loader.

All coordinates are DICOM patient coordinates (LPS: +x patient left, +y posterior, +z head).
A volume keeps its voxels in the order the source stored them (so masks written back to DICOM or
NIfTI line up with the source pixels without any resampling); analysis code asks for a
*canonical view* instead: the same voxels, only transposed and flipped (numpy views, no copy),
so that axis 0 runs inferior→superior, axis 1 anterior→posterior and axis 2 patient right→left.
In that view an axial slice looks like a radiological display: anterior at the top, the
patient's right on the left of the screen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Patient axis of each canonical array axis: z (superior), y (posterior), x (left).
CANONICAL_PATIENT_AXES: tuple[int, int, int] = (2, 1, 0)

AXIS_LETTERS_POSITIVE = ("L", "P", "S")
AXIS_LETTERS_NEGATIVE = ("R", "A", "I")


def direction_letter(direction: npt.ArrayLike) -> str:
    """Return the patient direction ('L', 'R', 'P', 'A', 'S' or 'I') closest to a unit vector."""
    v = np.asarray(direction, dtype=float)
    axis = int(np.argmax(np.abs(v)))
    return AXIS_LETTERS_POSITIVE[axis] if v[axis] > 0 else AXIS_LETTERS_NEGATIVE[axis]


@dataclass(frozen=True)
class Orientation:
    """How the stored array axes map onto the canonical (z, y, x) axes.

    ``order[i]`` is the stored axis that becomes canonical axis ``i``; ``flip[i]`` says whether
    that axis must be reversed so the canonical index increases toward S, P, L respectively.
    """

    order: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @classmethod
    def from_affine(cls, affine: npt.NDArray[np.floating]) -> Orientation:
        """Derive the nearest axis permutation from a voxel→LPS affine.

        Each stored axis is assigned to the patient axis its direction is closest to; ties are
        impossible for the near-orthogonal grids CT produces, and a degenerate matrix is refused.
        """
        directions = np.asarray(affine, dtype=float)[:3, :3]
        norms = np.linalg.norm(directions, axis=0)
        if np.any(norms <= 0) or abs(np.linalg.det(directions)) < 1e-9:
            raise ValueError("degenerate voxel-to-patient matrix")
        unit = directions / norms
        # Greedy assignment by largest absolute cosine; for orthogonal grids it is exact.
        remaining_stored = [0, 1, 2]
        stored_for_patient: dict[int, int] = {}
        for _ in range(3):
            best = max(
                ((s, p) for s in remaining_stored for p in range(3) if p not in stored_for_patient),
                key=lambda sp: abs(unit[sp[1], sp[0]]),
            )
            stored_for_patient[best[1]] = best[0]
            remaining_stored.remove(best[0])
        order = tuple(stored_for_patient[p] for p in CANONICAL_PATIENT_AXES)
        flip = tuple(bool(unit[p, stored_for_patient[p]] < 0) for p in CANONICAL_PATIENT_AXES)
        return cls(order=order, flip=flip)  # type: ignore[arg-type]

    def to_canonical(self, array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Return a view of a stored-order 3-D array in canonical order (no copy)."""
        view = np.transpose(array, self.order)
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        return view[slices]

    def from_canonical(self, array: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Inverse of :meth:`to_canonical`: a canonical-order array back in stored order."""
        slices = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)
        unflipped = array[slices]
        inverse = np.argsort(self.order)
        return np.transpose(unflipped, inverse)

    def canonical_to_stored_index(
        self, points: npt.ArrayLike, stored_shape: tuple[int, ...]
    ) -> npt.NDArray[np.float64]:
        """Map (N, 3) canonical voxel indices (may be fractional) to stored-order indices."""
        canonical = np.atleast_2d(np.asarray(points, dtype=float))
        stored = np.empty_like(canonical)
        for axis, (source_axis, flipped) in enumerate(zip(self.order, self.flip, strict=True)):
            values = canonical[:, axis]
            stored[:, source_axis] = (stored_shape[source_axis] - 1 - values) if flipped else values
        return stored

    def canonical_affine(self, affine: npt.NDArray[np.floating], shape: tuple[int, ...]) -> np.ndarray:
        """The voxel→LPS affine of the canonical view of an array of stored ``shape``."""
        a = np.asarray(affine, dtype=float)
        permuted = np.eye(4)
        origin_index = np.zeros(3)
        for canonical_axis, (stored_axis, flipped) in enumerate(zip(self.order, self.flip, strict=True)):
            column = np.zeros(3)
            column[stored_axis] = -1.0 if flipped else 1.0
            permuted[:3, canonical_axis] = column
            if flipped:
                origin_index[stored_axis] = shape[stored_axis] - 1
        permuted[:3, 3] = origin_index
        return a @ permuted


def orientation_code(affine: npt.NDArray[np.floating]) -> str:
    """Three letters naming where each stored axis points, e.g. 'SPL' (nibabel-style codes in LPS)."""
    a = np.asarray(affine, dtype=float)
    return "".join(direction_letter(a[:3, i]) for i in range(3))
