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
from typing import Any, Protocol, runtime_checkable

import numpy.typing as npt

from workers.errors import UnknownNameError
from workers.tissues.presets import WindowPreset
from workers.tissues.result import (
    LABEL_IMAT,
    LABEL_NAMES,
    LABEL_OTHER,
    LABEL_SAT,
    LABEL_SM,
    LABEL_VAT,
    TissueSegmentation,
)

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
