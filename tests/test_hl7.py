"""HL7 v2 in and out (issue #26): heights and weights from ADT/ORM/OMI over MLLP, ACKs and
refusals, the documented order of sources, the site table, and the whole loop with the node.

Real peers only: python-hl7's ``mllp_send`` console script sends, python-hl7's MLLP server
receives the ORU^R01, DCMTK's storescu sends the CT and Orthanc receives the DICOM results.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import hl7
import pydicom
import pytest
from pydicom.uid import generate_uid

from node.hl7.listener import HL7Listener, handle_message
from node.patients.site_table import SiteTable
from node.patients.sources import StudyIdentity, hl7_values
from node.store.index import Index
from tests.hl7_peers import ack_fields, body_message, mllp_send, oru_receiver
from tests.orthanc import Orthanc, running_orthanc
from tests.test_node_support import free_port, start_node, status, storescu, study_status, wait_for
from workers.load.volume import PatientInfo
from workers.pipeline import PatientOverrides, _patient_inputs

# -- messages, ACKs and refusals -----------------------------------------------------------------


def stored(index: Index) -> list[tuple[str, str, float]]:
    rows = index.query("SELECT patient_id, kind, value FROM patient_observations ORDER BY id")
    return [(r["patient_id"], r["kind"], round(float(r["value"]), 4)) for r in rows]


@pytest.mark.parametrize(
    ("height", "weight", "expected"),
    [
        (("180", "cm"), ("81", "kg"), (1.8, 81.0)),
        (("1.65", "m"), ("70500", "g"), (1.65, 70.5)),
        (("70", "[in_i]"), ("176", "[lb_av]"), (1.778, 79.8323)),
    ],
)
def test_height_and_weight_in_each_accepted_unit_are_stored_in_metres_and_kilograms(
    tmp_path: Path, height: tuple[str, str], weight: tuple[str, str], expected: tuple[float, float]
) -> None:
    index = Index(tmp_path / "index.sqlite")
    message = hl7.parse(body_message("C1", "PAT-1", height=height, weight=weight))
    head, answer = handle_message(message, index, max_age_days=365)
    assert head is not None and answer.code == "AA" and answer.stored == 2
    assert stored(index) == [("PAT-1", "height_m", expected[0]), ("PAT-1", "weight_kg", expected[1])]
    # the same message again (an interface engine's resend) is acknowledged and stored once
    assert handle_message(message, index, max_age_days=365)[1].code == "AA"
    assert len(stored(index)) == 2


def test_order_messages_are_accepted_and_keep_the_accession_number(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    for kind in ("ORM^O01^ORM_O01", "OMI^O23^OMI_O23", "ADT^A31^ADT_A05"):
        message = hl7.parse(body_message(f"C-{kind[:3]}", "PAT-2", kind=kind, accession="ACC77"))
        assert handle_message(message, index, max_age_days=365)[1].code == "AA"
    rows = index.query("SELECT DISTINCT accession FROM patient_observations")
    assert [r["accession"] for r in rows] == ["ACC77"]


def old(days: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - days * 86400))


@pytest.mark.parametrize(
    ("message", "code", "error", "reason"),
    [
        (body_message("R1", "PAT-3", height=("18", "m")), "AE", "207", "outside the plausible range"),
        (body_message("R2", "PAT-3", weight=("81", "kg"), height=("180", "mm")), "AE", "103", "unknown unit"),
        (body_message("R3", "PAT-3", weight=("8.1", "kg")), "AE", "207", "body weight 8.1 kg is outside"),
        (body_message("R4", "", weight=None), "AE", "101", "PID-3"),
        (body_message("R5", "PAT-3", observed=old(800)), "AE", "207", "days ago"),
        (body_message("R6", "PAT-3", kind="ADT^A01^ADT_A01"), "AR", "201", "not accepted"),
        (body_message("R7", "PAT-3", kind="ORU^R01^ORU_R01"), "AR", "200", "not accepted"),
        (body_message("R8", "PAT-3", height=("tall", "cm")), "AE", "102", "not a number"),
    ],
)
def test_a_message_that_cannot_be_used_is_refused_with_the_reason_and_nothing_is_stored(
    tmp_path: Path, message: str, code: str, error: str, reason: str
) -> None:
    index = Index(tmp_path / "index.sqlite")
    head, answer = handle_message(hl7.parse(message), index, max_age_days=365)
    assert head is not None
    assert (answer.code, answer.error_code) == (code, error), answer
    assert reason in answer.reason
    assert stored(index) == [], "a refused message is not stored, not even its good OBX"


def test_listener_answers_mllp_send_with_aa_or_ae_and_logs_no_patient_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    index = Index(tmp_path / "index.sqlite")
    listener = HL7Listener("127.0.0.1", 0, index, 365)
    listener.start()
    try:
        good = mllp_send(listener.bound_port, body_message("G1", "SECRET-77"), tmp_path / "g.hl7")
        bad = mllp_send(
            listener.bound_port, body_message("B1", "SECRET-77", height=("250", "cm")), tmp_path / "b.hl7"
        )
    finally:
        listener.stop()
    assert ack_fields(good)[:2] == ("AA", "G1")
    code, control, reason = ack_fields(bad)
    assert (code, control) == ("AE", "B1") and "outside the plausible range" in reason
    assert "ERR|||207^" in bad
    assert stored(index) == [("SECRET-77", "height_m", 1.8), ("SECRET-77", "weight_kg", 81.0)]
    assert "SECRET" not in caplog.text and "Test^Patient" not in caplog.text
    assert "control_id=G1" in caplog.text and "control_id=B1" in caplog.text


# -- the order of sources ------------------------------------------------------------------------


def volume_with(height: float | None, weight: float | None) -> Any:
    return SimpleNamespace(
        patient=PatientInfo(height_m=height, weight_kg=weight, sex="M", source="DICOM header")
    )


HL7 = PatientOverrides(height_m=1.70, weight_kg=65.0, source="HL7")
SITE = PatientOverrides(height_m=1.90, weight_kg=90.0, source="site table")


def used(inputs: Any) -> dict[str, tuple[Any, Any]]:
    data = inputs.to_json()
    return {key: (data[key]["value"], data[key]["source"]) for key in ("height_m", "weight_kg")}


def test_header_wins_then_hl7_then_site_table() -> None:
    both = _patient_inputs(volume_with(1.80, 80.0), PatientOverrides(), (HL7, SITE))
    assert used(both) == {"height_m": (1.80, "DICOM header"), "weight_kg": (80.0, "DICOM header")}
    no_height = _patient_inputs(volume_with(None, 80.0), PatientOverrides(), (HL7, SITE))
    assert used(no_height) == {"height_m": (1.70, "HL7"), "weight_kg": (80.0, "DICOM header")}
    only_site = _patient_inputs(volume_with(None, None), PatientOverrides(), (SITE,))
    assert used(only_site) == {"height_m": (1.90, "site table"), "weight_kg": (90.0, "site table")}
    # a header value outside the plausible range (PatientSize in cm, 175) gives way to the feed
    implausible = _patient_inputs(volume_with(175.0, 80.0), PatientOverrides(), (HL7,))
    assert used(implausible)["height_m"] == (1.70, "HL7")
    # ... and is flagged when nothing else has one
    alone = _patient_inputs(volume_with(175.0, 80.0), PatientOverrides(), ())
    assert (
        used(alone)["height_m"] == (None, "DICOM header") and "height_implausible" in alone.to_json()["flags"]
    )


def test_command_line_values_still_replace_the_header() -> None:
    """``bodycomp analyze --height-m`` and ``batch --heights`` as documented: given, they are used."""
    typed = PatientOverrides(height_m=1.60, source="command line")
    inputs = _patient_inputs(volume_with(1.80, 80.0), typed, (HL7,))
    assert used(inputs) == {"height_m": (1.60, "command line"), "weight_kg": (80.0, "DICOM header")}


def test_hl7_value_nearest_the_study_date_within_the_age_limit_is_used(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    day = 86400.0
    study = time.time() - 30 * day
    index.add_observations(
        [
            ("P9", "", "height_m", 1.60, study - 400 * day, "HL7", "a"),  # too old for this study
            ("P9", "", "height_m", 1.70, study - 10 * day, "HL7", "b"),
            ("P9", "", "height_m", 1.72, study + 25 * day, "HL7", "c"),
            ("P9", "", "weight_kg", 70.0, study + 2 * day, "HL7", "d"),
        ]
    )
    found = hl7_values(index, StudyIdentity("P9", "", study), max_age_days=365)
    assert found is not None and (found.height_m, found.weight_kg) == (1.70, 70.0)
    assert hl7_values(index, StudyIdentity("P9", "", study - 2000 * day), max_age_days=365) is None
    assert hl7_values(index, StudyIdentity("OTHER", "", study), max_age_days=365) is None


# -- the site table ------------------------------------------------------------------------------


def test_site_table_is_read_again_when_it_changes_and_refuses_implausible_values(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("patient_id,height_cm,weight_kg\nP1,172,70\nP2,17.2,70\n")
    table = SiteTable(path, "patient_id")
    first = table.lookup("P1", "")
    assert first is not None and (first.height_m, first.weight_kg) == (1.72, 70.0)
    implausible = table.lookup("P2", "")
    assert implausible is not None and (implausible.height_m, implausible.weight_kg) == (None, 70.0)
    assert table.lookup("P3", "") is None
    path.write_text("patient_id,height_cm,weight_kg\nP1,180,75\nP3,165,\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = table.lookup("P1", "")
    assert again is not None and (again.height_m, again.weight_kg) == (1.80, 75.0)
    later = table.lookup("P3", "")
    assert later is not None and later.height_m == 1.65
    # a broken save keeps the last good version in use
    path.write_text("patient_id,hieght_cm\nP1,1\n")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    kept = table.lookup("P1", "")
    assert kept is not None and kept.height_m == 1.80


def test_site_table_keyed_by_accession_number(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    path.write_text("accession_number;height_m\nACC1;1,68\n")
    table = SiteTable(path, "accession_number")
    found = table.lookup("P1", "ACC1")
    assert found is not None and found.height_m == 1.68
    assert table.lookup("ACC1", "") is None


# -- the whole loop: mllp_send → node → storescu → Orthanc, ORU to a python-hl7 listener ---------


def patient_study(src: Path, dst: Path, patient_id: str, accession: str) -> tuple[list[Path], str]:
    """A copy of a CT series as a new study of ``patient_id`` dated today, without PatientSize
    or PatientWeight (as the real CTs of the issue)."""
    dst.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.AccessionNumber = patient_id, accession
        ds.StudyDate = time.strftime("%Y%m%d")
        for keyword in ("PatientSize", "PatientWeight"):
            if keyword in ds:
                delattr(ds, keyword)
        out = dst / path.name
        ds.save_as(out, enforce_file_format=True)
        paths.append(out)
    return paths, study


def result_json(data_dir: Path, study_uid: str, job_id: int) -> dict[str, Any]:
    status = study_status(data_dir, study_uid)
    assert status is not None
    [job] = [j for j in status["jobs"] if j["id"] == job_id]
    return dict(json.loads((data_dir / job["result_dir"] / "out" / "result.json").read_text()))


def srs_in_orthanc(orthanc: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    found = orthanc.post(
        "/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}}
    )
    out = []
    for instance_id in found:
        url = f"http://127.0.0.1:{orthanc.http_port}/instances/{instance_id}/file"
        with urllib.request.urlopen(url, timeout=30) as response:
            path = Path(os.environ.get("TMPDIR", "/tmp")) / f"sr-{instance_id}.dcm"
            path.write_bytes(response.read())
        out.append(pydicom.dcmread(path))
        path.unlink()
    return out


def sr_items(sr: pydicom.Dataset) -> dict[str, Any]:
    """Concept meaning → numeric value or code meaning, anywhere in the SR's content tree."""
    out: dict[str, Any] = {}

    def walk(items: Any) -> None:
        for item in items:
            name = (
                str(item.ConceptNameCodeSequence[0].CodeMeaning) if "ConceptNameCodeSequence" in item else ""
            )
            if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
                out.setdefault(name, float(item.MeasuredValueSequence[0].NumericValue))
            if item.ValueType == "CODE":
                out.setdefault(name, str(item.ConceptCodeSequence[0].CodeValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return out


def oru_values(message: hl7.Message) -> dict[tuple[str, str], str]:
    """(OBX-3 code, OBX-4 sub-ID) → OBX-5 of an ORU parsed back with python-hl7."""
    values = {}
    for segment in message.segments("OBX"):
        fields = str(segment).split("|")
        values[(fields[3].split("^")[0], fields[4])] = fields[5]
    return values


@pytest.mark.network
@pytest.mark.slow
def test_hl7_height_gives_smi_with_its_source_and_results_go_out_as_oru_and_fhir(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    from fhir.resources.R4B.bundle import Bundle

    with running_orthanc(tmp_path / "orthanc") as orthanc, oru_receiver() as ris:
        hl7_port = free_port()
        node = start_node(
            tmp_path / "data",
            "--destination",
            f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}",
            env={
                "BODYCOMP_HL7_PORT": str(hl7_port),
                "BODYCOMP_HL7_DESTINATIONS": f"127.0.0.1:{ris.port}",
            },
        )
        try:
            wait_for("the HL7 listener", lambda: "event=hl7_listening" in node.text(), 30, node.log)
            # 1. the EHR sends height and weight; an implausible height is refused with the reason
            ack = mllp_send(
                hl7_port, body_message("ADT-1", "PAT-HL7", height=("176", "cm")), tmp_path / "a.hl7"
            )
            assert ack_fields(ack)[:2] == ("AA", "ADT-1")
            refused = mllp_send(
                hl7_port,
                body_message("ADT-2", "PAT-HL7", height=("17.6", "cm"), weight=None),
                tmp_path / "b.hl7",
            )
            code, control, reason = ack_fields(refused)
            assert (code, control) == ("AE", "ADT-2") and "outside the plausible range" in reason
            observations = Index.read_only(node.data_dir / "index.sqlite")
            try:
                heights = observations.query("SELECT value FROM patient_observations WHERE kind='height_m'")
            finally:
                observations.close()
            assert [r["value"] for r in heights] == [1.76], "the refused height is not stored"

            # 2. the patient's CT (no PatientSize) arrives: SMI from the HL7 height, source recorded
            files, study_uid = patient_study(example_ct_derived_dicom, tmp_path / "s1", "PAT-HL7", "ACC-1")
            assert "Failed" not in storescu(node.port, files)
            study = wait_for(
                "the study analysed and its SR at Orthanc",
                lambda: (
                    (s := study_status(node.data_dir, study_uid))
                    and s["state"] == "done"
                    and s["outbox"].get("delivered", 0) >= 3
                    and s
                ),
                120,
                node.log,
            )
            [job] = study["jobs"]
            result = result_json(node.data_dir, study_uid, job["id"])
            inputs = result["patient_inputs"]
            assert inputs["height_m"] == {"value": 1.76, "raw": 1.76, "source": "HL7"}
            assert inputs["weight_kg"]["value"] == 81.0 and inputs["weight_kg"]["source"] == "HL7"
            muscle = result["tissues"]["skeletal_muscle"]["area_cm2"]
            assert result["metrics"]["smi_cm2_m2"] == pytest.approx(muscle / 1.76**2, abs=0.01)
            [sr] = srs_in_orthanc(orthanc, study_uid)
            items = sr_items(sr)
            assert items["Skeletal muscle index"] == pytest.approx(result["metrics"]["smi_cm2_m2"], abs=0.01)
            assert items["Source of height, weight and sex"] == "HL7"

            # 3. the ORU^R01 reached the RIS listener; parsed back, its values are result.json's
            oru = wait_for("the ORU^R01", lambda: ris.received(), 60, node.log)[0]
            assert str(oru.segment("MSH")[9]).startswith("ORU^R01")
            assert str(oru.segment("PID")[3]).split("^")[0] == "PAT-HL7"
            assert str(oru.segment("OBR")[3]) == "ACC-1"
            values = oru_values(oru)
            assert float(values[("SMI", "")]) == result["metrics"]["smi_cm2_m2"]
            assert float(values[("8302-2", "")]) == 1.76 and float(values[("29463-7", "")]) == 81.0
            for tissue, label in (("skeletal_muscle", "1"), ("imat", "2"), ("vat", "3"), ("sat", "4")):
                assert float(values[("42798000", label)]) == result["tissues"][tissue]["area_cm2"]
                assert float(values[("373098007", label)]) == result["tissues"][tissue]["mean_hu"]
            assert values[("INPUTSRC", "")] == "HL7"
            lsmm = result["metrics"]["lsmm"]["value"]
            verdict = {True: "52101004", False: "272519000", None: "373068000"}[lsmm]  # SNOMED CT
            assert values[("LSMM", "")].split("^")[0] == verdict

            # 4. the FHIR Bundle in the result folder validates (R4B models = R4 for these)
            fhir = json.loads((node.data_dir / job["result_dir"] / "out" / "fhir.json").read_text())
            bundle = Bundle.model_validate(fhir)
            kinds = [e.resource.__resource_type__ for e in bundle.entry]
            assert kinds.count("DiagnosticReport") == 1 and kinds.count("Observation") >= 9
            report = status(node.data_dir)
            assert report["hl7_outbox_by_state"] == {"delivered": 1} and report["hl7_dead_letters"] == []
        finally:
            assert node.stop() == 0, node.text()[-3000:]
    text = node.text()
    assert "PAT-HL7" not in text and "Test^Patient" not in text, "no patient data in the node's log"


@pytest.mark.network
@pytest.mark.slow
def test_height_arriving_after_the_results_gives_a_superseding_sr_at_orthanc(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    with running_orthanc(tmp_path / "orthanc") as orthanc:
        hl7_port = free_port()
        node = start_node(
            tmp_path / "data",
            "--destination",
            f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}",
            env={"BODYCOMP_HL7_PORT": str(hl7_port)},
        )
        try:
            files, study_uid = patient_study(example_ct_derived_dicom, tmp_path / "s", "PAT-LATE", "ACC-9")
            assert "Failed" not in storescu(node.port, files)
            first = wait_for(
                "the first result at Orthanc",
                lambda: (
                    (s := study_status(node.data_dir, study_uid))
                    and s["state"] == "done"
                    and s["outbox"].get("delivered", 0) >= 3
                    and s
                ),
                120,
                node.log,
            )
            [first_job] = first["jobs"]
            before = result_json(node.data_dir, study_uid, first_job["id"])
            assert before["patient_inputs"]["height_m"]["value"] is None
            assert before["metrics"]["smi_cm2_m2"] is None
            [old_sr] = srs_in_orthanc(orthanc, study_uid)

            ack = mllp_send(
                hl7_port, body_message("ADT-L1", "PAT-LATE", height=("168", "cm")), tmp_path / "l.hl7"
            )
            assert ack_fields(ack)[:2] == ("AA", "ADT-L1")
            srs = wait_for(
                "a second SR at Orthanc",
                lambda: len(s := srs_in_orthanc(orthanc, study_uid)) >= 2 and s,
                120,
                node.log,
            )
            [new_sr] = [sr for sr in srs if sr.SOPInstanceUID != old_sr.SOPInstanceUID]
            predecessor = new_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
            assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_sr.SOPInstanceUID
            study = study_status(node.data_dir, study_uid)
            assert study is not None
            [current] = [j for j in study["jobs"] if j["state"] == "done"]
            after = result_json(node.data_dir, study_uid, current["id"])
            assert after["patient_inputs"]["height_m"]["value"] == 1.68
            assert after["patient_inputs"]["height_m"]["source"] == "HL7"
            muscle = after["tissues"]["skeletal_muscle"]["area_cm2"]
            assert muscle == before["tissues"]["skeletal_muscle"]["area_cm2"], (
                "same masks, no new segmentation"
            )
            assert after["metrics"]["smi_cm2_m2"] == pytest.approx(muscle / 1.68**2, abs=0.01)
            assert sr_items(new_sr)["Skeletal muscle index"] == pytest.approx(
                after["metrics"]["smi_cm2_m2"], abs=0.01
            )
        finally:
            assert node.stop() == 0, node.text()[-3000:]
    assert "PAT-LATE" not in node.text()


def test_dispatch_gives_the_job_hl7_then_site_table_values_for_the_study(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """What ``job.json`` carries (``patient_fallbacks``), in the documented order, for the study of a
    stored instance: the HL7 feed's values first, then the site table's."""
    from node.config import NodeSettings
    from node.patients.sources import fallbacks_for

    files, _ = patient_study(example_ct_derived_dicom, tmp_path / "s", "PAT-SRC", "ACC-SRC")
    site = tmp_path / "site.csv"
    site.write_text("accession_number,height_m,weight_kg\nACC-SRC,1.75,77\n")
    settings = NodeSettings(data_dir=tmp_path / "data", site_table=site, site_table_key="accession_number")
    index = Index(tmp_path / "index.sqlite")
    assert [f.to_json() for f in fallbacks_for(index, settings, str(files[0]))] == [
        {"source": "site table", "height_m": 1.75, "weight_kg": 77.0}
    ]
    index.add_observations([("PAT-SRC", "", "height_m", 1.71, time.time(), "HL7", "X1")])
    assert [f.to_json() for f in fallbacks_for(index, settings, str(files[0]))] == [
        {"source": "HL7", "height_m": 1.71, "weight_kg": None},
        {"source": "site table", "height_m": 1.75, "weight_kg": 77.0},
    ]


# -- the ORU sender and the settings -------------------------------------------------------------


def queued_oru(tmp_path: Path, destination: str) -> tuple[Index, int]:
    """An index with one ORU queued for ``destination`` (its job and study rows as a node makes them)."""
    from node.hl7.oru import OruContext, build_oru
    from tests.test_fhir import result

    index = Index(tmp_path / "index.sqlite")
    with index.transaction() as db:
        db.execute(
            "INSERT INTO studies (study_uid, calling_ae, first_received, last_received, updated) "
            "VALUES ('1.2.3', 'CT', 0, 0, 0)"
        )
        job_id = int(
            db.execute(
                "INSERT INTO jobs (study_uid, series_uid, input_hash, result_dir, created) "
                "VALUES ('1.2.3', '1.2.3.4', 'h', 'r', 0)"
            ).lastrowid
            or 0
        )
    path = tmp_path / "oru.hl7"
    path.write_bytes(build_oru(result(), OruContext("BODYCOMP1", "P1", "A1", "1.2.3", "")).encode())
    index.add_hl7_outbox(job_id, "1.2.3", str(path), "BODYCOMP1", [destination])
    return index, job_id


def test_oru_accepted_by_a_real_mllp_listener_is_delivered(tmp_path: Path) -> None:
    from node.config import NodeSettings
    from node.send.hl7 import deliver_due_hl7

    with oru_receiver() as ris:
        index, _ = queued_oru(tmp_path, f"127.0.0.1:{ris.port}")
        assert deliver_due_hl7(index, NodeSettings()) == 1
        [message] = ris.received()
    assert str(message.segment("MSH")[10]) == "BODYCOMP1"
    assert index.hl7_outbox_counts() == {"delivered": 1}


def test_oru_rejected_with_ar_is_dead_lettered_at_once_and_shown_by_status(tmp_path: Path) -> None:
    from node.config import NodeSettings
    from node.operate.status import read_status
    from node.send.hl7 import deliver_due_hl7

    with oru_receiver("AR") as ris:
        index, _ = queued_oru(tmp_path, f"127.0.0.1:{ris.port}")
        assert deliver_due_hl7(index, NodeSettings()) == 0
    assert index.hl7_outbox_counts() == {"dead": 1}
    index.close()
    report = read_status(NodeSettings(data_dir=tmp_path))
    [dead] = report["hl7_dead_letters"]
    assert dead["control_id"] == "BODYCOMP1" and dead["error"].startswith("AR")


def test_oru_to_a_closed_port_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    from node.config import NodeSettings
    from node.send.hl7 import deliver_due_hl7

    index, _ = queued_oru(tmp_path, f"127.0.0.1:{free_port()}")
    assert deliver_due_hl7(index, NodeSettings(send_retry_seconds=5)) == 0
    [row] = index.hl7_outbox_rows()
    assert (row["state"], row["attempts"]) == ("pending", 1) and "cannot connect" in row["last_error"]
    assert row["next_try"] > time.time()
    # queued an hour ago with a 36 s give-up time: the next failure dead-letters it
    give_up = NodeSettings(send_retry_seconds=5, send_give_up_hours=0.01)
    with index.transaction() as db:
        db.execute("UPDATE hl7_outbox SET next_try=0, created=?", (time.time() - 3600,))
    deliver_due_hl7(index, give_up)
    assert index.hl7_outbox_counts() == {"dead": 1}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hl7_destinations": "ris.example"}, "not HOST:PORT"),
        ({"site_table_key": "mrn"}, "patient_id or accession_number"),
        ({"hl7_port": "11112"}, "must differ"),
        ({"hl7_max_age_days": "0"}, "out of range"),
    ],
)
def test_hl7_settings_are_validated(overrides: dict[str, str], message: str) -> None:
    from node.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=message):
        load_settings(environ={f"BODYCOMP_{k.upper()}": v for k, v in overrides.items()})


def test_hl7_settings_from_the_environment() -> None:
    from node.config import load_settings

    node = load_settings(
        environ={
            "BODYCOMP_HL7_PORT": "2575",
            "BODYCOMP_HL7_DESTINATIONS": "127.0.0.1:2576,[::1]:2577",
            "BODYCOMP_SITE_TABLE": "/srv/heights.csv",
            "BODYCOMP_SITE_TABLE_KEY": "accession_number",
        }
    ).node
    assert node.hl7_port == 2575 and node.hl7_host == "127.0.0.1"
    assert node.hl7_destinations == ("127.0.0.1:2576", "[::1]:2577")
    assert node.site_table == Path("/srv/heights.csv") and node.site_table_key == "accession_number"
