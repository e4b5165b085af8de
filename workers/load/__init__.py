"""Loading: find the DICOM files, choose the series, stack its slices and decode them
into a :class:`~workers.load.volume.Volume` (or read a NIfTI file): scan → select → stack → volume.
"""
