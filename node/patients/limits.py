"""Plausibility limits for height and weight that arrive from outside the image (HL7 feed, site
table): a named, versioned table, as the cut-offs of :mod:`workers.measure.rules` are.

Why a table with reasons: a value outside these limits is refused at the door (the HL7 message is
answered AE with the reason; a site-table row is skipped with the reason in the log), so that a
typing slip in the EHR (180 m, 75 g) never becomes an SMI. The ranges are those the pipeline
itself accepts (:data:`workers.measure.composition.HEIGHT_RANGE_M`,
:data:`workers.measure.composition.WEIGHT_RANGE_KG`), so a value the node stores is never dropped
later as implausible. A new range is a new version: results name the version they were checked
against (``patient_limits`` in the job).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workers.measure.composition import HEIGHT_RANGE_M, WEIGHT_RANGE_KG


@dataclass(frozen=True)
class Limit:
    """An inclusive plausible range of one quantity, its unit and why these bounds."""

    low: float
    high: float
    unit: str
    reason: str

    def check(self, name: str, value: float) -> str | None:
        """None when ``value`` is plausible, else the reason it is refused (no patient data)."""
        if not math.isfinite(value) or not self.low <= value <= self.high:
            bounds = f"{self.low:g}-{self.high:g} {self.unit}"
            return f"{name} {value:g} {self.unit} is outside the plausible range {bounds}"
        return None


@dataclass(frozen=True)
class PatientLimits:
    """One version of the limits (``id`` is ``name@version``)."""

    id: str
    height_m: Limit
    weight_kg: Limit
    future_tolerance_hours: float
    """An observation time this far after receipt is accepted (clocks of two systems differ)."""

    def check(self, kind: str, value: float) -> str | None:
        if kind == "height_m":
            return self.height_m.check("body height", value)
        if kind == "weight_kg":
            return self.weight_kg.check("body weight", value)
        return f"unknown quantity {kind}"


LIMITS: dict[str, PatientLimits] = {
    "patient-inputs@1": PatientLimits(
        id="patient-inputs@1",
        height_m=Limit(
            HEIGHT_RANGE_M[0],
            HEIGHT_RANGE_M[1],
            "m",
            "adult heights; the SMI cut-offs (workers.measure.rules) were derived on adults, and the "
            "pipeline drops a height outside this range as implausible",
        ),
        weight_kg=Limit(
            WEIGHT_RANGE_KG[0],
            WEIGHT_RANGE_KG[1],
            "kg",
            "the weights the pipeline accepts for BMI; outside is a unit slip (g for kg) or a typo",
        ),
        future_tolerance_hours=24.0,
    ),
}

#: The version used by the node.
CURRENT = LIMITS["patient-inputs@1"]
