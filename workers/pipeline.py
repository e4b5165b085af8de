"""The analysis of one CT, top to bottom: load → find L3 → segment → measure → report → encode.

``analyse(path, options, out_dir)`` is a plain function (no Celery, no sockets), called by
``bodycomp analyze`` and by the Celery task. It writes into ``out_dir``:

* ``result.json`` — everything measured, with the inputs, presets, rule sets and QC verdict;
* ``l3_qc.png`` — sagittal and coronal reformats with the vertebrae labelled (to check the level);
* ``l3_labels.npy`` — the label image of the analysed slice in the source's own array order;
* ``l3_overlay.png`` — the slice with the tissues in colour and the key numbers;
* ``dicom/seg.dcm``, ``dicom/sr.dcm``, ``dicom/overlay.dcm`` — with ``write_dicom`` (DICOM input).

Slice indices in the result are the *source's*: for NIfTI the index along the file's slice axis,
for DICOM the 0-based position in the series sorted inferior → superior (with the SOP Instance UID).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypedDict, cast

import numpy as np
import numpy.typing as npt
from PIL import Image

from workers import __version__
from workers.errors import InputError, NotInFieldOfViewError
from workers.l3.engine import get_localiser
from workers.l3.grid import TARGET_INPLANE_MM
from workers.l3.result import L3Result
from workers.load.describe import describe
from workers.load.selection import SelectionPolicy
from workers.load.source import load_series
from workers.load.stack import StackPolicy
from workers.load.volume import CanonicalView, Volume
from workers.measure.composition import (
    PatientInputs,
    average_results,
    compute_result,
    tissue_stats,
    waist_circumference_cm,
)
from workers.measure.rules import RuleSet, get_rule_set
from workers.measure.verdict import assess
from workers.pictures.level import render_l3_qc
from workers.pictures.overlay import render_overlay
from workers.result import (
    NOT_FOUND,
    CorrectionJson,
    L3Json,
    L3SearchJson,
    MeasuredResult,
    Measurement,
    NotFoundResult,
    QcJson,
    ResultDocument,
    SegmentationJson,
    SliceJson,
)
from workers.revision import LEVEL, Revision
from workers.tissues.engine import TissueSegmentation, get_segmenter
from workers.tissues.presets import WindowPreset, get_preset

log = logging.getLogger(__name__)

#: Neighbouring slices given to the segmenter as 3-D context, each side.
CONTEXT_SLICES = 2


@dataclass(frozen=True)
class PatientOverrides:
    """Values given outside the DICOM header. In :attr:`AnalysisOptions.patient` (the command
    line, a heights file) they replace the header's; in :attr:`AnalysisOptions.fallbacks` (the
    node's HL7 feed and site table) they only fill what the header lacks."""

    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    source: str = "command line"
    """Where the values come from, as ``result.json`` records it (``bodycomp batch``: ``heights-file``)."""


@dataclass(frozen=True)
class AnalysisOptions:
    selection: SelectionPolicy = field(default_factory=SelectionPolicy)
    stack: StackPolicy = field(default_factory=StackPolicy)
    localiser: str = "classical"
    segmenter: str = "classical"
    preset: str = "tomovision-l3@1"
    rule_set: str = "martin2013@1"
    slice_index: int | None = None
    """Analyse this source slice instead of localising L3 (``--slice K``)."""
    slices: int = 1
    """Average the metrics over this many contiguous slices centred on L3 (``--slices N``)."""
    patient: PatientOverrides = field(default_factory=PatientOverrides)
    fallbacks: tuple[PatientOverrides, ...] = ()
    """Used, in this order, for each value the header (and ``patient``) lacks or holds outside the
    plausible range: the node's documented order is header → HL7 feed → site table
    (docs/operations.md). Why not ``patient``: a height in the header is the one measured with
    the scan; an EHR value must not replace it."""
    write_dicom: bool = False
    preview: bool = True
    """Search L3 on a reduced-resolution decode of a JPEG 2000 series (see :mod:`workers.load.preview`)."""
    node_flags: tuple[str, ...] = ()
    """What the receiving node found about the input (e.g. ``series_uid_shared``): carried into QC."""
    slice_sop_uid: str | None = None
    """Analyse the slice of this SOP Instance UID instead of localising L3 (a correction)."""
    slice_z_mm: float | None = None
    """Analyse the slice nearest this patient z (mm) instead of localising L3 (a correction)."""
    labels: npt.NDArray[np.uint8] | None = field(default=None, compare=False, repr=False)
    """A label image of the chosen slice in the source's array order (a reader's edited SEG, or the
    stored masks of the result being corrected): measured as given, nothing is segmented."""
    labels_source: str = ""
    """Where ``labels`` come from, as ``result.json`` records it under ``segmentation``."""
    revision: Revision | None = None
    """This analysis corrects an earlier result (:mod:`workers.revision`)."""

    @property
    def manual_slice(self) -> bool:
        """Whether the slice is given rather than found."""
        return self.slice_index is not None or self.slice_sop_uid is not None or self.slice_z_mm is not None


