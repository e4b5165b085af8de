"""The output folder's secret key: the study keys every file and log line uses, and pseudonyms.

Why a key: a cohort's outputs name studies in folder names, log lines and the gallery, and with
``--pseudonymise`` the table replaces PatientID, AccessionNumber and the UIDs by stand-ins. A plain
hash of a PatientID is no pseudonym (hospital numbers are short: anyone can hash them all and
match), so every stand-in is an HMAC-SHA256 under a random key kept in ``DIR/pseudonym.key``
(mode 0600). Whoever holds the key can link a pseudonym back to a patient, nobody else can: share
``results.csv`` and the gallery, keep the key. The same key in another output folder gives the same
pseudonyms (copy it there before the first run to link two cohorts).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "pseudonym.key"
#: Hex characters kept of each HMAC: 64 bits, no collision expected below billions of studies.
DIGITS = 16


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed stand-ins for identifiers; ``kind`` separates domains (a PatientID that happens to
    equal an AccessionNumber gets two different pseudonyms)."""

    key: bytes

    def pseudonym(self, kind: str, value: str) -> str:
        """The stand-in of ``value``; empty stays empty (a missing identifier is not a pseudonym)."""
        if not value:
            return ""
        digest = hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()
        return digest[:DIGITS]

    def study_key(self, identity: str) -> str:
        """The study's folder name and its name in logs: stable for one output folder."""
        return self.pseudonym("study", identity)


def load_or_create(out_dir: Path) -> Pseudonymiser:
    """The key of ``out_dir``, created (0600, never overwritten) on its first run."""
    path = out_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) < 16:
            raise ValueError(f"{path} is not a bodycomp pseudonym key (64 hex digits)") from None
        return Pseudonymiser(key)
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as handle:
        handle.write(key.hex() + "\n")
    return Pseudonymiser(key)
