"""The hospital set-up: a PACS (Orthanc) routes stable CT series to the node, results come back.

DCMTK storescu sends the series to Orthanc; Orthanc's routing script from ``deploy/orthanc/``
(``OnStableSeries`` → REST ``/modalities/bodycomp/store``) sends it to ``bodycomp serve``; the node
analyses it and sends SEG, SR and overlay back to Orthanc, whose REST API then shows them in the
original study. Then an instance arrives late at Orthanc: Orthanc fires the stable event again and
re-sends the whole series, which the node already holds unchanged: no second analysis, no second
result set. Run with the embedded broker, and with Redis and RabbitMQ (the real servers on this
machine) and a separate ``bodycomp worker`` process.
"""

from __future__ import annotations

import subprocess
import uuid
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.orthanc import Orthanc, running_orthanc
from tests.test_node_support import (
    BODYCOMP,
    NodeProc,
    copy_study,
    free_port,
    start_node,
    start_worker,
    storescu,
    study_status,
    wait_for,
)
from tests.timing import quiet_period

pytestmark = [pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
LUA = REPO / "deploy" / "orthanc" / "route-to-bodycomp.lua"
BROKERS = {
    "embedded": None,
    "redis": "redis://127.0.0.1:6379/0",
    "rabbitmq": "amqp://guest:guest@127.0.0.1:5672//",
}


def modalities_in_study(orthanc: Orthanc, study_uid: str) -> list[str]:
    return sorted(s["Modality"] for s in orthanc.series_by_modality().get(study_uid, []))


def instance_count(orthanc: Orthanc, study_uid: str, modality: str) -> int:
    query = {"StudyInstanceUID": study_uid, "Modality": modality}
    return len(orthanc.post("/tools/find", {"Level": "Instance", "Query": query}))


def routing_orthanc(tmp_path: Path, node_port: int) -> AbstractContextManager[Orthanc]:
    """Orthanc with the deploy/ routing script, sending stable series to the node on ``node_port``
    (stable after 2 s; a late copy of an instance replaces it, so the series is routed again)."""
    return running_orthanc(
        tmp_path / "orthanc",
        modalities={"bodycomp": ["BODYCOMP", "127.0.0.1", node_port]},
        LuaScripts=[str(LUA)],
        StableAge=2,
        OverwriteInstances=True,
    )


def late_copy_resends_the_series(orthanc: Orthanc, node: NodeProc, files: list[Path]) -> None:
    """Send Orthanc a late copy of one instance: its series is stable again and Orthanc routes it
    whole to the node, which holds every instance already; wait past the node's stable time."""
    before = node.text().count("outcome=duplicate")
    assert "Failed" not in storescu(orthanc.dicom_port, files[:1], called=orthanc.ae_title)
    wait_for(
        "Orthanc to re-send the series",
        lambda: node.text().count("outcome=duplicate") - before >= len(files),
        60,
        node.log,
    )
    quiet_period(1.5 + 3)


@pytest.mark.parametrize("broker", list(BROKERS))
def test_orthanc_routes_stable_series_and_gets_results_back(
    broker: str, example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    node_port = free_port()
    data = tmp_path / "data"
    broker_url = BROKERS[broker]
    env = {"BODYCOMP_QUEUE": f"bodycomp-test-{uuid.uuid4().hex[:8]}"}  # the servers are shared
    with routing_orthanc(tmp_path, node_port) as orthanc:
        args = ["--destination", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}", "--allow-ae", "ORTHANC"]
        worker = None
        if broker_url:
            args += ["--broker-url", broker_url]
            worker = start_worker(data, broker_url, tmp_path / "worker.log", env)
        node = start_node(data, *args, port=node_port, env=env)
        try:
            out = storescu(orthanc.dicom_port, files, called=orthanc.ae_title)
            assert "Failed" not in out, out
            wait_for(
                "SEG, SR and overlay in Orthanc's study",
                lambda: {"SEG", "SR", "OT"} <= set(modalities_in_study(orthanc, study_uid)),
                120,
                node.log,
            )
            study = study_status(data, study_uid)
            assert study is not None and study["calling_ae"] == "ORTHANC"
            assert [j["state"] for j in study["jobs"]] == ["done"]
            assert modalities_in_study(orthanc, study_uid) == ["CT", "OT", "SEG", "SR"]

            # A late copy of an instance: Orthanc's series is stable again and re-sent whole.
            late_copy_resends_the_series(orthanc, node, files)
            study = study_status(data, study_uid)
            assert study is not None and len(study["jobs"]) == 1, study["jobs"]
            assert study["outbox"] == {"delivered": 3}
            for modality in ("SEG", "SR", "OT"):
                assert instance_count(orthanc, study_uid, modality) == 1
        finally:
            node.stop()
            if worker is not None:
                worker.stop()
        if worker is not None:
            assert "event=job_started" in worker.text(), "the separate worker ran the analysis"


def test_results_reach_a_destination_configured_after_the_first_receipt(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """#21, as a new user does it: day one, storescu straight to the node with no destination
    (results stay in the data directory); day two, the node restarted with Orthanc as its
    destination, and Orthanc routes the same study. Every instance is a duplicate and nothing is
    analysed again, but the results now go to Orthanc, once; routed again, nothing twice. Then
    ``bodycomp resend --study`` sends them again on request."""
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    node_port = free_port()
    data = tmp_path / "data"
    node = start_node(data, port=node_port)
    try:
        assert "Failed" not in storescu(node_port, files)
        wait_for(
            "the study to be analysed",
            lambda: (study_status(data, study_uid) or {}).get("state") == "done",
            120,
            node.log,
        )
        assert (study_status(data, study_uid) or {})["outbox"] == {}, "no destination: nothing to send"
    finally:
        node.stop()
    with routing_orthanc(tmp_path, node_port) as orthanc:
        destination = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        node = start_node(data, "--destination", destination, port=node_port, log_name="serve2.log")
        try:
            assert "Failed" not in storescu(orthanc.dicom_port, files, called=orthanc.ae_title)
            wait_for(
                "SEG, SR and overlay in Orthanc's study",
                lambda: {"SEG", "SR", "OT"} <= set(modalities_in_study(orthanc, study_uid)),
                120,
                node.log,
            )
            study = study_status(data, study_uid)
            assert study is not None and [j["state"] for j in study["jobs"]] == ["done"], "analysed again"
            assert study["deliveries"] == {destination: {"delivered": 3}}
            assert node.text().count("event=job_started") == 0

            # routed again (a late copy at Orthanc re-sends the series): nothing twice
            late_copy_resends_the_series(orthanc, node, files)
            assert node.text().count("event=delivered") == 3
            for modality in ("SEG", "SR", "OT"):
                assert instance_count(orthanc, study_uid, modality) == 1

            # on request, the current results again (the PACS lost them, say)
            resend = subprocess.run(
                [BODYCOMP, "resend", "--data-dir", str(data), "--study", study_uid],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert resend.returncode == 0 and "3 result(s) of study" in resend.stdout, resend
            wait_for(
                "the results sent again", lambda: node.text().count("event=delivered") == 6, 60, node.log
            )
            for modality in ("SEG", "SR", "OT"):
                assert instance_count(orthanc, study_uid, modality) == 1, "same UIDs: Orthanc keeps one"
        finally:
            node.stop()