class StageTimer:
    """Wall-clock seconds per pipeline stage, reported in result.json and by the benchmarks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 4)


def analyse(path: str | Path, options: AnalysisOptions, out_dir: Path | None = None) -> MeasuredResult:
    """Analyse the CT at ``path``; write the outputs into ``out_dir`` when given.

    Raises :class:`InputError` for unusable input and :class:`NotInFieldOfViewError` (after writing
    a result with ``l3: null`` and the reason) when L3 is not covered.

    The stages below run in this order; each is a function of its own so that what one hands the
    next is a typed value, not a key of a growing dict.
    """
    preset = get_preset(options.preset)
    rule_set = get_rule_set(options.rule_set)
    if options.slices < 1:
        raise InputError("--slices must be at least 1")
    timer = StageTimer()
    volume = _load(path, options, timer)
    view = volume.canonical()
    files: dict[str, str] = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    l3 = _find_level(volume, view, options, timer, out_dir, files)
    if not l3.found or l3.slice_index is None:
        _report_not_found(volume, l3, preset, rule_set, timer, files, out_dir)
    centre = l3.slice_index
    ks = _analysed_slices(volume, centre, options.slices)
    with timer.stage("load_full_resolution"):
        volume.ensure_full_resolution(
            range(max(0, ks[0] - CONTEXT_SLICES), min(volume.shape[0], ks[-1] + CONTEXT_SLICES + 1))
        )
    with timer.stage("segment"):
        segmentations = _segment(view, ks, centre, options, preset)
    with timer.stage("measure"):
        measured = _measure(volume, view, ks, segmentations, options, preset, rule_set)
    seg = segmentations[centre]
    qc = _assess(volume, l3, ks, segmentations, seg, measured, options)
    result: MeasuredResult = {
        "bodycomp_version": __version__,
        "status": qc["status"],
        "input": describe(volume),
        "hu_preset": measured["hu_preset"],
        "rule_set": measured["rule_set"],
        "timings_s": timer.seconds,  # the timer's own dict: the stages below still add to it
        "l3": _level_json(volume, l3, options),
        **_correction_json(options.revision),
        "tissues": measured["tissues"],
        "metrics": measured["metrics"],
        "patient_inputs": measured["patient_inputs"],
        "n_slices": measured["n_slices"],
        "slices": [_slice_json(volume, k) for k in ks],
        "segmentation": _segmentation_json(seg),
        "peritoneal_contour_mm": _contour_mm(view, centre, seg.peritoneal_contour_px),
        "qc": qc,
        "files": files,  # filled in by the stages below
    }
    labels_source = _to_source_2d(volume, view, seg.labels)
    with timer.stage("overlay_picture"):
        overlay = _draw(view, centre, seg, result)
    if out_dir is not None:
        np.save(out_dir / "l3_labels.npy", labels_source)
        files["l3_labels_npy"] = str(out_dir / "l3_labels.npy")
        overlay.save(out_dir / "l3_overlay.png")
        files["l3_overlay_png"] = str(out_dir / "l3_overlay.png")
    if options.write_dicom:
        if out_dir is None:
            raise InputError("DICOM outputs need an output folder")
        with timer.stage("encode_dicom"):
            overlay_rgb = np.asarray(overlay.convert("RGB"))
            files.update(
                _encode(
                    volume,
                    view,
                    result,
                    centre,
                    seg,
                    labels_source,
                    overlay_rgb,
                    out_dir / "dicom",
                    options.revision,
                )
            )
    if out_dir is not None:
        files["result_json"] = str(write_result(result, out_dir))
    return result


def _load(path: str | Path, options: AnalysisOptions, timer: StageTimer) -> Volume:
    """Load the series (a reduced-resolution preview of a JPEG 2000 one, see
    :mod:`workers.load.preview`). Why first and alone: an input that cannot give DICOM outputs
    (``write_dicom``) is refused here, before minutes of analysis."""
    with timer.stage("load"):
        preview_mm = TARGET_INPLANE_MM if options.preview else None
        volume = load_series(path, options.selection, options.stack, preview_mm=preview_mm)
    if options.write_dicom:
        _check_dicom_identity(volume)
    return volume


def _find_level(
    volume: Volume,
    view: CanonicalView,
    options: AnalysisOptions,
    timer: StageTimer,
    out_dir: Path | None,
    files: dict[str, str],
) -> L3Result:
    """Find the L3 slice (or take the one the options name) and, when it was found, draw the
    sagittal and coronal check picture: a reader checks the level there before any number.

    L3 is searched on the preview when the loader made one (JPEG 2000): ~2.5 mm is all it needs."""
    search_view = volume.preview.canonical() if volume.preview is not None else view
    with timer.stage("l3"):
        l3 = _locate(volume, search_view, options)
    if out_dir is not None and not options.manual_slice:
        with timer.stage("l3_qc_picture"):
            qc_path = render_l3_qc(
                np.asarray(search_view.hu),
                search_view.z_mm,
                search_view.spacing_yx_mm,
                l3,
                out_dir / "l3_qc.png",
                slice_label=lambda k: _slice_label(volume, k),
            )
        files["l3_qc_png"] = str(qc_path)
    return l3


def _report_not_found(
    volume: Volume,
    l3: L3Result,
    preset: WindowPreset,
    rule_set: RuleSet,
    timer: StageTimer,
    files: dict[str, str],
    out_dir: Path | None,
) -> NoReturn:
    """Write the result of a scan without L3 (the search and why) and raise
    :class:`NotInFieldOfViewError`: L3 outside the field of view is a finding about the scan,
    recorded like a measurement, not an error of the analysis."""
    result: NotFoundResult = {
        "bodycomp_version": __version__,
        "status": NOT_FOUND,
        "input": describe(volume),
        "hu_preset": preset.to_json(),
        "rule_set": rule_set.to_json(),
        "timings_s": timer.seconds,
        "l3": None,
        "l3_search": _search_json(l3),
        "reason": l3.reason or "L3 not found",
        "files": files,
    }
    if out_dir is not None:
        files["result_json"] = str(write_result(result, out_dir))
    raise NotInFieldOfViewError(result["reason"])


def _analysed_slices(volume: Volume, centre: int, n: int) -> list[int]:
    """The ``n`` contiguous canonical slices centred on ``centre`` (``--slices N``). Why refused
    rather than shifted when the scan ends there: an average off-centre is not the L3 average."""
    half = (n - 1) // 2
    ks = [k for k in range(centre - half, centre - half + n) if 0 <= k < volume.shape[0]]
    if len(ks) != n:
        raise InputError(f"--slices {n} does not fit around slice {centre}: the scan ends there")
    return ks


def _segment(
    view: CanonicalView, ks: list[int], centre: int, options: AnalysisOptions, preset: WindowPreset
) -> dict[int, TissueSegmentation]:
    """The tissues of each analysed slice: the segmenter's, or the masks the options give (a
    reader's edited SEG, the stored masks of a corrected result), which are measured as given."""
    if options.labels is not None:
        if len(ks) != 1:
            raise InputError("given masks are measured on one slice only (--slices 1)")
        return {centre: _given_labels(view, options.labels, options.labels_source, preset.id)}
    segmenter = get_segmenter(options.segmenter)
    return {
        k: segmenter.segment(np.asarray(view.hu[k]), view.spacing_yx_mm, preset, context=_context(view, k))
        for k in ks
    }


