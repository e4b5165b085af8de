"""DICOM encoders for bodycomp's results: SEG (masks), TID 1500 SR (numbers), SC (picture).

Plain library code: no Celery, no sockets. :func:`encode_all` builds the three objects for one
analysis and writes them where the caller says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import highdicom as hd

from workers.encode.inputs import EncodeInput
from workers.encode.sc import build_overlay_sc
from workers.encode.seg import build_segmentation
from workers.encode.sr import build_report

__all__ = ["EncodeInput", "EncodedOutputs", "encode_all"]


@dataclass(frozen=True)
class EncodedOutputs:
    seg: hd.seg.Segmentation
    sr: hd.sr.Comprehensive3DSR
    overlay: hd.sc.SCImage

    def write(self, folder: Path) -> dict[str, Path]:
        """Write seg.dcm, sr.dcm and overlay.dcm (each via a temporary file and a rename)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, dataset in (("seg", self.seg), ("sr", self.sr), ("overlay", self.overlay)):
            target = folder / f"{name}.dcm"
            tmp = folder / f".{name}.dcm.tmp"
            dataset.save_as(tmp, enforce_file_format=True)
            tmp.replace(target)
            paths[name] = target
        return paths


def encode_all(data: EncodeInput) -> EncodedOutputs:
    seg = build_segmentation(data)
    return EncodedOutputs(seg=seg, sr=build_report(data, seg), overlay=build_overlay_sc(data))
