"""The site table: a CSV of heights and weights kept by the site, keyed by PatientID or
AccessionNumber (``site_table``, ``site_table_key``), re-read whenever its modification time
changes.

The file has the columns of ``bodycomp batch --heights`` (docs/research.md) and is read by the
same reader (:func:`workers.batch.inputs.read_heights`): one format for the research team's table
and the node's. A file that cannot be read keeps the last good version in use (and says so once
in the log): a half-saved spreadsheet must not take every height away. A value outside
:mod:`node.patients.limits` is not used (the reason is logged, never the patient's key).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from node.patients.limits import CURRENT, PatientLimits
from workers.batch.inputs import HeightsTable, read_heights
from workers.errors import InputError

log = logging.getLogger("bodycomp.site_table")

#: The ``source`` recorded for values from the site table (result.json, SR, export).
SOURCE = "site table"


@dataclass(frozen=True)
class SiteValues:
    """Height (m) and weight (kg) of one row, None where empty or implausible."""

    height_m: float | None
    weight_kg: float | None


class SiteTable:
    """The table at ``path``, read again when its mtime (or size) changes."""

    def __init__(self, path: Path, key: str, limits: PatientLimits = CURRENT) -> None:
        self.path = path
        self.key = key
        self.limits = limits
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._table: HeightsTable | None = None

    def _current(self) -> HeightsTable | None:
        with self._lock:
            try:
                info = self.path.stat()
            except OSError as exc:
                if self._stamp != (-1, -1):
                    log.warning("event=site_table_unreadable path=%s reason=%s", self.path, exc.strerror)
                    self._stamp = (-1, -1)
                return self._table
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._table = read_heights(self.path)
                    log.info("event=site_table_read path=%s keys=%d", self.path, len(self._table.rows))
                except InputError as exc:  # the message names the row, never a patient's key
                    log.error("event=site_table_invalid reason=%s (the previous version stays in use)", exc)
            return self._table

    def lookup(self, patient_id: str, accession: str) -> SiteValues | None:
        """The row of this study by the configured key, plausible values only; None when absent."""
        table = self._current()
        value = patient_id if self.key == "patient_id" else accession
        if table is None or not value or (self.key, value) not in table.rows:
            return None
        row = table.rows[(self.key, value)]
        height = row.height_m
        weight = row.weight_kg
        for kind, number in (("height_m", height), ("weight_kg", weight)):
            reason = None if number is None else self.limits.check(kind, number)
            if reason is not None:
                log.warning("event=site_table_value_refused reason=%s (%s)", reason, self.limits.id)
        if height is not None and self.limits.check("height_m", height) is not None:
            height = None
        if weight is not None and self.limits.check("weight_kg", weight) is not None:
            weight = None
        return SiteValues(height, weight)
