"""Describe a loaded volume and the series around it, for people (text) and programs (JSON)."""

from __future__ import annotations

from pydicom.uid import UID

from workers.load.selection import SeriesCandidate
from workers.load.volume import Volume
from workers.result import InputJson, MeasuredResult


def transfer_syntax_name(uid: str) -> str:
    name = UID(uid).name
    return name if name and name != uid else uid


def describe(volume: Volume) -> InputJson:
    """Everything ``bodycomp inspect --json`` prints; no patient names or IDs."""
    return {
        "input": str(volume.source_path),
        "source_kind": volume.source_kind,
        "skipped_files": volume.skipped_files,
        "series": [c.to_json() for c in volume.candidates],
        "chosen_series_instance_uid": volume.series.series_instance_uid if volume.series else None,
        "volume": volume.to_json(),
        "hu_range": list(volume.hu_range()),
    }


def _series_line(c: SeriesCandidate) -> list[str]:
    label = f"#{c.series_number}" if c.series_number else (c.series_instance_uid or "(no SeriesInstanceUID)")
    parts = [
        c.modality or "?",
        f"{c.n_slices} slice(s)" if c.status != "rejected" or c.n_slices > 1 else "1 instance",
    ]
    if c.image_type:
        parts.append("\\".join(c.image_type))
    if c.kernel:
        parts.append(f"kernel {c.kernel}")
    if c.slice_spacing_mm:
        parts.append(f"spacing {c.slice_spacing_mm:g} mm")
    if c.slice_thickness_mm:
        parts.append(f"thickness {c.slice_thickness_mm:g} mm")
    if c.transfer_syntaxes:
        parts.append(", ".join(transfer_syntax_name(t) for t in c.transfer_syntaxes))
    desc = f' "{c.description}"' if c.description else ""
    lines = [f"  [{c.status}] {label}{desc}: " + "; ".join(parts)]
    if c.series_instance_uid and label != c.series_instance_uid:
        lines.append(f"      uid {c.series_instance_uid}")
    lines += [f"      {reason}" for reason in c.rejections + c.notes]
    return lines


def format_text(volume: Volume) -> str:
    """The human-readable ``bodycomp inspect`` report."""
    g = volume.geometry_json()
    lines = [f"Input: {volume.source_path} ({volume.source_kind})"]
    if volume.skipped_files:
        lines.append("Skipped files: " + ", ".join(f"{n} {why}" for why, n in volume.skipped_files.items()))
    if volume.candidates:
        lines.append(f"Series found: {len(volume.candidates)}")
        for c in volume.candidates:
            lines += _series_line(c)
    axes = "slices × rows × columns" if volume.source_kind.startswith("dicom") else "slices × file axes"
    lines.append("Volume:")
    lines.append(f"  shape {' × '.join(map(str, g['shape']))} ({axes}), {g['dtype']}")
    lines.append(f"  voxel spacing {' × '.join(f'{s:g}' for s in g['spacing_mm'])} mm")
    lines.append(f"  orientation {g['orientation']} (where each array axis points, patient LPS letters)")
    lines.append(f"  z range {g['z_range_mm'][0]:g} .. {g['z_range_mm'][1]:g} mm (inferior → superior)")
    low, high = volume.hu_range()
    lines.append(f"  HU range {low:g} .. {high:g}")
    if volume.source_kind == "nifti":
        lines.append(f"  slices along file axis {volume.source_slice_axis}")
    if volume.tilt_deg:
        lines.append(f"  tilt {volume.tilt_deg:g}°")
    for gap in volume.gaps:
        lines.append(f"  gap after slice {gap.after_slice}: {gap.gap_mm} mm, {gap.missing} slice(s) missing")
    acq = volume.acquisition
    if acq:
        contrast = acq.get("contrast_agent") or "none recorded"
        lines.append(
            f"Acquisition: {acq.get('manufacturer') or '?'} {acq.get('model') or ''}".rstrip()
            + f", kVp {acq.get('kvp') or '?'}, kernel {acq.get('kernel') or '?'}, contrast {contrast}"
        )
    p = volume.patient

    def show(value: object, unit: str) -> str:
        return "not recorded" if value is None else f"{value}{unit}"

    lines.append(
        f"Patient: height {show(p.height_m, ' m')}, weight {show(p.weight_kg, ' kg')}, sex {show(p.sex, '')}"
        + (f" (from {p.source})" if p.source != "none" else "")
    )
    if volume.flags:
        lines.append("Flags: " + ", ".join(volume.flags))
    lines += [f"Note: {n}" for n in volume.notes]
    return "\n".join(lines)


def summary_text(result: MeasuredResult) -> str:
    """What ``bodycomp analyze`` prints: a few lines to check at a glance (result.json has all)."""
    lines = [f"status: {result['status']}"]
    l3 = result["l3"]
    lines.append(
        f"L3: slice {l3['slice_index']} at z = {l3['z_mm']} mm, "
        f"confidence {l3['confidence']}, method {l3['method']}"
    )
    tissues = result["tissues"]
    for tissue, name in (
        (tissues["skeletal_muscle"], "muscle"),
        (tissues["imat"], "IMAT"),
        (tissues["vat"], "VAT"),
        (tissues["sat"], "SAT"),
    ):
        mean = tissue["mean_hu"]
        shown = "n/a" if mean is None else f"{mean:.1f}"
        lines.append(f"  {name:7s} {tissue['area_cm2']:7.1f} cm²   mean {shown} HU")
    metrics = result["metrics"]
    smi = metrics["smi_cm2_m2"]
    reason = metrics["reasons"].get("smi_cm2_m2", "no height")  # (only a missing value has a reason)
    lsmm = metrics["lsmm"]
    lines.append(
        ("SMI: not computable (" + str(reason) + ")" if smi is None else f"SMI: {smi} cm²/m²")
        + f"; low skeletal muscle mass: {lsmm['value']} ({lsmm['rule_set']})"
    )
    lines += [f"review: {reason}" for reason in result["qc"]["reasons"]]
    files = result["files"]
    if "result_json" in files:
        lines.append(f"written: {files['result_json']} and the pictures beside it")
    return "\n".join(lines)
