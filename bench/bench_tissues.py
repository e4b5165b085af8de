#!/usr/bin/env python
"""Benchmark: time to segment one 512×512 slice and compute its metrics, on one core.

Why: the node must stay well under a second per slice on modest hardware. Inputs: a synthetic
abdomen phantom (0.8 mm) and the real example_ct L3 slice resampled from 3 mm to 512×512 (≈0.7 mm),
so the real anatomy is exercised at a clinical matrix size. Prints median and max over repeats.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.phantoms import make_abdomen  # noqa: E402
from workers.measure.composition import tissue_stats, waist_circumference_cm  # noqa: E402
from workers.pictures.overlay import render_overlay  # noqa: E402
from workers.tissues.engine import get_segmenter  # noqa: E402
from workers.tissues.presets import get_preset  # noqa: E402

CT = Path("/work/shared/data/example_ct/example_ct.nii.gz")


def _cases() -> list[tuple[str, np.ndarray, tuple[float, float]]]:
    ph = make_abdomen(noise_sd=12.0, spacing_yx_mm=(0.8, 0.8))
    cases = [("phantom 512x512 @0.8 mm", ph.hu, ph.spacing_yx_mm)]
    if CT.exists():
        import nibabel
        from scipy import ndimage as ndi

        a = np.asarray(nibabel.load(str(CT)).dataobj)
        sl = np.ascontiguousarray(a.transpose(2, 1, 0)[74, ::-1, ::-1]).astype(np.float32)
        zoom = (512 / sl.shape[0], 512 / sl.shape[1])
        big = ndi.zoom(sl, zoom, order=1).astype(np.int16)
        cases.append(("example_ct L3 resampled 512x512", big, (3.0 / zoom[0], 3.0 / zoom[1])))
        cases.append(("example_ct L3 native 101x122 @3 mm", sl.astype(np.int16), (3.0, 3.0)))
    return cases


def main(repeats: int = 7) -> int:
    seg = get_segmenter("classical")
    preset = get_preset()
    for name, hu, sp in _cases():
        seg.segment(hu, sp, preset)  # warm-up (imports, caches)
        t_seg, t_all, t_png = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = seg.segment(hu, sp, preset)
            t1 = time.perf_counter()
            tissue_stats(hu, out.labels, sp)
            waist_circumference_cm(hu, out.body_mask, sp)
            t2 = time.perf_counter()
            render_overlay(hu, out.labels, sp, None, None, peritoneal_contour_px=out.peritoneal_contour_px)
            t3 = time.perf_counter()
            t_seg.append(t1 - t0)
            t_all.append(t2 - t0)
            t_png.append(t3 - t2)
        print(
            f"{name:38s} segment median {statistics.median(t_seg):.3f} s (max {max(t_seg):.3f}); "
            f"+metrics {statistics.median(t_all):.3f} s; overlay {statistics.median(t_png):.3f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
