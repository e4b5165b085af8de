"""Import, once in the worker's main process, everything an analysis would import on first use.

Each analysis runs in a fresh Celery child process (``max_tasks_per_child`` = 1 by default, so
that the memory of a 1,000-slice study goes back to the system after it). Celery's prefork pool
forks those children from the worker's main process: what the main process has imported, every
child has too, at no cost (copy-on-write pages). Much of the analysis code, and of the libraries
it calls, is imported lazily: the engines on first use (:func:`workers.l3.engine.get_localiser`),
the DICOM encoders only when writing DICOM, scikit-image's functions on attribute access
(``lazy_loader``), pydicom's SR code dictionaries with highdicom, Pillow's image plug-ins when a
picture is written or a JPEG 2000 preview decoded. Without this module every study paid for those
imports again, about 1.5 s on the benchmark machine on top of a 4-5 s analysis of 500 slices
(``docs/benchmarks.md``). ``tests/test_warmup.py`` runs an analysis after :func:`preload` and
fails if it still imports a module of these packages, so the list cannot silently go stale.
"""

from __future__ import annotations

import importlib
import time

#: ``module`` or ``module:attribute`` (an attribute for packages that load their functions lazily).
ANALYSIS_IMPORTS: tuple[str, ...] = (
    # the pipeline and both default engines
    "workers.pipeline",
    "workers.load.dicom",
    "workers.load.preview",
    "workers.l3.classical",
    "workers.tissues.classical",
    # the DICOM encoders (SEG, SR, SC) and highdicom with pydicom's SR dictionaries
    "workers.encode",
    "workers.encode.uids",
    "highdicom.seg",
    "highdicom.sr",
    "highdicom.sc",
    "pydicom.sr.codedict",
    # scikit-image and SciPy functions the engines call
    "skimage.measure:find_contours",
    "skimage.measure:regionprops",
    "skimage.measure:label",
    "skimage.measure:approximate_polygon",  # pulls in scipy.signal, .stats, .optimize (~0.5 s)
    "skimage.segmentation:watershed",
    "skimage.morphology:convex_hull_image",
    "skimage.draw:polygon",
    "scipy.ndimage",
    # pictures (PNG overlay and QC image) and the reduced-resolution JPEG 2000 decode
    "PIL.PngImagePlugin",
    "PIL.Jpeg2KImagePlugin",
    "PIL.ImageDraw",
    "PIL.ImageFont",
    "PIL.BmpImagePlugin",  # Image.open() of a JPEG 2000 frame registers these formats first
    "PIL.GifImagePlugin",
    "PIL.JpegImagePlugin",
    "PIL.PpmImagePlugin",
    # pixel decoders for compressed transfer syntaxes
    "pydicom.pixels.decoders",
    "pydicom.pixels.decoders.pylibjpeg",
)


def preload(imports: tuple[str, ...] = ANALYSIS_IMPORTS) -> float:
    """Import ``imports``; return the seconds it took (logged by the worker at start).

    A name that cannot be imported is an installation error the first analysis would hit too;
    it is raised here, at worker start, where the operator sees it at once.
    """
    start = time.perf_counter()
    for entry in imports:
        module_name, _, attribute = entry.partition(":")
        module = importlib.import_module(module_name)
        if attribute:
            getattr(module, attribute)
    return time.perf_counter() - start
