"""What a tissue segmenter returns: the label values and :class:`TissueSegmentation`.

Why a module of its own: the engines (:mod:`workers.tissues.classical`) build these and the
registry (:mod:`workers.tissues.engine`) instantiates the engines; with the types beside the
registry the two imported each other (the same cut as :mod:`workers.l3.result`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

LABEL_OTHER = 0
LABEL_SM = 1
LABEL_IMAT = 2
LABEL_VAT = 3
LABEL_SAT = 4
LABEL_NAMES = {
    LABEL_OTHER: "other",
    LABEL_SM: "skeletal_muscle",
    LABEL_IMAT: "imat",
    LABEL_VAT: "vat",
    LABEL_SAT: "sat",
}

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class TissueSegmentation:
    """Output of a segmenter for one slice.

    ``labels``: uint8, same shape as input (0 other, 1 SM, 2 IMAT, 3 VAT, 4 SAT).
    ``peritoneal_contour_px``: closed polyline, N×2 (row, col) float, along the inner border of the
    abdominal wall and in front of psoas, quadratus and spine (empty (0, 2) if not found).
    ``flags``: machine-readable QC flags (``fov_truncated``, ``arms_in_fov``, ``metal_suspected``...);
    ``qc_notes``: human-readable explanations.
    """

    labels: npt.NDArray[np.uint8]
    peritoneal_contour_px: FloatArray
    body_mask: BoolArray
    flags: list[str] = field(default_factory=list)
    qc_notes: list[str] = field(default_factory=list)
    wall_outer_contour_px: FloatArray = field(default_factory=lambda: np.zeros((0, 2)))
    wall_inner_contour_px: FloatArray = field(default_factory=lambda: np.zeros((0, 2)))
    masks: dict[str, BoolArray] = field(default_factory=dict)
    segmenter: str = ""
    preset_id: str = ""
    parameters: str = ""  # the segmenter's versioned parameter table (e.g. classical-tissues@3)

    def to_json(self) -> dict[str, Any]:
        """Summary for result.json (arrays are written separately by the caller)."""
        return {
            "segmenter": self.segmenter,
            "parameters": self.parameters,
            "hu_preset": self.preset_id,
            "flags": list(self.flags),
            "qc_notes": list(self.qc_notes),
            "peritoneal_contour_points": len(self.peritoneal_contour_px),
        }
