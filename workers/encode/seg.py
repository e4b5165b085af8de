"""The DICOM Segmentation of SM, IMAT, VAT and SAT at L3 (highdicom).

BINARY, uncompressed, one frame per segment per analysed CT slice, pixel-aligned with the source
instance (the label image is already in the source's own pixel grid, so nothing is resampled and
nothing can be flipped). ``omit_empty_frames=False`` keeps a frame for every segment even when a
tissue is absent, so viewers and the SR's frame references see a regular layout.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.sr.codedict import codes

from workers.encode.codes import TISSUES, coding_scheme_identification
from workers.encode.inputs import MANUFACTURER, MODEL_NAME, EncodeInput

ALGORITHM_NAME = "bodycomp classical L3 body composition"


def algorithm_identification(version: str, preset: str) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME,
        family=codes.cid7162.MorphologicalOperations,
        version=version,
        parameters={"hu_preset": preset},
    )


def build_segmentation(data: EncodeInput) -> hd.seg.Segmentation:
    preset = str(data.result.get("preset", {}).get("id", data.identity.preset))
    algorithm = algorithm_identification(data.version, preset)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=t.label,
            segment_label=f"L3 {t.name}",
            segmented_property_category=t.category,
            segmented_property_type=t.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=data.identity.uid(f"tracking/{t.key}"),
            tracking_id=f"L3 {t.short}",
            anatomic_regions=[t.anatomic_region] if t.anatomic_region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*t.rgb),
        )
        for t in TISSUES
    ]
    seg = hd.seg.Segmentation(
        source_images=list(data.source_slices),
        pixel_array=data.labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
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
        content_description="Body composition at L3 (automatic, review before use)",
        omit_empty_frames=False,
    )
    seg.SeriesDescription = "bodycomp L3 body composition SEG"
    seg.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return seg
