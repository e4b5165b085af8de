"""The typed job contract between the node and its workers (workers/job.py, issue #22)."""

from __future__ import annotations

import json

import pytest

from workers.job import JobSpec, JobState, Outcome, PatientValues
from workers.revision import CorrectionSpec


def test_a_job_spec_survives_json_and_the_broker_both_ways() -> None:
    spec = JobSpec(
        job_id=7,
        study_uid="1.2",
        series_uid="1.2.3",
        input_hash="ab" * 32,
        job_dir="results/1.2/1.2.3/abababababababab",
        instances=112,
        flags=("series_uid_shared",),
        patient_fallbacks=(PatientValues("HL7", 1.76, None), PatientValues("site table", None, 80.0)),
        correction=CorrectionSpec(kinds=("level",), key="k", source="reanalyze", slice_sop_uid="1.2.3.4"),
    )
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_a_job_spec_of_an_earlier_node_has_no_flags_fallbacks_or_correction() -> None:
    old = {
        "job_id": 1,
        "study_uid": "1.2",
        "series_uid": "1.2.3",
        "input_hash": "x",
        "job_dir": "r",
        "instances": 3,
    }
    spec = JobSpec.from_json(old)
    assert (spec.flags, spec.patient_fallbacks, spec.correction) == ((), (), None)


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        (
            {"job_id": 1, "study_uid": "1.2", "series_uid": "1.2.3", "input_hash": "x", "job_dir": "r"},
            "instances",
        ),
        (
            {
                "job_id": "seven",
                "study_uid": "1.2",
                "series_uid": "1",
                "input_hash": "x",
                "job_dir": "r",
                "instances": 1,
            },
            "wrong value",
        ),
    ],
)
def test_a_broken_job_spec_names_what_is_wrong(broken: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        JobSpec.from_json(broken)


def test_an_outcome_round_trips_and_refuses_a_state_it_cannot_have() -> None:
    outcome = Outcome(JobState.DONE, "", attempts=1, finished=12.5, host="w1", outputs=("out/dicom/sr.dcm",))
    assert Outcome.from_json(json.loads(json.dumps(outcome.to_json()))) == outcome
    with pytest.raises(ValueError, match="cannot be"):
        Outcome.from_json({**outcome.to_json(), "state": "queued"})
    with pytest.raises(ValueError):
        Outcome.from_json({**outcome.to_json(), "state": "finished"})  # not a state at all
    with pytest.raises(ValueError, match="reason"):
        Outcome.from_json({"state": "failed", "attempts": 1, "finished": 1.0})
