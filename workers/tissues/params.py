"""The tuned numbers of the classical tissue engine, in one versioned table.

Why one table: a result is only interpretable with the numbers that produced it, and a change
to any of them must be visible (as :mod:`workers.measure.rules` is for cut-offs). Each number has its
unit in its name (_MM, _MM2, _HU, _DEG, a fraction or a count) and a note on why it has its value.
Change a number: bump ``TissueParams.name`` and the segmenter version (``classical@x.y``), regenerate
docs/validation-tissues.md and look at the pictures. The patient-frame search has its own table
(:class:`workers.tissues.frame.FrameRule`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class BodyParams:
    """Body outline: table, arms and limbs. (workers/tissues/body.py)"""

    #: anything denser than lung/air partial volume is body; -500 HU separates air (-1000) and lung (-850)
    #: from fat (-100) with a wide margin
    body_hu: float = -500.0
    #: opening that cuts the table and blankets off the body: they touch the skin along a thin line (1-2
    #: mm)
    table_open_mm: float = 2.5
    #: opening that separates an arm lying against the flank: the contact is narrower than the arm (~80 mm)
    #: and the trunk; 18 mm keeps the waist
    arm_open_mm: float = 18.0
    #: a piece cut off by the opening is a limb only if at least 15 cm^2 (a forearm section), smaller ones
    #: are skin folds
    arm_min_area_mm2: float = 1500.0
    #: cortical bone of humerus, radius or ulna inside a cut-off piece (> 50 mm^2 of it) makes it a limb
    arm_bone_hu: float = 300.0
    #: cortical bone threshold for limb bones beside the trunk (same as arm_bone_hu)
    limb_bone_hu: float = 300.0
    #: a limb bone section (humerus 3-5 cm^2) is at least this large; ribs and calcifications are smaller
    limb_bone_min_mm2: float = 80.0
    #: and at least this thick across (humerus ~20 mm, a rib section ~5-8 mm)
    limb_bone_min_width_mm: float = 9.0
    #: limb bones lie in the outer 30 % of the body width on each side
    limb_lateral_fraction: float = 0.30
    #: a limb bulges out of the trunk: at most half of it lies inside the convex hull of the rest
    limb_max_inside_hull: float = 0.5
    #: raw pixels connected to the opened body are kept within this beyond the opening's reach
    #: (table_open_mm): restores the skin detail the opening took, not the table it cut off
    reattach_margin_mm: float = 1.5
    #: a piece outside the trunk (or cut off by arm_open_mm) is a limb only with more than this much
    #: cortical bone (arm_bone_hu) in it
    arm_bone_min_mm2: float = 50.0
    #: parts lying separately beside the trunk are opened by this before they are judged as limbs
    #: (thin pieces such as blankets, pads and skin folds fall apart)
    separate_open_mm: float = 5.0
    #: the trunk's marker for the watershed that cuts off an arm lying against the flank: pixels at
    #: least this fraction of the deepest distance from the skin (the trunk's core, not the arm)
    trunk_core_fraction: float = 0.6


@dataclass(frozen=True)
class BoneParams:
    """Spine: vertebra, vertebral body and canal. (workers/tissues/bone.py)"""

    #: dense (cortical) bone; trabecular bone of older patients is only 60-130 HU and is found by
    #: trabecular_hu
    bone_hu: float = 200.0
    #: bone region on a 2.5 mm-smoothed image: above muscle (enhanced up to ~80) and below healthy marrow;
    #: keeps osteopenic bodies
    trabecular_hu: float = 105.0
    #: closing that shuts the vertebral body's cortical ring around dark marrow (basivertebral veins,
    #: osteopenia: gaps up to ~15 mm)
    vert_close_mm: float = 7.5
    #: midline profile: vertebral body (incl. osteopenic marrow) vs canal/CSF
    body_run_hu: float = 55.0
    #: smoothed HU of the vertebral body region attached to the midline run (marrow incl. osteopenic,
    #: 90-250 HU)
    body_region_hu: float = 90.0
    #: a low-density gap shorter than this inside the body (basivertebral veins) is not yet the canal
    body_gap_mm: float = 6.0
    #: on the retry from the body's own midline (vb_max_depth_mm) the lamina behind the canal is
    #: looked for within this distance of it: the laminae meet in a V, and on hcc_tace_seg_048's upper
    #: L3 the midline itself is dark (ligamentum flavum) for 37 mm behind the body while the laminae
    #: pass 5-7 mm beside it. (Not on the first strip: there it let a 60 mm run through the pedicle of
    #: a rolled example_ct L1 count as a body.)
    lamina_half_width_mm: float = 8.0
    #: a lumbar/lower thoracic body is 25-35 mm deep; a lamina on the midline is thinner
    vb_min_depth_mm: float = 15.0
    #: ...and never deeper than this: a longer run on the midline strip passed beside the canal
    vb_max_depth_mm: float = 45.0
    #: the midline run is searched from this far in front of the vertebra component (its front can lag the
    #: body by a cortex)
    vb_search_front_mm: float = 40.0
    #: on the retry for disc levels (no cortex): the disc can reach ~60 mm in front of the posterior arch
    disc_search_front_mm: float = 65.0
    #: a vertebral body's section is > 1,000 mm²; less dense bone = disc level
    disc_max_bone_mm2: float = 300.0
    #: the spinal canal is 15-25 mm wide at L3: its search band reaches 10 mm either side of the midline
    canal_half_width_mm: float = 10.0
    #: the bony ring around the canal (body back, pedicles, laminae) lies within 16 mm of the canal's
    #: centre at L3 (canal 15-25 mm wide, 15-20 mm deep); the transverse and spinous processes reach
    #: further and are left out of its hull
    canal_ring_mm: float = 16.0
    #: cortical bone of that ring
    canal_ring_bone_hu: float = 150.0
    #: A lumbar body is less deep (antero-posterior) than it is wide (L3: ~35 x 45-50 mm). A midline run
    #: deeper than its width has taken in what lies on the body's front: the aorta (enhanced, ~165 HU,
    #: with a calcified back wall) on hcc_tace_seg_048, 53 mm of "body" 49 mm wide. The run is then cut
    #: at the darkest row (the fat plane between aorta and body, 47 HU there) of its front part.
    vb_max_depth_to_width: float = 1.0
    #: a vertebral body is at least 0.6 of its width deep: the cut in front of it is searched in front of
    #: that depth
    vb_min_depth_to_width: float = 0.6
    #: ...and the body's width for that test is measured on the cortex of its back 15 mm (its front may
    #: be the aorta)
    vb_width_back_mm: float = 15.0
    #: the trabecular_hu image: HU clipped to this range (air and metal must not dominate the
    #: smoothing), then smoothed by trabecular_smooth_mm (and by midline_smooth_mm for the midline)
    smooth_clip_hu: tuple[float, float] = (-200.0, 1000.0)
    #: the smoothing (Gaussian sigma) of the image trabecular_hu reads
    trabecular_smooth_mm: float = 2.5
    #: bone regions on that image are closed by this before their holes are filled (marrow between
    #: them)
    bone_region_close_mm: float = 3.0
    #: a bone region smaller than 3 cm^2 is not a vertebra
    vert_min_area_mm2: float = 300.0
    #: the vertebra is the bone region scored best by log(area) - depth_weight * |depth - vert_depth|
    #: - midline_weight * (distance from the midline / body width), depth 0 at the body's front and 1
    #: at its back: it lies behind the body's middle, on the midline
    vert_depth: float = 0.7
    #: see vert_depth
    vert_depth_weight: float = 6.0
    #: see vert_depth
    vert_midline_weight: float = 8.0
    #: thin cortical bone on the raw image (laminae, the spinous process, the canal's walls, the
    #: body's cortex at coarse pixels): what is excluded from muscle and fat, and what ends the canal
    raw_bone_hu: float = 150.0
    #: the marrow enclosed by that bone is filled after a closing of at most this (or one pixel):
    #: larger closings would fill muscle between lamina and processes
    raw_bone_close_max_mm: float = 3.0
    #: the lamina (raw_bone_hu) lies within this behind the vertebral body's back
    lamina_search_mm: float = 35.0
    #: bone closer than this behind the body's back on the midline is still its own cortex, not the
    #: lamina
    lamina_min_gap_mm: float = 4.0
    #: without a lamina, the canal is a disk of this radius centred this far behind the body's back
    canal_default_radius_mm: float = 7.0
    #: with a lamina, the canal is the disk spanning the gap to it, its radius clipped to this range
    #: (a lumbar canal is 15-25 mm wide)
    canal_radius_range_mm: tuple[float, float] = (5.0, 12.0)
    #: the midline strip is this wide either side of the vertebra's midline column: its median keeps
    #: one noisy bright pixel in the canal from bridging it; its first lamina search is as wide
    midline_half_width_mm: float = 3.0
    #: the midline profile reads a lightly smoothed image (noise)
    midline_smooth_mm: float = 1.0
    #: the midline is taken from the vertebra's dense cortical bone when at least this many pixels of
    #: it are there (else from the whole vertebra)
    midline_min_px: int = 5
    #: without a run on the midline, the body starts at the first cortical bone within this of the
    #: vertebra's front...
    cortex_search_mm: float = 30.0
    #: ...and ends after at most this depth
    walk_max_depth_mm: float = 60.0
    #: pixels of the body region also reach this on the raw image (smoothing spreads bone brightness
    #: into the tissue around it)
    body_region_raw_hu: float = 80.0
    #: the vertebral body is at most ~60 mm wide: its region is cut this far either side of the midline
    vb_half_width_max_mm: float = 32.0


@dataclass(frozen=True)
class BowelParams:
    """Bowel lumen: gas and stool. (workers/tissues/bowel.py)"""

    #: bowel gas (air -1000, its partial volume with the wall up to ~-400)
    gas_hu: float = -400.0
    #: partial-volume band around gas (at least one pixel)
    rim_mm: float = 2.0
    #: closing that joins gas bubbles within stool (mottled, bubbles 1-5 mm apart) into one lumen
    stool_close_mm: float = 6.0
    #: a closed region is stool only if at least 15 % of it is gas; fat between two gas loops has none
    stool_min_gas_fraction: float = 0.15


@dataclass(frozen=True)
class WallParams:
    """The abdominal wall, found by rays from the centre. (workers/tissues/wall.py)"""

    #: one ray per degree: at a 15 cm radius rays are 2.6 mm apart, finer than a 3 mm pixel
    n_rays: int = 360
    #: samples along a ray are a quarter of the smaller pixel side apart (a fraction of a pixel, not
    #: mm): every pixel a ray crosses is sampled several times, so an edge lands within a quarter pixel
    ray_step_px: float = 0.25
    #: rays run this far beyond the farthest body pixel from the centre (past the skin into the air)
    ray_margin_mm: float = 5.0
    #: upper bound of fat (structure), HU
    fat_hi: float = -30.0
    #: below this at the surface: air partial volume, not fat
    fat_lo: float = -250.0
    #: gas reached by a ray (bowel lumen): the soft tissue just outside it is bowel wall
    air_hu: float = -400.0
    #: air closer to the skin is a skin fold, not bowel
    gas_min_depth_mm: float = 10.0
    #: partial-volumed thin muscle layer on gas
    thin_wall_hu: float = -60.0
    #: skin + dermis before the SAT starts
    skin_max_mm: float = 6.0
    #: skin thickness assumed when no SAT is present (cachexia)
    skin_min_mm: float = 2.0
    #: minimal muscle run that counts as the wall (septa in SAT are thinner)
    muscle_run_mm: float = 2.5
    #: the wall is mostly tissue over its first 10 mm; a fascia in SAT is not
    lookahead_mm: float = 10.0
    #: at least half of the first lookahead_mm under the outer edge must be tissue (a fascia in the SAT is
    #: followed by fat)
    lookahead_soft_fraction: float = 0.5
    #: ...and it must reach this HU (septa are partial-volumed fat)
    muscle_peak_hu: float = 0.0
    #: fat planes thinner than this inside the wall are intermuscular
    fat_gap_mm: float = 4.5
    #: a fat layer at least this thick between the wall and an organ or gas-filled loop that a ray ends on
    #: is preperitoneal fat: the wall ends outside it (thinner: partial volume between two surfaces)
    fat_plane_min_mm: float = 1.5
    #: ...when at most this much tissue lies between that fat and the organ (a bowel wall or a capsule;
    #: a muscle layer under the fat is thicker)
    organ_wall_max_mm: float = 5.0
    #: fatty streaks in paraspinal muscles are wider
    fat_gap_posterior_mm: float = 8.0
    #: anterior/lateral wall thicker than this = organ touching
    cap_lateral_mm: float = 40.0
    #: paraspinal + quadratus + psoas block
    cap_posterior_mm: float = 170.0
    #: the posterior sector (rays towards the spine, +-62 deg) holds the paraspinal/quadratus/psoas block,
    #: not the wall
    posterior_half_angle_deg: float = 62.0
    #: a ray whose wall is this much thicker than the median of its neighbours is an outlier (organ
    #: touching) and is interpolated
    outlier_mm: float = 8.0
    #: rays (±12°) whose median wall thickness a ray is compared with for outlier_mm
    outlier_window: int = 25
    #: smoothed HU this much above the patient's muscle HU = organ (liver, spleen...)
    organ_delta_hu: float = 15.0
    #: an organ is believed only after this much of consecutive organ-like tissue along the ray
    organ_run_mm: float = 5.0
    #: the first 5 mm under the outer edge are always wall (a thin rectus on the liver would else vanish)
    organ_min_wall_mm: float = 5.0
    #: HU along a ray are median-smoothed over this length for the organ and fluid tests (noise, partial
    #: volume)
    organ_smooth_mm: float = 4.0
    #: a ray's own wall density may exceed the typical one by this
    ref_excess_max_hu: float = 15.0
    #: smoothed HU this much below the wall's own density (but not fat) = fluid
    fluid_delta_hu: float = 25.0
    #: fluid is at least this dense (water 0, ascites 0-30); darker is fat partial volume
    fluid_min_hu: float = -10.0
    #: typical wall of a gas-filled bowel loop (partial volume included)
    bowel_wall_mm: float = 3.0
    #: a ray whose SAT is this much thicker than its neighbours missed a thin wall layer: its outer edge is
    #: interpolated
    sat_outlier_mm: float = 6.0
    #: rays (±30°): SAT thickness varies slowly; a missed wall only adds
    sat_env_window: int = 61
    #: lower envelope (30th percentile) of the SAT thickness around a ray: robust to the missed layers it
    #: looks for
    sat_env_percentile: float = 30.0
    #: rays (±20°) for the lower envelope of wall thickness
    env_window: int = 41
    #: lower envelope (30th percentile) of the wall thickness in a window of rays
    env_percentile: float = 30.0
    #: a ray may exceed the envelope by this much before its inner edge is taken from its neighbours
    env_tol_mm: float = 4.0
    #: a ray that ended on a clean fat plane is trusted more
    env_tol_fat_mm: float = 15.0
    #: the wall's typical thickness for rays without any edge: 65th percentile of the clean anterior rays
    prior_percentile: float = 65.0
    #: ...taken only from at least this many clean anterior/lateral rays (10°); with fewer the
    #: interpolation is not capped
    prior_min_rays: int = 10
    #: rays (±2°): median smoothing of the outer edge and of the wall thickness (single-ray spikes
    #: from a septum or a vessel)
    smooth_median_rays: int = 5
    #: rays (±1°): final mean smoothing of both edges (sample quantisation of the edges)
    smooth_mean_rays: int = 3
    #: search window for a faint wall|organ boundary on capped rays
    weak_min_mm: float = 3.0
    #: on a capped ray (organ touching), a faint wall|organ boundary is searched 3-25 mm under the outer
    #: edge
    weak_max_mm: float = 25.0
    #: a faint boundary is a 2 mm dip at least 12 HU below the segment median (thin fat, partial volume)
    #: ...
    weak_drop_hu: float = 12.0
    #: ... and below 15 HU (muscle and organs are denser)
    weak_max_hu: float = 15.0
    #: the dip is measured on the ray's HU averaged over this length (a thin fat plane is 1-2 mm)
    weak_dip_mm: float = 2.0
    #: ribs this close under the outer edge lie in the wall (lateral wall above L2)
    rib_search_mm: float = 25.0
    #: a rib's section is a region above this HU (cortex and marrow) ...
    rib_region_hu: float = 120.0
    #: ... of at most this area (a lower rib's section is 1-3 cm²; contrast-filled stomach or colon
    #: is tens of cm²)
    rib_max_area_mm2: float = 500.0
    #: rays (20°, ~50 mm of wall at a 15 cm radius): spacing of rib sections in a 3 mm cut
    rib_gap_rays: int = 20


@dataclass(frozen=True)
class PosteriorParams:
    """The posterior muscle block (paraspinal, quadratus, psoas). (workers/tissues/posterior.py)"""

    #: soft tissue of the block: the lower end of the SM window (-29 HU) on a 0.6 mm-smoothed image
    soft_lo: float = -29.0
    #: the smoothing (Gaussian sigma) of that image: pixel noise, not anatomy
    soft_smooth_mm: float = 0.6
    #: opening that cuts thin bridges (a kidney with its fat rim, a bowel loop) from the block; thinner
    #: than any muscle
    open_mm: float = 3.5
    #: beside the vertebral body the psoas may bulge up to 12 mm in front of its front line (lower lumbar
    #: levels)
    psoas_front_allowance_mm: float = 12.0
    #: psoas lies within this distance of the vertebral body (same as the classical engine)
    psoas_zone_mm: float = 30.0
    #: fat holes in the block up to 4 cm^2 are filled into it (their fat becomes IMAT); a larger hole is
    #: not a gap between muscle fibres
    hole_max_mm2: float = 400.0
    #: organ test of the block: 30 HU above the patient's paraspinal muscle (psoas itself is 10-25 HU
    #: denser)
    organ_delta_hu: float = 30.0
    #: the organ test reads a 2 mm-smoothed image (noise)
    organ_sigma_mm: float = 2.0
    #: smoothing spreads bone brightness into adjacent muscle
    organ_bone_margin_mm: float = 6.0
    #: liver, spleen, kidney: far larger than a bright spot in a psoas
    organ_min_area_mm2: float = 300.0
    #: a detached psoas belly (L4-L5: ~5-15 cm²)
    psoas_belly_min_mm2: float = 150.0
    #: ...lies mostly within the psoas zone beside the vertebral body
    psoas_belly_in_zone: float = 0.5
    #: the paraspinal gutters start 10 mm behind the back of the vertebral body (behind the laminae)
    gutter_behind_mm: float = 10.0
    #: paraspinal muscles either side of the spinous process
    gutter_half_width_mm: float = 45.0


@dataclass(frozen=True)
class FasciaParams:
    """The deep fascia behind the spine's front. (workers/tissues/fascia.py)"""

    #: the visceral zone's fat is opened by this radius before its components are counted: gaps
    #: narrower than twice this in the wall's posterior end (between its band and the quadratus) do not
    #: join a subcutaneous pocket to the cavity's fat
    neck_half_width_mm: float = 3.0
    #: most of a pocket lies in the posterior sector, and most of it within pocket_max_depth_mm (each
    #: asked separately: 90 % of both together missed example_ct's right pocket at L3-L4, ct 68,
    #: 15 cm², by 1 %, and at 1 mm pixels lost it when the patient was turned by 5 degrees)
    pocket_in_region: float = 0.8
    #: ...within this depth under the wall's outer edge (the wall's end and the quadratus are at most
    #: ~15 mm thick there; deeper fat is retroperitoneal)
    pocket_max_depth_mm: float = 25.0
    #: ...and borders the subcutaneous zone along at least this much of the outer edge (fat enclosed by
    #: the wall's own layers does not touch it)
    contact_min_mm: float = 10.0
    #: half the widest fat cleft between the wall's layers (wall.fat_gap_mm 4.5): ring fat thicker than
    #: that and open to the cavity is preperitoneal, not intermuscular
    cleft_half_width_mm: float = 2.25


