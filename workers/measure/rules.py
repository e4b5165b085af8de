"""Named, cited cut-off rule sets for low skeletal muscle mass (LSMM) and myosteatosis.

Why this shape: published cut-offs differ by population, sex, BMI and even by ``<`` versus ``≤``;
a flag is only interpretable with the rule set that produced it (body-composition.md §3). Each rule
set is an immutable list of criteria, each with its comparison operator exactly as published.

Missing inputs are never guessed (§3 rule 2): when a criterion needs BMI and BMI is missing, every
BMI branch is evaluated and the result is only given when all branches agree; otherwise the status
is *undetermined* (§3 rule 3, SCT 373068000). Missing or non-binary sex makes sex-specific flags
not computable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from workers.result import BranchesJson, CodeJson, CriterionJson, DeterminationJson, RuleSetJson
from workers.versioned import lookup

__all__ = [
    "DEFAULT_RULE_SET",
    "RULE_SETS",
    "Criterion",
    "Determination",
    "RuleSet",
    "evaluate",
    "get_rule_set",
]

Op = Literal["<", "<=", ">", ">="]
Sex = Literal["M", "F"]
Status = Literal["present", "absent", "undetermined", "not_computable"]

#: SNOMED CT codes from DICOM CID 240 (Normal/Abnormal/Undetermined style qualitative results).
SCT_CODES: dict[str, tuple[str, str] | None] = {
    "present": ("52101004", "Present"),
    "absent": ("272519000", "Absent"),
    "undetermined": ("373068000", "Undetermined"),
    "not_computable": None,
}

_UNITS = {"lsmm": "cm2/m2", "myosteatosis": "HU", "high_vsr": "ratio"}
_MEASURE = {"lsmm": "SMI", "myosteatosis": "SM mean HU", "high_vsr": "VAT/SAT ratio"}


@dataclass(frozen=True)
class Criterion:
    """``measure OP value`` means the finding is present, for one sex and a half-open BMI range."""

    finding: str  # "lsmm", "myosteatosis" or "high_vsr"
    op: Op
    value: float
    sex: Sex | None = None  # None: applies to both sexes
    bmi_min: float | None = None  # inclusive
    bmi_max: float | None = None  # exclusive

    def applies_to_bmi(self, bmi: float) -> bool:
        lo_ok = self.bmi_min is None or bmi >= self.bmi_min
        hi_ok = self.bmi_max is None or bmi < self.bmi_max
        return lo_ok and hi_ok

    @property
    def needs_bmi(self) -> bool:
        return self.bmi_min is not None or self.bmi_max is not None

    def test(self, x: float) -> bool:
        if self.op == "<":
            return x < self.value
        if self.op == "<=":
            return x <= self.value
        if self.op == ">":
            return x > self.value
        return x >= self.value

    def describe(self) -> str:
        who = {"M": "men", "F": "women", None: "both sexes"}[self.sex]
        parts = [who]
        if self.bmi_min is not None:
            parts.append(f"BMI ≥ {self.bmi_min:g}")
        if self.bmi_max is not None:
            parts.append(f"BMI < {self.bmi_max:g}")
        op = {"<=": "≤", ">=": "≥"}.get(self.op, self.op)
        return f"{_MEASURE[self.finding]} {op} {self.value:g} {_UNITS[self.finding]} ({', '.join(parts)})"

    def to_json(self) -> CriterionJson:
        return {
            "operator": self.op,
            "value": self.value,
            "unit": _UNITS[self.finding],
            "sex": self.sex,
            "bmi_min": self.bmi_min,
            "bmi_max_exclusive": self.bmi_max,
            "text": self.describe(),
        }


@dataclass(frozen=True)
class RuleSet:
    """A published cut-off set; ``id`` (``name@version``) goes into every flag."""

    name: str
    version: int
    citation: str
    population: str
    verified: bool
    criteria: tuple[Criterion, ...]
    note: str = ""

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def findings(self) -> set[str]:
        return {c.finding for c in self.criteria}

    def to_json(self) -> RuleSetJson:
        return {
            "id": self.id,
            "citation": self.citation,
            "population": self.population,
            "verified": self.verified,
            "note": self.note,
            "criteria": [c.to_json() for c in self.criteria],
        }


@dataclass(frozen=True)
class Determination:
    """Result of one rule: ``value`` is True/False, or None when undetermined or not computable."""

    finding: str
    rule_set: str
    status: Status
    reason: str
    threshold: CriterionJson | BranchesJson | None = None
    measured: float | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> bool | None:
        return {"present": True, "absent": False}.get(self.status)

    @property
    def code(self) -> tuple[str, str] | None:
        """(SCT code, meaning) for DICOM SR (CID 240); None when not computable."""
        return SCT_CODES[self.status]

    def to_json(self) -> DeterminationJson:
        code = self.code
        coded: CodeJson | None = (
            None if code is None else {"scheme": "SCT", "value": code[0], "meaning": code[1]}
        )
        return {
            "value": self.value,
            "status": self.status,
            "rule_set": self.rule_set,
            "threshold": self.threshold,
            "reason": self.reason,
            "measured": self.measured,
            "inputs": self.inputs,
            "code": coded,
        }


def _c(
    finding: str,
    op: Op,
    value: float,
    sex: Sex | None = None,
    bmi_min: float | None = None,
    bmi_max: float | None = None,
) -> Criterion:
    return Criterion(finding, op, value, sex, bmi_min, bmi_max)


RULE_SETS: dict[str, RuleSet] = {
    r.id: r
    for r in (
        RuleSet(
            name="martin2013",
            version=1,
            citation="Martin L et al. J Clin Oncol 2013;31:1539-47 (n = 1473)",
            population="cancer patients, Canada",
            verified=True,
            criteria=(
                _c("lsmm", "<", 43.0, "M", bmi_max=25.0),
                _c("lsmm", "<", 53.0, "M", bmi_min=25.0),
                _c("lsmm", "<", 41.0, "F"),
                _c("myosteatosis", "<", 41.0, None, bmi_max=25.0),
                _c("myosteatosis", "<", 33.0, None, bmi_min=25.0),
            ),
            note="SMI cut-offs used by the key study (Nam et al. 2023).",
        ),
        RuleSet(
            name="fujiwara2015",
            version=1,
            citation="Fujiwara N et al. J Hepatol 2015;63:131-40, PMID 25724366 (n = 1257)",
            population="hepatocellular carcinoma, Japan",
            verified=True,
            criteria=(
                _c("lsmm", "<=", 36.2, "M"),
                _c("lsmm", "<=", 29.6, "F"),
                _c("myosteatosis", "<=", 44.4, "M"),
                _c("myosteatosis", "<=", 39.3, "F"),
                _c("high_vsr", ">", 1.33, "M"),
                _c("high_vsr", ">", 0.93, "F"),
            ),
        ),
        RuleSet(
            name="ha2018",
            version=1,
            citation="Ha Y et al. Cancer Res Treat 2018;50:843-51 (n = 178)",
            population="newly diagnosed hepatocellular carcinoma, Korea",
            verified=True,
            criteria=(_c("lsmm", "<=", 45.8, "M"), _c("lsmm", "<=", 43.0, "F")),
        ),
        RuleSet(
            name="jsh",
            version=1,
            citation="Japan Society of Hepatology sarcopenia criteria (CT), "
            "via Takada H et al. PLOS ONE 2018",
            population="liver disease, Japan",
            verified=False,
            criteria=(_c("lsmm", "<", 42.0, "M"), _c("lsmm", "<", 38.0, "F")),
            note="secondary source only",
        ),
        RuleSet(
            name="prado2008",
            version=1,
            citation="Prado CMM et al. Lancet Oncol 2008;9:629-35",
            population="obese patients with solid tumours",
            verified=False,
            criteria=(_c("lsmm", "<=", 52.4, "M"), _c("lsmm", "<=", 38.5, "F")),
            note="numbers (unverified)",
        ),
    )
}

DEFAULT_RULE_SET = "martin2013@1"


def get_rule_set(name: str | None = None) -> RuleSet:
    """Return a rule set by ``name@version`` or bare ``name`` (latest); ``None`` gives the default."""
    return lookup(RULE_SETS, name, DEFAULT_RULE_SET, "rule set")


def _valid(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def evaluate(
    rule_set: RuleSet, finding: str, measured: float | None, sex: str | None, bmi: float | None
) -> Determination:
    """Apply one finding of a rule set.

    ``sex`` is ``"M"``/``"F"``; anything else counts as missing. ``bmi`` None means unknown: all BMI
    branches are tried and only a unanimous answer is given (else *undetermined*).
    """
    inputs: dict[str, Any] = {"sex": sex, "bmi": bmi}
    rid = rule_set.id
    crits = [c for c in rule_set.criteria if c.finding == finding]
    if not crits:
        return Determination(
            finding, rid, "not_computable", f"{rid} defines no {finding} cut-off", None, measured, inputs
        )
    if not _valid(measured):
        return Determination(
            finding,
            rid,
            "not_computable",
            f"{_MEASURE[finding]} not available (missing input or measurement)",
            None,
            None,
            inputs,
        )
    assert measured is not None
    if any(c.sex is not None for c in crits):
        if sex not in ("M", "F"):
            return Determination(
                finding,
                rid,
                "not_computable",
                "sex missing or not M/F: cut-off is sex-specific",
                None,
                measured,
                inputs,
            )
        crits = [c for c in crits if c.sex in (None, sex)]
    if _valid(bmi):
        assert bmi is not None
        crits = [c for c in crits if not c.needs_bmi or c.applies_to_bmi(bmi)]
        if len(crits) != 1:
            raise ValueError(f"{rid}: {len(crits)} criteria match {finding} sex={sex} bmi={bmi}")
        crit = crits[0]
        present = crit.test(measured)
        return Determination(
            finding,
            rid,
            "present" if present else "absent",
            f"{'meets' if present else 'does not meet'} {crit.describe()}",
            crit.to_json(),
            measured,
            inputs,
        )
    outcomes = {c.test(measured) for c in crits}
    if len(outcomes) == 1:
        present = outcomes.pop()
        crit = crits[0]
        why = f"{'meets' if present else 'does not meet'} {crit.describe()}"
        if len(crits) > 1:
            why = "BMI missing, but every BMI branch agrees: " + ("; ".join(c.describe() for c in crits))
        return Determination(
            finding,
            rid,
            "present" if present else "absent",
            why,
            crit.to_json() if len(crits) == 1 else {"branches": [c.to_json() for c in crits]},
            measured,
            inputs,
        )
    return Determination(
        finding,
        rid,
        "undetermined",
        "BMI missing and the BMI-dependent cut-offs disagree: " + "; ".join(c.describe() for c in crits),
        {"branches": [c.to_json() for c in crits]},
        measured,
        inputs,
    )
