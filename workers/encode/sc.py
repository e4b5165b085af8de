"""The colour overlay as a Secondary Capture, for PACS viewers that cannot show SEG.

Patient and study come from the analysed CT instance (``SCImage.from_ref_dataset``), never
placeholders; the picture is a new series in the same study, ImageType DERIVED\\SECONDARY,
referencing the CT instance it was made from. Its text holds measurements, not patient
identifiers, so Burned In Annotation is NO.
"""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset

from workers.encode.codes import coding_scheme_identification
from workers.encode.inputs import MANUFACTURER, MODEL_NAME, EncodeInput


def build_overlay_sc(data: EncodeInput) -> hd.sc.SCImage:
    central = data.central
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=central,
        pixel_array=data.overlay_rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=data.identity.series_uid("overlay"),
        series_number=data.series_number(3),
        sop_instance_uid=data.identity.instance_uid("overlay"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.ManufacturerModelName = MODEL_NAME
    sc.SoftwareVersions = data.version
    sc.SeriesDescription = "bodycomp L3 body composition overlay"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"
    sc.BodyPartExamined = "ABDOMEN"  # what the picture shows, whatever the CT's wider label
    sc.ConversionType = "WSD"
    source = Dataset()
    source.ReferencedSOPClassUID = central.SOPClassUID
    source.ReferencedSOPInstanceUID = central.SOPInstanceUID
    sc.SourceImageSequence = [source]
    sc.DerivationDescription = "L3 slice with automatic tissue segmentation overlaid"
    sc.CodingSchemeIdentificationSequence = [coding_scheme_identification()]
    return sc
