"""Every way a scanner or PACS can write the same anatomy loads to the same anatomy.

The phantom is piecewise constant on 12 mm cubes with a different HU in each cube, so a flipped
axis, a transposed plane, a slice sorted by InstanceNumber or an off-by-one reads a different value
at a known patient coordinate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dicom_builder import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SeriesOptions,
    axial_geometry,
    block_phantom,
    dcmtk_available,
    sample,
    write_enhanced_ct,
    write_series,
)
from workers.load.source import load_series
from workers.load.volume import Volume

PHANTOM = block_phantom()
#: Cube centres well inside every variant's field of view.
POINTS = np.array(
    [[0.0, 0.0, 0.0], [-36, 24, -24], [36, -36, 24], [-24, 36, -12], [12, 12, 24], [24, -12, -36]]
)
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"


def hu_at(volume: Volume, points: np.ndarray) -> np.ndarray:
    index = np.rint(volume.patient_to_voxel(points)).astype(int)
    for axis in range(3):
        assert np.all((index[:, axis] >= 0) & (index[:, axis] < volume.shape[axis])), (
            "point outside the volume"
        )
    return volume.hu[index[:, 0], index[:, 1], index[:, 2]]


def canonical_hu_at(volume: Volume, points: np.ndarray) -> np.ndarray:
    """The same lookup through the canonical view (what the analysis uses)."""
    view = volume.canonical()
    inverse = np.linalg.inv(view.affine)
    index = np.rint((inverse @ np.column_stack([points, np.ones(len(points))]).T)[:3].T).astype(int)
    return np.asarray(view.hu)[index[:, 0], index[:, 1], index[:, 2]]


VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "head-first supine": ({}, {}),
    "head-first prone": ({"patient_position": "HFP"}, {}),
    "feet-first supine": ({"patient_position": "FFS"}, {}),
    "feet-first prone, superior slice first": ({"patient_position": "FFP", "superior_first": True}, {}),
    "shuffled names, wrong InstanceNumbers": ({}, {"shuffle_names": True, "wrong_instance_numbers": True}),
    "rows and columns swapped": ({"transpose_in_plane": True}, {}),
    "in-plane rotation 8°": ({"in_plane_rotation_deg": 8.0}, {}),
    "gantry tilt 12°": ({"tilt_deg": 12.0}, {}),
    "one slice missing": ({"missing": [7]}, {}),
    "uneven spacing": ({"uneven": 0.2}, {}),
    "1 mm slices, 0.7 mm pixels": (
        {"rows": 200, "columns": 200, "pixel_spacing": (0.7, 0.7), "n_slices": 90, "slice_spacing": 1.0},
        {},
    ),
    "implicit VR": ({}, {"transfer_syntax": ImplicitVRLittleEndian}),
    "deflate": ({}, {"transfer_syntax": DeflatedExplicitVRLittleEndian}),
    "RLE": ({"patient_position": "HFP"}, {"transfer_syntax": RLELossless}),
    "JPEG-LS": ({"patient_position": "FFS"}, {"transfer_syntax": JPEGLSLossless}),
    "JPEG 2000": ({}, {"transfer_syntax": JPEG2000Lossless}),
    "JPEG lossless SV1 (DCMTK)": ({}, {"transfer_syntax": JPEG_LOSSLESS_SV1}),
    "JPEG lossless (DCMTK)": ({}, {"transfer_syntax": JPEG_LOSSLESS}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_loads_to_the_same_anatomy(name: str, tmp_path: Path) -> None:
    geometry_args, option_args = VARIANTS[name]
    syntax = option_args.get("transfer_syntax", "")
    if syntax in (JPEG_LOSSLESS, JPEG_LOSSLESS_SV1) and not dcmtk_available():
        pytest.fail("DCMTK (dcmcjpeg) is required by the test suite: run the README's test command")
    geometry = (
        axial_geometry(n_slices=40, **geometry_args)
        if "n_slices" not in geometry_args
        else axial_geometry(**geometry_args)
    )
    write_series(tmp_path, sample(PHANTOM, geometry), geometry, SeriesOptions(**option_args))
    volume = load_series(tmp_path)
    np.testing.assert_array_equal(hu_at(volume, POINTS), PHANTOM(POINTS))
    np.testing.assert_array_equal(canonical_hu_at(volume, POINTS), PHANTOM(POINTS))
    assert np.all(np.diff(volume.slice_z_mm()) > 0), "slices must run inferior → superior"
    expected_flags = {
        "gantry tilt 12°": "gantry_tilt",
        "one slice missing": "missing_slices",
        "uneven spacing": "uneven_spacing",
    }
    if name in expected_flags:
        assert expected_flags[name] in volume.flags
    else:
        assert volume.flags == []


def test_every_voxel_of_a_variant_reads_the_phantom_at_its_own_position(tmp_path: Path) -> None:
    geometry = axial_geometry(patient_position="FFP", transpose_in_plane=True, superior_first=True)
    write_series(tmp_path, sample(PHANTOM, geometry), geometry, SeriesOptions(shuffle_names=True))
    volume = load_series(tmp_path)
    k, a, b = np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij")
    index = np.column_stack([k.ravel(), a.ravel(), b.ravel()])
    np.testing.assert_array_equal(volume.hu.ravel(), PHANTOM(volume.voxel_to_patient(index)))


def test_enhanced_multiframe_ct_loads_to_the_same_anatomy(tmp_path: Path) -> None:
    geometry = axial_geometry(n_slices=40, patient_position="FFS", superior_first=True)
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", sample(PHANTOM, geometry), geometry)
    volume = load_series(path)
    assert volume.source_kind == "dicom-multiframe"
    assert len(set(volume.sop_instance_uids)) == 1
    assert sorted(volume.frame_numbers) == list(range(1, 41))
    np.testing.assert_array_equal(hu_at(volume, POINTS), PHANTOM(POINTS))


def test_lossy_jpeg_baseline_decodes_and_is_flagged(tmp_path: Path) -> None:
    if not dcmtk_available():
        pytest.fail("DCMTK (dcmcjpeg) is required by the test suite: run the README's test command")
    geometry = axial_geometry(n_slices=12)
    hu = (np.clip(sample(PHANTOM, geometry), -1024, 3056) // 16 * 16).astype(np.int16)
    write_series(
        tmp_path,
        hu,
        geometry,
        SeriesOptions(bits=8, rescale_slope=16, transfer_syntax="1.2.840.10008.1.2.4.50"),
    )
    volume = load_series(tmp_path)
    assert "lossy_compression" in volume.flags
    # Lossy 8-bit JPEG of a blocky phantom: close, not equal (DCMTK also rewrites the rescale slope).
    assert float(np.median(np.abs(volume.hu.astype(float) - hu))) <= 48
    assert float(np.corrcoef(volume.hu.ravel(), hu.ravel())[0, 1]) > 0.98


@pytest.mark.slow  # 25 random geometries written and read again; the named variants above are fast
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    position=st.sampled_from(["HFS", "HFP", "FFS", "FFP"]),
    transpose=st.booleans(),
    superior_first=st.booleans(),
    rotation=st.floats(-10, 10),
    tilt=st.floats(-15, 15),
    pixel=st.sampled_from([1.5, 2.0, 3.0]),
    slice_spacing=st.sampled_from([1.5, 2.5, 3.0]),
    syntax=st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless]),
    shuffle=st.booleans(),
)
def test_property_any_geometry_reads_the_same_hu_at_the_same_patient_point(
    tmp_path_factory: pytest.TempPathFactory,
    position: str,
    transpose: bool,
    superior_first: bool,
    rotation: float,
    tilt: float,
    pixel: float,
    slice_spacing: float,
    syntax: str,
    shuffle: bool,
) -> None:
    size = round(150 / pixel)
    geometry = axial_geometry(
        rows=size,
        columns=size,
        pixel_spacing=(pixel, pixel),
        n_slices=round(150 / slice_spacing),
        slice_spacing=slice_spacing,
        patient_position=position,
        transpose_in_plane=transpose,
        superior_first=superior_first,
        in_plane_rotation_deg=rotation,
        tilt_deg=tilt,
    )
    out = tmp_path_factory.mktemp("variant")
    write_series(
        out,
        sample(PHANTOM, geometry),
        geometry,
        SeriesOptions(transfer_syntax=syntax, shuffle_names=shuffle, wrong_instance_numbers=shuffle),
    )
    volume = load_series(out)
    np.testing.assert_array_equal(hu_at(volume, POINTS), PHANTOM(POINTS))
    np.testing.assert_array_equal(canonical_hu_at(volume, POINTS), PHANTOM(POINTS))