def _measure(
    volume: Volume,
    view: CanonicalView,
    ks: list[int],
    segmentations: dict[int, TissueSegmentation],
    options: AnalysisOptions,
    preset: WindowPreset,
    rule_set: RuleSet,
) -> Measurement:
    """Areas, attenuation and the derived metrics (one slice, or the average of several), with the
    patient values they use. Why the patient values here: SMI, BMI and the cut-offs need them, and
    the header, the options and the node's fallbacks each may hold them (:func:`_patient_inputs`)."""
    inputs = _patient_inputs(volume, options.patient, options.fallbacks)
    per_slice = [
        tissue_stats(np.asarray(view.hu[k]), segmentations[k].labels, view.spacing_yx_mm) for k in ks
    ]
    waists = [
        waist_circumference_cm(np.asarray(view.hu[k]), segmentations[k].body_mask, view.spacing_yx_mm)
        for k in ks
    ]
    truncated = any("fov_truncated" in segmentations[k].flags for k in ks)
    if len(ks) == 1:
        body = compute_result(
            per_slice[0],
            inputs,
            preset=preset,
            rule_set=rule_set,
            waist_cm=waists[0],
            fov_truncated=truncated,
        )
    else:
        body = average_results(
            per_slice, inputs, preset=preset, rule_set=rule_set, waists_cm=waists, fov_truncated=truncated
        )
    return body.to_json()


