"""Write DICOM CT series from any HU array or analytic phantom and any geometry (test fixtures).

The builder is the loader's adversary: it writes the same anatomy with every orientation, slice
order, patient position, tilt, gap, compression, file-naming and numbering a PACS may produce, so
tests can check that the loader maps each back to the same patient coordinates.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

#: Image orientation (row, column direction cosines, LPS) of each patient position on a table.
PATIENT_POSITIONS: dict[str, tuple[float, ...]] = {
    "HFS": (1, 0, 0, 0, 1, 0),
    "HFP": (-1, 0, 0, 0, -1, 0),
    "FFS": (-1, 0, 0, 0, 1, 0),
    "FFP": (1, 0, 0, 0, -1, 0),
}

Phantom = Callable[[np.ndarray], np.ndarray]
"""Maps (N, 3) LPS points in mm to N HU values."""


@dataclass(frozen=True)
class Geometry:
    """Where each slice of a series lies: one orientation, one pixel grid, a position per slice."""

    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    orientation: tuple[float, ...]
    positions: np.ndarray  # (n, 3) ImagePositionPatient per slice, LPS mm, in acquisition order
    patient_position: str = "HFS"

    def pixel_points(self, k: int) -> np.ndarray:
        """(rows*columns, 3) LPS centre of every pixel of slice ``k`` (row-major)."""
        row_dir = np.asarray(self.orientation[:3], float)
        col_dir = np.asarray(self.orientation[3:], float)
        r, c = np.mgrid[0 : self.rows, 0 : self.columns]
        dr, dc = self.pixel_spacing
        return (
            self.positions[k][None, :]
            + (c.reshape(-1, 1) * dc) * row_dir[None, :]
            + (r.reshape(-1, 1) * dr) * col_dir[None, :]
        )


def axial_geometry(
    rows: int = 64,
    columns: int = 64,
    pixel_spacing: tuple[float, float] = (3.0, 3.0),
    n_slices: int = 30,
    slice_spacing: float = 3.0,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
    patient_position: str = "HFS",
    tilt_deg: float = 0.0,
    in_plane_rotation_deg: float = 0.0,
    transpose_in_plane: bool = False,
    superior_first: bool = False,
    missing: Sequence[int] = (),
    uneven: float = 0.0,
) -> Geometry:
    """An axial stack centred on ``centre`` with the variations the loader must handle.

    ``tilt_deg`` models gantry tilt: the image plane is rotated about the patient x axis while the
    slices are stacked along z (a sheared volume, as scanners write it). ``missing`` drops slice
    indices (gaps); ``uneven`` jitters spacing by that fraction.
    """
    orientation = np.asarray(PATIENT_POSITIONS[patient_position], float)
    row_dir, col_dir = orientation[:3], orientation[3:]
    if transpose_in_plane:
        row_dir, col_dir = col_dir, -row_dir
    if in_plane_rotation_deg:
        a = np.radians(in_plane_rotation_deg)
        rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        row_dir, col_dir = rot @ row_dir, rot @ col_dir
    if tilt_deg:
        t = np.radians(tilt_deg)
        rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
        row_dir, col_dir = rot @ row_dir, rot @ col_dir
    rng = np.random.default_rng(7)
    offsets = np.arange(n_slices, dtype=float) * slice_spacing
    if uneven:
        offsets += rng.uniform(-uneven, uneven, n_slices) * slice_spacing
        offsets[0] = 0.0
    offsets -= offsets.mean()
    if superior_first:
        offsets = offsets[::-1]
    keep = [k for k in range(n_slices) if k not in set(missing)]
    centre = np.asarray(centre, float)
    dr, dc = pixel_spacing
    corner = -((columns - 1) / 2) * dc * row_dir - ((rows - 1) / 2) * dr * col_dir
    positions = np.asarray([centre + corner + np.array([0.0, 0.0, offsets[k]]) for k in keep])
    return Geometry(
        rows=rows,
        columns=columns,
        pixel_spacing=(float(dr), float(dc)),
        orientation=tuple(float(v) for v in np.concatenate([row_dir, col_dir])),
        positions=positions,
        patient_position=patient_position,
    )


def sample(phantom: Phantom, geometry: Geometry) -> np.ndarray:
    """HU of the phantom at every pixel centre: (n_slices, rows, columns) int16."""
    slices = [
        phantom(geometry.pixel_points(k)).reshape(geometry.rows, geometry.columns)
        for k in range(len(geometry.positions))
    ]
    return np.asarray(slices).astype(np.int16)


def block_phantom(cube_mm: float = 12.0, extent_mm: float = 90.0, seed: int = 3) -> Phantom:
    """Piecewise-constant HU on cubes of ``cube_mm``: every cube a different value, so any flip,
    transposition or off-by-one in the loader reads a different number."""
    rng = np.random.default_rng(seed)
    n = int(np.ceil(2 * extent_mm / cube_mm)) + 2
    table = rng.integers(-900, 1500, size=(n, n, n))

    def phantom(points: np.ndarray) -> np.ndarray:
        idx = np.floor((points + extent_mm) / cube_mm).astype(int)
        inside = np.all((points > -extent_mm) & (points < extent_mm), axis=1)
        idx = np.clip(idx, 0, n - 1)
        values = table[idx[:, 0], idx[:, 1], idx[:, 2]]
        return np.where(inside, values, -1000)

    return phantom


@dataclass
class SeriesOptions:
    """Everything about a written series other than its pixels and geometry."""

    transfer_syntax: str = ExplicitVRLittleEndian
    shuffle_names: bool = False
    wrong_instance_numbers: bool = False
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    series_number: int = 3
    description: str = "Abdomen 3.0 soft tissue"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    modality: str = "CT"
    kernel: str = "B30f"
    slice_thickness: float | None = None
    patient_sex: str = "M"
    patient_size_m: float | None = 1.75
    patient_weight_kg: float | None = 72.0
    rescale_intercept: int = -1024
    rescale_slope: float = 1.0
    bits: int = 16
    """8 writes 8-bit pixels (for JPEG baseline); 16 the usual CT storage."""
    extra: dict[str, object] = field(default_factory=dict)
    seed: int = 0


def _base_dataset(options: SeriesOptions, geometry: Geometry) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = options.modality
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "PHANTOM-001"
    ds.PatientBirthDate = ""
    ds.PatientSex = options.patient_sex
    if options.patient_size_m is not None:
        ds.PatientSize = f"{options.patient_size_m:g}"
    if options.patient_weight_kg is not None:
        ds.PatientWeight = f"{options.patient_weight_kg:g}"
    ds.StudyInstanceUID = options.study_uid
    ds.SeriesInstanceUID = options.series_uid
    ds.FrameOfReferenceUID = options.frame_of_reference_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "ACC001"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = options.series_number
    ds.SeriesDescription = options.description
    ds.Manufacturer = "bodycomp-tests"
    ds.ImageType = list(options.image_type)
    ds.KVP = "120"
    ds.ConvolutionKernel = options.kernel
    ds.PatientPosition = geometry.patient_position
    ds.SliceThickness = f"{options.slice_thickness or 3.0:g}"
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in geometry.orientation]
    ds.PixelSpacing = [f"{v:g}" for v in geometry.pixel_spacing]
    ds.Rows, ds.Columns = geometry.rows, geometry.columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if options.bits == 8 else 16
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsAllocated - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = str(options.rescale_intercept)
    ds.RescaleSlope = f"{options.rescale_slope:g}"
    ds.RescaleType = "HU"
    for keyword, value in options.extra.items():
        setattr(ds, keyword, value)
    return ds


def stored_values(hu: np.ndarray, options: SeriesOptions) -> np.ndarray:
    stored = np.rint((hu.astype(np.float64) - options.rescale_intercept) / options.rescale_slope)
    top = 255 if options.bits == 8 else 65535
    if stored.min() < 0 or stored.max() > top:
        raise ValueError("HU outside what the rescale parameters can store")
    return stored.astype(np.uint8 if options.bits == 8 else np.uint16)


def _file_meta(ds: Dataset, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def encode_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    """Set the pixel data of ``ds`` in ``transfer_syntax`` with pydicom's own encoders."""
    if transfer_syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(
            transfer_syntax,
            pixels,
            encoding_plugin="pylibjpeg" if transfer_syntax == JPEG2000Lossless else "",
        )
        return
    ds.PixelData = pixels.tobytes() if pixels.dtype == np.uint8 else pixels.astype("<u2").tobytes()
    ds.file_meta.TransferSyntaxUID = transfer_syntax


