"""The TID 1500 Imaging Measurement Report (Comprehensive 3D SR) of the L3 measurements.

Two groups per tissue, on purpose, told apart by their Activity Session text:

* a planar ROI group that references the tissue's SEG segment (3D Slicer's Quantitative
  Reporting tabulates these), and
* a measurement group for viewers: area and mean HU "inferred from" a point deep inside the tissue
  (TID 300), a Comment with the label to show ("Skeletal muscle: 135.36 cm2, mean 49.5 HU") and
  the Cornerstone tracking identifier of an arrow annotation.

OHIF 3.13 reads a TID 1500 report only if *every* measurement it assembles has spatial
coordinates: a group without any (a SEG-only group, a group of derived numbers) makes its SR loader
fail on ``coords[0]`` and the whole viewer falls into its error page (found by
tests/test_viewer_ohif.py). OHIF assembles measurements by Tracking Unique Identifier, so the two
groups of a tissue share one Tracking UID (the segment's, also in the SEG): OHIF merges them into
one measurement that has the point, and Slicer still finds the segment reference. The viewer group
comes first (OHIF takes the first Tracking Identifier and the first numeric item's coordinates).

Why a labelled point and not the tissue's outline: once a reader "tracks" the measurements, OHIF
turns each into one of its tools and shows that tool's numbers. An outline became a freehand ROI
whose area and mean OHIF recomputed from the single contour it drew ("Skeletal muscle 6764 mm2"
for a report of 135.36 cm2, #21). An arrow annotation has no geometry to measure: OHIF shows its
label, which is the report's values, read-only and tracked alike. The SEG shows the outlines.
The derived numbers that were measured on the image (SMI, VAT/SAT, IMAT %, body perimeter) are
inferred from the outline of the analysed cross-section (all tissues), which gives that group
coordinates too.

A derived group (TID 1501) holds SMI, BMI, VAT/SAT ratio, IMAT %, the body perimeter, the patient
inputs used and the qualitative evaluations (low skeletal muscle mass, myosteatosis) with the
rule set as the method. A value that cannot be computed is stated as such (see :class:`_Group`), never
left out silently.

The SEG reference is built by hand: highdicom's ``ReferencedSegmentationFrame.from_segmentation``
copies the SEG frame number onto the single-frame CT reference, which dciodvfy rejects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

import workers.encode.codes as c
from workers.encode.contours import deepest_point, largest_outline, polyline_length_mm, to_scoord
from workers.encode.inputs import MANUFACTURER, MODEL_NAME, EncodeInput
from workers.encode.seg import ALGORITHM_NAME
from workers.result import MeasuredResult

OHIF_ARROW = "Cornerstone3DTools@^0.1.0:ArrowAnnotate"
#: The "Activity Session" text of the two groups of each tissue, so that a reader of the SR's
#: content (dsrdump, a research harvest) can tell them apart and counts each tissue once (#21).
DISPLAY_SESSION = "label for viewers: the same values as the segment group of this tissue"
#: (121106, DCM, "Comment"): OHIF takes a measurement's label from it
COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
SEGMENT_SESSION = "the tissue's measurements, referencing its SEG segment"
#: A corrected result says what was corrected, by whom, and from which instance (issue #23).
CORRECTION = c.private("CORRECTN", "Correction of an earlier result")
CORRECTED_FROM = c.private("CORRFROM", "Corrected from instance")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


class _Group:
    """Measurements of one group, plus a coded statement for every value that is missing.

    A value that cannot be computed is not left out silently: it becomes a qualitative evaluation
    whose name is the measurement's concept and whose value says why (e.g. "Not computable: height
    not recorded"). A NUM item without a value (allowed by the standard with a Numeric Value
    Qualifier) would be the other encoding, but highdicom 0.28 cannot read such an SR back and
    viewers are known to trip over it.
    """

    def __init__(self) -> None:
        self.measurements: list[hd.sr.Measurement] = []
        self.missing: list[hd.sr.QualitativeEvaluation] = []

    def add(
        self,
        name: hd.sr.CodedConcept,
        value: float | None,
        unit: hd.sr.CodedConcept,
        *,
        reason: str = "not available",
        derivation: hd.sr.CodedConcept | None = None,
        sites: list[hd.sr.FindingSite] | None = None,
        coordinates: list[hd.sr.CoordinatesForMeasurement] | None = None,
        algorithm: hd.sr.AlgorithmIdentification | None = None,
    ) -> None:
        if value is None:
            label = (
                name
                if derivation is None
                else c.private(f"{name.value}{derivation.value}"[:16], f"{derivation.meaning} {name.meaning}")
            )
            self.missing.append(hd.sr.QualitativeEvaluation(name=label, value=c.not_computable(reason)))
            return
        self.measurements.append(
            hd.sr.Measurement(
                name=name,
                value=value,
                unit=unit,
                derivation=derivation,
                finding_sites=sites,
                referenced_coordinates=coordinates,
                algorithm_id=algorithm,
            )
        )


def _frame_only_segment_references(items: Any) -> int:
    """Drop the segment number from "Referenced Segmentation Frame" image references.

    The Image SOP Instance Reference macro forbids Referenced Segment Number next to Referenced
    Frame Number (dciodvfy: "Shall not be present when ReferencedFrameNumber is present"); the
    SEG frame already identifies its segment. highdicom 0.28 writes both.
    """
    count = 0
    for item in items:
        name = item.get("ConceptNameCodeSequence")
        if item.get("ValueType") == "IMAGE" and name and name[0].CodeValue == "121214":
            for ref in item.ReferencedSOPSequence:
                if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                    del ref.ReferencedSegmentNumber
                    count += 1
        count += _frame_only_segment_references(item.get("ContentSequence", []))
    return count


def _qualitative(name: hd.sr.CodedConcept, value: bool | None) -> hd.sr.QualitativeEvaluation:
    answer = c.UNDETERMINED if value is None else c.PRESENT if value else c.ABSENT
    return hd.sr.QualitativeEvaluation(name=name, value=answer)


def _segment_frame(seg: hd.seg.Segmentation, segment_number: int, ct_uid: str) -> int:
    """The SEG frame (1-based) holding ``segment_number`` on the CT instance ``ct_uid``."""
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        sources = {
            str(src.ReferencedSOPInstanceUID)
            for derivation in frame.DerivationImageSequence
            for src in derivation.SourceImageSequence
        }
        if segment == segment_number and ct_uid in sources:
            return index
    raise ValueError(f"SEG has no frame for segment {segment_number} on {ct_uid}")


def _marker(
    data: EncodeInput, point_rc: tuple[float, float] | None
) -> list[hd.sr.CoordinatesForMeasurement] | None:
    """A point on the analysed CT image, as TID 300 "inferred from" coordinates (where a label goes;
    viewers draw a pointer there with the label beside it)."""
    if point_rc is None:
        return None
    return _on_image(data, hd.sr.GraphicTypeValues.POINT, [point_rc])


def _on_image(
    data: EncodeInput, graphic_type: hd.sr.GraphicTypeValues, points_rc: Any
) -> list[hd.sr.CoordinatesForMeasurement]:
    """``points_rc`` (row, col) on the analysed CT image, as TID 300 "inferred from" coordinates."""
    central = data.central
    return [
        hd.sr.CoordinatesForMeasurement(
            graphic_type=graphic_type,
            graphic_data=to_scoord(points_rc),
            source_image=hd.sr.SourceImageForRegion(str(central.SOPClassUID), str(central.SOPInstanceUID)),
        )
    ]


def _labelled(group: Any, text: str) -> Any:
    """Add the viewer's label (a Comment, which OHIF shows as the measurement's text) to a group."""
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=COMMENT, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    return group


def _region(data: EncodeInput, mask: Any) -> list[hd.sr.CoordinatesForMeasurement] | None:
    """The outline of ``mask`` on the analysed CT image, as TID 300 "inferred from" coordinates."""
    outline = largest_outline(mask)
    return None if outline is None else _on_image(data, hd.sr.GraphicTypeValues.POLYLINE, outline)


def _tissue_groups(
    data: EncodeInput, seg: hd.seg.Segmentation, algorithm: hd.sr.AlgorithmIdentification
) -> list[Any]:
    central = data.central
    ct_class, ct_uid = str(central.SOPClassUID), str(central.SOPInstanceUID)
    l3 = [hd.sr.FindingSite(c.L3_VERTEBRA)]
    tissues = data.result["tissues"]
    groups: list[Any] = []
    labels = data.labels[data.central_index]
    needs_review = data.result["qc"]["status"] != "ok"
    for tissue in c.TISSUES:
        values = tissues[tissue.key]
        area, mean, sd = _number(values["area_cm2"]), _number(values["mean_hu"]), _number(values["sd_hu"])
        empty = "no pixels of this tissue"
        marker = _marker(data, deepest_point(labels == tissue.label) or deepest_point(labels > 0))
        tracking_uid = data.identity.uid(f"tracking/{tissue.key}")
        if marker is not None and (area is not None or mean is not None):
            labelled = _Group()
            labelled.add(c.AREA, area, c.UNIT_CM2, sites=l3, coordinates=marker)
            labelled.add(c.ATTENUATION, mean, c.UNIT_HU, derivation=c.MEAN, sites=l3, coordinates=marker)
            groups.append(
                _labelled(
                    hd.sr.MeasurementsAndQualitativeEvaluations(
                        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=OHIF_ARROW),
                        finding_type=tissue.type,
                        finding_sites=l3,
                        algorithm_id=algorithm,
                        session=DISPLAY_SESSION,
                        measurements=labelled.measurements,
                        qualitative_evaluations=labelled.missing or None,
                    ),
                    viewer_label(tissue.name, area, mean, review=needs_review),
                )
            )
        group = _Group()
        group.add(c.AREA, area, c.UNIT_CM2, sites=l3, reason="tissue not measured")
        group.add(c.ATTENUATION, mean, c.UNIT_HU, derivation=c.MEAN, sites=l3, reason=empty)
        group.add(c.ATTENUATION, sd, c.UNIT_HU, derivation=c.STANDARD_DEVIATION, sites=l3, reason=empty)
        reference = hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            frame_number=_segment_frame(seg, tissue.label, ct_uid),
            segment_number=tissue.label,
            source_image=hd.sr.SourceImageForSegmentation(ct_class, ct_uid),
        )
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid, identifier=f"L3 {tissue.short}"
                ),
                referenced_segment=reference,
                finding_type=tissue.type,
                finding_sites=l3,
                algorithm_id=algorithm,
                session=SEGMENT_SESSION,
                measurements=group.measurements,
                qualitative_evaluations=group.missing or None,
            )
        )
    contour = data.peritoneal_contour_px
    if contour is not None and len(contour) >= 2:
        spacing = tuple(float(v) for v in central.PixelSpacing)
        length = round(polyline_length_mm(np.asarray(contour), (spacing[0], spacing[1])), 1)
        anterior = tuple(float(v) for v in np.asarray(contour)[int(np.argmin(np.asarray(contour)[:, 0]))])
        groups.append(
            _labelled(
                hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=data.identity.uid("ohif/peritoneal-line"), identifier=OHIF_ARROW
                    ),
                    finding_type=c.PERITONEAL_LINE,
                    finding_sites=l3,
                    algorithm_id=algorithm,
                    measurements=[
                        hd.sr.Measurement(
                            name=c.LENGTH,
                            value=length,
                            unit=c.UNIT_MM,
                            referenced_coordinates=_marker(data, (anterior[0], anterior[1])),
                        )
                    ],
                ),
                f"{c.PERITONEAL_LINE.meaning}: {length:.1f} mm long",
            )
        )
    return groups


def viewer_label(name: str, area_cm2: float | None, mean_hu: float | None, review: bool = False) -> str:
    """The text a viewer shows for a tissue: the report's own values, never the viewer's, and
    "QC: review" when the analysis asks for it (the reasons are in the report's Qualitative
    Evaluations and on the overlay: a viewer that shows only labels still shows the verdict).

    Why: once a reader "tracks" the measurements, OHIF recomputes the statistics of any outline it
    can draw from the geometry it drew (the largest contour of the tissue: "Skeletal muscle 6764 mm2"
    for 135.36 cm2, #21). A labelled point has no geometry to measure: OHIF shows this text.
    """
    area = "n/a" if area_cm2 is None else f"{area_cm2:.2f} cm2"
    mean = "n/a" if mean_hu is None else f"{mean_hu:.1f} HU"
    return f"{name}: {area}, mean {mean}" + (" (QC: review)" if review else "")


@dataclass(frozen=True)
class UsedInputs:
    """Height, weight, sex actually used (after plausibility checks) and where they came from."""

    height_m: float | None
    weight_kg: float | None
    sex: str | None
    source: str
    """The sources of the values used, joined (``none`` when none was used)."""


def used_inputs(result: MeasuredResult) -> UsedInputs:
    """The patient values of ``result`` the metrics used, and from where."""
    given = result["patient_inputs"]
    height, weight, sex = given["height_m"], given["weight_kg"], given["sex"]
    sources = [
        str(entry["source"])
        for entry in (height, weight, sex)
        if entry["source"] and entry["value"] is not None
    ]
    source = ", ".join(sorted(set(sources))) or "none"
    return UsedInputs(_number(height["value"]), _number(weight["value"]), sex["value"], source)


def _derived_group(data: EncodeInput, algorithm: hd.sr.AlgorithmIdentification) -> Any:
    metrics = data.result["metrics"]
    patient = used_inputs(data.result)
    rule_set = str(data.result["rule_set"]["id"])
    l3 = [hd.sr.FindingSite(c.L3_VERTEBRA)]
    height, weight = patient.height_m, patient.weight_kg
    no_height = "height not recorded or implausible" if height is None else "not available"
    no_weight = "weight not recorded" if weight is None else no_height
    section = _region(data, data.labels[data.central_index] > 0)
    group = _Group()
    group.add(
        c.SMI,
        _number(metrics["smi_cm2_m2"]),
        c.UNIT_CM2_PER_M2,
        sites=l3,
        reason=no_height,
        coordinates=section,
    )
    group.add(c.BMI, _number(metrics["bmi"]), c.UNIT_KG_PER_M2, reason=no_weight)
    group.add(
        c.VAT_SAT_RATIO,
        _number(metrics["vat_sat_ratio"]),
        c.UNIT_RATIO,
        sites=l3,
        reason="no SAT",
        coordinates=section,
    )
    group.add(
        c.IMAT_PERCENT,
        _number(metrics["imat_percent"]),
        c.UNIT_PERCENT,
        sites=l3,
        reason="no muscle",
        coordinates=section,
    )
    group.add(
        c.WAIST,
        _number(metrics["waist_circumference_cm"]),
        c.UNIT_CM,
        sites=l3,
        reason="body outline truncated",
        coordinates=section,
    )
    group.add(c.BODY_HEIGHT, height, c.UNIT_M, reason="not recorded")
    group.add(c.BODY_WEIGHT, weight, c.UNIT_KG, reason="not recorded")

    sex = str(patient.sex or "").upper()
    sex_code = {
        "M": hd.sr.CodedConcept("248153007", "SCT", "Male"),
        "F": hd.sr.CodedConcept("248152002", "SCT", "Female"),
    }
    source = patient.source
    evaluations = [
        *group.missing,
        _qualitative(c.LSMM, metrics["lsmm"]["value"]),
        _qualitative(c.MYOSTEATOSIS, metrics["myosteatosis"]["value"]),
        hd.sr.QualitativeEvaluation(
            name=hd.sr.CodedConcept("46098-0", "LN", "Sex"), value=sex_code.get(sex, c.UNDETERMINED)
        ),
        hd.sr.QualitativeEvaluation(
            name=c.private("INPUTSRC", "Source of height, weight and sex"),
            value=c.private(
                "".join(ch for ch in source.upper() if ch.isalnum())[:16] or "NONE",
                f"Patient inputs from {source}",
            ),
        ),
    ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=data.identity.uid("tracking/derived"), identifier="L3 body composition metrics"
        ),
        finding_type=c.DERIVED_METRICS,
        finding_sites=l3,
        method=c.rule_set_method(rule_set),
        algorithm_id=algorithm,
        measurements=group.measurements,
        qualitative_evaluations=evaluations,
    )


def _text(name: hd.sr.CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def quality_evaluations(result: MeasuredResult) -> hd.sr.ContainerContentItem:
    """TID 1500's document-level "Qualitative Evaluations": the QC verdict and its reasons, the
    level, how it was found and how sure, and the slice, for a reader who opens only the SR.

    Why: a reader in a viewer that lists the SR's content (OHIF, Slicer, ``dsrdump``) or a research
    harvest of SRs had no sign that the analysis asked for review; only the overlay picture said so.
    CODE items carry the verdict and the level (a machine can select on them), TEXT items the
    reasons, in the words ``bodycomp status`` and the overlay use.
    """
    qc, l3 = result["qc"], result["l3"]
    review = qc["status"] != "ok"
    items: list[hd.sr.ContentItem] = [
        hd.sr.CodeContentItem(
            name=c.QC_VERDICT,
            value=c.QC_REVIEW if review else c.QC_OK,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    items += [_text(c.QC_REASON, str(reason)) for reason in qc["reasons"]]
    items.append(
        hd.sr.CodeContentItem(
            name=c.FINDING_SITE, value=c.L3_VERTEBRA, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
    )
    method = str(l3["method"] or "unknown")
    items.append(_text(c.LEVEL_METHOD, method))
    confidence = _number(l3["confidence"])
    if confidence is not None and not l3["manual"]:
        items.append(_text(c.LEVEL_CONFIDENCE, f"{confidence:.2f}"))
    for slice_ in result["slices"]:
        where = f"z = {slice_['z_mm']} mm"
        uid = slice_.get("sop_instance_uid")  # (DICOM input only)
        items.append(_text(c.SLICE_ANALYSED, where + (f", SOP Instance UID {uid}" if uid else "")))
    correction = result.get("correction")  # (a corrected result only)
    if correction is not None:
        items.append(_text(CORRECTION, str(correction["description"] or "corrected")))
        if correction["source_instance_uid"]:
            items.append(_text(CORRECTED_FROM, f"SOP Instance UID {correction['source_instance_uid']}"))
    container = hd.sr.ContainerContentItem(
        name=c.QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _reference(study_uid: str, series_uid: str, sop_uid: str, sop_class_uid: str) -> Dataset:
    """The identifiers of an earlier SR, as highdicom's ``previous_versions`` reads them."""
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SOPInstanceUID, ds.SOPClassUID = sop_uid, sop_class_uid
    return ds


def build_report(data: EncodeInput, seg: hd.seg.Segmentation) -> hd.sr.Comprehensive3DSR:
    algorithm = hd.sr.AlgorithmIdentification(name=ALGORITHM_NAME, version=data.version)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=data.identity.uid("device"),
        name="bodycomp",
        manufacturer_name=MANUFACTURER,
        model_name=MODEL_NAME,
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    groups = [*_tissue_groups(data, seg, algorithm), _derived_group(data, algorithm)]
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=c.CT_OF_ABDOMEN,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
        ),
        referenced_images=list(data.source_slices),
    )
    content = report[0]
    content.ContentSequence.append(quality_evaluations(data.result))
    predecessor = data.revision.predecessor_sr if data.revision is not None else None
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*data.source_slices, seg],
        content=content,
        series_instance_uid=data.identity.series_uid("sr"),
        series_number=data.series_number(2),
        sop_instance_uid=data.identity.instance_uid("sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        record_evidence=True,
        previous_versions=None if predecessor is None else [_reference(*predecessor)],
    )
    _frame_only_segment_references(sr.ContentSequence)
    sr.SeriesDescription = "bodycomp L3 body composition report"
    sr.ManufacturerModelName = MODEL_NAME
    sr.SoftwareVersions = data.version
    sr.CodingSchemeIdentificationSequence = [c.coding_scheme_identification()]
    return sr
