"""Segmenter interface: HU slice + spacing in, tissue label image (and the peritoneal line) out.

Why a Protocol and a registry: the default engine is classical (no weights, nothing downloaded);
a learned model must be able to replace it later without touching metrics, overlay or the CLI.

Input convention: ``hu[y, x]`` with axis 0 anterior→posterior and axis 1 patient right→left
(radiological display), ``spacing_yx_mm = (dy, dx)``. ``context`` optionally holds neighbouring
slices ``(n, y, x)`` with the analysed slice in the middle; engines must work without it
(``classical@0.4`` accepts and ignores it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from workers.errors import UnknownNameError
from workers.presets import WindowPreset

__all__ = [
    "LABEL_IMAT",
    "LABEL_NAMES",
    "LABEL_OTHER",
    "LABEL_SAT",
    "LABEL_SM",
    "LABEL_VAT",
    "TissueSegmentation",
    "TissueSegmenter",
    "available_segmenters",
    "get_segmenter",
    "register_segmenter",
]

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


@runtime_checkable
class TissueSegmenter(Protocol):
    """Anything that labels one axial slice. ``name@version`` is recorded with every result."""

    name: str
    version: str

    def segment(
        self,
        hu: npt.NDArray[Any],
        spacing_yx_mm: Sequence[float],
        preset: WindowPreset,
        context: npt.NDArray[Any] | None = None,
    ) -> TissueSegmentation: ...


_REGISTRY: dict[str, Callable[[], TissueSegmenter]] = {}


def register_segmenter(name: str, factory: Callable[[], TissueSegmenter]) -> None:
    """Register a segmenter factory under ``name`` (e.g. a learned model later)."""
    _REGISTRY[name] = factory


def available_segmenters() -> list[str]:
    _ensure_builtin()
    return sorted(_REGISTRY)


def get_segmenter(name: str = "classical") -> TissueSegmenter:
    """Instantiate a registered segmenter; ``classical`` is built in."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UnknownNameError(f"unknown segmenter {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def _ensure_builtin() -> None:
    if "classical" not in _REGISTRY:
        from workers.tissues.classical import ClassicalSegmenter

        register_segmenter("classical", ClassicalSegmenter)