def write_series(
    out_dir: Path,
    hu: np.ndarray,
    geometry: Geometry,
    options: SeriesOptions | None = None,
) -> list[Path]:
    """Write one file per slice; returns the paths in acquisition order."""
    options = options or SeriesOptions()
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(geometry.positions)
    rng = random.Random(options.seed)
    numbers = list(range(1, n + 1))
    if options.wrong_instance_numbers:
        rng.shuffle(numbers)
    names = [f"IM{k:05d}.dcm" for k in range(n)]
    if options.shuffle_names:
        names = [f"{generate_uid(prefix=None)[-12:]}" for _ in range(n)]
        rng.shuffle(names)
    dicom_ts = options.transfer_syntax
    dcmtk_codec = None
    if dicom_ts.startswith("1.2.840.10008.1.2.4.") and dicom_ts not in (JPEGLSLossless, JPEG2000Lossless):
        dcmtk_codec, dicom_ts = dicom_ts, ExplicitVRLittleEndian
    paths = []
    for k in range(n):
        ds = _base_dataset(options, geometry)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = numbers[k]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in geometry.positions[k]]
        ds.file_meta = _file_meta(ds, dicom_ts)
        encode_pixels(ds, stored_values(hu[k], options), dicom_ts)
        path = out_dir / names[k]
        ds.save_as(path, enforce_file_format=True)
        if dcmtk_codec is not None:
            dcmtk_compress(path, dcmtk_codec)
        paths.append(path)
    return paths


