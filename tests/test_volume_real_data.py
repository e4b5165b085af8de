"""The loader on the real CT data in ../shared/data (facts from its README)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from workers.load.source import load_series


def test_vendor_jpeg2000_series_loads_with_hu_of_the_decoded_pixels(example_ct_dicom: Path) -> None:
    volume = load_series(example_ct_dicom)
    assert volume.shape == (20, 512, 512)
    assert volume.hu.dtype == np.int16
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    z = volume.slice_z_mm()
    assert z[0] == pytest.approx(-804.5) and z[-1] == pytest.approx(-766.5)
    assert np.all(np.diff(z) > 0)
    # Independent decode: each file's pixels × slope + intercept, matched by its own position.
    for path in sorted(example_ct_dicom.iterdir()):
        ds = pydicom.dcmread(path)
        k = int(np.argmin(np.abs(z - float(ds.ImagePositionPatient[2]))))
        expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.hu[k], expected)
        assert volume.sop_instance_uids[k] == ds.SOPInstanceUID
    assert int(volume.hu.min()) == -1024 and int(volume.hu.max()) == 1839
    # InstanceNumber runs opposite to z in this series; the loader must not have used it.
    numbers = [int(h.InstanceNumber) for h in volume.headers]
    assert numbers[0] == 286 and numbers[-1] == 267
    assert volume.patient.weight_kg == pytest.approx(79.0)
    assert volume.patient.height_m is None and volume.patient.sex is None
    assert volume.acquisition["contrast_agent"]
    # Rows run anterior→posterior, columns right→left: no reordering needed for a canonical view.
    view = volume.canonical()
    assert view.orientation.order == (0, 1, 2) and view.orientation.flip == (False, False, False)


def test_vendor_series_with_empty_uids_still_loads(example_ct_dicom_raw: Path) -> None:
    volume = load_series(example_ct_dicom_raw.parent)  # recursive; the NIfTI beside it is skipped
    assert volume.shape == (20, 512, 512)
    assert volume.skipped_files == {"not DICOM": 1}
    assert "SeriesInstanceUID is empty" in " ".join(volume.series.notes if volume.series else [])
    # The SOP Instance UIDs come from the file meta information when the dataset's are empty.
    assert all(uid.startswith("1.3.12.2.1107.5.1.4.60064") for uid in volume.sop_instance_uids)


def test_nifti_loads_with_the_right_geometry(example_ct_path: Path) -> None:
    volume = load_series(example_ct_path)
    image = nib.load(str(example_ct_path))
    data = np.asarray(image.dataobj)
    assert volume.source_kind == "nifti"
    assert volume.shape == (112, 122, 101)
    assert volume.spacing == (3.0, 3.0, 3.0)
    assert volume.source_slice_axis == 2
    np.testing.assert_array_equal(volume.source_slice_index, np.arange(112))
    np.testing.assert_array_equal(volume.source_slice(74), data[:, :, 74])
    # RAS origin (-177.96, 11.32, 94.30) is LPS (177.96, -11.32, 94.30); i runs toward the
    # patient's right (LPS −x), j toward anterior (LPS −y), k toward superior.
    origin = volume.voxel_to_patient([0, 0, 0])[0]
    assert origin == pytest.approx([177.96, -11.32, 94.30], abs=0.01)
    assert volume.voxel_to_patient([0, 1, 0])[0] - origin == pytest.approx([-3, 0, 0])
    assert volume.voxel_to_patient([0, 0, 1])[0] - origin == pytest.approx([0, -3, 0])
    assert volume.voxel_to_patient([1, 0, 0])[0] - origin == pytest.approx([0, 0, 3])
    assert volume.slice_z_mm()[[0, -1]] == pytest.approx([94.30, 427.30], abs=0.01)
    view = volume.canonical()
    assert view.hu.shape == (112, 101, 122)
    # Canonical: anterior at the top (row 0 = largest j), patient right on the left (col 0 = largest i).
    np.testing.assert_array_equal(view.hu[74, 0, 0], data[121, 100, 74])


def test_derived_dicom_series_from_nifti_is_the_same_anatomy(
    example_ct_path: Path, example_ct_derived_dicom: Path
) -> None:
    nifti = load_series(example_ct_path)
    dicom = load_series(example_ct_derived_dicom)
    assert dicom.series is not None and dicom.series.image_type[0] == "DERIVED"
    assert dicom.shape[0] == nifti.shape[0]
    assert np.allclose(dicom.slice_z_mm(), nifti.slice_z_mm())
    rng = np.random.default_rng(0)
    index = np.column_stack([rng.integers(0, n, 300) for n in nifti.shape])
    points = nifti.voxel_to_patient(index)
    back = np.rint(dicom.patient_to_voxel(points)).astype(int)
    np.testing.assert_array_equal(
        dicom.hu[back[:, 0], back[:, 1], back[:, 2]], nifti.hu[index[:, 0], index[:, 1], index[:, 2]]
    )