def _assess(
    volume: Volume,
    l3: L3Result,
    ks: list[int],
    segmentations: dict[int, TissueSegmentation],
    seg: TissueSegmentation,
    measured: Measurement,
    options: AnalysisOptions,
) -> QcJson:
    """The QC verdict (ok, review, failed) with every reason (:func:`workers.measure.verdict.assess`),
    plus the reasons of a corrected result that the correction leaves standing. ``seg``: the
    central slice's segmentation, whose notes explain the flags."""
    qc = assess(
        l3.flags,
        None if options.manual_slice else l3.confidence,
        [f for k in ks for f in segmentations[k].flags],
        seg.qc_notes,
        measured["metrics"]["flags"],
        volume.flags,
        volume.acquisition,
        manual_slice=options.manual_slice,
        input_flags=measured["patient_inputs"]["flags"],
        node_flags=options.node_flags,
    )
    if options.revision is not None:
        for flag, reason in options.revision.kept_qc:  # the predecessor's reasons that still apply
            qc.add(flag, reason)
    return qc.to_json()


def _draw(view: CanonicalView, centre: int, seg: TissueSegmentation, result: MeasuredResult) -> Image.Image:
    """The overlay picture of the central slice: the tissues in colour, the numbers, the verdict,
    and, for a corrected result, what was corrected (a reader must see which picture stands)."""
    return render_overlay(
        np.asarray(view.hu[centre]),
        seg.labels,
        view.spacing_yx_mm,
        result,
        None,
        qc=result["qc"],
        correction=result.get("correction"),
        peritoneal_contour_px=seg.peritoneal_contour_px,
    )


def _check_dicom_identity(volume: Volume) -> None:
    if volume.source_kind == "nifti":
        raise InputError(
            "--dicom needs DICOM input: a NIfTI file has no patient or study to attach results to"
        )
    if volume.source_kind == "dicom-multiframe":
        raise InputError("--dicom is not yet supported for multi-frame (Enhanced) CT input")
    if "missing_uids" in volume.flags or not volume.series or not volume.series.series_instance_uid:
        raise InputError("--dicom needs the source's Study, Series and SOP Instance UIDs, which are missing")


def _given_labels(
    view: CanonicalView, labels_source: npt.NDArray[np.uint8], source: str, preset_id: str
) -> TissueSegmentation:
    """Masks given for the slice (a reader's, or stored ones), as the segmenter's output would be."""
    labels = np.ascontiguousarray(view.orientation.to_canonical(labels_source[None, ...])[0]).astype(np.uint8)
    if labels.shape != view.hu.shape[1:]:
        raise InputError(f"the given masks are {labels.shape}, the slice is {view.hu.shape[1:]}")
    return TissueSegmentation(
        labels=labels,
        peritoneal_contour_px=np.zeros((0, 2)),
        body_mask=labels > 0,
        segmenter=source or "given masks",
        preset_id=preset_id,
    )


