"""Outlines of tissue masks as SR spatial coordinates.

SR SCOORD image coordinates put (0, 0) at the top-left *corner* of the top-left pixel, so the
centre of pixel (row r, column c) is (c + 0.5, r + 0.5). Closed outlines repeat their first point
at the end, which makes a POLYLINE a closed polygon.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage import measure


def to_scoord(points_rc: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(row, col) pixel-index points → SCOORD (column, row) image coordinates."""
    rc = np.asarray(points_rc, dtype=np.float64)
    return np.column_stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5]).astype(np.float32)


def largest_outline(mask: npt.NDArray[np.bool_], tolerance_px: float = 0.7) -> npt.NDArray[np.float64] | None:
    """Outer outline (row, col) of the largest connected piece of ``mask``, closed; None if empty."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    piece = ndimage.binary_fill_holes(labels == int(np.argmax(sizes)) + 1)
    padded = np.pad(piece, 1)
    contours = measure.find_contours(padded.astype(np.float32), 0.5)
    if not contours:
        return None
    outline = max(contours, key=len) - 1.0
    outline = measure.approximate_polygon(outline, tolerance=tolerance_px)
    if len(outline) < 4:
        return None
    if not np.allclose(outline[0], outline[-1]):
        outline = np.vstack([outline, outline[:1]])
    result: npt.NDArray[np.float64] = outline
    return result


def polyline_length_mm(points_rc: npt.NDArray[np.float64], spacing_rc_mm: tuple[float, float]) -> float:
    steps = np.diff(points_rc, axis=0) * np.asarray(spacing_rc_mm)[None, :]
    return float(np.sum(np.hypot(steps[:, 0], steps[:, 1])))


def deepest_point(mask: npt.NDArray[np.bool_]) -> tuple[int, int] | None:
    """The pixel (row, col) of the largest piece of ``mask`` farthest from its edge; None if empty.

    Where a viewer's label points: well inside the tissue, whatever its shape (a ring of muscle,
    a crescent of fat), never on a hole or outside it as a centroid can be.
    """
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    depth = ndimage.distance_transform_edt(labels == int(np.argmax(sizes)) + 1)
    r, c = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return int(r), int(c)
