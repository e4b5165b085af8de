"""Reader SRs and SEGs that arrive in an analysed study become corrections (issue #23).

The PACS routes to the node the SR and SEG series of analysed studies that the node did not make
(``deploy/orthanc/route-to-bodycomp.lua``). When such a study is stable again,
:func:`reader_corrections` looks at its SR and SEG instances:

* a reader's SR with an annotation labelled ``L3`` (OHIF's arrow or point, saved with its own
  "Create SR" action) on an image of the analysed series: analyse that image (method ``manual``);
* a reader's SEG with the node's tissue codes, derived from an image of the analysed series (an
  outline edited in 3D Slicer or OHIF): measure its masks, nothing segmented again.

The node's own results never count (no loops): an instance it queued for sending (in the outbox),
or one whose Manufacturer and model name are the node's. Everything is idempotent: the same reader
object is the same correction (:func:`node.schedule.corrections.request_correction`), so a study that becomes
stable again, or an object routed twice, starts nothing new.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from node.config import NodeSettings
from node.schedule.corrections import Correction, CorrectionError, current_job, request_correction
from node.store.index import Index
from workers.corrections.reader_seg import referenced_instances, tissue_segments
from workers.encode.inputs import MANUFACTURER, MODEL_NAME

log = logging.getLogger("bodycomp.corrections")

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: Basic, Enhanced and Comprehensive SR, Comprehensive 3D SR (OHIF writes Comprehensive 3D).
SR_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
)
#: A reader's label that marks the L3 slice: "L3", "L3 mid", "mid-L3" (case-insensitive).
L3_LABEL = re.compile(r"^\s*(mid[- ]?)?L3\b", re.IGNORECASE)


def is_own(index: Index, ds: Dataset) -> bool:
    """Whether ``ds`` is one of the node's own results (see module docstring)."""
    if index.is_own_output(str(ds.get("SOPInstanceUID", ""))):
        return True
    return str(ds.get("Manufacturer", "")) == MANUFACTURER and str(ds.get("ManufacturerModelName", "")) == (
        MODEL_NAME
    )


#: (112039, DCM, "Tracking Identifier"): a measurement's id ("L3 SM" in the node's own SR), not a label.
TRACKING_IDENTIFIER = "112039"
#: (121071, DCM, "Finding"): the coded label of an annotation (older OHIF: CORNERSTONEFREETEXT with
#: the text as its meaning). Other coded values are not labels: a Finding Site "L3 vertebra" that a
#: viewer copied from the node's own report must not mark its slice.
FINDING = "121071"


def _texts(item: Dataset) -> Iterator[str]:
    """The labels an item can carry: a TEXT value (a Comment, OHIF's arrow text), or the code of a
    Finding; never a Tracking Identifier."""
    names = item.get("ConceptNameCodeSequence") or []
    name = str(names[0].get("CodeValue", "")) if names else ""
    if "TextValue" in item and name != TRACKING_IDENTIFIER:
        yield str(item.TextValue)
    if name == FINDING:
        for code in item.get("ConceptCodeSequence", []):
            yield str(code.get("CodeMeaning", ""))
            yield str(code.get("CodeValue", ""))


def _images(item: Dataset) -> Iterator[str]:
    for ref in item.get("ReferencedSOPSequence", []):
        yield str(ref.ReferencedSOPInstanceUID)


def _subtree(items: Any) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for item in items:
        texts += _texts(item)
        images += _images(item)
        sub_texts, sub_images = _subtree(item.get("ContentSequence", []))
        texts += sub_texts
        images += sub_images
    return texts, images


def marked_l3_images(ds: Dataset) -> list[str]:
    """SOP Instance UIDs of the images an SR marks ``L3``: those of the innermost containers (OHIF's
    measurement groups) that hold both an ``L3`` label and an image reference."""
    found: list[str] = []

    def walk(items: Any) -> None:
        for item in items:
            if item.get("ValueType") != "CONTAINER":
                continue
            children = item.get("ContentSequence", [])
            before = len(found)
            walk(children)
            if len(found) > before:
                continue  # an inner group matched
            texts, images = _subtree(children)
            if images and any(L3_LABEL.match(t) for t in texts):
                found.extend(images)

    walk([ds])
    return list(dict.fromkeys(found))


def _correction_for(ds: Dataset, path: Path, analysed: set[str]) -> Correction | str:
    """The correction a reader object asks for, or why it asks for none."""
    sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    if sop_class == SEG_CLASS:
        if not tissue_segments(ds):
            return "a SEG without the L3 tissue codes"
        if not any(uid in analysed for uid in referenced_instances(ds)):
            return "a SEG of no image of the analysed series"
        return Correction(edited_seg=path, source="reader SEG", source_instance_uid=sop_uid)
    marked = [uid for uid in marked_l3_images(ds) if uid in analysed]
    if not marked:
        return "an SR without an L3 mark on an image of the analysed series"
    if len(marked) > 1:
        return f"an SR marking {len(marked)} images L3: which one is meant is not clear"
    return Correction(slice_sop_uid=marked[0], source="reader SR", source_instance_uid=sop_uid)


def reader_corrections(index: Index, settings: NodeSettings, study_uid: str) -> list[int]:
    """Request a correction for each reader SR or SEG of the study that asks for one; return the
    ids of the jobs created now (an object acted on before creates none)."""
    base = current_job(index, study_uid)
    if base is None:
        return []
    analysed = {str(r["sop_uid"]) for r in index.series_instances(study_uid, str(base["series_uid"]))}
    created = []
    for row in index.study_objects(study_uid, (SEG_CLASS, *SR_CLASSES)):
        try:
            ds = pydicom.dcmread(row["path"], stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            log.warning("event=reader_object_unreadable study=%s reason=%s", study_uid, exc)
            continue
        if is_own(index, ds):
            continue
        correction = _correction_for(ds, Path(row["path"]), analysed)
        if isinstance(correction, str):
            log.info(
                "event=reader_object_ignored study=%s sop=%s reason=%s", study_uid, row["sop_uid"], correction
            )
            continue
        before = {int(r["id"]) for r in index.jobs_of(study_uid)}
        try:
            job_id = request_correction(index, settings, study_uid, correction)
        except (CorrectionError, OSError) as exc:
            log.warning(
                "event=correction_refused study=%s source=%s reason=%s", study_uid, row["sop_uid"], exc
            )
            continue
        if job_id not in before:
            created.append(job_id)
    return created
