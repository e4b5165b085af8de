"""Measuring: body-composition metrics from the tissue labels, the HU presets and the cited
cut-off rule sets they use, and the QC verdict a reader acts on.
"""
