"""Look up a named, versioned definition (``name@version``) such as an HU preset or a rule set.

Results record the exact ``name@version`` they used; users may type the bare name to mean the
latest version. One lookup serves every such registry, so they all behave (and fail) alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, TypeVar

from workers.errors import UnknownNameError


class Versioned(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...


V = TypeVar("V", bound=Versioned)


def lookup(registry: Mapping[str, V], name: str | None, default: str, kind: str) -> V:
    """``registry[name]``, or the latest version of a bare ``name``; ``None`` gives ``default``."""
    key = default if name is None else name
    if key in registry:
        return registry[key]
    candidates = [item for item in registry.values() if item.name == key]
    if not candidates:
        raise UnknownNameError(f"unknown {kind} {key!r}; known: {', '.join(sorted(registry))}")
    return max(candidates, key=lambda item: item.version)
