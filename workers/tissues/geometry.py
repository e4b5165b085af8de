"""Small mm-aware geometry helpers shared by the classical segmenter modules.

Why: every size in the engine is given in millimetres so it behaves the same at 0.6 mm and 3 mm
pixels and with anisotropic spacing; these helpers turn mm into pixel structuring elements,
rasterise polygons and sample along rays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi
from skimage.draw import polygon as draw_polygon

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


def disk_mm(radius_mm: float, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Elliptical structuring element covering a physical disk of ``radius_mm``."""
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    ry = max(int(np.floor(radius_mm / dy)), 0)
    rx = max(int(np.floor(radius_mm / dx)), 0)
    yy, xx = np.mgrid[-ry : ry + 1, -rx : rx + 1]
    se: BoolArray = (yy * dy) ** 2 + (xx * dx) ** 2 <= radius_mm**2 + 1e-9
    return se


def largest_component(mask: BoolArray) -> BoolArray:
    """The largest 4/8-connected component (8-connectivity), or an empty mask."""
    lab, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    out: BoolArray = lab == int(np.argmax(sizes))
    return out


def rasterize_polygon(contour_rc: FloatArray, shape: tuple[int, ...]) -> BoolArray:
    """Filled mask of a closed (row, col) polygon; pixel centres inside the polygon are set."""
    mask = np.zeros(shape[:2], dtype=bool)
    if len(contour_rc) < 3:
        return mask
    rr, cc = draw_polygon(contour_rc[:, 0], contour_rc[:, 1], shape=shape[:2])
    mask[rr, cc] = True
    return mask


def circular_median(x: FloatArray, width: int) -> FloatArray:
    """Median filter over a periodic (angular) signal."""
    width = max(int(width) | 1, 1)
    out: FloatArray = ndi.median_filter(x, size=width, mode="wrap")
    return out


def circular_mean(x: FloatArray, width: int) -> FloatArray:
    width = max(int(width) | 1, 1)
    out: FloatArray = ndi.uniform_filter1d(x, size=width, mode="wrap")
    return out


def interpolate_invalid_circular(x: FloatArray, valid: npt.NDArray[np.bool_]) -> FloatArray:
    """Replace invalid samples of a periodic signal by linear interpolation between valid neighbours."""
    n = len(x)
    if valid.all() or not valid.any():
        return x.copy()
    idx = np.arange(n)
    vi = idx[valid]
    xv = x[valid]
    # unwrap periodically: pad the valid samples one period on both sides
    vi3 = np.concatenate([vi - n, vi, vi + n])
    xv3 = np.concatenate([xv, xv, xv])
    out: FloatArray = np.interp(idx, vi3, xv3)
    return out


def runs(mask: npt.NDArray[np.bool_]) -> list[tuple[int, int]]:
    """(start, stop) index pairs of True runs in a 1-D boolean array."""
    m = np.concatenate([[False], mask.astype(bool), [False]])
    d = np.diff(m.astype(np.int8))
    starts = np.flatnonzero(d == 1)
    stops = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def as_float(hu: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """HU as float32 with out-of-field padding (≤ −1500) clamped to air."""
    a = np.asarray(hu, dtype=np.float32)
    return np.where(a < -1024.0, np.float32(-1024.0), a)


def dilate_mm(mask: BoolArray, radius_mm: float, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Dilation by a physical disk, via the Euclidean distance transform (fast for large radii)."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    d = ndi.distance_transform_edt(~mask, sampling=(float(spacing_yx_mm[0]), float(spacing_yx_mm[1])))
    out: BoolArray = d <= radius_mm + 1e-6
    return out


def erode_mm(mask: BoolArray, radius_mm: float, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Erosion by a physical disk (pixels outside the image count as background)."""
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    padded = np.pad(mask, 1, constant_values=False)
    d = ndi.distance_transform_edt(padded, sampling=(float(spacing_yx_mm[0]), float(spacing_yx_mm[1])))
    out: BoolArray = d[1:-1, 1:-1] > radius_mm + 1e-6
    return out


def open_mm(mask: BoolArray, radius_mm: float, spacing_yx_mm: Sequence[float]) -> BoolArray:
    return dilate_mm(erode_mm(mask, radius_mm, spacing_yx_mm), radius_mm, spacing_yx_mm) & mask


def close_mm(mask: BoolArray, radius_mm: float, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Closing; the image border does not erode the result."""
    if not mask.any():
        return mask.copy()
    d = dilate_mm(mask, radius_mm, spacing_yx_mm)
    pad = int(np.ceil(radius_mm / min(float(spacing_yx_mm[0]), float(spacing_yx_mm[1])))) + 1
    dp = np.pad(d, pad, constant_values=False)
    inv = ndi.distance_transform_edt(dp, sampling=(float(spacing_yx_mm[0]), float(spacing_yx_mm[1])))
    out: BoolArray = (inv[pad:-pad, pad:-pad] > radius_mm + 1e-6) | mask
    return out


def polar_mask(
    center_rc: tuple[float, float],
    angles: FloatArray,
    radii_mm: FloatArray,
    shape: tuple[int, ...],
    spacing_yx_mm: Sequence[float],
) -> BoolArray:
    """Pixels whose distance from ``center_rc`` is below the radius interpolated at their angle.

    Equivalent to filling the star-shaped polygon of the ray end points, but vectorised (fast).
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    rr = (np.arange(shape[0]) - center_rc[0])[:, None] * dy
    cc = (np.arange(shape[1]) - center_rc[1])[None, :] * dx
    ang = np.mod(np.arctan2(rr, cc), 2 * np.pi)
    dist = np.hypot(rr, cc)
    a = np.concatenate([angles - 2 * np.pi, angles, angles + 2 * np.pi])
    r = np.concatenate([radii_mm, radii_mm, radii_mm])
    lim = np.interp(ang.ravel(), a, r).reshape(ang.shape)
    out: BoolArray = dist <= lim
    return out
