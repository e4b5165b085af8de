"""Decode the chosen DICOM series into a :class:`~workers.load.volume.Volume`.

Pixels are decoded with pydicom's pixel backends (pylibjpeg-openjpeg for JPEG 2000, pyjpegls or
GDCM for JPEG-LS, GDCM for JPEG lossless and baseline, pydicom for RLE and deflate), one slice at
a time into a preallocated array. Every failure names the file (never the patient) and says what
is wrong with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels

from workers.errors import GeometryError, InputError, PixelDataError
from workers.load.hu import rescale_is_integral, stored_to_hu
from workers.load.preview import (
    J2K_SYNTAXES,
    block_mean,
    decode_reduced_j2k,
    first_frame,
    preview_affine,
    preview_level,
    reduced_shape,
)
from workers.load.scan import DicomFile
from workers.load.selection import SeriesCandidate, functional_group_value
from workers.load.stack import SliceGeometry, StackGeometry, StackPolicy, build_stack
from workers.load.volume import PatientInfo, Volume

log = logging.getLogger(__name__)

DECODE_THREADS = max(1, min(4, os.cpu_count() or 1))


def _floats(value: Any, n: int, what: str, where: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{where}: {what} is missing or not numeric") from exc
    if len(numbers) != n or not all(np.isfinite(numbers)):
        raise GeometryError(f"{where}: {what} must have {n} finite numbers, found {value!r}")
    return numbers


def _int(ds: Dataset, keyword: str, where: str) -> int:
    value = ds.get(keyword)
    if value in (None, ""):
        raise PixelDataError(f"{where}: {keyword} is missing")
    number = int(value)
    if not 1 <= number <= 16384:
        raise PixelDataError(f"{where}: {keyword} = {number} is not a plausible image size")
    return number


def _rescale(ds: Dataset, frame: int | None = None) -> tuple[float, float]:
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    if slope is None and frame is not None:
        slope = functional_group_value(ds, "PixelValueTransformationSequence", "RescaleSlope", frame)
        intercept = functional_group_value(ds, "PixelValueTransformationSequence", "RescaleIntercept", frame)
    return float(slope if slope not in (None, "") else 1.0), float(
        intercept if intercept not in (None, "") else 0.0
    )


def _single_frame_geometry(f: DicomFile) -> SliceGeometry:
    ds, where = f.header, f.path.name
    number = ds.get("InstanceNumber")
    return SliceGeometry(
        position=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", where),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", where),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2, "PixelSpacing", where),  # type: ignore[arg-type]
        rows=_int(ds, "Rows", where),
        columns=_int(ds, "Columns", where),
        key=where,
        instance_uid=f.sop_instance_uid,
        instance_number=int(number) if number not in (None, "") else None,
        acquisition=str(ds.get("AcquisitionNumber", "") or ""),
    )


def _multiframe_geometry(f: DicomFile) -> list[SliceGeometry]:
    ds, name = f.header, f.path.name
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    rows, columns = _int(ds, "Rows", name), _int(ds, "Columns", name)
    result = []
    for i in range(frames):
        where = f"{name} frame {i + 1}"
        result.append(
            SliceGeometry(
                position=_floats(  # type: ignore[arg-type]
                    functional_group_value(ds, "PlanePositionSequence", "ImagePositionPatient", i),
                    3,
                    "ImagePositionPatient",
                    where,
                ),
                orientation=_floats(  # type: ignore[arg-type]
                    functional_group_value(ds, "PlaneOrientationSequence", "ImageOrientationPatient", i),
                    6,
                    "ImageOrientationPatient",
                    where,
                ),
                pixel_spacing=_floats(  # type: ignore[arg-type]
                    functional_group_value(ds, "PixelMeasuresSequence", "PixelSpacing", i),
                    2,
                    "PixelSpacing",
                    where,
                ),
                rows=rows,
                columns=columns,
                key=where,
                instance_number=i + 1,
            )
        )
    return result


def _patient_info(ds: Dataset) -> PatientInfo:
    def number(keyword: str) -> float | None:
        value = ds.get(keyword)
        try:
            return float(value) if value not in (None, "") else None
        except (TypeError, ValueError):
            return None

    sex = str(ds.get("PatientSex", "") or "").strip().upper() or None
    height, weight = number("PatientSize"), number("PatientWeight")
    found = height is not None or weight is not None or sex is not None
    return PatientInfo(height_m=height, weight_kg=weight, sex=sex, source="dicom-header" if found else "none")


def _acquisition(ds: Dataset, candidate: SeriesCandidate) -> dict[str, Any]:
    contrast = str(ds.get("ContrastBolusAgent", "") or "").strip()
    return {
        "manufacturer": str(ds.get("Manufacturer", "") or ""),
        "model": str(ds.get("ManufacturerModelName", "") or ""),
        "kvp": float(ds.KVP) if ds.get("KVP") not in (None, "") else None,
        "kernel": candidate.kernel,
        "slice_thickness_mm": candidate.slice_thickness_mm,
        "contrast_agent": contrast or None,
        "lossy_compression": str(ds.get("LossyImageCompression", "") or "") == "01",
        "transfer_syntaxes": candidate.transfer_syntaxes,
    }


def load_dicom_series(
    candidate: SeriesCandidate, policy: StackPolicy, preview_mm: float | None = None
) -> Volume:
    """Decode ``candidate`` (a series chosen by :func:`~workers.load.selection.select_series`).

    With ``preview_mm`` (the grid the search for L3 works on) a JPEG 2000 series is decoded at a
    reduced resolution level only (``volume.preview``, for finding L3) and
    ``volume.ensure_full_resolution`` decodes the slices that are measured; other series are
    decoded in full as without it (see :mod:`workers.load.preview`).
    """
    if candidate.is_multiframe:
        return _load_multiframe(candidate, policy)
    files = candidate.files
    geometry = build_stack([_single_frame_geometry(f) for f in files], policy)
    ordered = [files[i] for i in geometry.order]
    slopes = [_rescale(f.header) for f in ordered]
    dtype = np.int16 if all(rescale_is_integral(s, i) for s, i in slopes) else np.float32
    level = _preview_level(candidate, geometry, preview_mm) if preview_mm else 0
    # np.zeros maps untouched pages lazily: slices never decoded at full resolution cost no memory.
    hu = np.zeros(geometry.shape, dtype=dtype) if level else np.empty(geometry.shape, dtype=dtype)
    fill = 0

    def decode_into(k: int) -> int:
        stored, ds = _decode_single(ordered[k], geometry)
        return stored_to_hu(stored, *slopes[k], out=hu[k], padding_mask=_padding_mask(ds, stored))

    def decode_slices(indices: Sequence[int]) -> int:
        # Decoders (openjpeg, CharLS, GDCM) release the GIL for most of their work, so threads
        # decode compressed slices in parallel; each writes its own slice of the one array.
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            return sum(pool.map(decode_into, indices))

    if level:
        reduced = _decode_preview(ordered, geometry, slopes, dtype, level)
    else:
        fill = decode_slices(range(len(ordered)))
    volume = _volume(candidate, geometry, hu, ordered[0].header)
    if level:
        volume.preview = _volume(candidate, geometry, reduced, ordered[0].header)
        volume.preview.affine = preview_affine(geometry.affine, level)
        volume.full_resolution = np.zeros(len(ordered), dtype=bool)
        volume.decode_full = decode_slices
        spacing = float(np.linalg.norm(geometry.affine[:3, 1:3], axis=0).max())
        volume.notes.append(
            f"L3 was searched on a 1/{2**level}-resolution JPEG 2000 preview ({spacing * 2**level:.2f} mm "
            "pixels); tissues are measured on full-resolution slices"
        )
    volume.sop_instance_uids = [f.sop_instance_uid for f in ordered]
    volume.headers = [f.header for f in ordered]
    volume.source_slice_index = np.arange(len(ordered), dtype=np.int64)
    if fill:
        volume.notes.append(f"{fill} padding / out-of-field voxels treated as air")
    if any(not uid for uid in volume.sop_instance_uids):
        volume.flags.append("missing_uids")
        volume.notes.append("some SOP Instance UIDs are empty: results cannot reference their source")
    return volume


def _preview_level(candidate: SeriesCandidate, geometry: StackGeometry, target_mm: float) -> int:
    """The JPEG 2000 pyramid level to preview at, or 0 when the series is not all JPEG 2000."""
    syntaxes = set(candidate.transfer_syntaxes)
    if not syntaxes or not syntaxes <= J2K_SYNTAXES:
        return 0
    dy, dx = (float(v) for v in np.linalg.norm(geometry.affine[:3, 1:3], axis=0))
    return preview_level((dy, dx), target_mm)


def _decode_preview(
    ordered: list[DicomFile],
    geometry: StackGeometry,
    slopes: list[tuple[float, float]],
    dtype: type[np.generic],
    level: int,
) -> np.ndarray:
    """Every slice at pyramid ``level`` in HU (a slice the reduced decoder refuses is decoded in
    full and block-averaged, so the preview is complete whatever the encoder did)."""
    rows, columns = geometry.shape[1:]
    out = np.empty((len(ordered), *reduced_shape(rows, columns, level)), dtype=dtype)

    def preview_into(k: int) -> None:
        f = ordered[k]
        try:
            ds = pydicom.dcmread(f.path, force=True)
            stored = decode_reduced_j2k(
                first_frame(ds),
                level,
                int(ds.get("PixelRepresentation", 0) or 0),
                int(ds.get("BitsStored", 16) or 16),
            )
        except Exception:
            stored = None
        if stored is None:
            full, _ = _decode_single(f, geometry)
            stored = np.rint(block_mean(full, level))
        stored_to_hu(stored, *slopes[k], out=out[k])

    with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
        list(pool.map(preview_into, range(len(ordered))))
    return out


def _padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    padding = ds.get("PixelPaddingValue")
    if padding is None:
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        mask: np.ndarray = stored == int(padding)
        return mask
    low, high = sorted((int(padding), int(limit)))
    return (stored >= low) & (stored <= high)


def _decoder_message(exc: Exception) -> str:
    """pydicom lists one reason per plugin on separate lines; keep them on one line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def _decode_single(f: DicomFile, geometry: StackGeometry) -> tuple[np.ndarray, Dataset]:
    where = f.path.name
    try:
        ds = pydicom.dcmread(f.path, force=True)
    except Exception as exc:
        raise PixelDataError(f"{where}: cannot be read any more ({exc})") from exc
    if "PixelData" not in ds:
        raise PixelDataError(f"{where}: has no pixel data")
    try:
        stored = ds.pixel_array
    except Exception as exc:
        raise PixelDataError(f"{where}: pixel data cannot be decoded ({_decoder_message(exc)})") from exc
    expected = geometry.shape[1:]
    if stored.shape != expected:
        raise PixelDataError(f"{where}: decoded pixel array is {stored.shape}, header says {expected}")
    return stored, ds


