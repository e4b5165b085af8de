"""The classical (no learned weights) L3 localiser: track the spine, find the discs, count from
the sacrum and from the last rib, and say how sure it is.

Errors of this kind of method come in whole vertebrae (30-40 mm); when the level is right the
centre is within about a slice. So most of this module is about *not* being wrong silently: two
independent counts, an agreement check, plausibility checks on every vertebra counted over, and
flags that explain every reduction of confidence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from workers.l3.anchors import (
    ILIUM_CORTEX_HU,
    RIB_CAGE_MIN,
    IliacCrests,
    RibAnchor,
    SacrumAnchor,
    find_iliac_crests,
    find_ribs,
    find_sacrum,
    rib_cage_count,
)
from workers.l3.cues import (
    CUE_CREST,
    CUE_RIB,
    CUE_SACRUM,
    CUE_TP,
    DEFAULT_WEIGHTS,
    RUDIMENTARY_RIB,
    Cue,
    CueWeights,
    Decision,
    ProcessSpan,
    combine,
    describe_disagreement,
)
from workers.l3.discs import Disc, DiscResult, find_discs, weak_disc_near
from workers.l3.grid import BoneThresholds, WorkGrid, body_mask, bone_thresholds, make_work_grid
from workers.l3.params import L3_PARAMS
from workers.l3.posterior import PosteriorProfile, measure_posterior, ring_at, segment_span
from workers.l3.result import (
    FLAG_ANCHORS_DISAGREE,
    FLAG_FOV_EDGE,
    FLAG_LEVEL_AMBIGUOUS,
    FLAG_LOW_CONTRAST,
    FLAG_NO_ANCHOR,
    FLAG_NO_SPINE,
    FLAG_ON_DISC,
    FLAG_ONLY_RIBS,
    FLAG_ONLY_SACRUM,
    FLAG_THICK_SLICES,
    FLAG_TRANSITIONAL,
    FLAG_UNUSUAL_HEIGHT,
    FLAG_WEAK_CUES_ONLY,
    FLAG_Z_GAP,
    LEVEL_ORDER,
    L3Result,
)
from workers.l3.spine import SpineTrack, body_profile, track_spine

_V = TypeVar("_V")

ENGINE_NAME = "classical"
ENGINE_VERSION = "0.3.0"

# The tuned numbers of the decision: workers/l3/params.py (classical-l3@1).
CHAIN = L3_PARAMS.chain
CONF = L3_PARAMS.confidence


@dataclass
class _Ctx:
    g: WorkGrid
    body: np.ndarray
    thr: BoneThresholds
    track: SpineTrack
    discs: DiscResult
    sacrum: SacrumAnchor | None
    ribs: RibAnchor | None
    crests: IliacCrests | None
    posterior: PosteriorProfile
    z_lo: float  # extent of the tracked spine (mm)
    z_hi: float


class ClassicalL3Localiser:
    """Default engine. Stateless; safe to reuse across volumes."""

    name = ENGINE_NAME
    version = ENGINE_VERSION

    def __init__(self, weights: CueWeights = DEFAULT_WEIGHTS) -> None:
        self.weights = weights

    def locate(self, hu: np.ndarray, z_mm: np.ndarray, spacing_yx_mm: tuple[float, float]) -> L3Result:
        z_mm = np.asarray(z_mm, dtype=np.float64)
        _check_input(hu, z_mm, spacing_yx_mm)
        g = make_work_grid(hu, z_mm, spacing_yx_mm)
        body = body_mask(g)
        thr = bone_thresholds(g, body)
        track = track_spine(g, body, thr.spine)
        spine_yx = _spine_yx_mm(track, g, spacing_yx_mm)
        if track.valid.sum() < 3:
            return self._not_found("no spine found in the field of view", (FLAG_NO_SPINE,), (), spine_yx)
        prof = body_profile(g, track)
        posterior = measure_posterior(g, body, track, thr.anchor, min(CHAIN.tp_bone_hu, thr.anchor))
        discs = find_discs(g.z_mm, prof, track.valid)
        sacrum = find_sacrum(g, body, track, thr.si_bridge)
        ribs = find_ribs(g, body, track, sacrum, thr.anchor, posterior)
        crests = find_iliac_crests(g, body, track, ribs, thr.anchor, ILIUM_CORTEX_HU * thr.scale)
        zv = g.z_mm[track.valid]
        ctx = _Ctx(
            g, body, thr, track, discs, sacrum, ribs, crests, posterior, float(zv.min()), float(zv.max())
        )
        res = self._decide(ctx, spine_yx)
        anchors: dict[str, float] = {}
        if sacrum is not None:
            anchors["sacroiliac_bridge_top"] = sacrum.z_top
        if ribs is not None:
            anchors["lowest_rib_neck"] = ribs.z_lowest
        if crests is not None:
            anchors["iliac_crest_top"] = crests.z_top
        return dataclasses.replace(res, anchors_z_mm=anchors)

    # ------------------------------------------------------------------ decision
    def _decide(self, c: _Ctx, spine_yx: tuple[tuple[float, float], ...]) -> L3Result:
        """Name L3 from the cues and say how sure that is.

        Stages: tie the anchors to the disc chain (:func:`_anchored_chain`), let every cue vote
        (:meth:`_cues`, :func:`combine`), say what the count rests on (:func:`_count_findings`),
        name every vertebra and find L3's endplates (:func:`_label`, :func:`_l3_discs`), then lower
        the confidence for every doubt about this result (:func:`_doubts`) and check that the
        chosen slice is not on a disc (:func:`_looks_like_disc`)."""
        chain = _anchored_chain(c)
        d = chain.discs
        cues = self._cues(c, d, chain.i_s, chain.i_r)
        decision = combine(cues, self.weights)
        if decision.vote is None:
            return self._no_anchor(c, d, spine_yx, list(chain.notes))
        a = decision.vote
        count = _count_findings(c, decision, chain)
        flags = list(count.flags)
        notes = [*chain.notes, *count.notes]

        # Label every vertebra of the chain relative to the L3/L4 disc at index a.
        levels, ranges, seen = _label(d, a, c)
        typical = _typical_height(d)
        cut = _cut_by_image_edge(c, ranges)
        if cut:
            notes.append("cut by the image edge, centre estimated from typical height: " + ", ".join(cut))

        # L3 itself.
        z_low_disc, z_high_disc, est_low, est_high = _l3_discs(d, a, typical)
        if z_low_disc is None or z_high_disc is None:
            z_est = _extrapolated_l3(d, a, typical)
            margin = CHAIN.extrapolated_inside_mm
            if z_est is not None and c.z_lo + margin < z_est < c.z_hi - margin:
                # By extrapolation L3 lies inside the tracked spine, but its discs were not found:
                # do not claim that it is outside the image.
                seen.add("L3")
                flags = [*flags, FLAG_LEVEL_AMBIGUOUS]
                notes.append(f"L3 expected near z={z_est:.0f} mm by extrapolation; its discs were not found")
            return self._out_of_fov(
                c, seen, levels, ranges, count.method, flags, notes, spine_yx, decision.cues
            )
        lo_ep = z_low_disc[1]
        hi_ep = z_high_disc[0]
        z_c = 0.5 * (lo_ep + hi_ep)
        z = c.g.z_native
        if z_c < z[0] - CHAIN.slice_edge_tol_mm or z_c > z[-1] + CHAIN.slice_edge_tol_mm:
            return self._out_of_fov(
                c, seen, levels, ranges, count.method, flags, notes, spine_yx, decision.cues
            )

        k = int(np.argmin(np.abs(z - z_c)))
        span = _counted_span(
            a,
            chain.i_s if CUE_SACRUM in count.anchors_ok else None,
            chain.i_r if CUE_RIB in count.anchors_ok else None,
        )
        conf = decision.confidence
        for doubt in _doubts(c, d, span, _L3Bounds(lo_ep, hi_ep, z_c, est_low or est_high, k)):
            flags += doubt.flags
            notes += doubt.notes
            conf *= doubt.factor
        tol = CHAIN.endplate_tol_mm
        inside = np.nonzero((z >= lo_ep - tol) & (z <= hi_ep + tol))[0]
        body_range = (int(inside[0]), int(inside[-1])) if inside.size else (k, k)
        if _looks_like_disc(c, float(z[k]), d, a):
            flags += [FLAG_ON_DISC, FLAG_LEVEL_AMBIGUOUS]
            conf = min(conf, self.weights.disagree_cap)
            notes.append(f"the chosen slice (z={z[k]:.1f} mm) has no closed bony ring: it may lie on a disc")

        levels["L3"] = z_c
        ranges["L3"] = (lo_ep, hi_ep)
        return L3Result(
            found=True,
            engine=ENGINE_NAME,
            engine_version=ENGINE_VERSION,
            slice_index=k,
            body_range=body_range,
            z_mm=float(z[k]),
            confidence=float(np.clip(conf, *CONF.confidence_range)),
            method=count.method,
            levels=_ordered(levels),
            level_ranges=_ordered(ranges),
            levels_seen=_seen_tuple(seen),
            flags=tuple(dict.fromkeys(flags)),
            reason=None,
            notes=tuple(notes),
            disc_z_mm=tuple(x.z for x in d),
            spine_yx_mm=spine_yx,
            cues=decision.cues,
            cue_weights=self.weights.name,
        )

    # ------------------------------------------------------------------ cues
    def _cues(self, c: _Ctx, d: list[Disc], i_s: int | None, i_r: int | None) -> list[Cue]:
        """Every landmark found, as a vote for the index of the L3/L4 disc in the chain ``d``."""
        w = self.weights
        cues: list[Cue] = []

        if c.sacrum is not None and i_s is not None:
            a = i_s + 2
            cues.append(
                Cue(
                    CUE_SACRUM,
                    c.sacrum.z_top,
                    "top of the sacroiliac bone bridge",
                    "S1",
                    w.sacrum,
                    a,
                    _l3_centre(d, a),
                )
            )
        if c.ribs is not None and i_r is not None:
            a = i_r - 3
            weight = w.lowest_rib
            if c.ribs.lowest_rudimentary:
                weight *= w.rudimentary_rib_factor
            elif c.ribs.lowest_short:
                weight *= w.short_rib_factor
            if not c.ribs.sides_agree:
                weight *= w.one_sided_rib_factor
            where = RUDIMENTARY_RIB if c.ribs.lowest_rudimentary else "neck of the lowest rib"
            cues.append(Cue(CUE_RIB, c.ribs.z_lowest, where, "T12", weight, a, _l3_centre(d, a)))
        if c.crests is not None and d:
            a = _crest_vote(d, c.crests.z_top)
            cues.append(
                Cue(
                    CUE_CREST,
                    c.crests.z_top,
                    "top of the iliac crests",
                    "L4",
                    w.iliac_crest,
                    a,
                    _l3_centre(d, a),
                )
            )
        tp = _tp_cue(c, d, i_s, i_r, w)
        if tp is not None:
            cues.append(tp)
        return cues

    # ------------------------------------------------------------------ not found
    def _not_found(
        self,
        reason: str,
        flags: tuple[str, ...],
        seen: tuple[str, ...],
        spine_yx: tuple[tuple[float, float], ...] | None,
        levels: dict[str, float] | None = None,
        ranges: dict[str, tuple[float, float]] | None = None,
        method: str = "none",
        notes: tuple[str, ...] = (),
        discs: tuple[float, ...] = (),
        cues: tuple[Cue, ...] = (),
    ) -> L3Result:
        """A result without a slice; the cues, when there are any, say what the count rested on."""
        return L3Result(
            found=False,
            engine=ENGINE_NAME,
            engine_version=ENGINE_VERSION,
            confidence=0.0,
            method=method,
            levels=_ordered(levels or {}),
            level_ranges=_ordered(ranges or {}),
            levels_seen=seen,
            flags=tuple(dict.fromkeys(flags)),
            reason=reason,
            notes=notes,
            disc_z_mm=discs,
            spine_yx_mm=spine_yx,
            cues=cues,
            cue_weights=self.weights.name if cues else None,
        )

    def _out_of_fov(
        self,
        c: _Ctx,
        seen: set[str],
        levels: dict[str, float],
        ranges: dict[str, tuple[float, float]],
        method: str,
        flags: list[str],
        notes: list[str],
        spine_yx: tuple[tuple[float, float], ...],
        cues: tuple[Cue, ...],
    ) -> L3Result:
        s = _seen_tuple(seen)
        where = _describe_seen(s)
        i3 = LEVEL_ORDER.index("L3")
        idx = [LEVEL_ORDER.index(n) for n in s]
        if "L3" in s or (idx and min(idx) < i3 < max(idx)):
            # L3 should be in the image but its own discs were not found: do not claim that it is
            # outside the image, and do not guess a slice either.
            flags = [*flags, FLAG_LEVEL_AMBIGUOUS]
            reason = f"the L3 discs could not be found although the image covers {where}"
        else:
            side = "below" if idx and min(idx) > i3 else "above"
            reason = f"L3 is not in the field of view (it lies {side} it): saw {where}"
        return self._not_found(
            reason,
            tuple(flags),
            s,
            spine_yx,
            levels,
            ranges,
            method,
            tuple(notes),
            tuple(x.z for x in c.discs.discs),
            cues,
        )

    def _no_anchor(
        self,
        c: _Ctx,
        d: list[Disc],
        spine_yx: tuple[tuple[float, float], ...],
        notes: list[str],
    ) -> L3Result:
        # Ribs down to the lower edge of the image: everything seen is thoracic, L3 is far below.
        if c.ribs is not None and _ribs_reach_bottom(c):
            seen: tuple[str, ...] = ()
            reason = (
                "L3 is not in the field of view (it lies below it): saw only rib-bearing thoracic "
                "vertebrae (ribs reach the lower edge of the image)"
            )
            return self._not_found(
                reason,
                (),
                seen,
                spine_yx,
                notes=(*notes, "thoracic spine only"),
                discs=tuple(x.z for x in d),
            )
        discs = tuple(x.z for x in d)
        if c.ribs is not None and c.ribs.z_lowest - c.z_lo < CHAIN.rib_to_l3_min_mm:
            # The lowest rib is T12 and the spine ends too soon below it to reach mid-L3.
            seen_l = _rib_only_levels(c, d)
            reason = f"L3 is not in the field of view (it lies below it): saw {_describe_seen(seen_l)}"
            return self._not_found(reason, (), seen_l, spine_yx, notes=tuple(notes), discs=discs)
        if c.sacrum is not None and c.z_hi - c.sacrum.z_top < CHAIN.sacrum_to_l3_min_mm:
            reason = (
                "L3 is not in the field of view (it lies above it): the image ends within the lowest "
                "lumbar vertebrae above the sacrum"
            )
            return self._not_found(reason, (), ("S",), spine_yx, notes=tuple(notes), discs=discs)
        if c.ribs is not None or c.sacrum is not None:
            seen_what = " and ".join(
                w for w, a in (("the sacrum", c.sacrum), ("the last rib", c.ribs)) if a is not None
            )
            reason = (
                f"the vertebral level cannot be determined: {seen_what} seen, but the discs needed to "
                "count from it could not be identified"
            )
            return self._not_found(
                reason, (FLAG_NO_ANCHOR, FLAG_LEVEL_AMBIGUOUS), (), spine_yx, notes=tuple(notes), discs=discs
            )
        cage = rib_cage_count(c.g, c.body, c.track, c.thr.anchor)
        z = c.g.z_mm
        bottom = cage[z <= z[0] + CHAIN.cage_bottom_mm]
        thoracic = bool(bottom.size) and min(float(np.median(bottom)), float(np.median(cage))) >= RIB_CAGE_MIN
        if thoracic:
            reason = (
                "L3 is not in the field of view (it lies below it): saw only thoracic vertebrae "
                "inside the rib cage (ribs around the body down to the lower edge of the image); "
                "the exact thoracic levels cannot be counted without the last rib or the sacrum"
            )
            return self._not_found(
                reason,
                (),
                (),
                spine_yx,
                notes=(*notes, "rib cage on every slice"),
                discs=tuple(x.z for x in d),
            )
        reason = (
            "the vertebral level cannot be determined: neither the sacrum nor the ribs are in the "
            "field of view, so there is nothing to count from"
        )
        return self._not_found(
            reason, (FLAG_NO_ANCHOR,), (), spine_yx, notes=tuple(notes), discs=tuple(x.z for x in d)
        )


# ---------------------------------------------------------------------- decision stages
class _Chain(NamedTuple):
    """The disc chain (inferior first) with the anchors tied to it: the index of the L5/S1 disc
    (sacrum) and of the T12/L1 disc (lowest rib), None where that anchor is not used, and notes
    on how they were tied."""

    discs: list[Disc]
    i_s: int | None
    i_r: int | None
    notes: tuple[str, ...]


class _Count(NamedTuple):
    """What the winning count rests on: the method named in the result, the anchors that agree
    with it, and the flags and notes that describe it."""

    method: str
    anchors_ok: tuple[str, ...]
    flags: tuple[str, ...]
    notes: tuple[str, ...]


class _L3Bounds(NamedTuple):
    """L3 on the chain: its endplates and centre (mm), whether an endplate was estimated, and the
    chosen slice (caller's index)."""

    lo_ep: float
    hi_ep: float
    z_c: float
    estimated: bool
    k: int


@dataclass(frozen=True)
class _Doubt:
    """One reason to trust a named L3 less: its flags and notes, and the factor that lowers the
    confidence (:class:`workers.l3.params.ConfidenceParams`)."""

    factor: float
    flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _anchored_chain(c: _Ctx) -> _Chain:
    """The disc chain with both anchors tied to it, adding a faint or estimated disc where an
    anchor says one must be (:func:`_with_sacral_disc`, :func:`_with_t12_disc`).

    Why: an anchor only counts vertebrae once it is tied to a disc of the chain; a missed disc next
    to it would shift the count by a whole vertebra."""
    d, sacral_note = _with_sacral_disc(c, list(c.discs.discs))
    d, rib_usable, rib_note = _with_t12_disc(c, d)
    i_s = _sacrum_disc_index(d, c.sacrum)
    i_r = _rib_disc_index(d, c.ribs) if rib_usable else None
    notes = [n for n in (sacral_note, rib_note) if n is not None]
    if c.sacrum is not None and i_s is None:
        notes.append("sacroiliac bone bridge seen but no disc near it: sacrum anchor not used")
    if c.ribs is not None and i_r is None and not _ribs_reach_bottom(c):
        notes.append("ribs seen but no disc below the lowest rib in the tracked spine")
    return _Chain(d, i_s, i_r, tuple(notes))


def _with_sacral_disc(c: _Ctx, d: list[Disc]) -> tuple[list[Disc], str | None]:
    """The chain with an L5/S1 disc where the sacrum says it must be, if none is near it.

    Why: the L5/S1 disc is tilted and often faint in an axial profile; the sacrum says where it must
    be, so a weaker dip there is accepted, or, without any dip, a disc placed one plausible vertebra
    below the lowest disc (it still has to pass the height checks)."""
    if c.sacrum is None or _sacrum_disc_index(d, c.sacrum) is not None:
        return d, None
    target = c.sacrum.z_top - CHAIN.sacrum_disc_offset_mm
    extra = weak_disc_near(c.discs, target, CHAIN.sacrum_disc_tol_mm)
    if extra is None:
        extra = _virtual_sacral_disc(d, target)
    if extra is None:
        return d, None
    kind = "estimated" if extra.strength == 0.0 else "faint"
    note = f"{kind} L5/S1 disc at z={extra.z:.1f} mm accepted because the sacrum is there"
    return sorted([*d, extra], key=lambda x: x.z), note


def _with_t12_disc(c: _Ctx, d: list[Disc]) -> tuple[list[Disc], bool, str | None]:
    """The chain with a faint T12/L1 disc below the lowest rib where the nearest disc below it is
    far; whether the rib anchor can be used; and a note when the chain changed or it cannot.

    Why: the rib neck lies within T12, so the T12/L1 disc is close below it; a long distance means
    that disc was missed. A weaker dip there is accepted, or the ribs are not used."""
    i_r = _rib_disc_index(d, c.ribs)
    if c.ribs is None or i_r is None or c.ribs.z_lowest - d[i_r].z <= CHAIN.rib_to_disc_max_mm:
        return d, True, None
    extra = weak_disc_near(
        c.discs, c.ribs.z_lowest - CHAIN.rib_disc_search_offset_mm, CHAIN.rib_disc_search_tol_mm
    )
    if extra is None:
        note = f"no disc within {CHAIN.rib_to_disc_max_mm:.0f} mm below the last rib: rib anchor not used"
        return d, False, note
    note = f"faint T12/L1 disc at z={extra.z:.1f} mm accepted: the last rib is there"
    return sorted([*d, extra], key=lambda x: x.z), True, note


def _count_findings(c: _Ctx, decision: Decision, chain: _Chain) -> _Count:
    """Which anchors the winning count rests on, and the flags and notes a reader needs about it:
    the two anchors disagree (a transitional vertebra, 11 or 13 rib pairs), only one anchor was
    seen, another cue votes for another level, no anchor at all, or a doubtful lowest rib."""
    agreeing = [q.name for q in decision.cues if q.agrees]
    anchors_ok = [n for n in (CUE_SACRUM, CUE_RIB) if n in agreeing]
    method = "+".join("ribs" if n == CUE_RIB else n for n in anchors_ok) or "weak_cues"
    cue_names = {q.name for q in decision.cues if q.vote is not None}
    flags: list[str] = []
    notes: list[str] = []
    if {CUE_SACRUM, CUE_RIB} <= cue_names and len(anchors_ok) == 1:
        flags += [FLAG_ANCHORS_DISAGREE, FLAG_LEVEL_AMBIGUOUS, FLAG_TRANSITIONAL]
        n_lumbar = (chain.i_r - chain.i_s) if chain.i_r is not None and chain.i_s is not None else 0
        notes.append(
            f"sacrum count and rib count differ by {abs(n_lumbar - 5) or 1} vertebra(e): "
            f"{n_lumbar} segments between the last rib and the sacrum (expected 5)"
        )
    elif anchors_ok == [CUE_SACRUM] and CUE_RIB not in cue_names:
        flags.append(FLAG_ONLY_SACRUM)
    elif anchors_ok == [CUE_RIB] and CUE_SACRUM not in cue_names:
        flags.append(FLAG_ONLY_RIBS)
    if decision.disagreeing:
        flags.append(FLAG_LEVEL_AMBIGUOUS)
        notes.append(describe_disagreement(decision))
    if not decision.anchored:
        flags += [FLAG_WEAK_CUES_ONLY, FLAG_LEVEL_AMBIGUOUS]
        notes.append(
            "neither the sacrum nor a rib is in the field of view: L3 named from "
            + " and ".join(n.replace("_", " ") for n in agreeing)
            + " only"
        )
    if c.ribs is not None and CUE_RIB in cue_names:
        notes += _lowest_rib_notes(c.ribs)
    return _Count(method, tuple(anchors_ok), tuple(flags), tuple(notes))


def _lowest_rib_notes(ribs: RibAnchor) -> list[str]:
    """Notes on a lowest rib that may be miscounted: a rudimentary stub, a short rib (like a
    transverse process), or one seen on one side only or at different levels."""
    notes: list[str] = []
    if ribs.lowest_rudimentary:
        notes.append(
            "lowest rib is a rudimentary stub (running down from the vertebra, longer than the "
            "processes below): check the count on the picture"
        )
    elif ribs.lowest_short:
        notes.append("lowest rib is short (could be confused with a transverse process)")
    if not ribs.sides_agree:
        notes.append("lowest rib seen on one side only or at different levels left and right")
    return notes


def _cut_by_image_edge(c: _Ctx, ranges: dict[str, tuple[float, float]]) -> list[str]:
    """Vertebrae (not the sacrum) whose range reaches an end of the tracked spine: their centre is
    estimated from the typical height."""
    m = CHAIN.level_cut_margin_mm
    return [n for n, (lo, hi) in ranges.items() if n != "S" and (lo <= c.z_lo + m or hi >= c.z_hi - m)]


def _doubts(c: _Ctx, d: list[Disc], span: tuple[int, int], l3: _L3Bounds) -> list[_Doubt]:
    """Every reason to trust the named L3 less, in the order they lower the confidence: L3 at the
    edge of the tracked spine, implausible vertebrae or faint discs on the counting path, low bone
    contrast, thick slices, a gap in z near L3."""
    z = c.g.z_native
    found = [
        _fov_edge_doubt(c, l3),
        *_counting_path_doubts(d, span),
        _low_contrast_doubt(c),
        _thick_slices_doubt(z),
        _z_gap_doubt(c, z, l3),
    ]
    return [x for x in found if x is not None]


def _fov_edge_doubt(c: _Ctx, l3: _L3Bounds) -> _Doubt | None:
    """L3 at the edge of the tracked spine: one endplate estimated, or close to the end (the disc
    beyond it may be the image edge's artefact)."""
    if l3.estimated:
        note = "one L3 endplate lies outside the tracked spine: its position was estimated"
        return _Doubt(CONF.fov_edge_estimated_factor, (FLAG_FOV_EDGE,), (note,))
    m = CONF.fov_edge_margin_mm
    if l3.lo_ep - m < c.z_lo or l3.hi_ep + m > c.z_hi:
        return _Doubt(CONF.fov_edge_near_factor, (FLAG_FOV_EDGE,))
    return None


def _counting_path_doubts(d: list[Disc], span: tuple[int, int]) -> list[_Doubt]:
    """Plausibility of every vertebra counted over (from the anchor to L3): a height outside the
    soft or the hard range, and faint discs, each say a disc may be missed or false."""
    heights = [d[j + 1].z - d[j].z for j in range(span[0], span[1]) if j >= 0 and j + 1 < len(d)]
    soft_lo, soft_hi = CHAIN.height_soft_mm
    hard_lo, hard_hi = CHAIN.height_hard_mm
    bad_soft = [h for h in heights if not soft_lo <= h <= soft_hi]
    bad_hard = [h for h in heights if not hard_lo <= h <= hard_hi]
    weak = [
        d[j].strength
        for j in range(span[0], span[1] + 1)
        if 0 <= j < len(d) and d[j].strength < CONF.faint_disc_strength
    ]
    out: list[_Doubt] = []
    if bad_soft:
        note = "unusual vertebra+disc height(s): " + ", ".join(f"{h:.0f} mm" for h in bad_soft)
        out.append(_Doubt(CONF.unusual_height_factor, (FLAG_UNUSUAL_HEIGHT,), (note,)))
    if bad_hard:
        out.append(_Doubt(CONF.implausible_height_factor, (FLAG_LEVEL_AMBIGUOUS,)))
    if weak:
        out.append(_Doubt(CONF.faint_disc_factor, notes=(f"{len(weak)} faint disc(s) on the counting path",)))
    return out


def _low_contrast_doubt(c: _Ctx) -> _Doubt | None:
    """Faint discs overall: that is where mid-body dips get mistaken for discs (half-vertebra
    shifts)."""
    if c.discs.typical_depth_hu < CONF.low_contrast_hu:
        return _Doubt(CONF.low_contrast_factor, (FLAG_LOW_CONTRAST,))
    return None


def _thick_slices_doubt(z: np.ndarray) -> _Doubt | None:
    """Thick slices blur thin discs into their neighbours."""
    if z.size > 1 and float(np.median(np.diff(z))) > CONF.thick_slice_mm:
        note = f"slices {float(np.median(np.diff(z))):.1f} mm apart: discs are blurred"
        return _Doubt(CONF.thick_slices_factor, (FLAG_THICK_SLICES,), (note,))
    return None


def _z_gap_doubt(c: _Ctx, z: np.ndarray, l3: _L3Bounds) -> _Doubt | None:
    """No slice near L3's centre, or a gap in the disc grid between its endplates: the level's
    discs were partly interpolated."""
    if abs(z[l3.k] - l3.z_c) > CONF.z_gap_mm or not _observed(c.discs, l3.lo_ep, l3.hi_ep):
        return _Doubt(CONF.z_gap_factor, (FLAG_Z_GAP,))
    return None


# ---------------------------------------------------------------------- helpers
def _check_input(hu: np.ndarray, z_mm: np.ndarray, spacing: tuple[float, float]) -> None:
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3-D [z, y, x], got shape {hu.shape}")
    if z_mm.shape != (hu.shape[0],):
        raise ValueError(f"z_mm must have shape ({hu.shape[0]},), got {z_mm.shape}")
    if hu.shape[0] > 1 and not np.all(np.diff(z_mm) > 0):
        raise ValueError("z_mm must be strictly ascending (canonical order is inferior -> superior)")
    if len(spacing) != 2 or min(spacing) <= 0:
        raise ValueError(f"spacing_yx_mm must be two positive numbers, got {spacing}")


def _spine_yx_mm(t: SpineTrack, g: WorkGrid, spacing: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    """Vertebral-body centre per caller slice, in mm from the centre of original pixel (0, 0)."""
    dy0, dx0 = spacing
    ys = (t.y_body * g.fy + 0.5 * (g.fy - 1)) * dy0
    xs = (t.x * g.fx + 0.5 * (g.fx - 1)) * dx0
    if g.fz > 1:  # back from binned work slices to the caller's slices
        ys = np.interp(g.z_native, g.z_mm, ys)
        xs = np.interp(g.z_native, g.z_mm, xs)
    return tuple((float(a), float(b)) for a, b in zip(ys, xs, strict=True))


def _sacrum_disc_index(d: list[Disc], s: SacrumAnchor | None) -> int | None:
    if s is None or not d:
        return None
    target = s.z_top - CHAIN.sacrum_disc_offset_mm
    j = int(np.argmin([abs(x.z - target) for x in d]))
    return j if abs(d[j].z - target) <= CHAIN.sacrum_disc_tol_mm else None


def _virtual_sacral_disc(d: list[Disc], target: float) -> Disc | None:
    """When no dip marks L5/S1 (thick slices blur the tilted disc), place it where the sacrum says,
    but only if the lowest disc above is one plausible vertebra higher (so it is L4/L5)."""
    above = [x for x in d if x.z > target]
    lo, hi = CHAIN.height_soft_mm
    if not above or not lo <= above[0].z - target <= hi:
        return None
    half = CHAIN.virtual_disc_half_mm
    return Disc(z=target, z_lo=target - half, z_hi=target + half, depth_hu=0.0, strength=0.0)


def _rib_disc_index(d: list[Disc], r: RibAnchor | None) -> int | None:
    """T12/L1 disc: the first disc below the medial end of the lowest rib. The 12th rib head
    articulates with the upper T12 body; what we measure is the rib neck just outside the 30 mm
    cylinder around the canal, which descends laterally, so it lies 5-15 mm lower than the head
    and can come within a few mm of the T12/L1 disc (seen with 5 mm slices)."""
    if r is None:
        return None
    below = [j for j, x in enumerate(d) if x.z < r.z_lowest + CHAIN.rib_head_tol_mm]
    if not below:
        return None
    j = below[-1]
    # The T12 segment must be a plausible height: the rib head lies within it.
    if r.z_lowest - d[j].z > CHAIN.height_hard_mm[1]:
        return None
    return j


def _l3_centre(d: list[Disc], a: int) -> float | None:
    """Centre of the vertebra above chain disc ``a`` (the L3 of that labelling), if both of its
    discs are in the chain."""
    if a >= 0 and a + 1 < len(d):
        return 0.5 * (d[a].z_hi + d[a + 1].z_lo)
    return None


def _crest_vote(d: list[Disc], z_crest: float) -> int:
    """The L3/L4 disc index if the crest top lies in L4 or on the L4/L5 disc: in a disc's extent
    (+-2 mm) that disc is L4/L5; between discs j-1 and j that vertebra is L4."""
    for i, x in enumerate(d):
        if x.z_lo - CHAIN.crest_on_disc_mm <= z_crest <= x.z_hi + CHAIN.crest_on_disc_mm:
            return i + 1
    return int(np.searchsorted([x.z for x in d], z_crest))


def _tp_cue(c: _Ctx, d: list[Disc], i_s: int | None, i_r: int | None, w: CueWeights) -> Cue | None:
    """The lumbar vertebra with the widest transverse processes votes for being L3, if it is a clear
    winner. Only whole vertebrae between two chain discs count: not L5 (its processes are as
    wide as L3's, 96 vs 102 mm on example_ct, and join the sacral ala), so none at or just above
    the sacrum's disc nor wholly below the iliac crests; none rib-bearing (above the last rib's
    disc); none whose span ran into a rib or the iliac bone."""
    spans: dict[int, ProcessSpan] = {}
    crest = c.crests.z_top if c.crests is not None else None
    for j in range(1, len(d)):
        if (i_s is not None and j <= i_s + 1) or (i_r is not None and j > i_r):
            continue
        if crest is not None and d[j].z < crest:
            continue
        sp = segment_span(c.posterior, c.g.z_mm, d[j - 1].z, d[j].z)
        if sp is not None and 0.0 < sp.span_mm < CHAIN.tp_merged_mm:
            spans[j] = sp
    if len(spans) < 2:
        return None
    ranked = sorted(spans, key=lambda j: spans[j].span_mm, reverse=True)
    j0, j1 = ranked[0], ranked[1]
    listing = ", ".join(f"{spans[j].span_mm:.0f} mm at z={spans[j].z_mm:.0f}" for j in sorted(spans))
    clear = spans[j0].span_mm >= w.tp_clear_ratio * spans[j1].span_mm
    a = j0 - 1 if clear else None
    return Cue(
        CUE_TP,
        spans[j0].z_mm,
        "widest transverse processes",
        "L3",
        w.transverse_processes,
        a,
        None if a is None else _l3_centre(d, a),
        note=listing if clear else f"no clear widest vertebra ({listing})",
        spans=tuple(spans[j] for j in sorted(spans)),
    )


def _looks_like_disc(c: _Ctx, z: float, d: list[Disc], a: int) -> bool:
    """The chosen slice lies inside a chain disc, or its bony ring is clearly more open than at the
    two discs that bound L3: then the "discs" are really low-density parts of vertebral bodies (a
    chain shifted by half a vertebra) and the chosen slice is on a real disc. A vertebral body is
    walled by bone; a disc level is open to the front and the foramina (:mod:`.posterior`)."""
    if any(x.z_lo <= z <= x.z_hi for x in d):
        return True
    bounds = [ring_at(c.posterior, c.g.z_mm, d[i].z) for i in (a, a + 1) if 0 <= i < len(d)]
    ring = ring_at(c.posterior, c.g.z_mm, z)
    if not np.isfinite(ring) or len(bounds) < 2 or not all(np.isfinite(bounds)):
        return False
    return bool(ring < min(bounds) - CONF.ring_shift_margin)


def _ribs_reach_bottom(c: _Ctx) -> bool:
    """Ribs within ``CHAIN.ribs_reach_bottom_mm`` (20 mm) of the lower edge of the tracked spine:
    there may be more ribs below."""
    return c.ribs is not None and c.ribs.z_lowest - c.z_lo < CHAIN.ribs_reach_bottom_mm


def _typical_height(d: list[Disc]) -> float:
    gaps = [d[j + 1].z - d[j].z for j in range(len(d) - 1)]
    lo, hi = CHAIN.height_soft_mm
    gaps = [x for x in gaps if lo <= x <= hi]
    return float(np.median(gaps)) if gaps else CHAIN.typical_height_fallback_mm


def _l3_discs(
    d: list[Disc], a: int, typical: float
) -> tuple[tuple[float, float] | None, tuple[float, float] | None, bool, bool]:
    """(lo, hi) endplate bounds of the L3/L4 and L2/L3 discs; estimated from the typical height
    when exactly one of them lies beyond the chain (L3 at the edge of the field of view)."""
    n = len(d)
    half = CHAIN.virtual_disc_half_mm
    have_lo = 0 <= a < n
    have_hi = 0 <= a + 1 < n
    if have_lo and have_hi:
        return (d[a].z_lo, d[a].z_hi), (d[a + 1].z_lo, d[a + 1].z_hi), False, False
    if have_lo:
        z = d[a].z + typical
        return (d[a].z_lo, d[a].z_hi), (z - half, z + half), False, True
    if have_hi:
        z = d[a + 1].z - typical
        return (z - half, z + half), (d[a + 1].z_lo, d[a + 1].z_hi), True, False
    return None, None, False, False


def _extrapolated_l3(d: list[Disc], a: int, typical: float) -> float | None:
    """Centre of L3 extrapolated along the chain with the typical height, when L3 is off the chain."""
    if not d:
        return None
    if a < 0:
        return d[0].z + a * typical + 0.5 * typical
    if a >= len(d):
        return d[-1].z + (a - len(d) + 1) * typical + 0.5 * typical
    return d[a].z + 0.5 * typical


def _counted_span(a: int, i_s: int | None, i_r: int | None) -> tuple[int, int]:
    """Disc index range (inclusive) between the anchor disc(s) and the L3 discs."""
    lo, hi = a, a + 1
    if i_s is not None:
        lo = min(lo, i_s)
    if i_r is not None:
        hi = max(hi, i_r)
    return lo, hi


def _label(
    d: list[Disc], a: int, c: _Ctx
) -> tuple[dict[str, float], dict[str, tuple[float, float]], set[str]]:
    """Name every vertebra between chain discs. Segment j lies between d[j-1] and d[j]; the segment
    just above d[a] (the L3/L4 disc) is L3. Partial segments at the ends count as seen."""
    levels: dict[str, float] = {}
    ranges: dict[str, tuple[float, float]] = {}
    seen: set[str] = set()
    l3 = LEVEL_ORDER.index("L3")
    n = len(d)
    typical = _typical_height(d)
    seen_mm = CHAIN.partial_level_min_mm
    disc_mm = CHAIN.partial_level_disc_mm
    reach = CHAIN.partial_level_reach * typical
    for j in range(n + 1):  # segment above disc j-1 and below disc j
        idx = l3 + (j - 1 - a)
        if idx < 0:
            idx = 0  # everything below L5/S1 is the sacrum
        if idx >= len(LEVEL_ORDER):
            continue
        name = LEVEL_ORDER[idx]
        lo = d[j - 1].z_hi if j >= 1 else None
        hi = d[j].z_lo if j < n else None
        if name == "S":
            if hi is not None and hi > c.z_lo + seen_mm:
                seen.add("S")
                ranges["S"] = (c.z_lo if lo is None else min(lo, ranges.get("S", (lo, hi))[0]), hi)
            continue
        if lo is not None and hi is not None:
            levels[name] = 0.5 * (lo + hi)
            ranges[name] = (lo, hi)
            seen.add(name)
        elif lo is not None and c.z_hi - lo > seen_mm:
            seen.add(name)
            est_hi = lo + typical - disc_mm
            ranges[name] = (lo, min(est_hi, c.z_hi))
            if est_hi <= c.z_hi + reach:
                levels[name] = 0.5 * (lo + est_hi)
        elif hi is not None and hi - c.z_lo > seen_mm:
            seen.add(name)
            est_lo = hi - typical + disc_mm
            ranges[name] = (max(est_lo, c.z_lo), hi)
            if est_lo >= c.z_lo - reach:
                levels[name] = 0.5 * (est_lo + hi)
    return levels, ranges, seen


def _rib_only_levels(c: _Ctx, d: list[Disc]) -> tuple[str, ...]:
    """Levels when ribs are seen but no disc below the lowest rib: T12 at the rib, and above it as
    many vertebrae as the remaining height allows."""
    assert c.ribs is not None
    n_above = int(max(0.0, c.z_hi - c.ribs.z_lowest) // CHAIN.thoracic_height_mm)
    idx = LEVEL_ORDER.index("T12")
    names = [LEVEL_ORDER[min(idx + i, len(LEVEL_ORDER) - 1)] for i in range(0, 1 + max(1, n_above))]
    return tuple(dict.fromkeys(names))


def _observed(dr: DiscResult, lo: float, hi: float) -> bool:
    if dr.grid_z.size == 0:
        return True
    m = (dr.grid_z >= lo) & (dr.grid_z <= hi)
    return bool(dr.observed[m].all()) if m.any() else True


def _ordered(dct: dict[str, _V]) -> dict[str, _V]:
    """Levels in anatomical order (inferior first), so JSON output is stable and readable."""
    return {k: dct[k] for k in LEVEL_ORDER if k in dct}


def _seen_tuple(seen: set[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(k for k in LEVEL_ORDER if k in seen)


def _describe_seen(seen: tuple[str, ...]) -> str:
    if not seen:
        return "no identifiable vertebra"
    if len(seen) == 1:
        return seen[0]
    return f"{seen[-1]}–{seen[0]}"  # superior first, as radiologists write it
