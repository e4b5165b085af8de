"""What the DICOM encoders need from an analysis, as one plain object."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from workers.encode.uids import OutputIdentity
from workers.result import MeasuredResult
from workers.revision import Revision

MANUFACTURER = "bodycomp"
MODEL_NAME = "bodycomp L3 body composition"


@dataclass(frozen=True)
class EncodeInput:
    """An analysed CT slice (or a few) and the results to encode against it."""

    source_slices: Sequence[Dataset]
    """Headers of the analysed CT instances (pixel data not needed), inferior → superior."""
    labels: npt.NDArray[np.uint8]
    """(n, rows, cols) label images in each source instance's own pixel grid: 0 other, 1 SM,
    2 IMAT, 3 VAT, 4 SAT."""
    result: MeasuredResult
    """The analysis result (result.json): tissues, metrics, patient inputs, rule set, preset, QC."""
    overlay_rgb: npt.NDArray[np.uint8]
    """The colour overlay picture (rows, cols, 3) for the secondary capture."""
    identity: OutputIdentity
    version: str
    peritoneal_contour_px: npt.NDArray[np.float64] | None = None
    """(N, 2) (row, col) points of the peritoneal line on the central slice's pixel grid."""
    revision: Revision | None = None
    """This result corrects an earlier one: the SR names its predecessor and what was corrected."""

    def __post_init__(self) -> None:
        if self.labels.ndim != 3 or self.labels.shape[0] != len(self.source_slices):
            raise ValueError("labels must be (n_slices, rows, cols) with one frame per source slice")
        for ds, frame in zip(self.source_slices, self.labels, strict=True):
            if (int(ds.Rows), int(ds.Columns)) != frame.shape:
                raise ValueError(f"label frame {frame.shape} does not match instance {ds.SOPInstanceUID}")

    @property
    def central_index(self) -> int:
        return len(self.source_slices) // 2

    @property
    def central(self) -> Dataset:
        return self.source_slices[self.central_index]

    def series_number(self, offset: int) -> int:
        """Output series numbers: 9000 + offset, far from the scanner's own series numbers."""
        return 9000 + offset