def _load_multiframe(candidate: SeriesCandidate, policy: StackPolicy) -> Volume:
    f = max(candidate.files, key=lambda x: int(x.header.get("NumberOfFrames", 1) or 1))
    header = f.header
    geometry = build_stack(_multiframe_geometry(f), policy)
    slopes = [_rescale(header, frame=i) for i in geometry.order]
    dtype = np.int16 if all(rescale_is_integral(s, i) for s, i in slopes) else np.float32
    hu = np.empty(geometry.shape, dtype=dtype)
    slot = {frame: k for k, frame in enumerate(geometry.order)}
    try:
        for frame, stored in enumerate(iter_pixels(f.path)):
            k = slot.get(frame)
            if k is None:
                continue
            if stored.shape != geometry.shape[1:]:
                raise PixelDataError(f"{f.path.name} frame {frame + 1}: decoded as {stored.shape}")
            stored_to_hu(stored, *slopes[k], out=hu[k])
    except PixelDataError:
        raise
    except Exception as exc:
        raise PixelDataError(
            f"{f.path.name}: pixel data cannot be decoded ({_decoder_message(exc)})"
        ) from exc
    volume = _volume(candidate, geometry, hu, header)
    volume.source_kind = "dicom-multiframe"
    volume.sop_instance_uids = [f.sop_instance_uid] * len(geometry.order)
    volume.frame_numbers = [i + 1 for i in geometry.order]
    volume.headers = [header]
    volume.source_slice_index = np.asarray(geometry.order, dtype=np.int64)
    return volume


def _volume(candidate: SeriesCandidate, geometry: StackGeometry, hu: np.ndarray, header: Dataset) -> Volume:
    if hu.shape[0] < 2:
        raise InputError("fewer than two slices")
    volume = Volume(
        hu=hu,
        affine=geometry.affine,
        slice_positions=geometry.positions,
        source_kind="dicom",
        source_path=candidate.files[0].path,
        source_slice_index=np.arange(hu.shape[0], dtype=np.int64),
        series=candidate,
        patient=_patient_info(header),
        acquisition=_acquisition(header, candidate),
        flags=list(geometry.flags),
        notes=list(geometry.notes) + geometry.dropped[:20],
        gaps=geometry.gaps,
        tilt_deg=geometry.tilt_deg,
    )
    if volume.acquisition["lossy_compression"]:
        volume.flags.append("lossy_compression")
    return volume
