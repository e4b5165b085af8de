"""A reader's edited SEG flows back through the PACS (issue #23), with a real Orthanc.

The hospital set-up of tests/test_node_orthanc.py: Orthanc routes the CT to ``bodycomp serve`` with
``deploy/orthanc/route-to-bodycomp.lua``, the results come back into the study. Then a reader edits
the outlines as 3D Slicer's Segment Editor would save them: a *new* SEG instance (another series,
another manufacturer, the segments renumbered and relabelled, the node's tissue codes) derived from
the same CT image, with changed pixels. It is stored into Orthanc, whose recipe routes it to the
node; the node measures the reader's masks without segmenting and sends a superseding SEG, SR and
overlay, whose SR areas are the edited masks' areas and which names the SR it supersedes.
"""

from __future__ import annotations

import io
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.orthanc import Orthanc
from tests.test_corrections import areas, identity, predecessor, texts
from tests.test_node_orthanc import routing_orthanc
from tests.test_node_support import copy_study, free_port, start_node, storescu, study_status, wait_for
from tests.timing import quiet_period
from workers.encode.codes import TISSUES

pytestmark = [pytest.mark.network, pytest.mark.slow]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
#: How Slicer would number the reader's segments (not the node's 1..4): SAT, VAT, muscle, IMAT.
READER_NUMBERS = {"sat": 1, "vat": 2, "skeletal_muscle": 3, "imat": 4}


def instances(orthanc: Orthanc, study_uid: str, modality: str) -> list[pydicom.Dataset]:
    query = {"StudyInstanceUID": study_uid, "Modality": modality}
    out = []
    for found in orthanc.post("/tools/find", {"Level": "Instance", "Query": query}):
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{found}/file"
        with urllib.request.urlopen(url, timeout=30) as response:
            out.append(pydicom.dcmread(io.BytesIO(response.read())))
    return out


def edited_seg(ct: pydicom.Dataset, labels: np.ndarray, out: Path) -> dict[str, float]:
    """A reader's SEG of ``ct`` as 3D Slicer would write it; return each tissue's area (cm²)."""
    pixels = np.zeros(labels.shape, dtype=np.uint8)
    descriptions = []
    for tissue in TISSUES:
        number = READER_NUMBERS[tissue.key]
        pixels[labels == tissue.label] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"Segment_{number}",  # Slicer's own names
                segmented_property_category=tissue.category,
                segmented_property_type=tissue.type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        )
    descriptions.sort(key=lambda d: int(d.SegmentNumber))
    seg = hd.seg.Segmentation(
        source_images=[ct],
        pixel_array=pixels[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Slicer",
        manufacturer_model_name="3D Slicer",
        software_versions="5.6.2",
        device_serial_number="1",
        omit_empty_frames=False,
    )
    seg.SeriesDescription = "L3 tissues (edited)"
    seg.save_as(out, enforce_file_format=True)
    spacing = [float(v) for v in ct.PixelSpacing]
    return {t.key: float((labels == t.label).sum()) * spacing[0] * spacing[1] / 100 for t in TISSUES}


def test_an_edited_seg_through_orthanc_gives_an_sr_with_the_edited_areas(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    node_port = free_port()
    data = tmp_path / "data"
    with routing_orthanc(tmp_path, node_port) as orthanc:
        node = start_node(
            data,
            "--destination",
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "--allow-ae",
            "ORTHANC",
            port=node_port,
        )
        try:
            assert "Failed" not in storescu(orthanc.dicom_port, files, called=orthanc.ae_title)
            [first_sr] = wait_for(
                "the first SR in Orthanc", lambda: instances(orthanc, study_uid, "SR"), 120, node.log
            )
            [first_seg] = instances(orthanc, study_uid, "SEG")
            ct_uid = str(
                first_seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            )
            ct = next(
                pydicom.dcmread(f)
                for f in files
                if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == ct_uid
            )
            stored = next(data.glob(f"results/{study_uid}/*/*/out/l3_labels.npy"))
            labels = np.load(stored)
            # The reader's edit: the muscle of the left half of the image is not muscle (the kidney
            # was outlined with it, say) and becomes unlabelled; a strip of VAT becomes IMAT.
            edited = labels.copy()
            half = edited.shape[1] // 2
            edited[:, :half][edited[:, :half] == 1] = 0
            vat_rows = np.nonzero((edited == 3).any(axis=1))[0]
            strip = vat_rows[: max(1, len(vat_rows) // 5)]
            edited[strip] = np.where(edited[strip] == 3, 2, edited[strip])
            expected = edited_seg(ct, edited, tmp_path / "edited_seg.dcm")
            assert (
                expected["skeletal_muscle"]
                < 0.9
                * float(np.count_nonzero(labels == 1))
                * float(ct.PixelSpacing[0])
                * float(ct.PixelSpacing[1])
                / 100
            )
            orthanc.upload(tmp_path / "edited_seg.dcm")

            new_sr = wait_for(
                "the superseding SR in Orthanc",
                lambda: [
                    ds
                    for ds in instances(orthanc, study_uid, "SR")
                    if ds.SOPInstanceUID != first_sr.SOPInstanceUID
                ],
                120,
                node.log,
            )[0]
            # each tissue's area twice: the viewer's group and the segment's group (workers/encode/sr.py)
            assert areas(new_sr) == pytest.approx(
                sorted(v for v in expected.values() for _ in (0, 1)), abs=0.006
            )
            assert predecessor(new_sr) == identity(first_sr)
            said = texts(new_sr)
            assert any("tissue outlines corrected by reader SEG" in t for t in said), said
            wait_for(
                "the new SEG and overlay in Orthanc",
                lambda: (
                    len(instances(orthanc, study_uid, "SEG")) == 3
                    and len(instances(orthanc, study_uid, "OT")) == 2
                ),
                60,
                node.log,
            )
            study = study_status(data, study_uid)
            assert study is not None and [j["state"] for j in study["jobs"]] == ["superseded", "done"]
            # the node's own results, stored in Orthanc, are not routed back (Manufacturer "bodycomp"):
            # past Orthanc's stable age, its recipe has routed the CT and the reader's SEG, nothing else
            quiet_period(2 + 2)
            routed = [
                line.split("routed stable ")[1].split()[0]
                for line in orthanc.log.read_text().splitlines()
                if "bodycomp: routed stable" in line
            ]
            assert sorted(routed) == ["CT", "SEG"], routed
            study = study_status(data, study_uid)
            assert study is not None and len(study["jobs"]) == 2 and study["state"] == "done", study
        finally:
            node.stop()
