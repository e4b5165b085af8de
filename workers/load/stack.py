"""Turn the slices of one series into an ordered, checked stack geometry.

Slices are ordered by their ImagePositionPatient projected on the slice normal (the cross
product of the ImageOrientationPatient row and column vectors), never by InstanceNumber,
SliceLocation or file name, which scanners and PACS get wrong. The order runs inferior →
superior whatever the patient position (head/feet first, supine/prone). The checks here are the
ones that silently corrupt measurements when skipped: duplicate positions, uneven spacing,
missing slices and gantry tilt (a sheared stack).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from workers.errors import GeometryError


@dataclass(frozen=True)
class StackPolicy:
    """Limits beyond which a stack is refused rather than analysed with a flag."""

    max_missing_slices: int = 2
    """Refuse when one gap hides more than this many slices."""
    max_gap_mm: float = 15.0
    """Refuse when two neighbouring slices are further apart than this."""
    max_tilt_deg: float = 30.0
    """Refuse gantry tilt / oblique slice planes beyond this angle; smaller tilts are flagged."""
    uneven_tolerance: float = 0.1
    """Spacing varying by more than this fraction of the nominal spacing is flagged as uneven."""
    position_tolerance_mm: float = 0.01


@dataclass(frozen=True)
class SliceGeometry:
    """What one slice (a file, or a frame of a multi-frame file) says about its place in space."""

    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    key: str
    """Identifies the slice for error messages and de-duplication (file name or frame number)."""
    instance_uid: str = ""
    instance_number: int | None = None
    acquisition: str = ""


@dataclass(frozen=True)
class Gap:
    """Slices missing between two neighbours of an otherwise regular stack."""

    after_slice: int
    gap_mm: float
    missing: int
    missing_z_mm: tuple[float, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "after_slice": self.after_slice,
            "gap_mm": self.gap_mm,
            "missing": self.missing,
            "missing_z_mm": list(self.missing_z_mm),
        }


@dataclass
class StackGeometry:
    """An ordered stack: ``order[k]`` is the input index of the k-th slice from inferior."""

    order: list[int]
    affine: np.ndarray
    positions: np.ndarray
    """(n, 3) ImagePositionPatient of each ordered slice, LPS mm."""
    slice_spacing_mm: float
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int, int]
    tilt_deg: float
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n == 0:
        raise GeometryError("ImageOrientationPatient has a zero-length direction vector")
    return v / n


def build_stack(slices: Sequence[SliceGeometry], policy: StackPolicy) -> StackGeometry:  # noqa: C901 (long: to split into named stages, issue #22)
    """Order and check the slices of one stack, or raise :class:`GeometryError`."""
    if not slices:
        raise GeometryError("no slices")
    first = slices[0]
    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        counts = {size: sum(1 for s in slices if (s.rows, s.columns) == size) for size in sizes}
        listed = ", ".join(f"{r}×{c} ({n} slices)" for (r, c), n in sorted(counts.items()))
        raise GeometryError(f"inconsistent Rows/Columns within one stack: {listed}")
    orientation = np.asarray(first.orientation, dtype=float)
    for s in slices[1:]:
        if not np.allclose(s.orientation, orientation, atol=1e-3):
            raise GeometryError(f"ImageOrientationPatient differs between slices ({first.key} vs {s.key})")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-3):
            raise GeometryError(f"PixelSpacing differs between slices ({first.key} vs {s.key})")
    row_dir, col_dir = _unit(orientation[:3]), _unit(orientation[3:])
    if abs(float(np.dot(row_dir, col_dir))) > 1e-2:
        raise GeometryError("ImageOrientationPatient row and column vectors are not orthogonal")
    normal = np.cross(row_dir, col_dir)
    sign = 1.0 if normal[2] >= 0 else -1.0
    positions = np.asarray([s.position for s in slices], dtype=float)
    distance = positions @ normal * sign

    flags: list[str] = []
    notes: list[str] = []
    dropped: list[str] = []
    order = sorted(
        range(len(slices)), key=lambda i: (distance[i], slices[i].instance_number or 0, slices[i].key)
    )
    kept: list[int] = []
    for i in order:
        if kept and abs(distance[i] - distance[kept[-1]]) <= policy.position_tolerance_mm:
            previous = slices[kept[-1]]
            if slices[i].instance_uid and slices[i].instance_uid == previous.instance_uid:
                dropped.append(f"{slices[i].key}: a second copy of instance {previous.instance_uid}")
            else:
                dropped.append(f"{slices[i].key}: same position as {previous.key}")
                if "duplicate_positions" not in flags:
                    flags.append("duplicate_positions")
            continue
        kept.append(i)
    if dropped:
        notes.append(f"{len(dropped)} slice(s) at an already occupied position ignored")
    if len(kept) < 2:
        raise GeometryError("fewer than two distinct slice positions: not a volume")

    ordered_positions = positions[kept]
    ordered_distance = distance[kept]
    steps = np.diff(ordered_distance)
    nominal = float(np.median(steps))
    gaps: list[Gap] = []
    for k, step in enumerate(steps):
        missing = round(step / nominal) - 1
        if step > 1.5 * nominal and missing >= 1:
            z_from, z_to = float(ordered_positions[k][2]), float(ordered_positions[k + 1][2])
            expected = tuple(
                round(z_from + (z_to - z_from) * j / (missing + 1), 2) for j in range(1, missing + 1)
            )
            gaps.append(
                Gap(after_slice=k, gap_mm=round(float(step), 3), missing=missing, missing_z_mm=expected)
            )
    if gaps:
        flags.append("missing_slices")
        if any(g.missing > policy.max_missing_slices or g.gap_mm > policy.max_gap_mm for g in gaps):
            listed = "; ".join(
                f"{g.missing} slice(s) missing between slices {g.after_slice} and {g.after_slice + 1} "
                f"(z ≈ {', '.join(f'{z:g}' for z in g.missing_z_mm)} mm)"
                for g in gaps
            )
            raise GeometryError(
                f"series has gaps beyond the limit ({policy.max_missing_slices} missing slices or "
                f"{policy.max_gap_mm:g} mm): {listed}"
            )
    regular = steps[steps <= 1.5 * nominal]
    if regular.size and float(regular.max() - regular.min()) > policy.uneven_tolerance * nominal:
        flags.append("uneven_spacing")
        notes.append(f"slice spacing varies from {regular.min():.3f} to {regular.max():.3f} mm")

    span = ordered_positions[-1] - ordered_positions[0]
    stack_dir = _unit(span)
    shear = float(np.degrees(np.arccos(min(1.0, abs(float(np.dot(stack_dir, normal)))))))
    plane = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
    tilt = max(shear, plane)
    if tilt > policy.max_tilt_deg:
        raise GeometryError(
            f"gantry tilt / oblique slices of {tilt:.1f}° exceed the limit of {policy.max_tilt_deg:g}°"
        )
    if tilt > 0.5:
        flags.append("gantry_tilt")
        notes.append(
            f"slices tilted {tilt:.1f}° from axial: areas on these planes are about "
            f"{100 * (1 / np.cos(np.radians(plane)) - 1):.1f} % larger than on true axial planes"
        )

    dr, dc = float(first.pixel_spacing[0]), float(first.pixel_spacing[1])
    n = len(kept)
    index_span = (ordered_distance[-1] - ordered_distance[0]) / nominal
    step_vector = span / index_span if index_span > 0 else normal * nominal
    affine = np.eye(4)
    affine[:3, 0] = step_vector
    affine[:3, 1] = col_dir * dr  # row index runs along the column direction
    affine[:3, 2] = row_dir * dc  # column index runs along the row direction
    affine[:3, 3] = ordered_positions[0]
    return StackGeometry(
        order=kept,
        affine=affine,
        positions=ordered_positions,
        slice_spacing_mm=nominal,
        pixel_spacing=(dr, dc),
        shape=(n, first.rows, first.columns),
        tilt_deg=round(tilt, 3),
        flags=flags,
        notes=notes,
        dropped=dropped,
        gaps=gaps,
    )
