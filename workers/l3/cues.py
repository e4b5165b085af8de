"""Cues for the vertebral level and how their votes are combined.

Every landmark the series holds votes for one labelling of the disc chain: the index ``a`` of the
disc that is L3/L4. The two anchors (sacrum, lowest rib) count vertebrae; the iliac crests and the
widest transverse processes are weaker anatomical regularities that check the count. A level is
only claimed when an anchor votes for it, and any cue that votes for another labelling caps the
confidence below 0.5 and names itself in the notes, so a reader is sent to the picture instead of
trusting a count the landmarks do not agree on.

The weights are a versioned table (as :mod:`workers.measure.rules` is for cut-offs): change a number,
bump the version, and every result says which table decided it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

#: Cue names (stable: they appear in result.json and docs/validation-l3.md).
CUE_SACRUM = "sacrum"
CUE_RIB = "lowest_rib"
CUE_CREST = "iliac_crest"
CUE_TP = "transverse_processes"
ANCHOR_CUES = (CUE_SACRUM, CUE_RIB)
#: The rib cue's structure when the lowest rib is a rudimentary stub (workers.l3.anchors.StubRule).
RUDIMENTARY_RIB = "medial end of a rudimentary lowest rib"


@dataclass(frozen=True)
class CueWeights:
    """How much each cue is trusted alone (0-1): the probability that its count is right.

    - sacrum 0.72: L5 = first mobile vertebra above the sacroiliac bone bridge; wrong only with a
      transitional lumbosacral vertebra (lumbarisation 6 %, sacralisation 3 %, Nakajima 2014) or a
      missed faint L5/S1 disc.
    - lowest rib 0.55: 12 rib pairs assumed; lumbar miscounts from rib counting are ~10 % (same
      source), and a short 12th rib is easily missed or taken for a transverse process.
    - iliac crest 0.30: the supracristal plane passes through L4 or the L4/L5 disc in most adults
      but at L3/L4 or L5 in a large minority; it checks a count, it does not make one.
    - short_rib_factor 0.92, one_sided_rib_factor 0.85: the rib weight is lowered when the
      lowest rib is short (< 70 mm, close to a transverse process) or seen on one side only or at
      different levels (the values the localiser used as confidence factors since 0.1.0).
    - rudimentary_rib_factor 0.75 (replaces the short factor): the lowest rib is a stub told from a
      transverse process by its shape alone (anchors.StubRule), at the limit of what a 2.5 mm work
      grid shows and calibrated on derived stubs only: alone it stays below 0.5 (0.41), with the
      transverse processes agreeing it reaches 0.59.
    - transverse processes 0.30: L3's are the longest in most spines, but L4's can match them;
      only a clear winner (>= 8 % wider than the next) votes.
    - disagree_cap 0.45: the highest confidence a result can keep when any cue votes for another
      level (the QC verdict turns to review below 0.5).
    - anchors_disagree_cap 0.30: when the sacrum and the rib counts differ (a transitional
      vertebra, 11 or 13 rib pairs) the level itself is a matter of convention: always review.
    - weak_only_cap 0.40: when no anchor is in the field of view, the crest and the transverse
      processes may still name L3, but only for review.
    """

    name: str = "classical-cues@2"
    sacrum: float = 0.72
    lowest_rib: float = 0.55
    short_rib_factor: float = 0.92
    one_sided_rib_factor: float = 0.85
    rudimentary_rib_factor: float = 0.75
    iliac_crest: float = 0.30
    transverse_processes: float = 0.30
    disagree_cap: float = 0.45
    anchors_disagree_cap: float = 0.30
    weak_only_cap: float = 0.40
    tp_clear_ratio: float = 1.08


DEFAULT_WEIGHTS = CueWeights()


@dataclass(frozen=True)
class ProcessSpan:
    """Transverse processes of one vertebra: where they are widest and how far each side reaches
    from the canal centre (mm). Kept for the QC picture, where a reader checks them by eye."""

    z_mm: float
    right_mm: float
    left_mm: float

    @property
    def span_mm(self) -> float:
        return self.right_mm + self.left_mm


@dataclass(frozen=True)
class Cue:
    """One landmark and the labelling it votes for.

    ``vote`` is the index of the L3/L4 disc in the disc chain according to this cue (None when it
    abstains, e.g. the transverse processes have no clear winner); ``implied_l3_z_mm`` is the
    centre of the vertebra it calls L3, so votes can be compared at a glance.
    """

    name: str
    z_mm: float
    structure: str
    level: str
    weight: float
    vote: int | None
    implied_l3_z_mm: float | None = None
    agrees: bool | None = None
    note: str = ""
    spans: tuple[ProcessSpan, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "found_at_z_mm": round(float(self.z_mm), 2),
            "structure": self.structure,
            "implies_level": self.level,
            "implied_l3_z_mm": None
            if self.implied_l3_z_mm is None
            else round(float(self.implied_l3_z_mm), 2),
            "weight": round(float(self.weight), 3),
            "agrees": self.agrees,
            "note": self.note,
        }


@dataclass(frozen=True)
class Decision:
    """The chosen labelling, its confidence before plausibility checks, and the judged cues."""

    vote: int | None
    confidence: float
    cues: tuple[Cue, ...]
    anchored: bool
    disagreeing: tuple[Cue, ...]


def combine(cues: Sequence[Cue], weights: CueWeights = DEFAULT_WEIGHTS) -> Decision:
    """Weighted vote over labellings. Only labellings an anchor votes for can win unless no anchor
    voted at all; confidence = 1 - prod(1 - weight) over the cues that agree, capped when any cue
    disagrees (``disagree_cap``) or no anchor voted (``weak_only_cap``)."""
    voting = [c for c in cues if c.vote is not None]
    if not voting:
        return Decision(None, 0.0, tuple(cues), False, ())
    anchor_votes = {c.vote for c in voting if c.name in ANCHOR_CUES}
    candidates = anchor_votes or {c.vote for c in voting}
    order = {CUE_SACRUM: 0, CUE_RIB: 1, CUE_CREST: 2, CUE_TP: 3}

    def support(a: int) -> tuple[float, int]:
        # Ties go to the labelling of the more reliable anchor (sacrum, then ribs).
        best_rank = min(order.get(c.name, 9) for c in voting if c.vote == a)
        return (sum(c.weight for c in voting if c.vote == a), -best_rank)

    chosen = max(sorted(c for c in candidates if c is not None), key=support)
    judged = tuple(replace(c, agrees=None if c.vote is None else c.vote == chosen) for c in cues)
    agreeing = [c for c in judged if c.agrees]
    disagreeing = tuple(c for c in judged if c.agrees is False)
    miss = 1.0
    for c in agreeing:
        miss *= 1.0 - c.weight
    conf = 1.0 - miss
    anchored = bool(anchor_votes)
    if disagreeing:
        conf = min(conf, weights.disagree_cap)
    if any(c.name in ANCHOR_CUES for c in disagreeing) and any(c.name in ANCHOR_CUES for c in agreeing):
        conf = min(conf, weights.anchors_disagree_cap)
    if not anchored:
        conf = min(conf, weights.weak_only_cap)
    return Decision(chosen, conf, judged, anchored, disagreeing)


def describe_disagreement(d: Decision) -> str:
    """One readable sentence naming the cues that vote for another level, for notes and QC."""
    parts = []
    for c in d.disagreeing:
        where = f"L3 at z={c.implied_l3_z_mm:.0f} mm" if c.implied_l3_z_mm is not None else "another level"
        parts.append(f"{c.name.replace('_', ' ')} ({c.structure} at z={c.z_mm:.0f} mm) implies {where}")
    agree = [c.name.replace("_", " ") for c in d.cues if c.agrees]
    return (
        "cues disagree by a level: "
        + "; ".join(parts)
        + (f" (agreeing: {', '.join(agree)})" if agree else "")
    )
