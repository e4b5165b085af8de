"""Bowel lumen inside the peritoneal cavity: gas, the gas/wall partial-volume rim, and stool.

Why: bowel contents and the partial-volume rim around gas fall in the fat windows and would be
counted as VAT (MOOSE #18). Gas is unambiguous (< −400 HU); the rim is the band within about one
pixel of gas; stool is the mottled region where many small gas bubbles lie close together, found
by closing the gas mask and keeping regions whose gas fraction is high.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from workers.tissues.geometry import BoolArray, close_mm, dilate_mm
from workers.tissues.params import TISSUE_PARAMS

P = TISSUE_PARAMS.bowel


def find_bowel_lumen(hu: npt.NDArray[Any], cavity: BoolArray, spacing_yx_mm: Sequence[float]) -> BoolArray:
    """Mask of pixels in the cavity that are bowel gas, gas rim or stool (never VAT)."""
    dy, dx = float(spacing_yx_mm[0]), float(spacing_yx_mm[1])
    gas = (hu < P.gas_hu) & cavity
    if not gas.any():
        return gas
    rim_mm = max(P.rim_mm, 1.01 * max(dy, dx))
    rim = dilate_mm(gas, rim_mm, spacing_yx_mm)
    # stool: close the bubbles; keep closed regions that are mostly made of gas and mixture
    closed = close_mm(gas, P.stool_close_mm, spacing_yx_mm) | gas
    closed = ndi.binary_fill_holes(closed)
    lab, n = ndi.label(closed)
    stool = np.zeros_like(gas)
    if n:
        frac = ndi.mean(gas.astype(np.float32), lab, index=np.arange(1, n + 1))
        keep = np.flatnonzero(np.asarray(frac) >= P.stool_min_gas_fraction) + 1
        stool = np.isin(lab, keep)
    out: BoolArray = (rim | stool) & cavity
    return out
