"""Every input the loader must refuse gets a clear one-line error (and exit code 2 from the CLI)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.operate.cli import main
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from workers.errors import GeometryError, InputError, NoSeriesError, PixelDataError
from workers.load.source import load_series
from workers.load.stack import StackPolicy

PHANTOM = block_phantom()


def good_series(path: Path, n_slices: int = 12, **geometry: object) -> list[Path]:
    g = axial_geometry(n_slices=n_slices, **geometry)  # type: ignore[arg-type]
    return write_series(path, sample(PHANTOM, g), g)


def rewrite(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def assert_cli_refuses(path: Path, capsys: pytest.CaptureFixture[str], *words: str) -> str:
    code = main(["inspect", str(path)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("bodycomp: error:") and "\n" not in err and "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_refuses(tmp_path / "nope", capsys, "no such file")


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_refuses(tmp_path, capsys, "no DICOM files")


def test_non_image_files_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    assert_cli_refuses(tmp_path, capsys, "no DICOM files", "3 not DICOM")


def test_no_ct_series_among_other_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = axial_geometry(n_slices=4)
    write_series(tmp_path / "mr", sample(PHANTOM, g), g, SeriesOptions(modality="MR", series_number=5))
    write_series(
        tmp_path / "scout",
        sample(PHANTOM, g),
        g,
        SeriesOptions(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), series_number=1),
    )
    with pytest.raises(NoSeriesError) as error:
        load_series(tmp_path)
    assert "modality is MR" in str(error.value) and "LOCALIZER" in str(error.value)
    assert_cli_refuses(tmp_path, capsys, "no CT series")


def test_coronal_reformat_is_not_axial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = good_series(tmp_path)
    for path in paths:
        rewrite(path, lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]))
    assert_cli_refuses(tmp_path, capsys, "not axial")


def test_truncated_pixel_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = good_series(tmp_path)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 3000])
    with pytest.raises(InputError) as error:
        load_series(tmp_path)
    assert paths[5].name in str(error.value)
    assert_cli_refuses(tmp_path, capsys, paths[5].name)


def test_wrong_pixel_data_length(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = good_series(tmp_path)
    rewrite(paths[3], lambda ds: setattr(ds, "PixelData", ds.PixelData[:-256]))
    with pytest.raises(PixelDataError):
        load_series(tmp_path)
    assert_cli_refuses(tmp_path, capsys, paths[3].name, "pixel data")


def test_missing_pixel_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = good_series(tmp_path)
    rewrite(paths[2], lambda ds: delattr(ds, "PixelData"))
    assert_cli_refuses(tmp_path, capsys, paths[2].name, "no pixel data")


def test_inconsistent_rows_and_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_series(tmp_path / "a", n_slices=12)
    g = axial_geometry(rows=48, columns=48, n_slices=1)
    other = write_series(tmp_path / "b", sample(PHANTOM, g), g)[0]
    first = pydicom.dcmread(next((tmp_path / "a").iterdir()))

    def same_series(ds: pydicom.Dataset) -> None:
        ds.SeriesInstanceUID = first.SeriesInstanceUID
        ds.FrameOfReferenceUID = first.FrameOfReferenceUID
        ds.ImagePositionPatient = [*first.ImagePositionPatient[:2], 500.0]

    rewrite(other, same_series)
    with pytest.raises(GeometryError):
        load_series(tmp_path)
    assert_cli_refuses(tmp_path, capsys, "inconsistent Rows/Columns", "64×64 (12 slices)", "48×48 (1 slices)")


def test_absurd_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = good_series(tmp_path)
    for path in paths:
        rewrite(path, lambda ds: setattr(ds, "Rows", 0))
    assert_cli_refuses(tmp_path, capsys, "Rows")


def test_missing_image_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = good_series(tmp_path)
    rewrite(paths[4], lambda ds: delattr(ds, "ImagePositionPatient"))
    assert_cli_refuses(tmp_path, capsys, paths[4].name, "ImagePositionPatient")


def test_gap_beyond_the_limit_names_the_missing_positions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good_series(tmp_path, n_slices=20, missing=[8, 9, 10])
    # 20 slices 3 mm apart centred on z = 0; slices 8–10 sit at z = −4.5, −1.5 and 1.5 mm.
    assert_cli_refuses(
        tmp_path, capsys, "3 slice(s) missing between slices 7 and 8", "z ≈ -4.5, -1.5, 1.5 mm"
    )


def test_small_gap_is_reported_not_refused(tmp_path: Path) -> None:
    good_series(tmp_path, n_slices=20, missing=[8])
    volume = load_series(tmp_path)
    assert "missing_slices" in volume.flags
    assert volume.gaps[0].missing == 1


def test_gap_limit_is_configurable(tmp_path: Path) -> None:
    good_series(tmp_path, n_slices=20, missing=[8])
    with pytest.raises(GeometryError, match="gaps beyond the limit"):
        load_series(tmp_path, stack=StackPolicy(max_missing_slices=0))


def test_tilt_beyond_the_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good_series(tmp_path, tilt_deg=35.0)
    assert_cli_refuses(tmp_path, capsys, "tilt", "35.0°")


def test_duplicate_positions_keep_one_and_flag(tmp_path: Path) -> None:
    paths = good_series(tmp_path)
    copy = tmp_path / "copy-with-new-uid.dcm"
    rewrite_target = pydicom.dcmread(paths[6])
    rewrite_target.SOPInstanceUID = pydicom.uid.generate_uid()
    rewrite_target.file_meta.MediaStorageSOPInstanceUID = rewrite_target.SOPInstanceUID
    rewrite_target.save_as(copy, enforce_file_format=True)
    (tmp_path / "exact-copy.dcm").write_bytes(paths[2].read_bytes())
    volume = load_series(tmp_path)
    assert volume.shape[0] == 12
    assert "duplicate_positions" in volume.flags
    assert len(set(volume.sop_instance_uids)) == 12


def test_jpeg_extended_12_bit_is_refused_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No maintained permissive decoder here handles 12-bit JPEG Extended; the message must say so."""
    g = axial_geometry(n_slices=4)
    write_series(tmp_path, sample(PHANTOM, g), g, SeriesOptions(transfer_syntax="1.2.840.10008.1.2.4.51"))
    assert_cli_refuses(tmp_path, capsys, "pixel data cannot be decoded", "12-bit")


def test_nifti_that_is_not_nifti(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"this is not gzip")
    assert_cli_refuses(bad, capsys, "broken.nii.gz")
