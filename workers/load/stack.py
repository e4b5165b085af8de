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
    """Two slices closer than this along the normal share a position (a duplicate)."""
    gap_step_factor: float = 1.5
    """A step longer than this many nominal spacings is a gap (missing slices), not unevenness:
    half a slice more than the usual step cannot be rounding, one whole slice is missing."""
    tilt_flag_deg: float = 0.5
    """Tilt above this is flagged: at 0.5° an area on the tilted plane is 0.004 % larger, below
    any measurement's noise, but a tilt that large is deliberate (gantry tilt, oblique stack)."""
    orientation_atol: float = 1e-3
    """ImageOrientationPatient components of two slices differing by more than this differ."""
    spacing_rtol: float = 1e-3
    """PixelSpacing of two slices differing by more than this fraction differs."""
    orthogonality_atol: float = 1e-2
    """Row and column direction cosines whose dot product exceeds this are not orthogonal."""


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


@dataclass
class _Findings:
    """What the checks found that does not refuse the stack: flags, notes for people, and the
    slices left out."""

    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def flag(self, name: str) -> None:
        if name not in self.flags:
            self.flags.append(name)


def build_stack(slices: Sequence[SliceGeometry], policy: StackPolicy) -> StackGeometry:
    """Order and check the slices of one stack, or raise :class:`GeometryError`."""
    if not slices:
        raise GeometryError("no slices")
    row_dir, col_dir, normal = _common_plane(slices, policy)
    sign = 1.0 if normal[2] >= 0 else -1.0  # inferior → superior whatever the patient position
    positions = np.asarray([s.position for s in slices], dtype=float)
    distance = positions @ normal * sign
    found = _Findings()
    kept = _distinct_positions(slices, distance, policy, found)
    ordered_positions = positions[kept]
    ordered_distance = distance[kept]
    steps = np.diff(ordered_distance)
    nominal = float(np.median(steps))
    gaps = _gaps(ordered_positions, steps, nominal, policy, found)
    tilt = _tilt(ordered_positions, normal, policy, found)
    first = slices[0]
    dr, dc = float(first.pixel_spacing[0]), float(first.pixel_spacing[1])
    span = ordered_positions[-1] - ordered_positions[0]
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
        shape=(len(kept), first.rows, first.columns),
        tilt_deg=round(tilt, 3),
        flags=found.flags,
        notes=found.notes,
        dropped=found.dropped,
        gaps=gaps,
    )


def _common_plane(
    slices: Sequence[SliceGeometry], policy: StackPolicy
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, column and normal direction of the stack: every slice must have the same size,
    orientation and pixel spacing, or one affine cannot describe them."""
    first = slices[0]
    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        counts = {size: sum(1 for s in slices if (s.rows, s.columns) == size) for size in sizes}
        listed = ", ".join(f"{r}×{c} ({n} slices)" for (r, c), n in sorted(counts.items()))
        raise GeometryError(f"inconsistent Rows/Columns within one stack: {listed}")
    orientation = np.asarray(first.orientation, dtype=float)
    for s in slices[1:]:
        if not np.allclose(s.orientation, orientation, atol=policy.orientation_atol):
            raise GeometryError(f"ImageOrientationPatient differs between slices ({first.key} vs {s.key})")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=policy.spacing_rtol):
            raise GeometryError(f"PixelSpacing differs between slices ({first.key} vs {s.key})")
    row_dir, col_dir = _unit(orientation[:3]), _unit(orientation[3:])
    if abs(float(np.dot(row_dir, col_dir))) > policy.orthogonality_atol:
        raise GeometryError("ImageOrientationPatient row and column vectors are not orthogonal")
    return row_dir, col_dir, np.cross(row_dir, col_dir)


def _distinct_positions(
    slices: Sequence[SliceGeometry], distance: np.ndarray, policy: StackPolicy, found: _Findings
) -> list[int]:
    """Input indices of the slices in order along the normal, one per position: a second copy
    of an instance, or another instance at an occupied position, is left out and said."""
    order = sorted(
        range(len(slices)), key=lambda i: (distance[i], slices[i].instance_number or 0, slices[i].key)
    )
    kept: list[int] = []
    for i in order:
        if kept and abs(distance[i] - distance[kept[-1]]) <= policy.position_tolerance_mm:
            previous = slices[kept[-1]]
            if slices[i].instance_uid and slices[i].instance_uid == previous.instance_uid:
                found.dropped.append(f"{slices[i].key}: a second copy of instance {previous.instance_uid}")
            else:
                found.dropped.append(f"{slices[i].key}: same position as {previous.key}")
                found.flag("duplicate_positions")
            continue
        kept.append(i)
    if found.dropped:
        found.notes.append(f"{len(found.dropped)} slice(s) at an already occupied position ignored")
    if len(kept) < 2:
        raise GeometryError("fewer than two distinct slice positions: not a volume")
    return kept


def _gaps(
    positions: np.ndarray, steps: np.ndarray, nominal: float, policy: StackPolicy, found: _Findings
) -> list[Gap]:
    """Missing slices (flagged; refused beyond the policy's limits) and uneven spacing (flagged)."""
    gaps: list[Gap] = []
    for k, step in enumerate(steps):
        missing = round(step / nominal) - 1
        if step > policy.gap_step_factor * nominal and missing >= 1:
            z_from, z_to = float(positions[k][2]), float(positions[k + 1][2])
            expected = tuple(
                round(z_from + (z_to - z_from) * j / (missing + 1), 2) for j in range(1, missing + 1)
            )
            gaps.append(
                Gap(after_slice=k, gap_mm=round(float(step), 3), missing=missing, missing_z_mm=expected)
            )
    if gaps:
        found.flag("missing_slices")
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
    regular = steps[steps <= policy.gap_step_factor * nominal]
    if regular.size and float(regular.max() - regular.min()) > policy.uneven_tolerance * nominal:
        found.flag("uneven_spacing")
        found.notes.append(f"slice spacing varies from {regular.min():.3f} to {regular.max():.3f} mm")
    return gaps


def _tilt(positions: np.ndarray, normal: np.ndarray, policy: StackPolicy, found: _Findings) -> float:
    """Degrees from a true axial stack: the larger of the shear (the stack's direction against the
    slice normal, gantry tilt) and the slice plane's own angle to axial. Refused beyond the policy's
    limit, flagged above ``tilt_flag_deg`` with how much larger areas are on the tilted planes."""
    stack_dir = _unit(positions[-1] - positions[0])
    shear = float(np.degrees(np.arccos(min(1.0, abs(float(np.dot(stack_dir, normal)))))))
    plane = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
    tilt = max(shear, plane)
    if tilt > policy.max_tilt_deg:
        raise GeometryError(
            f"gantry tilt / oblique slices of {tilt:.1f}° exceed the limit of {policy.max_tilt_deg:g}°"
        )
    if tilt > policy.tilt_flag_deg:
        found.flag("gantry_tilt")
        found.notes.append(
            f"slices tilted {tilt:.1f}° from axial: areas on these planes are about "
            f"{100 * (1 / np.cos(np.radians(plane)) - 1):.1f} % larger than on true axial planes"
        )
    return tilt