def _manual_index(volume: Volume, view: CanonicalView, options: AnalysisOptions) -> int:
    """The canonical index of the slice the options name (source index, SOP Instance UID or z)."""
    if options.slice_sop_uid is not None:
        uids = list(volume.sop_instance_uids or [])
        if options.slice_sop_uid not in uids:
            raise InputError(f"instance {options.slice_sop_uid} is not a slice of the analysed series")
        return uids.index(options.slice_sop_uid)
    if options.slice_z_mm is not None:
        z = np.asarray(view.z_mm, dtype=float)
        k = int(np.argmin(np.abs(z - options.slice_z_mm)))
        step = float(np.median(np.abs(np.diff(z)))) if len(z) > 1 else 0.0
        if abs(z[k] - options.slice_z_mm) > max(step, 1.0):
            extent = f"{z.min():.1f}..{z.max():.1f} mm"
            raise InputError(f"z = {options.slice_z_mm} mm is outside the series ({extent})")
        return k
    matches = np.nonzero(volume.source_slice_index == options.slice_index)[0]
    if matches.size == 0:
        last = int(volume.source_slice_index.max())
        raise InputError(f"--slice {options.slice_index} is outside the series (valid: 0..{last})")
    return int(matches[0])


def _locate(volume: Volume, view: CanonicalView, options: AnalysisOptions) -> L3Result:
    if not options.manual_slice:
        localiser = get_localiser(options.localiser)
        return localiser.locate(np.asarray(view.hu), view.z_mm, view.spacing_yx_mm)
    k = _manual_index(volume, view, options)
    return L3Result(
        found=True,
        engine="manual",
        engine_version="",
        slice_index=k,
        z_mm=float(view.z_mm[k]),
        confidence=1.0,
        method="manual",
        reason=None,
    )


def _context(view: CanonicalView, k: int) -> npt.NDArray[Any]:
    lo, hi = max(0, k - CONTEXT_SLICES), min(view.hu.shape[0], k + CONTEXT_SLICES + 1)
    return np.asarray(view.hu[lo:hi])


def _plausible(key: str, value: Any) -> bool:
    """Whether a value passes the pipeline's own plausibility check (:meth:`PatientInputs.validated`)."""
    height, weight, sex, _ = PatientInputs(
        height_m=value if key == "height_m" else None,
        weight_kg=value if key == "weight_kg" else None,
        sex=value if key == "sex" else None,
    ).validated()
    return {"height_m": height, "weight_kg": weight, "sex": sex}[key] is not None


def _patient_inputs(
    volume: Volume, overrides: PatientOverrides, fallbacks: tuple[PatientOverrides, ...] = ()
) -> PatientInputs:
    """Each value from ``overrides`` when given; else the header's when plausible; else the first
    plausible of ``fallbacks``; else the header's implausible one (flagged, never used); else None."""
    header = volume.patient
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    for key, typed, stored in (
        ("height_m", overrides.height_m, header.height_m),
        ("weight_kg", overrides.weight_kg, header.weight_kg),
        ("sex", overrides.sex, header.sex),
    ):
        filled = [(getattr(f, key), f.source) for f in fallbacks if getattr(f, key) is not None]
        usable = [(v, src) for v, src in filled if _plausible(key, v)]
        if typed is not None:
            values[key], sources[key] = typed, overrides.source
        elif stored is not None and (_plausible(key, stored) or not usable):
            values[key], sources[key] = stored, header.source
        elif usable:
            values[key], sources[key] = usable[0]
        else:
            values[key] = None
    return PatientInputs(
        height_m=values["height_m"], weight_kg=values["weight_kg"], sex=values["sex"], sources=sources
    )


def _source_index(volume: Volume, k: int) -> int:
    return int(volume.source_slice_index[k])


def _slice_label(volume: Volume, k: int) -> str:
    if volume.source_kind == "nifti":
        return f"slice {_source_index(volume, k)}"
    header = volume.headers[k] if volume.source_kind == "dicom" else None
    number = header.get("InstanceNumber") if header is not None else None
    return f"slice {k}" + (f" (instance {number})" if number not in (None, "") else "")


def _slice_json(volume: Volume, k: int) -> SliceJson:
    entry: SliceJson = {
        "slice_index": _source_index(volume, k),
        "z_mm": round(float(volume.slice_z_mm()[k]), 2),
    }
    if volume.sop_instance_uids:
        entry["sop_instance_uid"] = volume.sop_instance_uids[k]
    if volume.frame_numbers:
        entry["frame_number"] = volume.frame_numbers[k]
    return entry


