"""The result of an L3 localiser, shared by every engine (classical now, learned later).

Definition of the mid-L3 slice used throughout bodycomp: the canonical slice whose patient z is
nearest to the z centre of the L3 vertebral BODY (the midpoint between its two endplates, which is
the body's z centroid for a box-like body). Posterior elements are ignored on purpose: the L3
laminae and spinous process hang down behind the L3/L4 disc, so the midpoint of the whole vertebra
lies several millimetres too low (see ../shared/data/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.l3.cues import Cue

#: Vertebral level names, inferior to superior. "S" is the sacrum (S1 and below, fused).
LEVEL_ORDER: tuple[str, ...] = ("S", "L5", "L4", "L3", "L2", "L1", "T12", "T11", "T10", "T9", "T8")

# Machine-readable flags (the vocabulary plus a few of our own). Keep names stable:
# they end up in result.json and downstream rules may key on them.
FLAG_ANCHORS_DISAGREE = "anchors_disagree"
FLAG_LEVEL_AMBIGUOUS = "vertebral_level_ambiguous"
FLAG_TRANSITIONAL = "possible_transitional_vertebra"
FLAG_ONLY_SACRUM = "only_sacrum_anchor"
FLAG_ONLY_RIBS = "only_rib_anchor"
FLAG_FOV_EDGE = "l3_at_fov_edge"
FLAG_LOW_CONTRAST = "low_bone_contrast"
FLAG_NO_ANCHOR = "no_anchor"
FLAG_UNUSUAL_HEIGHT = "unusual_vertebral_height"
FLAG_Z_GAP = "z_gap_near_l3"
FLAG_NO_SPINE = "no_spine_found"
FLAG_THICK_SLICES = "thick_slices"
FLAG_WEAK_CUES_ONLY = "level_from_weak_cues_only"
FLAG_ON_DISC = "l3_slice_may_be_on_disc"


def level_index(name: str) -> int:
    """Position of a level in LEVEL_ORDER (inferior = 0), for sorting and arithmetic."""
    return LEVEL_ORDER.index(name)


@dataclass(frozen=True)
class L3Result:
    """Where the middle of L3 is, how sure we are, and why.

    All slice indices are canonical (axis 0 of the canonical array, inferior -> superior); the
    caller maps them back to file or DICOM indices. All z values are patient z in mm (superior
    positive) of the canonical slices.
    """

    found: bool
    engine: str
    engine_version: str
    slice_index: int | None = None
    body_range: tuple[int, int] | None = None
    z_mm: float | None = None
    confidence: float = 0.0
    method: str = "none"
    levels: dict[str, float] = field(default_factory=dict)
    level_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    levels_seen: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    reason: str | None = None
    notes: tuple[str, ...] = ()
    disc_z_mm: tuple[float, ...] = ()
    anchors_z_mm: dict[str, float] = field(default_factory=dict)
    spine_yx_mm: tuple[tuple[float, float], ...] | None = None
    cues: tuple[Cue, ...] = ()
    cue_weights: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for result.json (spine path omitted: it is QC detail, not a result)."""
        return {
            "found": self.found,
            "engine": self.engine,
            "engine_version": self.engine_version,
            "definition": "slice nearest the z centre of the L3 vertebral body (midpoint of its endplates)",
            "slice_index": self.slice_index,
            "body_range": list(self.body_range) if self.body_range is not None else None,
            "z_mm": _r(self.z_mm),
            "confidence": round(float(self.confidence), 3),
            "method": self.method,
            "levels": {k: _r(v) for k, v in self.levels.items()},
            "level_ranges": {k: [_r(a), _r(b)] for k, (a, b) in self.level_ranges.items()},
            "levels_seen": list(self.levels_seen),
            "flags": list(self.flags),
            "reason": self.reason,
            "notes": list(self.notes),
            "disc_z_mm": [_r(z) for z in self.disc_z_mm],
            "anchors_z_mm": {k: _r(v) for k, v in self.anchors_z_mm.items()},
            "cues": [c.to_json() for c in self.cues],
            "cue_weights": self.cue_weights,
        }


def _r(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)
