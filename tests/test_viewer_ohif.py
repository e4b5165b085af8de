"""The outputs in a real viewer: OHIF 3.13 over Orthanc's DICOMweb, in headless Chromium.

The real pipeline analyses the CT derived from ../shared/data (``write_dicom=True``); Orthanc with
its DICOMweb plugin holds the CT series, the SEG, the SR and the overlay; OHIF's prebuilt app
(npm ``@ohif/app``, cached in .cache/ohif) is served same-origin by tests/ohif_server.py; Playwright
drives Debian's Chromium (never ``playwright install``). The test loads the SEG (hydrated onto the
CT), the SR (hydrated into live measurements) and the overlay, takes screenshots into its tmp
folder, and asserts what the page shows: segment labels, the report's areas and mean HU, the
tissue colours at pixels known to be muscle and subcutaneous fat (so a flipped or shifted overlay
fails), and no error page.

Run only this: ``./scripts/test.sh -m viewer`` (or ``pytest -m viewer`` in the venv); set
``BODYCOMP_VIEWER_SCREENSHOTS=/some/folder`` to keep the screenshots there.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from tests.ohif_server import ohif_dist, serving_ohif
from tests.orthanc import running_orthanc
from workers.encode.codes import TISSUES
from workers.pipeline import AnalysisOptions, PatientOverrides, analyse

CHROMIUM = Path("/usr/bin/chromium")
SEGMENT_LABELS = {f"L3 {t.name}" for t in TISSUES}


def _launch(playwright: Any) -> Any:
    if not CHROMIUM.exists():
        pytest.fail("Chromium (Debian package chromium) is required: run ./scripts/test.sh")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)


def _wait(page: Any, script: str, timeout_s: float = 60) -> Any:
    return page.wait_for_function(script, timeout=timeout_s * 1000)


def _wait_drawn(page: Any, text: str, timeout_s: float = 60) -> None:
    """Wait until annotation text containing ``text`` is drawn in the active viewport.

    OHIF sometimes adds the SR's annotations after the viewport's last render and shows them only
    at the next one (any mouse move would do): nudge a render every few seconds.
    """
    script = f"() => [...document.querySelectorAll('svg text')].some(t => t.textContent.includes({text!r}))"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            page.wait_for_function(script, timeout=3000)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            page.evaluate(
                """() => {
                    const s = window.services;
                    const id = s.viewportGridService.getActiveViewportId();
                    s.cornerstoneViewportService.getCornerstoneViewport(id)?.render();
                }"""
            )


def _interior_points(mask: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` (row, col) pixels well inside ``mask`` (eroded twice), reproducibly chosen."""
    inner = ndimage.binary_erosion(mask, iterations=2)
    points = np.argwhere(inner)
    assert len(points), "tissue too thin to sample"
    chosen = np.random.default_rng(seed).choice(len(points), size=min(n, len(points)), replace=False)
    return points[chosen]


def _world(ct: pydicom.Dataset, points_rc: np.ndarray) -> list[list[float]]:
    """LPS position of pixel centres (row, col) of the CT image ``ct``."""
    origin = np.asarray(ct.ImagePositionPatient, float)
    row_dir = np.asarray(ct.ImageOrientationPatient[:3], float)
    col_dir = np.asarray(ct.ImageOrientationPatient[3:], float)
    dr, dc = (float(v) for v in ct.PixelSpacing)
    world = origin + points_rc[:, 1:2] * dc * row_dir + points_rc[:, 0:1] * dr * col_dir
    return world.tolist()


def _screen_colours(page: Any, screenshot: Path, world: list[list[float]]) -> np.ndarray:
    """RGB of the screenshot at the canvas positions of the given patient (LPS) points."""
    from PIL import Image

    positions = page.evaluate(
        """(points) => {
            const s = window.services;
            const id = s.viewportGridService.getActiveViewportId();
            const viewport = s.cornerstoneViewportService.getCornerstoneViewport(id);
            const box = viewport.element.getBoundingClientRect();
            return points.map(p => {
                const [x, y] = viewport.worldToCanvas(p);
                return [box.left + x, box.top + y];
            });
        }""",
        world,
    )
    image = np.asarray(Image.open(screenshot).convert("RGB")).astype(int)
    return np.array([image[round(y), round(x)] for x, y in positions])


