"""``bodycomp status`` says per study what a reader or operator asks first (#21): the level and how
sure, the QC verdict and its reasons, the numbers, the times, where the results are and where they
went, in text and ``--json``. Run on the node's own index and job folders, as the CLI does."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from node.config import NodeSettings
from node.operate.status import format_status, read_status
from node.schedule import results
from node.schedule.dispatch import dispatch_study
from node.store.index import Index
from tests.clock import claim_after_idle
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.index_records import record_file
from tests.result_documents import measured_result
from workers.jsonfile import write_json
from workers.load.selection import SelectionPolicy

RESULT = measured_result()
RESULT["status"] = "review"
RESULT["l3"].update(method="ribs", confidence=0.364, manual=False)
RESULT["slices"] = [{"slice_index": 10, "z_mm": -371.0, "sop_instance_uid": "1.2.3"}]
RESULT["qc"] = {
    "status": "review",
    "flags": ["l3_low_confidence"],
    "reasons": ["L3 level: low confidence (0.36)"],
}
for _key, _area in (("skeletal_muscle", 135.36), ("imat", 4.5), ("vat", 80.1), ("sat", 150.2)):
    RESULT["tissues"][_key]["area_cm2"] = _area
RESULT["tissues"]["skeletal_muscle"]["mean_hu"] = 38.2
RESULT["metrics"]["smi_cm2_m2"] = None
RESULT["metrics"]["reasons"] = {"smi_cm2_m2": "height missing"}
RESULT["timings_s"] = {"load": 0.5, "l3": 1.0, "segment": 0.7}


def test_status_shows_level_verdict_numbers_times_folder_and_deliveries(tmp_path: Path) -> None:
    node = NodeSettings(
        data_dir=tmp_path / "data",
        destinations=("PACS@127.0.0.1:104", "ARCHIVE@127.0.0.1:105"),
        return_to_sender=False,
    )
    index = Index(node.index_path)
    g = axial_geometry(n_slices=4)
    options = SeriesOptions()
    paths = write_series(
        node.spool_dir / "studies" / options.study_uid / options.series_uid,
        sample(block_phantom(), g),
        g,
        options,
    )
    for path in paths:
        record_file(index, path, "CT1", now=0)
    published: list[dict[str, object]] = []
    [stable] = claim_after_idle(index)
    dispatch_study(stable, index, node, SelectionPolicy(), published.append)
    [spec] = published
    job_dir = node.data_dir / str(spec["job_dir"])
    (job_dir / "out" / "dicom").mkdir(parents=True)
    shutil.copy(paths[0], job_dir / "out" / "dicom" / "sr.dcm")  # (any DICOM file: the outbox reads its UIDs)
    write_json(job_dir / "out" / "result.json", RESULT)
    write_json(job_dir / "started.json", {"attempts": 1, "time": 100.0})
    write_json(
        job_dir / "outcome.json",
        {"state": "done", "reason": "", "attempts": 1, "outputs": ["out/dicom/sr.dcm"], "finished": 103.5},
    )
    results.collect(index, node)
    index.close()

    report = read_status(node)
    [study] = report["studies"]
    [job] = study["jobs"]
    assert job["result"]["status"] == "review" and job["result"]["level_confidence"] == 0.364
    assert job["result"]["areas_cm2"]["skeletal_muscle"] == 135.36
    assert job["result_folder"] == str(job_dir / "out")
    assert study["deliveries"] == {
        "ARCHIVE@127.0.0.1:105": {"pending": 1},
        "PACS@127.0.0.1:104": {"pending": 1},
    }
    json.dumps(report)  # what --json prints
    text = format_status(report)
    for shown in (
        "L3 at z -371.0 mm (ribs, confidence 0.36); QC review: L3 level: low confidence (0.36)",
        "SM 135.4 cm2 (38.2 HU), IMAT 4.5, VAT 80.1, SAT 150.2 cm2; SMI n/a (height missing)",
        "ran 3.5 s (analysis 2.2 s); results in " + str(job_dir / "out"),
        "to PACS@127.0.0.1:104: pending 1",
        "to ARCHIVE@127.0.0.1:105: pending 1",
    ):
        assert shown in text, text
