"""The DICOM Segmentation of SM, IMAT, VAT and SAT at L3 (highdicom).

BINARY, uncompressed, one frame per segment per analysed CT slice, pixel-aligned with the source
instance (the label image is already in the source's own pixel grid, so nothing is resampled and
nothing can be flipped). ``omit_empty_frames=False`` keeps a frame for every segment even when a
tissue is absent, so viewers and the SR's frame references see a regular layout.

BINARY frames are packed 1 bit per pixel with no padding between frames. When a frame's pixel
count is not a multiple of 8 (or its width is not: e.g. a 101 × 122 slice), frames no longer start
on byte boundaries and the SEG cannot be shown in OHIF over DICOMweb: OHIF 3.13's parser (dcmjs)
rejects the pad byte that makes the Pixel Data even-length ("calculated length … does not match
the actual length"), and its per-frame fallback fails because Orthanc cannot cut such frames out
("Bad number of columns for a black-and-white image"). Found by tests/test_viewer_ohif.py. For
those grids only, the SEG is FRACTIONAL with Fractional Type OCCUPANCY and values 0 or the maximum
(8 bits per pixel): the same masks, which OHIF reads as "pseudo-binary" and 3D Slicer thresholds.
Clinical matrices (512 × 512, 768 × 768, …) stay BINARY.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.sr.codedict import codes

from workers.encode.codes import TISSUES, coding_scheme_identification
from workers.encode.inputs import MANUFACTURER, MODEL_NAME, EncodeInput
from workers.revision import OUTLINE

ALGORITHM_NAME = "bodycomp classical L3 body composition"


def algorithm_identification(version: str, preset: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.MorphologicalOperations,
        version=version,
        parameters={"hu_preset": preset},
    )


def byte_aligned(rows: int, columns: int) -> bool:
    """True when 1-bit frames of this size start and end on byte boundaries, row by row."""
    return columns % 8 == 0 and (rows * columns) % 8 == 0


def _pixels(data: EncodeInput) -> tuple[npt.NDArray[np.generic], hd.seg.SegmentationTypeValues]:
    """The label image as BINARY, or as a one-hot OCCUPANCY stack for grids 1-bit frames cannot fit."""
    rows, columns = data.labels.shape[1:]
    if byte_aligned(rows, columns):
        return data.labels, hd.seg.SegmentationTypeValues.BINARY
    numbers = np.array([t.label for t in TISSUES], dtype=data.labels.dtype)
    one_hot = (data.labels[..., None] == numbers[None, None, None, :]).astype(np.uint8)
    return one_hot, hd.seg.SegmentationTypeValues.FRACTIONAL


def _algorithm_type(data: EncodeInput) -> hd.seg.SegmentAlgorithmTypeValues:
    """SEMIAUTOMATIC when a reader's edited masks are measured (a correction of the outlines)."""
    if data.revision is not None and OUTLINE in data.revision.kinds:
        return hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    return hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC


def build_segmentation(data: EncodeInput) -> hd.seg.Segmentation:
    preset = str(data.result["hu_preset"]["id"])
    algorithm = algorithm_identification(data.version, preset)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=t.label,
            segment_label=f"L3 {t.name}",
            segmented_property_category=t.category,
            segmented_property_type=t.type,
            algorithm_type=_algorithm_type(data),
            algorithm_identification=algorithm,
            tracking_uid=data.identity.uid(f"tracking/{t.key}"),
            tracking_id=f"L3 {t.short}",
            anatomic_regions=[t.anatomic_region] if t.anatomic_region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*t.rgb),
        )
        for t in TISSUES
    ]
    pixels, segmentation_type = _pixels(data)
    seg = hd.seg.Segmentation(
        source_images=list(data.source_slices),
        pixel_array=pixels,
        segmentation_type=segmentation_type,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
        segment_descriptions=descriptions,
        series_instance_uid=data.identity.series_uid("seg"),
        series_number=data.series_number(1),
        sop_instance_uid=data.identity.instance_uid("seg"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=data.version,
        device_serial_number="n/a",
        content_label="BODYCOMP_L3",
        content_description=(
            "Body composition at L3 (automatic, review before use)"
            if data.revision is None
            else "Body composition at L3 (corrected, review before use)"
        ),
        omit_empty_frames=False,
    )
    seg.SeriesDescription = "bodycomp L3 body composition SEG"
    seg.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return seg
