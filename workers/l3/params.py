"""The tuned numbers of the classical L3 localiser's decision, in one versioned table.

Why one table: a level and its confidence are only interpretable with the numbers that produced
them, and a change to any of them must be visible (as :mod:`workers.tissues.params` is for the
tissue engine). Each number has its unit in its name (_MM, _HU, a factor, a fraction or a count)
and a note on why it has its value. Change a number: bump ``L3Params.name`` and the engine
version (``workers.l3.classical.ENGINE_VERSION``), regenerate docs/validation-l3.md and look at
the pictures.

Other versioned tables of the localiser: the cue weights (:class:`workers.l3.cues.CueWeights`)
and the rudimentary-rib rule (:class:`workers.l3.anchors.StubRule`). The tracking, disc and
anchor modules keep their own module-level constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChainParams:
    """Tying the anchors and cues to the disc chain and naming the vertebrae. (workers/l3/classical.py)"""

    #: vertebra + disc height (mm) outside which a segment counted over lowers the confidence
    #: (lumbar 30-45 mm, lower thoracic a little less)
    height_soft_mm: tuple[float, float] = (24.0, 48.0)
    #: ...and outside which the count over it is ambiguous (a missed or a false disc)
    height_hard_mm: tuple[float, float] = (20.0, 56.0)
    #: the vertebra + disc height assumed when the chain holds no plausible one
    typical_height_fallback_mm: float = 34.0
    #: the L5/S1 disc lies on average a few mm below the top of the sacroiliac bone bridge
    sacrum_disc_offset_mm: float = 5.0
    #: ...within this of that position, or the sacrum anchor is not tied to a disc
    sacrum_disc_tol_mm: float = 16.0
    #: half the extent given to a disc that was not seen but placed (where the sacrum says, or one
    #: typical height beyond the chain's end)
    virtual_disc_half_mm: float = 4.0
    #: measured rib neck to the T12/L1 disc: at most about one T12 body; farther, that disc was missed
    rib_to_disc_max_mm: float = 30.0
    #: ...and then a faint T12/L1 disc is looked for this far below the rib neck
    rib_disc_search_offset_mm: float = 12.0
    #: ...within this of that position (the lower half of T12)
    rib_disc_search_tol_mm: float = 12.0
    #: the measured rib neck can come within a few mm of the T12/L1 disc (5 mm slices): a disc up to
    #: this far above it still counts as below the rib
    rib_head_tol_mm: float = 3.0
    #: mid-L3 lies ~100 mm below the last rib's neck (half T12 + L1 + L2 + half L3); the measured rib
    #: neck (30-40 mm from the canal) may sit lower, so only a spine ending closer than this below it
    #: claims "L3 is not in the image"
    rib_to_l3_min_mm: float = 80.0
    #: mid-L3 lies ~90 mm above the top of the sacroiliac bridge; a spine ending closer than this above
    #: it claims "L3 is not in the image"
    sacrum_to_l3_min_mm: float = 70.0
    #: ribs this close above the lower end of the tracked spine: there may be more ribs below it
    ribs_reach_bottom_mm: float = 20.0
    #: a level whose bounds lie this close to the ends of the tracked spine is cut by the image edge
    level_cut_margin_mm: float = 1.0
    #: an L3 extrapolated more than this inside the tracked spine should have been seen (its discs
    #: were missed): not claimed to lie outside the image
    extrapolated_inside_mm: float = 10.0
    #: an L3 centre more than this beyond the first or last slice is outside the image
    slice_edge_tol_mm: float = 1.0
    #: a slice within this of L3's endplates belongs to the L3 body range
    endplate_tol_mm: float = 0.5
    #: disc-free scans without any anchor: rib cross-sections on the slices within this of the lower
    #: edge tell a purely thoracic scan
    cage_bottom_mm: float = 20.0
    #: the crest top counts as on a disc within this of the disc's extent
    crest_on_disc_mm: float = 2.0
    #: a partial level is seen when it reaches this far into the tracked spine
    partial_level_min_mm: float = 5.0
    #: a partial level's missing endplate is estimated one typical height away, less this (its disc)
    partial_level_disc_mm: float = 8.0
    #: ...and its centre is given only when the estimate lies within this fraction of a typical height
    #: of the tracked spine
    partial_level_reach: float = 0.4
    #: vertebra height assumed above the last rib when no disc is found there (T12 and above)
    thoracic_height_mm: float = 30.0
    #: Transverse processes are thin cortical bone: at 3-5 mm slices their tips fall to 110-150 HU, so
    #: the anchor threshold (180 HU) shortens them by a third (L3 on example_ct: 68 mm at 180 HU,
    #: 99 mm at 110 HU; the model label spans 102 mm). Muscle and unenhanced organs stay below 90 HU.
    tp_bone_hu: float = 110.0
    #: a process span this wide has run into the iliac bone or a rib: not measurable
    tp_merged_mm: float = 140.0


@dataclass(frozen=True)
class ConfidenceParams:
    """What lowers the confidence of a level once it is named. (workers/l3/classical.py)

    Each factor multiplies the cues' combined confidence (:func:`workers.l3.cues.combine`) when
    its condition holds, in the order listed here; a chosen slice that may lie on a disc caps it
    at :attr:`workers.l3.cues.CueWeights.disagree_cap` instead. Every such reduction also sets a
    flag or a note, so a reader sees why the confidence is lower.
    """

    #: one of L3's endplates lies outside the tracked spine and was estimated from the typical height
    fov_edge_estimated_factor: float = 0.7
    #: ...or an endplate lies within fov_edge_margin_mm of the end of the tracked spine
    fov_edge_near_factor: float = 0.85
    #: the margin for fov_edge_near_factor: the disc's own extent and the endplate's blur
    fov_edge_margin_mm: float = 10.0
    #: a vertebra + disc counted over lies outside ChainParams.height_soft_mm
    unusual_height_factor: float = 0.75
    #: ...outside ChainParams.height_hard_mm (a whole vertebra may be miscounted)
    implausible_height_factor: float = 0.6
    #: a disc on the counting path is faint when its strength (fraction of a typical disc's depth) is
    #: below this
    faint_disc_strength: float = 0.3
    #: faint discs on the counting path (any number of them)
    faint_disc_factor: float = 0.9
    #: the discs' typical depth below the endplates (top-hat) under this is low bone contrast: there,
    #: mid-body dips get mistaken for discs (half-vertebra shifts); ~78 HU on example_ct
    low_contrast_hu: float = 35.0
    #: low bone contrast
    low_contrast_factor: float = 0.65
    #: slices farther apart than this blur thin discs into their neighbours
    thick_slice_mm: float = 5.5
    #: thick slices
    thick_slices_factor: float = 0.8
    #: the nearest slice is farther than this from L3's centre, or the disc grid was not observed
    #: between L3's endplates (a gap in z)
    z_gap_mm: float = 5.0
    #: a gap in z near L3
    z_gap_factor: float = 0.7
    #: Ring closure at a disc is 0.4-0.6, in a vertebral body 0.7-1.0 (hcc_tace_seg_048; example_ct at
    #: 3 mm is noisier): only a chosen slice clearly more open (by this) than both of L3's discs is
    #: suspect of lying on a disc
    ring_shift_margin: float = 0.1
    #: the reported confidence never reaches 0 or 1: a found level is never certain nor worthless
    confidence_range: tuple[float, float] = (0.05, 0.99)


@dataclass(frozen=True)
class L3Params:
    """Every tuned number of the classical L3 localiser's decision, by what it decides."""

    name: str = "classical-l3@1"
    chain: ChainParams = field(default_factory=ChainParams)
    confidence: ConfidenceParams = field(default_factory=ConfidenceParams)


L3_PARAMS = L3Params()
