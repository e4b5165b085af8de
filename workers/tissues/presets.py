"""Named, versioned HU window presets for body-composition tissues.

Why presets: the same CT gives different VAT (and IMAT) areas with different fat windows, so numbers
are only comparable when the window set travels with them. Every output therefore carries the
preset's name, version and bounds (``to_json``). Windows are inclusive on both ends, as in
Slice-O-Matic and the key study (body-composition.md §1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from workers.result import HuPresetJson, HuWindowJson
from workers.versioned import lookup

__all__ = ["DEFAULT_PRESET", "PRESETS", "HUWindow", "WindowPreset", "get_preset"]


@dataclass(frozen=True)
class HUWindow:
    """Inclusive HU range ``lo <= hu <= hi``."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not self.lo < self.hi:
            raise ValueError(f"empty HU window {self.lo}..{self.hi}")

    def contains(self, hu: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Boolean mask of pixels inside the window (inclusive, like the reference tools)."""
        return (hu >= self.lo) & (hu <= self.hi)

    def to_json(self) -> HuWindowJson:
        return {"min_hu": float(self.lo), "max_hu": float(self.hi)}


@dataclass(frozen=True)
class WindowPreset:
    """One set of tissue windows with a stable identifier ``name@version``."""

    name: str
    version: int
    sm: HUWindow
    sat: HUWindow
    vat: HUWindow
    imat: HUWindow
    source: str

    @property
    def id(self) -> str:
        """Identifier written into every output, e.g. ``tomovision-l3@1``."""
        return f"{self.name}@{self.version}"

    @property
    def any_fat(self) -> HUWindow:
        """Union of the fat windows; used to find fat *structure* (layers, rims), not to count areas."""
        return HUWindow(
            min(self.sat.lo, self.vat.lo, self.imat.lo), max(self.sat.hi, self.vat.hi, self.imat.hi)
        )

    def to_json(self) -> HuPresetJson:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "windows": {
                "skeletal_muscle": self.sm.to_json(),
                "imat": self.imat.to_json(),
                "vat": self.vat.to_json(),
                "sat": self.sat.to_json(),
            },
        }


PRESETS: dict[str, WindowPreset] = {
    p.id: p
    for p in (
        WindowPreset(
            name="tomovision-l3",
            version=1,
            sm=HUWindow(-29, 150),
            sat=HUWindow(-190, -30),
            vat=HUWindow(-150, -50),
            imat=HUWindow(-190, -30),
            source="Nam et al., Cancers 2023;15:5195 and TomoVision Slice-O-Matic L3 sarcopenia windows",
        ),
        WindowPreset(
            name="uniform-fat",
            version=1,
            sm=HUWindow(-29, 150),
            sat=HUWindow(-190, -30),
            vat=HUWindow(-190, -30),
            imat=HUWindow(-190, -30),
            source="common single fat window -190..-30 HU (e.g. Comp2Comp, fohofmann labels.md)",
        ),
    )
}

DEFAULT_PRESET = "tomovision-l3@1"


def get_preset(name: str | None = None) -> WindowPreset:
    """Return a preset by ``name@version`` or bare ``name`` (latest version); ``None`` gives the default."""
    return lookup(PRESETS, name, DEFAULT_PRESET, "HU window preset")
