"""Deflate bombs (#18): one upload or a few stored files must never take the node's memory.

Found by a tester with the node under a 1.5 GiB memory limit: a ~1 MB Deflated Explicit VR Little
Endian C-STORE inflated to 1 GiB inside the node (2.2 GB peak; the kernel killed the node), and
small CT slices carrying a private element of 384 MB of zeros were stored and then inflated, all at
once, whenever their study was planned. Now a deflated dataset is inflated as a stream under a
ceiling (``max_inflated_mb``, workers/load/deflate.py): beyond it the C-STORE is refused with 0xA700,
and stored files beyond it are skipped when a study is planned. Here the node runs under
``prlimit --data`` (1.5 GiB, as the tester's), receives the bomb over a real association while a
study arrives with DCMTK's storescu, and its peak memory is read from /proc.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.reliability import recorded
from tests.test_fuzz_store import raw_sending
from tests.test_node_support import copy_study, start_node, storescu, study_status, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

LIMIT_BYTES = 1536 << 20


def deflated_ct(
    path: Path, blob_mb: int, study_uid: str | None = None, series_uid: str | None = None, z: float = 0.0
) -> Path:
    """A 16x16 CT slice in Deflated Explicit VR Little Endian with a private element of ``blob_mb``
    MB of zeros (about 1 kB per MB once deflated)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "CT", "BOMB-0001", "Bomb^Test"
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
    if blob_mb:
        ds.add_new(0x00091010, "OB", bytes(blob_mb << 20))
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.zeros((16, 16), np.int16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def peak_mb(pid: int) -> float:
    """The process' peak resident memory (VmHWM), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.reliability
def test_a_deflate_bomb_is_refused_and_the_node_stays_up(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    bomb = deflated_ct(tmp_path / "bomb.dcm", 1024)
    assert bomb.stat().st_size < 2 << 20, "a 1 GiB dataset in a small upload"
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    with recorded(
        "deflate bomb (1 MB upload of 1 GiB), node under a 1.5 GiB limit, a study alongside"
    ) as tally:
        tally.notes = "prlimit --data=1.5 GiB on the node; the bomb over pynetdicom, the study with storescu"
        node = start_node(tmp_path / "data", stable_seconds=2, prefix=["prlimit", f"--data={LIMIT_BYTES}"])
        try:
            ae = AE(ae_title="BOMBER")
            ae.add_requested_context(CTImageStorage, [DeflatedExplicitVRLittleEndian])
            with raw_sending():
                assoc = ae.associate("127.0.0.1", node.port, ae_title="BODYCOMP")
                assert assoc.is_established
                status = assoc.send_c_store(bomb)
                assoc.release()
            assert int(status.Status) == 0xA700, "the bomb was not refused as out of resources"
            assert node.process.poll() is None, node.text()
            out = storescu(node.port, files)
            wait_for(
                "the study to be analysed",
                lambda: (study_status(node.data_dir, study_uid) or {}).get("state") in ("done", "failed"),
                300,
                node.log,
            )
            state = (study_status(node.data_dir, study_uid) or {}).get("state")
            peak = peak_mb(node.process.pid)
            alive = node.process.poll() is None
        finally:
            node.stop()
        tally.sent = len(files) + 1
        tally.refused = int(int(status.Status) == 0xA700)
        tally.acknowledged = out.count("Received Store Response (Success)")
        tally.stored = len(list((tmp_path / "data" / "spool" / "studies").glob("*/*/*.dcm")))
        tally.analysed, tally.expected_analysed = int(state == "done"), 1
        tally.extra = {"node_peak_MB": round(peak), "bomb_upload_MB": round(bomb.stat().st_size / 2**20, 2)}
        assert state == "done", out
        assert alive, node.text()
        assert tally.acknowledged == tally.stored == len(files)
        assert peak < 600, "the node held the inflated dataset"
        assert "beyond 256 MB" in node.text()


def test_stored_bombs_are_skipped_when_their_study_is_planned(tmp_path: Path) -> None:
    """Four slices of 384 MB each, stored before the ceiling existed (or under a higher one): the
    planner skips them without inflating them, and chooses the real series beside them."""
    study = generate_uid()
    series = generate_uid()
    root = tmp_path / "spool" / study
    (root / "bombs").mkdir(parents=True)
    for k in range(4):
        deflated_ct(root / "bombs" / f"{k}.dcm", 384, study, series)
    ct = root / "ct"
    ct.mkdir()
    ct_series = generate_uid()
    for k in range(5):
        deflated_ct(ct / f"{k}.dcm", 0, study, ct_series, z=float(k))
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from node.schedule.dispatch import plan_study
        from workers.load.scan import scan_dicom
        from workers.load.selection import SelectionPolicy
        scan = scan_dicom(Path({str(root)!r}), 256 << 20)
        print(len(scan.files), scan.skipped)
        print(plan_study(Path({str(root)!r}), SelectionPolicy(), False, 256 << 20))
        # (VmHWM, not ru_maxrss: that keeps the forking parent's peak across exec)
        hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")]
        print(int(hwm[0].split()[1]) // 1024)
        """
    )
    run = subprocess.run(
        ["prlimit", f"--data={LIMIT_BYTES}", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[1],
    )
    assert run.returncode == 0, run.stderr
    counts, plan, peak = run.stdout.strip().splitlines()
    assert counts == "5 {'deflated dataset beyond the size limit': 4}"
    assert f"series=('{ct_series}',)" in plan
    assert int(peak) < 400, f"planning held {peak} MB"


def test_the_inflater_stops_at_the_ceiling_and_keeps_the_header(tmp_path: Path) -> None:
    """workers/load/deflate.py on its own: counted and written in chunks, refused beyond the limit,
    and the inflated copy reads as the same dataset in Explicit VR Little Endian."""
    import pydicom

    from workers.load.deflate import InflateLimitError, file_inflated_size, inflate_to_file

    small = deflated_ct(tmp_path / "small.dcm", 1)
    assert (1 << 20) < file_inflated_size(small) < (2 << 20)
    with pytest.raises(InflateLimitError, match="beyond 0 MB"):
        file_inflated_size(small, limit=1000)
    plain = pydicom.dcmread(inflate_to_file(small, tmp_path / "plain.dcm"))
    original = pydicom.dcmread(small)
    assert plain.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert plain.SOPInstanceUID == original.SOPInstanceUID and plain.PixelData == original.PixelData
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(small.read_bytes()[:400] + b"\xff" * 400)
    with pytest.raises(InflateLimitError, match="not a deflate stream"):
        file_inflated_size(garbage)
