"""Deterministic UIDs for bodycomp's outputs.

A retry after a crash, a Celery re-delivery or a PACS re-send must produce the *same* SOP Instance
UIDs, so the PACS keeps one copy instead of piling up duplicate series; a new algorithm version,
preset, rule set or input set must produce *new* ones, so earlier results stay. The UID is
``2.25.<uuid5>`` of a key built from exactly those inputs (the 2.25 root needs no registered
organisation root; uuid5 is a SHA-1 name-based UUID, stable across machines).

A correction (another slice, a reader's masks, other patient values: :mod:`workers.revision`) is a
new result that must not replace the original in the PACS: its key gets the correction's key, so
its UIDs differ from the original's and from any other correction's, and are stable across retries.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

NAMESPACE = uuid.UUID("6f1c6c1e-5a44-5b1e-9a8f-0b0d0c0e0a01")


def uid_from_key(key: str) -> str:
    return "2.25." + str(uuid.uuid5(NAMESPACE, key).int)


@dataclass(frozen=True)
class OutputIdentity:
    """Everything that decides whether two analyses are "the same result"."""

    source_series_uid: str
    source_instance_uids: tuple[str, ...]
    algorithm_version: str
    preset: str
    rule_set: str
    revision: str = ""
    """The correction's key (empty for an automatic result, whose UIDs stay what they were)."""

    @classmethod
    def build(
        cls,
        series_uid: str,
        instance_uids: Iterable[str],
        version: str,
        preset: str,
        rule_set: str,
        revision: str = "",
    ) -> OutputIdentity:
        return cls(series_uid, tuple(sorted(set(instance_uids))), version, preset, rule_set, revision)

    @property
    def key(self) -> str:
        digest = hashlib.sha256("\\".join(self.source_instance_uids).encode()).hexdigest()
        parts = [self.source_series_uid, digest, self.algorithm_version, self.preset, self.rule_set]
        return "|".join(parts + ([f"revision={self.revision}"] if self.revision else []))

    def series_uid(self, kind: str) -> str:
        return uid_from_key(f"{self.key}|{kind}|series")

    def instance_uid(self, kind: str) -> str:
        return uid_from_key(f"{self.key}|{kind}|instance")

    def uid(self, purpose: str) -> str:
        """Any other UID that must be stable for this result (tracking UIDs, observer UID)."""
        return uid_from_key(f"{self.key}|{purpose}")
