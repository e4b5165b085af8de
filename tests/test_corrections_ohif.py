"""A reader marks another slice in OHIF and the corrected results come back (issue #23).

Everything real, on loopback: DCMTK storescu sends the CT to Orthanc (DICOMweb plugin and the
routing recipe of ``deploy/orthanc/``), Orthanc routes it to ``bodycomp serve``, the results come
back into the study. Then a scripted reader opens the study in OHIF 3.13 (headless Chromium,
Playwright), goes three slices up, draws an arrow labelled ``L3`` with OHIF's Annotation tool and
saves with OHIF's own "Create SR" (Create Report → Save: STOW-RS into Orthanc). Orthanc's recipe
routes the reader's SR to the node, which analyses the marked slice (method ``manual``) and sends a
new SEG, SR and overlay into the same study; the new SR names the one it supersedes and the slice.

OHIF 3.13 shows "Create SR" only when the study has a measurement that is not a point (an arrow
alone is an "additional finding" and the panel then has no actions): the reader also measures
the vertebral body with the Length tool, as a reader checking the level would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.ohif_server import ohif_dist, serving_ohif
from tests.orthanc import running_orthanc
from tests.test_corrections import analysed_slice, by_z, identity, predecessor, texts
from tests.test_corrections_orthanc import instances
from tests.test_node_orthanc import LUA
from tests.test_node_support import copy_study, free_port, start_node, storescu, study_status, wait_for
from tests.test_viewer_ohif import _launch, _wait
from tests.timing import quiet_period

pytestmark = [pytest.mark.viewer, pytest.mark.network, pytest.mark.slow]

#: The series OHIF's Create Report dialog is told to write.
REPORT_NAME = "Reader L3 level"


def _viewport(page: Any, script: str, arg: Any = None) -> Any:
    """Evaluate ``script`` (a function of the active Cornerstone viewport and ``arg``) in the page."""
    return page.evaluate(
        f"""(arg) => {{
            const s = window.services;
            const id = s.viewportGridService.getActiveViewportId();
            const viewport = s.cornerstoneViewportService.getCornerstoneViewport(id);
            return ({script})(viewport, arg);
        }}""",
        arg,
    )


def _drag(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move((start[0] + end[0]) / 2, (start[1] + end[1]) / 2, steps=5)
    page.mouse.move(*end, steps=5)
    page.mouse.up()


def mark_l3_in_ohif(page: Any, viewer_url: str, target_uid: str, shots: Path) -> None:
    """The reader: open the study, go to ``target_uid``, arrow "L3", a Length, Create SR → Save."""
    page.goto(viewer_url)
    _wait(page, "() => window.services?.displaySetService?.getActiveDisplaySets().length >= 4")
    page.get_by_text("Skip all").click(timeout=30_000)  # the guided tour of the basic viewer
    _wait(
        page,
        "() => !!window.services.cornerstoneViewportService.getCornerstoneViewport("
        "window.services.viewportGridService.getActiveViewportId())?.getImageIds().length",
    )
    index = _viewport(page, "(v, uid) => v.getImageIds().findIndex(i => i.includes(uid))", target_uid)
    assert index >= 0, "the marked slice is not in the viewport's series"
    _viewport(page, "(v, k) => v.setImageIdIndex(k)", index)  # the reader scrolls there
    _wait(
        page,
        f"() => window.services.cornerstoneViewportService.getCornerstoneViewport("
        f"window.services.viewportGridService.getActiveViewportId()).getCurrentImageId().includes({target_uid!r})",
    )
    box = page.locator('[data-cy="viewport-pane"]').first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    page.locator('[data-cy="MeasurementTools-split-button-secondary"]').click()
    page.locator('[data-cy="ArrowAnnotate"]').click()
    _drag(page, (cx - 80, cy - 80), (cx, cy))
    page.locator('[data-cy="dialog-input"]').fill("L3")
    page.locator('[data-cy="input-dialog-save-button"]').click()
    page.get_by_role("button", name="Yes", exact=True).click(timeout=30_000)  # track measurements

    page.locator('[data-cy="MeasurementTools-split-button-secondary"]').click()
    page.locator('[data-cy="Length"]').click()
    _drag(page, (cx - 30, cy + 60), (cx + 30, cy + 60))
    page.locator('[data-cy="trackedMeasurements-btn"]').click()
    page.screenshot(path=str(shots / "ohif-reader-marks-l3.png"))
    page.get_by_role("button", name="Create SR").click(timeout=30_000)
    page.get_by_placeholder("Report name").fill(REPORT_NAME)
    page.get_by_role("button", name="Save", exact=True).click()
    page.get_by_text("saved successfully").first.wait_for(timeout=60_000)
    page.screenshot(path=str(shots / "ohif-reader-saved.png"))


def test_a_reader_marks_another_slice_in_ohif_and_the_corrected_results_arrive(
    example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    slices = by_z(files)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    node_port = free_port()
    data = tmp_path / "data"
    errors: list[str] = []
    with (
        running_orthanc(
            tmp_path / "orthanc",
            modalities={"bodycomp": ["BODYCOMP", "127.0.0.1", node_port]},
            dicomweb=True,
            LuaScripts=[str(LUA)],
            StableAge=2,
        ) as orthanc,
        serving_ohif(ohif_dist(), orthanc.http_port) as ohif,
        sync_api.sync_playwright() as playwright,
    ):
        node = start_node(
            data,
            "--destination",
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "--allow-ae",
            "ORTHANC",
            port=node_port,
        )
        browser = _launch(playwright)
        try:
            assert "Failed" not in storescu(orthanc.dicom_port, files, called=orthanc.ae_title)
            wait_for(
                "the first results in Orthanc",
                lambda: (
                    len(instances(orthanc, study_uid, "SR")) == 1
                    and len(instances(orthanc, study_uid, "SEG")) == 1
                    and len(instances(orthanc, study_uid, "OT")) == 1
                ),
                120,
                node.log,
            )
            [first_sr] = instances(orthanc, study_uid, "SR")
            [first_seg] = instances(orthanc, study_uid, "SEG")
            auto = analysed_slice(first_seg)
            k = [uid for _, uid in slices].index(auto)
            target = slices[k + 3][1]

            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            try:
                mark_l3_in_ohif(page, ohif.viewer_url(study_uid), target, shots)
            except Exception:
                page.screenshot(path=str(shots / "failure.png"))
                raise
            reader = [ds for ds in instances(orthanc, study_uid, "SR") if ds.SeriesDescription == REPORT_NAME]
            assert len(reader) == 1, "OHIF stored the reader's SR in Orthanc"

            def corrected() -> list[pydicom.Dataset]:
                return [
                    ds
                    for ds in instances(orthanc, study_uid, "SR")
                    if ds.get("Manufacturer") == "bodycomp" and ds.SOPInstanceUID != first_sr.SOPInstanceUID
                ]

            [new_sr] = wait_for("the corrected SR in Orthanc", corrected, 180, node.log)
            wait_for(
                "the corrected SEG and overlay in Orthanc",
                lambda: (
                    len(instances(orthanc, study_uid, "SEG")) == 2
                    and len(instances(orthanc, study_uid, "OT")) == 2
                ),
                60,
                node.log,
            )
            new_seg = next(
                ds
                for ds in instances(orthanc, study_uid, "SEG")
                if ds.SOPInstanceUID != first_seg.SOPInstanceUID
            )
            assert analysed_slice(new_seg) == target
            assert predecessor(new_sr) == identity(first_sr)
            said = texts(new_sr)
            assert "How the L3 level was found: manual" in said, said
            assert any(
                "analysed slice corrected by reader SR" in t and str(reader[0].SOPInstanceUID) in t
                for t in said
            ), said
            assert any(target in t for t in said if t.startswith("Slice analysed")), said
            study = study_status(data, study_uid)
            assert study is not None and [j["state"] for j in study["jobs"]] == ["superseded", "done"]
            # the node's new results, stored in Orthanc, are not routed back: nothing more happens
            quiet_period(2 + 1.5 + 4)
            routed = [
                line.split("routed stable ")[1].split()[0]
                for line in orthanc.log.read_text().splitlines()
                if "bodycomp: routed stable" in line
            ]
            assert sorted(routed) == ["CT", "SR"], routed  # the reader's SR; never the node's own
            study = study_status(data, study_uid)
            assert study is not None and len(study["jobs"]) == 2 and study["state"] == "done"
        finally:
            browser.close()
            node.stop()
    assert not errors, errors