DCMTK_JPEG_FLAGS = {
    "1.2.840.10008.1.2.4.70": ["+e1"],  # JPEG lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.57": ["+el"],  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.51": ["+ee"],  # JPEG extended (12-bit lossy)
    "1.2.840.10008.1.2.4.50": ["+eb"],  # JPEG baseline (8-bit lossy)
}


def dcmtk_available() -> bool:
    return shutil.which("dcmcjpeg") is not None


def dcmtk_compress(path: Path, transfer_syntax: str) -> None:
    """Recompress ``path`` in place with DCMTK's dcmcjpeg (pydicom has no JPEG encoder)."""
    tmp = path.with_suffix(".jpg.tmp")
    subprocess.run(
        ["dcmcjpeg", *DCMTK_JPEG_FLAGS[transfer_syntax], str(path), str(tmp)], check=True, capture_output=True
    )
    tmp.replace(path)


def write_enhanced_ct(
    path: Path, hu: np.ndarray, geometry: Geometry, options: SeriesOptions | None = None
) -> Path:
    """Write the stack as one multi-frame Legacy Converted Enhanced CT instance (highdicom)."""
    import highdicom as hd

    options = options or SeriesOptions()
    with_pixels = []
    for k in range(len(geometry.positions)):
        ds = _base_dataset(options, geometry)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in geometry.positions[k]]
        ds.file_meta = _file_meta(ds, ExplicitVRLittleEndian)
        ds.PixelData = stored_values(hu[k], options).astype("<u2").tobytes()
        with_pixels.append(ds)
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=with_pixels,
        series_instance_uid=generate_uid(),
        series_number=options.series_number + 100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    enhanced.save_as(path, enforce_file_format=True)
    return path


def copy_with_uids(src_dir: Path, dst_dir: Path) -> list[Path]:
    """Copy a series whose UIDs are empty (the shared vendor series) and fill them in."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for src in sorted(p for p in src_dir.iterdir() if p.is_file() and p.name.startswith("CT.")):
        ds = pydicom.dcmread(src)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = 2
        dst = dst_dir / src.name
        ds.save_as(dst, enforce_file_format=True)
        paths.append(dst)
    return paths


def series_from_volume(volume: object, out_dir: Path, options: SeriesOptions | None = None) -> list[Path]:
    """Write a loaded (NIfTI) volume as an axial HFS DICOM series marked DERIVED.

    Used to turn example_ct.nii.gz into a DICOM series for end-to-end tests: the canonical view
    of the volume is exactly a head-first-supine axial stack (rows anterior→posterior, columns
    right→left), so its affine gives the ImagePositionPatient of each slice directly.
    """
    from workers.load.volume import Volume

    assert isinstance(volume, Volume)
    view = volume.canonical()
    options = options or SeriesOptions(
        image_type=("DERIVED", "SECONDARY", "AXIAL"),
        description="example_ct (derived from NIfTI)",
        patient_size_m=None,
        patient_weight_kg=None,
        patient_sex="",
    )
    affine = view.affine
    dy, dx = view.spacing_yx_mm
    positions = np.asarray([affine[:3, 3] + k * affine[:3, 0] for k in range(view.hu.shape[0])])
    geometry = Geometry(
        rows=view.hu.shape[1],
        columns=view.hu.shape[2],
        pixel_spacing=(dy, dx),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        positions=positions,
    )
    hu = np.asarray(view.hu)
    if int(hu.min()) < options.rescale_intercept:
        options = replace(options, rescale_intercept=int(hu.min()))
    return write_series(out_dir, hu, geometry, options)


__all__ = [
    "DeflatedExplicitVRLittleEndian",
    "ExplicitVRLittleEndian",
    "Geometry",
    "ImplicitVRLittleEndian",
    "JPEG2000Lossless",
    "JPEGLSLossless",
    "RLELossless",
    "SeriesOptions",
    "axial_geometry",
    "block_phantom",
    "copy_with_uids",
    "dcmtk_available",
    "sample",
    "series_from_volume",
    "write_enhanced_ct",
    "write_series",
]
