"""The tuned numbers of the classical L3 localiser's decision, in one versioned table.

Why one table: a level and its confidence are only interpretable with the numbers that produced
them, and a change to any of them must be visible (as :mod:`workers.tissues.params` is for the
tissue engine). Each number has its unit in its name (_MM, _HU, a factor, a fraction or a count)
and a note on why it has its value. Change a number: bump ``L3Params.name`` and the engine
version (``workers.l3.classical.ENGINE_VERSION``), regenerate docs/validation-l3.md and look at
the pictures.

Other versioned tables of the localiser: the cue weights (:class:`workers.l3.cues.CueWeights`)
and the rudimentary-rib rule (:class:`workers.l3.anchors.StubRule`). The anchors' bone thresholds
(``workers.l3.anchors``: ANCHOR_BONE_HU, SI_MIN_AREA_MM2, RIB_CAGE_MIN, ILIUM_*) and the work grid
(``workers.l3.grid``) still keep their own module-level constants.
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
class RibParams:
    """The ribs as an anchor: which bone pieces are ribs. (workers/l3/anchors.py, find_ribs)

    A rudimentary rib's own numbers are :class:`workers.l3.anchors.StubRule` (``stub@1``).
    """

    #: bone is cut at a cylinder of this radius around the canal: the vertebra (body, pedicles,
    #: laminae) lies inside it, so each rib becomes its own piece, starting at the cylinder
    canal_radius_mm: float = 30.0
    #: a rib's medial end touches that cylinder: its innermost voxel lies within this of it (it
    #: starts at the vertebra; bowel, vessels and organ calcifications lie free)
    medial_touch_mm: float = 6.0
    #: a full rib runs at least this far beyond the cylinder (75 mm from the canal): lumbar
    #: transverse processes reach at most about 55-60 mm, so only hypoplastic 12th ribs are missed
    full_reach_mm: float = 45.0
    #: pieces of fewer voxels are noise
    min_voxels: int = 3
    #: a rib is thin: volume per mm of length (its mean cross-section) below ~2.5 cm^2;
    #: contrast-filled kidneys, the iliac bones and calcified aorta are thicker
    max_section_mm2: float = 250.0
    #: ...and never more than this volume (a whole rib within the field of view is a few ml)
    max_volume_ml: float = 60.0
    #: a full rib is a bar: its second principal axis at most this fraction of the first (iliac
    #: fragments and pelvic cortical shells are plates)
    bar_ratio: float = 0.35
    #: ...and almost no thickness: the third principal axis (SD) at most this
    max_thickness_mm: float = 5.0
    #: the medial end is the piece's voxels within this of its innermost voxel (the rib neck)
    medial_end_mm: float = 10.0
    #: most of the medial end lies behind the front of the vertebral body, less this margin: a rib head
    #: articulates with the body's back half
    front_tol_mm: float = 5.0
    #: T12's rib neck lies at least five vertebrae above the top of the sacroiliac bridge
    above_sacrum_mm: float = 90.0
    #: the lowest ribs of the two sides agree when their medial ends lie within this of each other
    sides_agree_mm: float = 15.0
    #: a lowest rib shorter than this (beyond its medial end) could be a transverse process
    #: (weighted down by CueWeights.short_rib_factor)
    short_rib_mm: float = 70.0
    #: the slice thickness assumed where there is a single slice (no spacing to measure)
    single_slice_mm: float = 3.0
    #: rib cage test (rib_cage_count): rib sections lie within this of the body surface...
    cage_rim_mm: float = 40.0
    #: ...farther than this from the canal (not the vertebra, its processes or the rib heads)...
    cage_min_from_canal_mm: float = 60.0
    #: ...and are small bone pieces: a rib's section is 15-500 mm^2 (noise is smaller, the scapula,
    #: sternum and pelvis larger)
    cage_section_mm2: tuple[float, float] = (15.0, 500.0)


@dataclass(frozen=True)
class SpineParams:
    """Tracking the spine: midline, canal and vertebral body per slice. (workers/l3/spine.py)"""

    #: cortical bone of the canal's wall (the caller passes the scan's scaled threshold)
    bone_hu: float = 200.0
    #: canal content: CSF and epidural fat, neither air nor trabecular bone (HU range)
    canal_dark_hu: tuple[float, float] = (-300.0, 60.0)
    #: the canal's wall is looked for at these distances from a voxel, in 8 directions
    canal_ray_mm: tuple[float, ...] = (6.0, 9.0, 12.0, 15.0)
    #: a canal is walled in at least this fraction of the 8 directions (>= 5): bowel or fat next to
    #: one bone is not a canal
    canal_ring_fraction: float = 0.6
    #: the canal evidence is smoothed in-plane by this (Gaussian sigma)...
    evidence_smooth_mm: float = 6.0
    #: ...and averaged over +-this along z: a short bright blob does not survive, the spine does
    evidence_z_mm: float = 20.0
    #: the body's centre (the prior for the spine) is taken from slices with at least this many body
    #: pixels
    min_body_px: int = 50
    #: the spine lies behind the body's centre: the prior weight is 1 from this far in front of the
    #: centre backwards...
    prior_front_mm: float = 30.0
    #: ...and falls to 0 over this much further forward
    prior_ramp_mm: float = 40.0
    #: the first pass looks for the spine near the body's left-right middle (Gaussian prior, sigma)
    first_sigma_x_mm: float = 50.0
    #: the second pass near the spine's robust global position: the spine is a nearly straight line
    #: in x, and the track must not wander to an iliac bone or femur in the pelvis
    second_sigma_x_mm: float = 25.0
    #: a slice's peak evidence below this: no spine seen there
    min_peak: float = 0.05
    #: mean shift within +-this converges to the centre of the two pedicles/laminae instead of
    #: jumping between them...
    mean_shift_mm: float = 30.0
    #: ...in this many steps
    mean_shift_steps: int = 3
    #: the midline path is median-smoothed over +-this along z (removes the remaining jumps)
    path_z_mm: float = 20.0
    #: the midline sagittal slab is the percentile (slab_percentile) over +-this of columns around the
    #: midline
    slab_half_mm: float = 7.5
    #: see slab_half_mm (a sagittal image through the spine, the view a radiologist would use)
    slab_percentile: float = 75.0
    #: the slab's HU are clipped to this range before the canal is tracked (limits the pull of air and
    #: of very dense voxels on the box means)
    slab_clip_hu: tuple[float, float] = (-150.0, 350.0)
    #: the canal is tracked on the slab averaged over +-this along z...
    canal_z_mean_mm: float = 6.0
    #: ...and the posterior elements behind it as the maximum over +-this
    posterior_z_max_mm: float = 10.0
    #: the canal box: +-this around a row
    canal_half_mm: float = 3.0
    #: the boxes in front of (body) and behind (posterior elements) the canal are this deep
    wing_mm: float = 15.0
    #: the anterior wall of the canal is a whole vertebral body (>= 25 mm deep), not a cortex: two
    #: boxes of this depth in front of the canal must both be bright (rejects the trabecular interior of
    #: an osteoporotic body, dark and walled by cortex, as a canal)
    deep_mm: float = 12.0
    #: the canal lies within this of the rough spine position (it is inside the bony spine)
    seed_max_mm: float = 50.0
    #: canal score (HU) is divided by this for the path search...
    score_scale_hu: float = 100.0
    #: ...whose rows move at most this many mm per mm of z...
    path_slope: float = 1.0
    #: ...at this cost per mm of movement
    path_penalty_per_mm: float = 0.05
    #: the anterior column (body or disc) in front of the canal is at most this deep
    column_max_mm: float = 60.0
    #: a slice has a plausible spine when the column is this much brighter than the canal...
    min_contrast_hu: float = 25.0
    #: ...and this deep (mm)
    column_depth_mm: tuple[float, float] = (12.0, 65.0)
    #: the column's depth is median-smoothed over +-this along z
    depth_z_mm: float = 20.0
    #: the column's posterior wall (kept stable by the canal) over +-this
    posterior_wall_z_mm: float = 12.0
    #: the vertebral-body profile box is centred this fraction of the column's depth behind its front
    front_fraction: float = 0.5
    #: ...and reaches +-this left and right
    box_half_x_mm: float = 8.0
    #: ...and +-this fraction of the column's depth front and back
    box_half_y_fraction: float = 0.25
    #: ...clipped to this range (mm)
    box_half_y_mm: tuple[float, float] = (3.0, 8.0)
    #: the profile is this percentile of the box: endplate cortex and partial volume blur the minimum at
    #: a disc while the upper quartile of a trabecular box stays high inside a body
    body_percentile: float = 75.0


@dataclass(frozen=True)
class DiscParams:
    """The intervertebral discs from the vertebral-body profile. (workers/l3/discs.py)"""

    #: the profile is resampled to a regular grid of this spacing in patient z, so 0.6 mm, 3 mm,
    #: 5 mm and uneven or gapped series are treated alike
    grid_mm: float = 1.0
    #: fewer slices with a profile than this: no chain
    min_slices: int = 4
    #: consecutive discs are at least this far apart (a vertebra + disc; the lower thoracic spine's
    #: are the smallest); the profile must span two of them
    gap_min_mm: float = 20.0
    #: vertebra + disc height chained without penalty (lumbar 30-45 mm, a little less in the lower
    #: thoracic spine)
    gap_soft_mm: tuple[float, float] = (27.0, 44.0)
    #: ...and never chained farther apart than this (a missed disc beyond it is not bridged)
    gap_hard_max_mm: float = 60.0
    #: a gap shorter than gap_soft_mm costs ((short by) / this)^2
    gap_short_scale_mm: float = 5.0
    #: a gap longer than gap_soft_mm costs ((long by) / this)^2
    gap_long_scale_mm: float = 6.0
    #: |log(height ratio)| between neighbouring vertebrae allowed without penalty (~13 %): adjacent
    #: vertebra + disc heights differ by ~10 %, two mid-body dips either side of a disc do not
    gap_change_free: float = 0.12
    #: local minima of the profile within this of each other are one candidate
    merge_mm: float = 6.0
    #: a dip must be at least this fraction of a typical disc to be worth including in the chain
    score_offset: float = 0.3
    #: ...and counts at most this many typical discs (one very deep dip must not outweigh the chain)
    score_max: float = 1.5
    #: the slice spacing assumed where there is a single slice
    single_slice_mm: float = 3.0
    #: grid points farther than this (or observed_spacing_fraction of the slice spacing) from any
    #: slice are unobserved (a gap in z)
    observed_min_mm: float = 4.0
    #: see observed_min_mm
    observed_spacing_fraction: float = 0.75
    #: the resampled profile is smoothed (Gaussian sigma) by at least this...
    smooth_min_mm: float = 1.0
    #: ...or this fraction of the slice spacing (interpolation steps between thick slices)
    smooth_spacing_fraction: float = 0.3
    #: black top-hat: a disc lies below the brightest bone within this (plus half a slice) either
    #: side, between two bright endplates; a broad low-density region inside a body (osteopenic
    #: centre, venous plexus) is wider than the window and scores low
    tophat_half_mm: float = 8.0
    #: a dip within this (or a slice) of the profile's ends is an edge effect (nothing to compare
    #: with on one side)
    edge_min_mm: float = 4.0
    #: the typical disc depth is the median of the deepest dips, as many as vertebrae of this height
    #: fit into the profile (most real discs are among the deepest)
    vertebra_mm: float = 35.0
    #: the typical disc depth is at least this (a flat profile must not make every dip "typical")
    typical_depth_min_hu: float = 1.0
    #: a disc's extent is where the profile stays below half its depth, at most this either side
    extent_max_mm: float = 8.0
    #: a faint disc recovered next to an anchor lies at least this far from every chained disc
    weak_min_sep_mm: float = 18.0


@dataclass(frozen=True)
class PosteriorParams:
    """The bony ring around the canal and the transverse processes. (workers/l3/posterior.py)"""

    #: ring closure is the fraction of this many rays from the canal centre that meet bone
    ring_rays: int = 16
    #: ...between these distances from the canal centre (mm): the canal's wall (body, pedicles,
    #: laminae) at any lumbar level, not the canal's content nor the processes' tips
    ring_radii_mm: tuple[float, float] = (5.0, 25.0)
    #: bone within this of the canal centre is the canal's wall; the transverse processes are the bone
    #: connected to it
    wall_mm: float = 20.0
    #: transverse processes lie within this in front of or behind the canal
    tp_band_mm: float = 25.0
    #: bone connected to the canal wall farther than this from the midline is not a transverse process
    #: (ribs joined to the vertebra by partial volume, iliac bone at L5)
    tp_max_reach_mm: float = 75.0
    #: the ring closure is read up to this beyond the first and last tracked slice
    ring_edge_tol_mm: float = 1.0
    #: a vertebra's processes are read on its slices farther than this from both of its disc centres
    #: (not on the discs' own slices)
    segment_margin_mm: float = 3.0


@dataclass(frozen=True)
class SacrumParams:
    """The sacroiliac bone bridge as an anchor. (workers/l3/anchors.py, find_sacrum)"""

    #: the bridge is followed from bone within this of the midline...
    seed_half_width_mm: float = 6.0
    #: ...and within this in front of or behind the canal (the sacrum itself)
    seed_depth_mm: float = 50.0
    #: bone connected to it reaches at least this far out on BOTH sides (sacral alae joined to the
    #: iliac bones)
    min_reach_mm: float = 60.0
    #: the filled bone area per side (SI_MIN_AREA_MM2) is counted beyond this from the midline
    lateral_mm: float = 40.0
    #: slices with a bridge form one run across gaps up to this (e.g. the S1 foramina level)
    run_gap_mm: float = 10.0
    #: a run is at least this long (two 3 mm slices): ribs attached to a thoracic vertebra reach far
    #: out on both sides too, but only over a few millimetres of z
    min_run_mm: float = 6.0
    #: ...and holds at least this many slices
    min_run_slices: int = 2


@dataclass(frozen=True)
class CrestParams:
    """The iliac crests as a cue. (workers/l3/anchors.py, find_iliac_crests)"""

    #: the iliac wings are bone farther than this from the canal, each side on its own
    lateral_mm: float = 45.0
    #: a wing's crest lies at least this far below the lowest rib's neck (above it is the rib cage)
    below_rib_mm: float = 20.0
    #: a wing lies lateral to the spine: the median distance of its voxels from the midline is at
    #: least this
    wing_lateral_mm: float = 50.0
    #: a wing runs down from its crest for at least this (it is 10-15 cm tall), unless it reaches the
    #: lower edge of the image
    wing_min_height_mm: float = 50.0
    #: the wing's upper part whose shape (thin plate) and cortex are tested
    plate_top_mm: float = 30.0
    #: the crest region whose position is tested: the wing's top this many mm
    crest_top_mm: float = 15.0
    #: the crest rises posterolaterally: its region lies no farther forward than this in front of the
    #: canal
    crest_front_max_mm: float = 40.0
    #: the plate test needs at least this many voxels in the upper part
    plate_min_voxels: int = 6
    #: the cortex test (ILIUM_CORTEX_HU) reads this percentile of the upper part's HU
    cortex_percentile: float = 90.0


@dataclass(frozen=True)
class L3Params:
    """Every tuned number of the classical L3 localiser's decision, by what it decides."""

    name: str = "classical-l3@1"
    chain: ChainParams = field(default_factory=ChainParams)
    confidence: ConfidenceParams = field(default_factory=ConfidenceParams)
    ribs: RibParams = field(default_factory=RibParams)
    spine: SpineParams = field(default_factory=SpineParams)
    discs: DiscParams = field(default_factory=DiscParams)
    posterior: PosteriorParams = field(default_factory=PosteriorParams)
    sacrum: SacrumParams = field(default_factory=SacrumParams)
    crests: CrestParams = field(default_factory=CrestParams)


L3_PARAMS = L3Params()
