"""The QC verdict: which flags ask for review, which only inform, which fail the result."""

from __future__ import annotations

from workers.measure.verdict import assess


def verdict(**changes: object) -> dict[str, object]:
    args: dict[str, object] = {
        "l3_flags": [],
        "l3_confidence": 0.9,
        "segmentation_flags": [],
        "segmentation_notes": [],
        "measurement_flags": [],
        "volume_flags": [],
        "acquisition": {},
        "manual_slice": False,
    }
    args.update(changes)
    return assess(**args).to_json()  # type: ignore[arg-type]


def test_clean_result_is_ok() -> None:
    assert verdict()["status"] == "ok"


def test_implausible_muscle_area_from_the_metrics_asks_for_review() -> None:
    report = verdict(measurement_flags=["sm_area_implausible"])
    assert report["status"] == "review" and report["flags"] == ["sm_area_implausible"]


def test_contrast_only_informs_and_no_spine_fails() -> None:
    assert verdict(acquisition={"contrast_agent": "IOMERON"})["status"] == "ok"
    assert verdict(segmentation_flags=["no_spine_found"])["status"] == "failed"


def test_low_confidence_asks_for_review_unless_the_slice_was_chosen_by_hand() -> None:
    assert verdict(l3_confidence=0.3)["status"] == "review"
    assert verdict(l3_confidence=None, manual_slice=True)["status"] == "ok"


def test_a_patient_turned_on_the_table_only_informs_and_says_by_how_much() -> None:
    report = verdict(
        segmentation_flags=["patient_turned"],
        segmentation_notes=[
            "patient turned by 17 degrees on the table: compartments found in the patient's own frame"
        ],
    )
    assert report["status"] == "ok" and report["flags"] == ["patient_turned"]
    assert any("17 degrees" in str(r) for r in report["reasons"])  # type: ignore[union-attr]
