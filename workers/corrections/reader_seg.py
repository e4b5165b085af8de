"""A reader's edited SEG of the L3 slice, read back as a label image (issue #23).

A reader corrects an outline in 3D Slicer's Segment Editor or OHIF's segmentation tools and saves
a new SEG: a new instance, derived from the same CT image, whose segments carry the tissue codes of
the node's SEG (:data:`workers.encode.codes.TISSUES`). Its masks are measured as drawn, with the HU
of the referenced CT slice; nothing is segmented again.

Segments are matched by their Segmented Property Type (code value and scheme), not by number or
label: editors renumber and rename segments. Segments of other types are ignored. Where a reader's
masks overlap, a pixel counts once, for the first tissue in :data:`TISSUES` order (muscle, IMAT,
VAT, SAT), as the node's own label image does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from workers.encode.codes import TISSUES
from workers.errors import InputError

#: A fractional (occupancy) SEG pixel belongs to the tissue from this fraction on.
FRACTION_IN = 0.5


@dataclass(frozen=True)
class ReaderMasks:
    """The reader's masks of one CT instance, as the node's label image (0 other, 1 SM, ... 4 SAT)."""

    source_sop_uid: str
    labels: npt.NDArray[np.uint8]
    tissues: tuple[str, ...]
    """The tissues the SEG has a segment for (the others stay 0: not measured)."""


def tissue_segments(ds: Dataset) -> dict[int, int]:
    """SEG segment number -> the node's tissue label, for segments with one of the node's tissue codes."""
    by_code = {(t.type.value, t.type.scheme_designator): t.label for t in TISSUES}
    found: dict[int, int] = {}
    for item in ds.get("SegmentSequence", []):
        types = item.get("SegmentedPropertyTypeCodeSequence") or []
        if not types:
            continue
        key = (str(types[0].get("CodeValue", "")), str(types[0].get("CodingSchemeDesignator", "")))
        if key in by_code and by_code[key] not in found.values():
            found[int(item.SegmentNumber)] = by_code[key]
    return found


def referenced_instances(ds: Dataset) -> list[str]:
    """SOP Instance UIDs of the images the SEG says it was derived from (header only)."""
    uids = []
    for series in ds.get("ReferencedSeriesSequence", []):
        for ref in series.get("ReferencedInstanceSequence", []):
            uids.append(str(ref.ReferencedSOPInstanceUID))
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uids.append(str(source.ReferencedSOPInstanceUID))
    return list(dict.fromkeys(uids))


def read_reader_seg(path: Path, analysed: tuple[str, ...] = ()) -> ReaderMasks:
    """The masks of a reader's SEG on one CT instance (one of ``analysed`` when given).

    Raises :class:`InputError` when the SEG has none of the node's tissues or references no
    (analysed) image.
    """
    ds = pydicom.dcmread(path)
    segments = tissue_segments(ds)
    if not segments:
        raise InputError("the edited SEG has none of the L3 tissue codes (muscle, IMAT, VAT, SAT)")
    candidates = [uid for uid in referenced_instances(ds) if not analysed or uid in analysed]
    if not candidates:
        raise InputError("the edited SEG references no analysed CT image")
    seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    numbers = sorted(segments)
    source = candidates[0]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source],
        segment_numbers=numbers,
        combine_segments=False,
        skip_overlap_checks=True,
    )[0]
    labels = np.zeros(pixels.shape[:2], dtype=np.uint8)
    for i, number in sorted(enumerate(numbers), key=lambda item: segments[item[1]]):
        labels[(pixels[..., i] >= FRACTION_IN) & (labels == 0)] = segments[number]
    keys = {t.label: t.key for t in TISSUES}
    return ReaderMasks(source, labels, tuple(keys[label] for label in sorted(segments.values())))