@dataclass(frozen=True)
class ClassicalParams:
    """Compartments, skin and the rules that join them. (workers/tissues/classical.py)"""

    #: above any bone: metal (implants, clips) whose streaks may corrupt HU; > 20 mm^2 of it flags the
    #: slice
    metal_hu: float = 2500.0
    #: ...the area of metal that flags the slice (metal_suspected)
    metal_min_area_mm2: float = 20.0
    #: pixels are square when their sides differ by at most this fraction: only then is a turn in
    #: pixel space a turn in the patient (the patient-frame search is skipped otherwise)
    square_pixel_tol: float = 0.01
    #: out-of-field fill (-2000, -3024 ...) marks the edge of the reconstruction circle
    padding_hu: float = -1500.0
    #: what a turned slice's new corners hold: outside the field of view
    outside_image_hu: float = -3024.0
    #: Skin is soft tissue (dermis +20..+60 HU) and falls outside the SAT window by itself; the band only
    #: removes the surface's air/skin partial volume, which can land in the fat window. On
    #: hcc_tace_seg_048 (0.7 mm) the 1st ring has a median of -215 HU (air/skin), the 2nd -32
    #: (dermis/fat), the 3rd -65 (81 % in the fat window: fat) and the 4th -100. Centres shallower than
    #: 1.5 mm (the 1st and 2nd ring at 0.7 mm) and always the outermost pixel (any pixel size) are skin;
    #: 2.0 mm took the 3rd ring too and cost 6 % of SAT there.
    skin_mm: float = 1.5
    #: ...except where a pixel is wider than that band: an outermost pixel that reaches deeper than
    #: skin_mm (its far side, not its centre) and whose HU lies within 20 HU of the patient's own fat
    #: (median fat-window HU deeper than ``fat_reference_depth_mm``) holds fat, not skin or air: skin
    #: (+20..+60) and air (-1000) mixed in would move it further. At 2.5-3 mm pixels the outermost
    #: ring is half of the fat under the skin; counting none lost 3.5-7 % of SAT against the 0.7 mm
    #: slice (hcc_tace_seg_048 sampled), counting all its fat-window pixels gained 5-8 %, within
    #: 20 HU of pure fat is -0.1..+1.7 % from 1.5 to 3 mm (40 HU: +3-4 %). Below 1.5 mm no outermost
    #: pixel reaches deeper than skin_mm, so clinical pixel sizes are unchanged.
    skin_pure_fat_hu: float = 20.0
    #: fat this deep under the surface is free of skin and air partial volume (the patient's own fat
    #: HU for skin_pure_fat_hu)
    fat_reference_depth_mm: float = 5.0
    #: dense bone whose 1-pixel rim is bone/muscle partial volume
    bone_pv_hu: float = 200.0
    #: that rim is excluded only where the bone visibly raises it this much above the patient's muscle
    bone_pv_raise_hu: float = 20.0
    #: pixel next to the skin band brighter than this: skin partial volume, not SAT
    dermis_pv_hu: float = -50.0
    #: paraspinal/quadratus lie within this depth of the outer muscle edge
    block_depth_mm: float = 45.0
    #: the ray centre stays 30 mm in front of the vertebral body so that posterior rays cross the whole
    #: block
    center_front_mm: float = 30.0
    #: the psoas lies within 30 mm of the vertebral body (same as posterior.psoas_zone_mm)
    psoas_zone_mm: float = 30.0
    #: closing of the muscle mask whose holes are IMAT: fat gaps up to ~6 mm between muscle are
    #: intermuscular
    imat_close_mm: float = 3.0
    #: the neural foramina open 5-10 mm lateral of the canal: fat there, level with the canal, is not
    #: intermuscular
    foramen_mm: float = 10.0
    #: in front of the body only muscle at least 12 mm thick (opening radius 6 mm) is psoas; crura and
    #: vessels are thinner
    psoas_min_half_thickness_mm: float = 6.0
    #: more than 40 % of anterior/lateral rays without their own inner edge flags the slice
    #: (wall_interpolated)
    wall_guessed_fraction: float = 0.4
    #: the ray edge is quantised: pixels within 1.5 px of it decide by their own HU
    edge_band_px: float = 1.5
    #: in the posterior sector in front of the spine the ray ring counts as wall up to 40 mm deep (oblique
    #: layers)
    lateral_wall_max_mm: float = 40.0
    #: behind the spine front only the outermost 10 mm of the ray ring is wall (latissimus); the rest is
    #: block
    posterior_wall_max_mm: float = 10.0
    #: thin wall muscle within 15 mm of the outer edge that touches the block is added back (lost by the
    #: opening)
    wall_band_mm: float = 15.0
    #: costal cartilage (70-150 HU unless calcified) lies inside the muscle window but is denser than any
    #: muscle of the same patient: a blob this much above the paraspinal reference is cartilage
    cartilage_delta_hu: float = 50.0
    #: costal cartilage blobs are at least 30 mm^2 (smaller bright spots are vessels in the wall)
    cartilage_min_mm2: float = 30.0
    #: the cartilage test reads a 1 mm-smoothed image
    cartilage_smooth_mm: float = 1.0
    #: beside the vertebral body, soft tissue this much darker than the psoas itself is an unenhanced
    #: kidney pole, not psoas
    kidney_delta_hu: float = 30.0
    #: the kidney-pole test reads a 2 mm-smoothed image (renal parenchyma vs psoas is a regional
    #: difference)
    kidney_smooth_mm: float = 2.0
    #: a large psoas reaches this far from the vertebral body (35-45 mm at L3-L4 in a muscular
    #: patient); beyond psoas_zone_mm only tissue of the psoas's own density is added
    psoas_reach_mm: float = 45.0
    #: ...within this of the psoas's median density (smoothed as for the kidney pole): its lateral edge
    #: on hcc_tace_seg_048 is ~15 HU below the median (12 HU took a third of the crescent); enhanced
    #: kidney is far brighter, and no example_ct kidney pixel (unenhanced) joined at 20 HU
    psoas_match_hu: float = 20.0
    #: a separated piece this large and of psoas density is psoas
    kidney_keep_min_mm2: float = 150.0
    #: the psoas's own edge, darkened by the kidney test's smoothing over ~1.5 sigma
    #: (kidney_smooth_mm), is given back to it up to this many sigmas (at least a pixel)
    psoas_edge_sigmas: float = 1.5
    #: a piece cut off by the kidney test stays psoas if its median is within 15 HU of the psoas
    kidney_keep_delta_hu: float = 15.0
    #: A muscle-edge pixel touching an organ (kidney, bowel, vessel) and darker than the psoas by this
    #: much is the fat plane or partial volume between them, not muscle: on example_ct (unenhanced) the
    #: psoas's pixels against the kidney's medial edge are -17..16 HU against a psoas of ~45 HU.
    organ_contact_delta_hu: float = 20.0
    #: ...and never above this: on an enhanced scan the psoas is 60-70 HU while the quadratus touching
    #: the kidney is ~40 HU and muscle (hcc_tace_seg_048: the reader's SM); below 20 HU a pixel is at
    #: least a fifth fat by linear mixing of muscle (~45 HU) and fat (~-100 HU).
    organ_contact_max_hu: float = 20.0
    #: cavity tissue this dense next to the muscle is an organ's edge, not fat
    organ_min_hu: float = 0.0
    #: ...in a piece at least this large: a kidney's section is 15-40 cm^2; vessels (aorta 3-5 cm^2),
    #: crura and the front of a disc are smaller, and the psoas's darker edge against them stays muscle
    organ_min_area_mm2: float = 1000.0
    #: ray centre: body centroid (kept in front of the vertebral body)
    center_toward_spine: float = 0.0
    #: the patient's own muscle density (organ and fluid tests) is the median of the paraspinal muscles
    #: within this of the midline (the erector spinae either side of the spinous process)
    paraspinal_half_width_mm: float = 45.0
    #: ...behind the vertebral body's back by the first, and deeper under the skin than the second
    #: (mm): first clear of the laminae and the skin; then, for a body mask that ran into the laminae
    #: (thin slices through an endplate), closer to the spine and the skin
    paraspinal_behind_depth_mm: tuple[tuple[float, float], ...] = ((25.0, 15.0), (10.0, 10.0))
    #: ...from at least this much muscle (3 cm^2), else no reference
    paraspinal_min_mm2: float = 300.0


@dataclass(frozen=True)
class TissueParams:
    """Every tuned number of the classical tissue engine, by the module that uses it."""

    name: str = "classical-tissues@3"
    body: BodyParams = field(default_factory=BodyParams)
    bone: BoneParams = field(default_factory=BoneParams)
    bowel: BowelParams = field(default_factory=BowelParams)
    wall: WallParams = field(default_factory=WallParams)
    posterior: PosteriorParams = field(default_factory=PosteriorParams)
    fascia: FasciaParams = field(default_factory=FasciaParams)
    classical: ClassicalParams = field(default_factory=ClassicalParams)


TISSUE_PARAMS = TissueParams()
