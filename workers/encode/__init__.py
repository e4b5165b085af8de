"""DICOM encoders for bodycomp's results: SEG (masks), TID 1500 SR (numbers), SC (picture).

Plain library code: no Celery, no sockets. :func:`encode_all` builds the three objects for one
analysis and writes them where the caller says.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, TM

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


#: Patient/study attributes highdicom parses when it copies them into SEG, SR and SC.
_PARSED = {"PatientBirthDate": DA, "StudyDate": DA, "StudyTime": TM}


def _parseable(ds: Dataset) -> Dataset:
    """``ds``, or a copy with the dates and times highdicom cannot parse left empty.

    Why: a value written another way (``17.04.1923`` by older modalities) made highdicom raise
    and the whole analysis fail, with the birth date in the error shown by the logs and
    ``bodycomp status``. The results get an empty value instead (type 2: allowed); the CT keeps
    its own.
    """
    bad = []
    for keyword, parse in _PARSED.items():
        value = ds.get(keyword)
        if value not in (None, ""):
            try:
                parse(str(value))
            except ValueError:
                bad.append(keyword)
    if not bad:
        return ds
    fixed = copy.deepcopy(ds)
    for keyword in bad:
        setattr(fixed, keyword, "")
    return fixed


#: highdicom warns, in several lines per object, when the patient's name it copies from the source
#: has one component ("HCC_048"): the name is the PACS's, copied unchanged as DICOM requires, and the
#: warning said nothing an operator could act on, on every study (#24).
_COPIED_NAME_WARNING = r"The string .* is unlikely to represent the intended person name"


def encode_all(data: EncodeInput) -> EncodedOutputs:
    data = dataclasses.replace(data, source_slices=[_parseable(ds) for ds in data.source_slices])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_COPIED_NAME_WARNING, category=UserWarning)
        seg = build_segmentation(data)
        return EncodedOutputs(seg=seg, sr=build_report(data, seg), overlay=build_overlay_sc(data))
