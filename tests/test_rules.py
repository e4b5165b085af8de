"""Cut-off rule sets: every published threshold just below / at / just above, with < vs ≤ exact."""

from __future__ import annotations

import pytest

from workers.measure.rules import DEFAULT_RULE_SET, RULE_SETS, evaluate, get_rule_set

EPS = 0.01


def status(rule: str, finding: str, x: float | None, sex: str | None, bmi: float | None) -> str:
    return evaluate(get_rule_set(rule), finding, x, sex, bmi).status


# (rule set, finding, sex, bmi, threshold, inclusive)
CASES = [
    ("martin2013@1", "lsmm", "M", 22.0, 43.0, False),
    ("martin2013@1", "lsmm", "M", 24.99, 43.0, False),
    ("martin2013@1", "lsmm", "M", 25.0, 53.0, False),
    ("martin2013@1", "lsmm", "M", 31.0, 53.0, False),
    ("martin2013@1", "lsmm", "F", 22.0, 41.0, False),
    ("martin2013@1", "lsmm", "F", 30.0, 41.0, False),
    ("martin2013@1", "myosteatosis", "M", 22.0, 41.0, False),
    ("martin2013@1", "myosteatosis", "F", 25.0, 33.0, False),
    ("fujiwara2015@1", "lsmm", "M", None, 36.2, True),
    ("fujiwara2015@1", "lsmm", "F", None, 29.6, True),
    ("fujiwara2015@1", "myosteatosis", "M", None, 44.4, True),
    ("fujiwara2015@1", "myosteatosis", "F", None, 39.3, True),
    ("ha2018@1", "lsmm", "M", None, 45.8, True),
    ("ha2018@1", "lsmm", "F", None, 43.0, True),
    ("jsh@1", "lsmm", "M", None, 42.0, False),
    ("jsh@1", "lsmm", "F", None, 38.0, False),
    ("prado2008@1", "lsmm", "M", None, 52.4, True),
    ("prado2008@1", "lsmm", "F", None, 38.5, True),
]


@pytest.mark.parametrize(("rule", "finding", "sex", "bmi", "thr", "inclusive"), CASES)
def test_threshold_below_at_above(
    rule: str, finding: str, sex: str, bmi: float | None, thr: float, inclusive: bool
) -> None:
    assert status(rule, finding, thr - EPS, sex, bmi) == "present"
    assert status(rule, finding, thr, sex, bmi) == ("present" if inclusive else "absent")
    assert status(rule, finding, thr + EPS, sex, bmi) == "absent"


def test_fujiwara_high_vsr_is_strictly_greater() -> None:
    r = "fujiwara2015@1"
    assert status(r, "high_vsr", 1.33, "M", None) == "absent"
    assert status(r, "high_vsr", 1.34, "M", None) == "present"
    assert status(r, "high_vsr", 0.93, "F", None) == "absent"
    assert status(r, "high_vsr", 0.94, "F", None) == "present"


def test_martin_bmi_missing_men_undetermined_band() -> None:
    """§3 rule 3: without BMI, men SMI < 43 low, ≥ 53 not low, in between undetermined."""
    r = "martin2013@1"
    assert status(r, "lsmm", 42.99, "M", None) == "present"
    assert status(r, "lsmm", 43.0, "M", None) == "undetermined"
    assert status(r, "lsmm", 52.99, "M", None) == "undetermined"
    assert status(r, "lsmm", 53.0, "M", None) == "absent"
    det = evaluate(get_rule_set(r), "lsmm", 48.0, "M", None)
    assert det.value is None and det.code == ("373068000", "Undetermined")
    assert "BMI missing" in det.reason


def test_martin_bmi_missing_women_need_no_bmi() -> None:
    assert status("martin2013@1", "lsmm", 40.9, "F", None) == "present"
    assert status("martin2013@1", "lsmm", 41.0, "F", None) == "absent"


def test_martin_myosteatosis_without_bmi() -> None:
    r = "martin2013@1"
    assert status(r, "myosteatosis", 32.9, "M", None) == "present"
    assert status(r, "myosteatosis", 33.0, None, None) == "undetermined"  # sex-independent cut-off
    assert status(r, "myosteatosis", 40.9, "F", None) == "undetermined"
    assert status(r, "myosteatosis", 41.0, "F", None) == "absent"


def test_missing_sex_makes_sex_specific_flags_not_computable() -> None:
    for sex in (None, "O", "", "X"):
        det = evaluate(get_rule_set("fujiwara2015@1"), "lsmm", 20.0, sex, 22.0)
        assert det.status == "not_computable" and det.value is None and det.code is None
        assert "sex" in det.reason


def test_missing_measurement_not_computable() -> None:
    det = evaluate(get_rule_set(), "lsmm", None, "M", 22.0)
    assert det.status == "not_computable" and det.value is None


def test_rule_set_without_myosteatosis() -> None:
    det = evaluate(get_rule_set("ha2018"), "myosteatosis", 20.0, "M", 22.0)
    assert det.status == "not_computable" and "defines no" in det.reason


def test_registry_and_json() -> None:
    assert DEFAULT_RULE_SET == "martin2013@1"
    assert get_rule_set().id == "martin2013@1"
    assert get_rule_set("jsh").id == "jsh@1"
    assert not get_rule_set("prado2008").verified and "unverified" in get_rule_set("prado2008").note
    with pytest.raises(KeyError):
        get_rule_set("nope")
    for r in RULE_SETS.values():
        j = r.to_json()
        assert j["id"] == r.id and j["citation"] and j["criteria"]
    det = evaluate(get_rule_set(), "lsmm", 40.0, "M", 22.0).to_json()
    assert set(det) >= {"value", "rule_set", "threshold", "reason"}
    assert det["value"] is True and det["rule_set"] == "martin2013@1"
    assert det["threshold"]["operator"] == "<" and det["threshold"]["value"] == 43.0
