"""The L3 localiser interface and a registry of engines.

The classical engine is the default; a learned engine (once licensable weights exist) registers
itself under another name and the rest of bodycomp does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from workers.errors import UnknownNameError
from workers.l3.result import L3Result


@runtime_checkable
class L3Localiser(Protocol):
    """Finds the mid-L3 slice in a canonical volume.

    Input convention: ``hu[z, y, x]`` with z inferior->superior, y anterior->posterior and x patient
    right->left (LPS +x); ``z_mm`` is the ascending patient z of each slice (may be uneven or have
    gaps); ``spacing_yx_mm`` is (row spacing, column spacing).
    """

    name: str
    version: str

    def locate(self, hu: np.ndarray, z_mm: np.ndarray, spacing_yx_mm: tuple[float, float]) -> L3Result: ...


_REGISTRY: dict[str, Callable[[], L3Localiser]] = {}


def register_localiser(name: str, factory: Callable[[], L3Localiser]) -> None:
    """Make an engine available to get_localiser(name)."""
    _REGISTRY[name] = factory


def available_localisers() -> tuple[str, ...]:
    _ensure_builtin()
    return tuple(sorted(_REGISTRY))


def get_localiser(name: str = "classical") -> L3Localiser:
    """Return a fresh localiser; raises KeyError naming the known engines if ``name`` is unknown."""
    _ensure_builtin()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UnknownNameError(
            f"unknown L3 localiser {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def _ensure_builtin() -> None:
    # Imported lazily so that importing the interface does not pull in scipy/skimage.
    if "classical" not in _REGISTRY:
        from workers.l3.classical import ClassicalL3Localiser

        register_localiser("classical", ClassicalL3Localiser)