def _level_json(volume: Volume, l3: L3Result, options: AnalysisOptions) -> L3Json:
    """``l3`` of the result: the localiser's output with the slice in the source's indices. A
    correction that leaves the level standing says how it was found then, not "manual"."""
    assert l3.slice_index is not None
    data = cast(L3Json, l3.to_json())  # (L3Result.to_json is typed dict[str, Any])
    where = _slice_json(volume, l3.slice_index)
    data["slice_index"], data["z_mm"] = where["slice_index"], where["z_mm"]
    if "sop_instance_uid" in where:
        data["sop_instance_uid"] = where["sop_instance_uid"]
    if "frame_number" in where:
        data["frame_number"] = where["frame_number"]
    data["canonical_slice_index"] = l3.slice_index
    if l3.body_range is not None:
        ends = sorted(_source_index(volume, k) for k in l3.body_range)
        data["body_range"] = ends
    data["manual"] = options.manual_slice
    revision = options.revision
    if revision is not None and LEVEL not in revision.kinds and revision.previous_l3:
        previous = revision.previous_l3
        data["method"] = previous["method"]
        data["confidence"] = previous["confidence"]
        data["engine"] = previous["engine"]
        data["engine_version"] = previous["engine_version"]
        data["flags"] = previous["flags"]
        data["body_range"] = previous["body_range"]
        data["manual"] = bool(previous["manual"])
    return data


def _search_json(l3: L3Result) -> L3SearchJson:
    """``l3_search`` of a result without L3 (canonical indices: there is no slice to map)."""
    return cast(L3SearchJson, l3.to_json())  # (L3Result.to_json is typed dict[str, Any])


def _segmentation_json(seg: TissueSegmentation) -> SegmentationJson:
    return cast(SegmentationJson, seg.to_json())  # (TissueSegmentation.to_json is typed dict[str, Any])


class _CorrectionPart(TypedDict, total=False):
    correction: CorrectionJson


def _correction_json(revision: Revision | None) -> _CorrectionPart:
    """``correction`` of a result that corrects an earlier one; nothing otherwise."""
    return {} if revision is None else {"correction": revision.to_json()}


def _contour_mm(view: CanonicalView, k: int, contour_px: npt.NDArray[np.float64]) -> list[list[float]]:
    """Canonical (row, col) points of slice ``k`` → patient LPS mm."""
    if contour_px is None or len(contour_px) == 0:
        return []
    index = np.column_stack(
        [
            np.full(len(contour_px), k, dtype=float),
            contour_px[:, 0],
            contour_px[:, 1],
            np.ones(len(contour_px)),
        ]
    )
    points = (view.affine @ index.T)[:3].T
    return np.round(points, 2).tolist()


def _to_source_2d(volume: Volume, view: CanonicalView, image: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A canonical 2-D slice image back in the source's own array order."""
    stored = view.orientation.from_canonical(image[None, ...])
    return np.ascontiguousarray(stored[0])


def _contour_source_px(
    volume: Volume, view: CanonicalView, k: int, contour_px: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64] | None:
    if contour_px is None or len(contour_px) == 0:
        return None
    canonical = np.column_stack([np.full(len(contour_px), k, dtype=float), contour_px])
    stored = view.orientation.canonical_to_stored_index(canonical, volume.shape)
    result: npt.NDArray[np.float64] = stored[:, 1:3]
    return result


def _encode(
    volume: Volume,
    view: CanonicalView,
    result: MeasuredResult,
    k: int,
    seg: TissueSegmentation,
    labels_source: npt.NDArray[np.uint8],
    overlay_rgb: npt.NDArray[np.uint8],
    folder: Path,
    revision: Revision | None = None,
) -> dict[str, str]:
    from workers.encode import EncodeInput, encode_all
    from workers.encode.uids import OutputIdentity

    assert volume.series is not None
    slices = [s["sop_instance_uid"] for s in result["slices"]]
    identity = OutputIdentity.build(
        volume.series.series_instance_uid,
        slices,
        __version__,
        result["hu_preset"]["id"],
        result["rule_set"]["id"],
        revision="" if revision is None else revision.key,
    )
    data = EncodeInput(
        source_slices=[volume.headers[k]],
        labels=labels_source[None].astype(np.uint8),
        result=result,
        overlay_rgb=overlay_rgb,
        identity=identity,
        version=__version__,
        peritoneal_contour_px=_contour_source_px(volume, view, k, seg.peritoneal_contour_px),
        revision=revision,
    )
    paths = encode_all(data).write(folder)
    return {f"dicom_{name}": str(path) for name, path in paths.items()}


def write_result(result: ResultDocument, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "result.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(target)
    return target
