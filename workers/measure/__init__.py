"""Measuring: body-composition metrics from the tissue labels, the cited cut-off rule sets
they use, and the QC verdict a reader acts on. (The HU presets that define the tissues belong
to the segmentation: :mod:`workers.tissues.presets`.)
"""
