"""The L3 QC picture: written, proportioned in millimetres, and marks the chosen slice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests import l3_helpers as l3h
from workers.l3.engine import get_localiser
from workers.pictures.level import render_l3_qc


def _red_rows(img: np.ndarray) -> np.ndarray:
    r, g, b = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    return np.nonzero(((r > 200) & (g < 90) & (b < 90)).sum(axis=1) > img.shape[1] // 3)[0]


def test_qc_found(tmp_path: Path) -> None:
    hu, z, sp = l3h.load_example()
    r = get_localiser().locate(hu, z, sp)
    out = render_l3_qc(hu, z, sp, r, tmp_path / "qc" / "l3_qc.png", title="example_ct")
    img = np.asarray(Image.open(out).convert("RGB"))
    rows = _red_rows(img)
    assert rows.size, "chosen-slice line missing"
    # Superior at the top and true proportions: the line sits where z puts it. The panels start
    # 24 px below the top; the scale is (panel height) / (z extent in mm).
    z_ext = float(z[-1] - z[0])
    panel_h = round((z_ext + 1.0) * _scale(img, z_ext))
    frac = (float(rows.mean()) - 24.0) / panel_h
    expected = (z[-1] - r.z_mm) / z_ext
    assert abs(frac - expected) < 0.03, (frac, expected)


def _scale(img: np.ndarray, z_ext: float) -> float:
    # Panels occupy rows [24, 24 + panel_h); find panel_h from the first caption-coloured row.
    body = img[24:, 8]
    dark = np.nonzero(np.all(body == 16, axis=1))[0]
    panel_h = int(dark[0]) if dark.size else img.shape[0] - 24
    return panel_h / (z_ext + 1.0)


def test_qc_not_found(tmp_path: Path) -> None:
    hu, z, sp = l3h.load_example()
    h, zz = l3h.crop(hu, z, 82, 111)
    r = get_localiser().locate(h, zz, sp)
    assert not r.found
    out = render_l3_qc(h, zz, sp, r, tmp_path / "nf.png")
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[0] > 100 and img.shape[1] >= 900
    assert _red_rows(img).size == 0  # no chosen-slice line when nothing was chosen