@pytest.fixture(scope="module")
def pipeline_outputs(
    example_ct_derived_dicom: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("viewer_analysis")
    options = AnalysisOptions(
        write_dicom=True, patient=PatientOverrides(height_m=1.72, weight_kg=70, sex="M")
    )
    result = analyse(example_ct_derived_dicom, options, out)
    return result, out


def test_seg_for_a_grid_1_bit_frames_cannot_fill_is_occupancy_with_the_same_masks(
    pipeline_outputs: tuple[dict[str, Any], Path],
) -> None:
    """The derived CT is 101 × 122: BINARY frames would not start on byte boundaries (see seg.py)."""
    import highdicom as hd

    result, out = pipeline_outputs
    seg = hd.seg.segread(out / "dicom" / "seg.dcm")
    assert (seg.Rows * seg.Columns) % 8 != 0
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "OCCUPANCY"
    assert {int(v) for v in np.unique(seg.pixel_array)} <= {0, int(seg.MaximumFractionalValue)}
    labels = np.load(out / "l3_labels.npy")
    l3_uid = result["slices"][len(result["slices"]) // 2]["sop_instance_uid"]
    masks = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[l3_uid], segment_numbers=[1, 2, 3, 4], combine_segments=False
    )[0]
    for index in range(4):
        np.testing.assert_array_equal(masks[..., index] > 0, labels == index + 1)


@pytest.mark.viewer
@pytest.mark.slow
@pytest.mark.network
def test_ohif_shows_seg_sr_and_overlay_over_the_right_anatomy(
    pipeline_outputs: tuple[dict[str, Any], Path], example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    try:
        from playwright import sync_api
    except ImportError as exc:
        pytest.fail(f"playwright is missing ({exc}): it is a test dependency, pip install -e '.[test]'")
    result, out = pipeline_outputs
    shots = tmp_path / "screenshots"
    shots.mkdir()
    dicom_out = out / "dicom"
    ct_files = sorted(p for p in example_ct_derived_dicom.iterdir() if p.is_file())
    l3_uid = result["slices"][len(result["slices"]) // 2]["sop_instance_uid"]
    l3_ct = next(
        ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files)
        if ds.SOPInstanceUID == l3_uid
    )
    labels = np.load(out / "l3_labels.npy")
    errors: list[str] = []
    start = time.monotonic()

    with (
        running_orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc,
        serving_ohif(ohif_dist(), orthanc.http_port) as ohif,
        sync_api.sync_playwright() as playwright,
    ):
        for path in [*ct_files, *(dicom_out / f"{n}.dcm" for n in ("seg", "sr", "overlay"))]:
            orthanc.upload(path)
        browser = _launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(ohif.viewer_url(str(l3_ct.StudyInstanceUID)))
            _wait(page, "() => window.services?.displaySetService?.getActiveDisplaySets().length >= 4")
            page.get_by_text("Skip all").click(timeout=30_000)  # the guided tour of the basic viewer

            # SEG: double-click, confirm hydration; OHIF jumps to the segmented (L3) slice.
            page.locator('[data-cy="study-browser-thumbnail-no-image"]', has_text="SEG").dblclick()
            page.locator('[data-cy="yes-hydrate-btn"]').click(timeout=60_000)
            _wait(page, "() => window.services.segmentationService.getSegmentations().length > 0")
            segments = page.evaluate(
                """() => window.services.segmentationService.getSegmentations().flatMap(
                    s => Object.values(s.segments).filter(Boolean).map(g => g.label))"""
            )
            assert set(segments) == SEGMENT_LABELS
            page.locator('[data-cy="panelSegmentation-btn"]').click()
            for label in SEGMENT_LABELS:  # the segmentation panel lists them
                page.get_by_text(label, exact=True).first.wait_for(timeout=20_000)
            page.wait_for_timeout(2500)  # let the labelmap render in the resized viewport
            shown = page.evaluate(
                """() => {
                    const s = window.services;
                    const id = s.viewportGridService.getActiveViewportId();
                    return s.cornerstoneViewportService.getCornerstoneViewport(id).getCurrentImageId();
                }"""
            )
            assert l3_uid in shown, f"the viewer is not on the L3 slice: {shown}"
            seg_shot = shots / "ohif-seg-l3.png"
            page.screenshot(path=str(seg_shot))

            # Colours at pixels deep inside SM (orange) and SAT (blue): right anatomy, not flipped.
            for label, dominant in ((1, "orange"), (4, "blue")):
                colours = _screen_colours(
                    page, seg_shot, _world(l3_ct, _interior_points(labels == label, 30, label))
                )
                r, b = colours[:, 0], colours[:, 2]
                ok = (r > b + 25) if dominant == "orange" else (b > r + 25)
                assert ok.mean() >= 0.8, f"label {label}: {colours.tolist()}"

            # SR: double-click. OHIF first draws the report read-only, labelled with its own values.
            page.locator('[data-cy="study-browser-thumbnail-no-image"]', has_text="SR").dblclick()
            hydrate = page.locator('[data-cy="yes-hydrate-btn"]')
            hydrate.wait_for(timeout=60_000)
            _wait_drawn(page, "Area")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(shots / "ohif-sr-report.png"))
            drawn = " ".join(page.locator("svg text").all_text_contents())
            for tissue in TISSUES:
                assert f"Area: {result['tissues'][tissue.key]['area_cm2']:.2f} cm2" in drawn, drawn
            # Then "track measurements": hydrated into live OHIF measurements. Each tissue is a
            # labelled point (ArrowAnnotate) whose text is the report's own values: an outline would
            # have its area and mean recomputed by OHIF from the one contour it drew (#21).
            hydrate.click()
            _wait(page, "() => window.services.measurementService.getMeasurements().length >= 4")
            live = page.evaluate(
                """() => window.services.measurementService.getMeasurements()
                    .map(m => ({tool: m.toolName, label: m.label || ''}))"""
            )
            assert {m["tool"] for m in live} == {"ArrowAnnotate"}, live
            for tissue in TISSUES:
                measured = result["tissues"][tissue.key]
                label = f"{measured['area_cm2']:.2f} cm2, mean {measured['mean_hu']:.1f} HU"
                assert any(label in m["label"] for m in live), (label, live)
            report = page.evaluate(
                """() => window.services.displaySetService.getActiveDisplaySets()
                    .filter(d => d.Modality === 'SR')
                    .flatMap(d => (d.measurements || []).flatMap(m => m.labels || []))"""
            )
            values: dict[str, list[float]] = {}
            for item in report:
                number = re.match(r"\s*(-?\d+(?:\.\d+)?)", str(item.get("value", "")))
                if number:
                    values.setdefault(str(item.get("label")), []).append(float(number.group(1)))
            for tissue in TISSUES:
                measured = result["tissues"][tissue.key]
                assert any(abs(v - measured["area_cm2"]) < 0.01 for v in values["Area"]), values
                assert any(abs(v - measured["mean_hu"]) < 0.01 for v in values["Attenuation Coefficient"])
            page.locator('[data-cy="trackedMeasurements-btn"]').click()
            page.wait_for_timeout(2000)
            page.screenshot(path=str(shots / "ohif-sr-measurements.png"))
            # every number the panel shows is the report's: no area or mean of OHIF's own
            panel = page.inner_text("body")
            assert "mm²" not in panel and "mm2" not in panel, panel
            for tissue in TISSUES:
                assert f"{result['tissues'][tissue.key]['area_cm2']:.2f} cm2" in panel, panel
            # and the QC verdict, from the SR alone (#21: only the overlay picture said it)
            assert result["qc"]["status"] == "review" and "(QC: review)" in panel, panel

            # The overlay picture (secondary capture) in the viewport.
            page.locator('[data-cy="study-browser-thumbnail"]', has_text="OT").dblclick()
            _wait(
                page,
                """() => {
                    const s = window.services;
                    const id = s.viewportGridService.getActiveViewportId();
                    const uids = s.viewportGridService.getDisplaySetsUIDsForViewport(id) || [];
                    return uids.some(u => s.displaySetService.getDisplaySetByUID(u)?.Modality === 'OT');
                }""",
            )
            page.wait_for_timeout(2000)
            page.screenshot(path=str(shots / "ohif-overlay.png"))

            body = page.inner_text("body")
            assert "Something went wrong" not in body
            assert "Error loading" not in body
        except Exception:
            page.screenshot(path=str(shots / "failure.png"))
            raise
        finally:
            browser.close()
    assert not errors, errors
    print(f"viewer test: {time.monotonic() - start:.1f} s; screenshots in {shots}")
    keep = os.environ.get("BODYCOMP_VIEWER_SCREENSHOTS")  # a folder to keep the screenshots in
    if keep:
        shutil.copytree(shots, Path(keep), dirs_exist_ok=True)
