"""Measure a whole cohort: ``bodycomp batch ROOT --out DIR`` (issue #25).

Researchers start from an export of a few hundred studies (folders of DICOM in any layout, some
NIfTI), not from a PACS. This package finds every study under a folder, analyses each with the
same :func:`workers.pipeline.analyse` the node runs, in parallel processes, resumably, and turns
the results into one table and a QC gallery a reader can work through in an afternoon:

* :mod:`~workers.batch.discover` — every study under ROOT, from headers only, with a fingerprint;
* :mod:`~workers.batch.pseudonym` — the output folder's secret key: study keys and pseudonyms;
* :mod:`~workers.batch.inputs` — the heights file and the reader's corrections;
* :mod:`~workers.batch.run` — what to analyse, the process pool, resuming, progress;
* :mod:`~workers.batch.table` — ``results.csv`` (and Parquet) from each study's ``result.json``;
* :mod:`~workers.batch.gallery` — ``gallery/index.html``, the static offline QC gallery.

The workflow and every column are in ``docs/research.md``.
"""
