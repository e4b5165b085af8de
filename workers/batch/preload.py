"""Imported once by the batch's forkserver: the analysis code, so each study's fresh process has it.

Why a module: :func:`multiprocessing.set_forkserver_preload` takes module names, and importing
this one runs :func:`workers.warmup.preload` (what the node's worker does before forking its
analysis children). Every process forked for a study then starts with the pipeline, its engines,
the encoders and their libraries imported (copy-on-write), instead of paying ~1.5 s of imports.
"""

from __future__ import annotations

from workers.batch import run as _run  # noqa: F401  (the pool's task function, unpickled by name)
from workers.warmup import preload

preload()
