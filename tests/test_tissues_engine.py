"""Segmenter interface, registry and overlay rendering."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.phantoms import make_abdomen
from workers.errors import UnknownNameError
from workers.measure.composition import PatientInputs, compute_result, tissue_stats
from workers.pictures.overlay import (
    ALPHA,
    PANEL_W,
    QC_CHARS,
    TARGET_PX,
    TISSUE_COLOURS,
    qc_lines,
    render_overlay,
)
from workers.tissues import engine
from workers.tissues.engine import (
    TissueSegmentation,
    TissueSegmenter,
    available_segmenters,
    get_segmenter,
    register_segmenter,
)
from workers.tissues.presets import get_preset


class _Dummy:
    name = "dummy"
    version = "0"

    def segment(self, hu, spacing_yx_mm, preset, context=None):  # type: ignore[no-untyped-def]
        return TissueSegmentation(np.zeros(hu.shape, np.uint8), np.zeros((0, 2)), hu > -500)


def test_registry_and_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    seg = get_segmenter()
    assert isinstance(seg, TissueSegmenter)
    assert seg.name == "classical" and "classical" in available_segmenters()
    monkeypatch.setattr(engine, "_REGISTRY", dict(engine._REGISTRY))  # the dummy leaves with the test
    assert "dummy" not in available_segmenters()
    register_segmenter("dummy", _Dummy)
    assert available_segmenters() == ["classical", "dummy"]
    dummy = get_segmenter("dummy")
    assert type(dummy) is _Dummy and isinstance(dummy, TissueSegmenter)
    assert get_segmenter("dummy") is not dummy, "a fresh instance per call, from the factory"
    assert type(get_segmenter()) is type(seg), "registering another engine leaves the default alone"
    with pytest.raises(UnknownNameError, match="'missing'; known: classical, dummy"):
        get_segmenter("missing")
    with pytest.raises(KeyError):  # a KeyError too, for mapping lookups
        get_segmenter("missing")


def test_output_contract_and_context_is_optional() -> None:
    ph = make_abdomen(spacing_yx_mm=(1.0, 1.0), shape=(384, 384))
    seg = get_segmenter()
    ctx = np.stack([ph.hu, ph.hu, ph.hu])
    a = seg.segment(ph.hu, ph.spacing_yx_mm, get_preset(), context=ctx)
    b = seg.segment(ph.hu, ph.spacing_yx_mm, get_preset())
    assert np.array_equal(a.labels, b.labels)
    assert a.labels.dtype == np.uint8 and a.labels.shape == ph.hu.shape
    c = a.peritoneal_contour_px
    assert c.ndim == 2 and c.shape[1] == 2 and len(c) > 20
    assert a.body_mask.dtype == bool
    j = a.to_json()
    assert j["segmenter"] == "classical@0.4" and j["hu_preset"] == "tomovision-l3@1"
    assert j["parameters"] == "classical-tissues@3"


def test_uniform_fat_preset_changes_vat_only_window() -> None:
    ph = make_abdomen(spacing_yx_mm=(1.0, 1.0), shape=(384, 384), noise_sd=25.0)
    seg = get_segmenter()
    t = tissue_stats(ph.hu, seg.segment(ph.hu, ph.spacing_yx_mm, get_preset()).labels, ph.spacing_yx_mm)
    u = tissue_stats(
        ph.hu, seg.segment(ph.hu, ph.spacing_yx_mm, get_preset("uniform-fat")).labels, ph.spacing_yx_mm
    )
    assert u["vat"].area_cm2 > t["vat"].area_cm2  # wider window, noisy fat
    assert abs(u["sat"].area_cm2 - t["sat"].area_cm2) < 1e-9


def test_overlay_renders_rgb_with_square_pixels(tmp_path: Path) -> None:
    ph = make_abdomen(spacing_yx_mm=(0.6, 0.9), shape=(300, 400))
    out = get_segmenter().segment(ph.hu, ph.spacing_yx_mm, get_preset())
    st = tissue_stats(ph.hu, out.labels, ph.spacing_yx_mm)
    summary = compute_result(st, PatientInputs(1.7, 60.0, "F")).to_json()
    path = tmp_path / "o.png"
    img = render_overlay(
        ph.hu, out.labels, ph.spacing_yx_mm, summary, path, peritoneal_contour_px=out.peritoneal_contour_px
    )
    assert img.mode == "RGB" and path.exists()
    again = Image.open(path)
    assert again.size == img.size
    # image part keeps the physical aspect ratio: 300*0.6 mm tall, 400*0.9 mm wide
    arr = np.asarray(img)
    assert img.height >= 300
    body_cols = np.flatnonzero((arr[:, : img.width - 360].sum(axis=2) > 60).any(axis=0))
    assert body_cols.size > 0
    # each tissue's colour is blended (ALPHA) into the grey picture at that tissue's pixels, and
    # nowhere else: compared with the same slice drawn without labels (both without the contour)
    labelled = np.asarray(render_overlay(ph.hu, out.labels, ph.spacing_yx_mm, summary), dtype=np.float64)
    bare = np.asarray(
        render_overlay(ph.hu, np.zeros_like(out.labels), ph.spacing_yx_mm, summary), dtype=np.float64
    )
    mm_per_px = max(300 * 0.6, 400 * 0.9) / TARGET_PX
    out_h, out_w = round(300 * 0.6 / mm_per_px), round(400 * 0.9 / mm_per_px)
    assert labelled.shape[:2] == (img.height, out_w + PANEL_W)
    drawn, grey = labelled[:out_h, :out_w], bare[:out_h, :out_w]
    lab = np.asarray(Image.fromarray(out.labels, "L").resize((out_w, out_h), Image.Resampling.NEAREST))
    assert set(np.unique(lab)) >= set(TISSUE_COLOURS), "the phantom has all four tissues"
    for value, col in TISSUE_COLOURS.items():
        at = lab == value
        error = np.abs(drawn[at] - ((1 - ALPHA) * grey[at] + ALPHA * np.array(col))).max(axis=1)
        assert np.mean(error <= 1.0) > 0.98, f"label {value} not drawn in {col}"  # a few under text
    unlabelled = ~np.isin(lab, list(TISSUE_COLOURS))
    assert np.mean(np.abs(drawn[unlabelled] - grey[unlabelled]).max(axis=1) == 0) > 0.98
    assert (arr[:out_h, :out_w] != drawn).any(axis=2).sum() > 100, "the peritoneal line is drawn"
    # without a summary: the same picture, the panel's values n/a instead of the numbers
    plain = np.asarray(render_overlay(ph.hu, out.labels, ph.spacing_yx_mm, None, None), dtype=np.float64)
    assert np.array_equal(plain[:out_h, :out_w], drawn)
    assert not np.array_equal(plain[:, out_w:], labelled[:, out_w:])
    # long QC reasons wrap, whole, and the panel grows to hold them (#21: one was cut off)
    reasons = [
        "contrast agent recorded (GASTRO & OMNI): muscle attenuation is enhanced, compare with care",
        "L3 level: low confidence (0.36), found from the ribs only; check the level on the sagittal view",
    ]
    lines = qc_lines(reasons)
    assert " ".join(part.strip() for part in lines) == " ".join(reasons)
    assert all(len(text) <= QC_CHARS for text in lines)
    wrapped = render_overlay(
        ph.hu,
        out.labels,
        ph.spacing_yx_mm,
        summary,
        None,
        qc={"status": "review", "flags": [], "reasons": reasons * 2},
    )
    assert wrapped.height >= img.height


def test_vertebral_body_run_stops_at_the_canal_and_skips_the_lamina() -> None:
    """Midline profile at 3 mm: body (≥ 15 mm) → canal (6 mm) → lamina; a spinous process behind.

    The body must end before the canal even when the canal is only two pixels deep, and must be
    found when the bone component on the smoothed image starts at the lamina (disc levels).
    """
    from workers.tissues.bone import _body_run

    col = np.full(60, 20.0)
    col[10:21] = 120.0  # vertebral body, 33 mm, with one basivertebral dip
    col[15] = 40.0
    col[21:23] = 10.0  # canal: 2 pixels = 6 mm
    col[23:26] = 400.0  # lamina
    col[26:32] = 300.0  # spinous process
    raw = col.copy()
    inside = np.ones(60, dtype=bool)
    assert _body_run(col, raw, inside, v_top=10, v_bot=31, dy=3.0) == (10, 20)
    # the vertebra component missed the body and starts at the lamina: search 40 mm in front of it
    assert _body_run(col, raw, inside, v_top=23, v_bot=31, dy=3.0) == (10, 20)
    # no lamina behind any long run (a slice without a posterior arch): no answer, caller falls back
    assert _body_run(col[:21], raw[:21], inside[:21], v_top=10, v_bot=20, dy=3.0) is None


def test_every_tuned_number_of_the_tissue_engine_is_in_the_table_with_a_reason() -> None:
    """workers/tissues/params.py holds every tuned number (#20): each field carries a ``#:`` note,
    and no tissue module defines its own numeric constant beside it."""
    import ast
    import dataclasses
    import re
    from pathlib import Path

    from workers.tissues import params

    root = Path(params.__file__).parent
    source = (root / "params.py").read_text().splitlines()
    sections = [f for f in dataclasses.fields(params.TissueParams) if f.name != "name"]
    assert {f.name for f in sections} == {"body", "bone", "bowel", "wall", "posterior", "fascia", "classical"}
    for sec in sections:
        for fld in dataclasses.fields(
            sec.type if isinstance(sec.type, type) else getattr(params, str(sec.type))
        ):
            line = next(i for i, s in enumerate(source) if re.match(rf"\s+{fld.name}: ", s))
            assert source[line - 1].strip().startswith("#:"), f"{sec.name}.{fld.name} has no note"
    for module in root.glob("*.py"):
        if module.name == "params.py":
            continue
        for node in ast.parse(module.read_text()).body:
            value = node.value.operand if isinstance(getattr(node, "value", None), ast.UnaryOp) else None
            value = value if value is not None else getattr(node, "value", None)
            if isinstance(node, ast.Assign) and isinstance(value, ast.Constant):
                name = getattr(node.targets[0], "id", "")
                if isinstance(value.value, (int, float)) and not name.startswith(("LABEL_", "_")):
                    raise AssertionError(f"{module.name}: {name} = {value.value} belongs in params.py")
