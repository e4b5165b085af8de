"""One verdict a reader can act on: ``ok``, ``review`` or ``failed``, with every reason.

The analysis never fails silently: anything that makes a number less trustworthy (an uncertain
vertebral level, a truncated field of view, arms in the trunk, implausible areas, IV contrast
raising muscle HU) becomes a machine-readable reason here, and ``review`` is the verdict whenever
a human should look before the numbers are used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workers.result import QcJson, QcStatus

#: Flags that only inform (recorded, but a reader need not look).
INFORMATIONAL = {
    "contrast_enhanced",
    "uneven_spacing",
    "duplicate_positions",
    "height_missing",
    "sex_missing",
    "patient_turned",  # segmented in the patient's own frame (workers/tissues/frame.py)
}
#: What the receiving node's flags about the input mean for a reader (node/schedule/dispatch.py).
NODE_FLAG_REASONS = {
    "series_uid_shared": (
        "input: another study uses this Series Instance UID; only this study's instances were analysed "
        "(check the patient's identity and the sender's UIDs)"
    ),
}
#: Flags that make the result unusable.
FATAL = {"no_body", "no_spine_found"}


@dataclass
class QualityReport:
    status: QcStatus = "ok"
    reasons: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    def add(self, flag: str, reason: str | None = None) -> None:
        if flag not in self.flags:
            self.flags.append(flag)
            if reason:
                self.reasons.append(reason)
        if flag in FATAL:
            self.status = "failed"
        elif flag not in INFORMATIONAL and self.status == "ok":
            self.status = "review"

    def to_json(self) -> QcJson:
        return {"status": self.status, "flags": self.flags, "reasons": self.reasons}


def assess(
    l3_flags: Iterable[str],
    l3_confidence: float | None,
    segmentation_flags: Iterable[str],
    segmentation_notes: Iterable[str],
    measurement_flags: Iterable[str],
    volume_flags: Iterable[str],
    acquisition: Mapping[str, Any],
    manual_slice: bool,
    input_flags: Iterable[str] = (),
    node_flags: Iterable[str] = (),
) -> QualityReport:
    report = QualityReport()
    for flag in node_flags:
        report.add(flag, NODE_FLAG_REASONS.get(flag, f"input: {flag.replace('_', ' ')}"))
    for flag in input_flags:
        report.add(flag, f"patient input: {flag.replace('_', ' ')}")
    for flag in l3_flags:
        report.add(flag, f"vertebral level: {flag.replace('_', ' ')}")
    if l3_confidence is not None and not manual_slice and l3_confidence < 0.5:
        report.add("low_l3_confidence", f"L3 localisation confidence {l3_confidence:.2f} is below 0.5")
    notes = list(segmentation_notes)
    for flag in segmentation_flags:
        detail = next((n for n in notes if flag.split("_")[0] in n.lower()), flag.replace("_", " "))
        report.add(flag, f"segmentation: {detail}")
    for flag in volume_flags:
        report.add(flag, f"input: {flag.replace('_', ' ')}")
    # The metrics own their plausibility checks (e.g. SM area outside 40–400 cm²); QC only relays them.
    for flag in measurement_flags:
        report.add(flag, f"measurement: {flag.replace('_', ' ')}")
    if acquisition.get("contrast_agent"):
        report.add(
            "contrast_enhanced",
            f"contrast agent recorded ({acquisition['contrast_agent']}): muscle HU is higher than unenhanced",
        )
    return report
