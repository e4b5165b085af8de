"""Reduced-resolution decoding of JPEG 2000 slices, for finding L3.

Why: the L3 localiser block-averages every slice to about 2.5 mm in-plane
(:data:`workers.l3.grid.TARGET_INPLANE_MM`, which the pipeline passes to the loader as
``preview_mm``) before it looks at anything, yet decoding all slices
of a 500-slice JPEG 2000 study at full resolution was most of the analysis time. A JPEG 2000
codestream is a resolution pyramid: its level-``r`` image (each side divided by ``2**r``) is the
wavelet low-pass band, available after decoding only the coarse part of the stream, about four
times faster per level. So the loader decodes a *preview* of every slice at the coarsest level
that is still at least as fine as the localiser's grid, and decodes at full resolution only the
few slices that are segmented and measured (see :meth:`workers.load.volume.Volume.ensure_full_resolution`).
Nothing measured comes from the preview: areas and HU are always taken on full-resolution pixels.

OpenJPEG's reduced decoding is reached through Pillow, whose JPEG 2000 plugin (OpenJPEG, bundled in
its wheels) exposes ``Image.reduce``; pylibjpeg-openjpeg cannot decode a reduced level. Pillow hands
a single-component image of precision ``p`` ≤ 16 back as ``I;16`` with the samples shifted left by
``16 - p`` and, for signed components, offset by ``2**(p-1)``; :func:`decode_reduced_j2k` undoes
exactly that (``tests/test_preview.py`` checks it bit for bit at level 0 against pydicom).
Anything else (other syntaxes, colour, > 16 bits, a decoder error) returns ``None`` and the caller
decodes at full resolution as before.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

#: Transfer syntaxes whose pixel data is a JPEG 2000 codestream per frame.
J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})

MAX_LEVEL = 3


def power_of_two_block(spacing_mm: float, target_mm: float) -> int:
    """The power of two nearest (in log scale) to ``target_mm / spacing_mm``, at least 1: how many
    pixels of ``spacing_mm`` one pixel of a grid of about ``target_mm`` spans.

    Why a power of two: each JPEG 2000 pyramid level halves the pixels, so a grid built of
    power-of-two blocks is the same grid whether it is built from full-resolution pixels or from a
    preview level (:func:`workers.l3.grid.block_factor` uses it for the localiser's grid).
    """
    ratio = target_mm / spacing_mm
    if ratio <= 1.0:
        return 1
    return int(2 ** np.floor(np.log2(ratio) + 0.5))


def preview_level(spacing_yx_mm: tuple[float, float], target_mm: float) -> int:
    """The pyramid level whose pixels are a grid of about ``target_mm`` (0 = full resolution).

    A grid of ``target_mm`` block-averages ``power_of_two_block(spacing, target_mm)`` pixels per
    grid pixel; decoding at level ``log2`` of the smaller of the two factors gives the same grid
    directly. For the localiser's 2.5 mm: 0.45-0.88 mm pixels → level 2 (×4), 0.89-1.77 mm →
    level 1 (×2), coarser → 0.
    """
    factor = min(power_of_two_block(float(s), target_mm) for s in spacing_yx_mm)
    return min(MAX_LEVEL, int(np.log2(factor)))


def reduced_shape(rows: int, columns: int, level: int) -> tuple[int, int]:
    """JPEG 2000's size of level ``level`` for an image starting at the origin: ceil(n / 2**level)."""
    f = 2**level
    return (-(-rows // f), -(-columns // f))


def codestream_precision(codestream: bytes) -> tuple[int, bool] | None:
    """(bits, signed) of the first component from the SIZ marker, or None if not a J2K codestream.

    SOC (FF4F) and SIZ (FF51) open every codestream; after Lsiz, Rsiz, eight 32-bit sizes and Csiz
    comes Ssiz of component 0 at byte 42: bit 7 = signed, bits 0-6 = precision - 1. A JP2 file
    wraps the codestream in boxes; DICOM requires the bare codestream, but some encoders wrap it.
    """
    start = codestream.find(b"\xff\x4f\xff\x51", 0, 4096)
    if start < 0 or len(codestream) < start + 43:
        return None
    ssiz = codestream[start + 42]
    return (ssiz & 0x7F) + 1, bool(ssiz & 0x80)


def decode_reduced_j2k(
    codestream: bytes, level: int, pixel_representation: int, bits_stored: int
) -> npt.NDArray[Any] | None:
    """Stored values of one JPEG 2000 frame at pyramid ``level``, as pydicom would give them at full
    resolution (signed when ``pixel_representation`` is 1), or None when this path cannot decode it."""
    precision = codestream_precision(codestream)
    if precision is None:
        return None
    bits, signed = precision
    if not 1 <= bits <= 16:
        return None
    try:
        image = Image.open(io.BytesIO(codestream))
        if image.mode not in ("I;16", "L"):
            return None
        setattr(image, "reduce", level)  # noqa: B010  (the JPEG 2000 plugin property, not Image.reduce())
        image.load()
        raw = np.asarray(image)
    except (OSError, ValueError, SyntaxError):
        return None
    shift = (16 if image.mode == "I;16" else 8) - bits
    unsigned = (raw.astype(np.int32) >> shift) if shift >= 0 else (raw.astype(np.int32) << -shift)
    values = unsigned - (1 << (bits - 1)) if signed else unsigned
    if pixel_representation == 1 and not signed:
        # A signed image stored as an unsigned codestream: pydicom reinterprets the bits stored.
        sign_bit = 1 << (bits_stored - 1)
        values = np.where(values >= sign_bit, values - (1 << bits_stored), values)
    return values


def first_frame(ds: Dataset) -> bytes:
    """The encapsulated codestream of a single-frame instance."""
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def block_mean(stored: npt.NDArray[Any], level: int) -> npt.NDArray[np.float32]:
    """Average ``2**level`` × ``2**level`` blocks (edge blocks over what exists): the preview of a
    slice that is not JPEG 2000, so every slice of a preview has the same shape and pixel grid."""
    f = 2**level
    rows, columns = stored.shape
    out_rows, out_cols = reduced_shape(rows, columns, level)
    padded = np.zeros((out_rows * f, out_cols * f), dtype=np.float32)
    counts = np.zeros_like(padded)
    padded[:rows, :columns] = stored
    counts[:rows, :columns] = 1.0
    sums = padded.reshape(out_rows, f, out_cols, f).sum(axis=(1, 3))
    n = counts.reshape(out_rows, f, out_cols, f).sum(axis=(1, 3))
    result: npt.NDArray[np.float32] = sums / n
    return result


def preview_affine(affine: npt.NDArray[np.float64], level: int) -> npt.NDArray[np.float64]:
    """Voxel → patient of the preview grid: in-plane steps ×2**level, same origin.

    JPEG 2000 puts sample ``i`` of level ``r`` at reference-grid position ``2**r · i``, so the first
    preview pixel is centred on the first full-resolution pixel. (:func:`block_mean`'s first pixel
    is centred half a block further; for localisation that sub-millimetre difference is noise.)
    """
    scaled = np.array(affine, dtype=np.float64, copy=True)
    scaled[:3, 1:3] *= 2**level
    return scaled
