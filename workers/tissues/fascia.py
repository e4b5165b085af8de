"""Which side of the wall's fasciae a fat layer lies on, where the rays' edges cannot tell.

The wall's edges come from rays (workers/tissues/wall.py) and are interpolated where a ray cannot
be trusted; an interpolated edge can run through fat and put it in the wrong compartment. Two cases
are repaired here by the fat's own shape and neighbours:

* **At the back: a subcutaneous pocket.** Where the lateral wall muscles end at the back
  (their aponeurosis runs to the quadratus lumborum's lateral border) the subcutaneous fat looks
  thick along a ray and the outer edge is interpolated through it; the fat between that edge and the
  muscles (under the back of the lateral wall, behind the quadratus) is enclosed with the cavity and
  counted as visceral. Anatomically all fat outside the muscles and their aponeuroses is
  subcutaneous. The muscle band (or aponeurosis: soft tissue either way) separates such a pocket
  from the cavity's fat with at most narrow gaps, while the pocket lies open to the subcutaneous fat
  along the interpolated edge: with the gaps closed, a fat component that is not the cavity's main
  body of fat, lies just under the edge behind the spine's front and borders the subcutaneous fat is
  subcutaneous. (The band itself stays in the cavity, unlabelled: labelling it muscle moved the
  areas of a slightly rolled copy of example_ct by 3 %, as the pocket is found on one and not the
  other.)
* **In front: preperitoneal fat.** Where an organ or a gas-filled loop touches the wall, the inner
  edge is interpolated and can cut across the fat between wall and organ; that fat then lies in the
  wall's ring, enclosed by muscle, and counted as intermuscular (IMAT 2-3 times a reader's on
  hcc_tace_seg_048). A cleft between the wall's layers is thin; fat thicker than the widest cleft
  that lies open to the cavity is preperitoneal, i.e. visceral.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from workers.tissues.geometry import BoolArray, FloatArray, close_mm, dilate_mm, open_mm
from workers.tissues.params import TISSUE_PARAMS

P = TISSUE_PARAMS.fascia

FOUR = ndi.generate_binary_structure(2, 1)


def outside_deep_fascia(
    fat: BoolArray,
    sat: BoolArray,
    region: BoolArray,
    depth_mm: FloatArray,
    spacing_yx_mm: Sequence[float],
) -> BoolArray:
    """Pixels of ``fat`` (the visceral zone's fat) that lie outside the wall's deep fascia.

    ``sat`` is the subcutaneous zone; ``region`` where a pocket may lie (the posterior sector, whose
    rays turn with the patient); ``depth_mm`` each pixel's distance under the wall's
    outer edge (a pocket lies under the edge, between it and the muscle; fat deeper than any wall
    is retroperitoneal, e.g. around a kidney where the closing cut the fat apart).
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    out = np.zeros_like(fat)
    # the tissue between the cavity's fat pockets, with its narrow gaps closed (the aponeurosis
    # between the wall's end and the quadratus is too thin to be seen)
    barrier = close_mm(~fat & ~sat & region, P.neck_half_width_mm, spacing_yx_mm)
    opened = fat & ~barrier
    lab, n = ndi.label(opened, structure=FOUR)
    if n < 2:
        return out
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    main = int(np.argmax(sizes))
    # (the sector and the depth are each asked of most of the pocket, not together of all of it: a
    # pocket turned by a few degrees moves partly out of one and deeper than the other)
    in_region = np.bincount(lab[region], minlength=n + 1)
    shallow = np.bincount(lab[depth_mm <= P.pocket_max_depth_mm], minlength=n + 1)
    # contact with the subcutaneous zone: pixels of each component next to it
    rim = ndi.binary_dilation(sat, structure=FOUR)
    contact = np.bincount(lab[rim & opened], minlength=n + 1) * np.sqrt(dy * dx)
    pocket = (
        (np.arange(n + 1) != main)
        & (in_region >= P.pocket_in_region * np.maximum(sizes, 1))
        & (shallow >= P.pocket_in_region * np.maximum(sizes, 1))
        & (contact >= P.contact_min_mm)
    )
    pocket[0] = False
    if not pocket.any():
        return out
    # give the pocket back the fat that the opening removed at its edges (not across the gaps)
    grown = dilate_mm(pocket[lab], P.neck_half_width_mm + 0.5 * max(dy, dx), spacing_yx_mm)
    pocket_fat: BoolArray = grown & fat & ~(opened & ~pocket[lab])
    return pocket_fat


def preperitoneal_fat(ring_fat: BoolArray, cavity: BoolArray, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Fat of the wall's ring that is a layer of its own on the cavity, not a cleft in the wall.

    Where an organ or a gas-filled loop touches the wall, the rays' inner edge is interpolated and
    can cut across the fat between the wall and the organ; that fat then lies in the wall's ring,
    enclosed by muscle and counted as intermuscular. A cleft between the wall's layers is thin (the
    rays cross fat planes up to ``wall.fat_gap_mm``); preperitoneal fat is thicker and lies open to
    the cavity. So: ring fat that survives an opening by half the widest cleft and touches the
    cavity, with the edges the opening took, is visceral.
    """
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    core = open_mm(ring_fat, P.cleft_half_width_mm, spacing_yx_mm)
    lab, n = ndi.label(core, structure=FOUR)
    if n == 0:
        return np.zeros_like(ring_fat)
    on_cavity = np.unique(lab[ndi.binary_dilation(cavity, structure=FOUR) & core])
    keep = np.isin(lab, on_cavity[on_cavity > 0])
    grown: BoolArray = dilate_mm(keep, P.cleft_half_width_mm + 0.5 * max(dy, dx), spacing_yx_mm) & ring_fat
    return grown
