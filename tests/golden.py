"""Golden outputs: what the analysis writes for two CTs, reduced to values that must not move.

Why: issue #22 regroups the code (folders, typed contracts, long functions split into stages).
Such a change must change no result, so the outputs of the whole pipeline (result.json, the SEG,
the SR, the overlay image and the two PNG pictures) are written down once, before it, and every
test run compares against them value for value.

What is left out, because it differs on every run and is not a result: the UIDs (each is replaced
by its order of first appearance, so a SEG that references the wrong CT slice still differs),
dates and times, timings and file paths. Pixel data is compared by a SHA-256 of the decoded pixels.

When the analysis changes on purpose, write the golden file again and say so in the commit:
``.venv/bin/python -m tests.golden --write``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE_CT = SHARED_DATA / "example_ct" / "example_ct.nii.gz"
HCC_DICOM = SHARED_DATA / "hcc_tace_seg_048" / "dicom"
GOLDEN_FILE = Path(__file__).with_name("golden") / "outputs.json"

#: result.json keys that hold no result: they change with the machine, the run or the folder.
VOLATILE_RESULT_KEYS = frozenset({"timings_s", "files"})
#: DICOM value representations that hold the run's time, not a result.
VOLATILE_VRS = frozenset({"DA", "TM", "DT"})
#: Elements whose value is the software's build, not a result (group lengths, element 0, follow
#: the UIDs' lengths and are left out too).
VOLATILE_KEYWORDS = frozenset({"SoftwareVersions"})


#: A UID inside free text (the SR's slice description): dotted digits, at least four parts.
UID_IN_TEXT = re.compile(r"\b\d+(?:\.\d+){3,}\b")


class UidNames:
    """Names UIDs by their order of first appearance across one case's outputs, and the work and
    shared-data folders by fixed names."""

    def __init__(self, work: Path) -> None:
        self.names: dict[str, str] = {}
        self.work = str(work)

    def __call__(self, uid: str) -> str:
        return self.names.setdefault(uid, f"uid{len(self.names)}")

    def text(self, value: str) -> str:
        """``value`` with its work folder and any UIDs in it named."""
        value = value.replace(self.work, "<work>").replace(str(SHARED_DATA), "<shared>")
        return UID_IN_TEXT.sub(lambda m: self(m.group(0)) if len(m.group(0)) > 16 else m.group(0), value)


def _walk_json(value: Any, uids: UidNames) -> Any:
    if isinstance(value, dict):
        return {k: _walk_json(v, uids) for k, v in value.items() if k not in VOLATILE_RESULT_KEYS}
    if isinstance(value, list):
        return [_walk_json(v, uids) for v in value]
    if isinstance(value, str):
        return uids.text(value)
    return value


def _pixel_digest(ds: Dataset) -> str:
    return hashlib.sha256(np.ascontiguousarray(ds.pixel_array).tobytes()).hexdigest()


def _elements(ds: Dataset, uids: UidNames) -> Iterator[tuple[str, Any]]:
    for elem in ds:
        tag = f"{elem.tag.group:04X}{elem.tag.element:04X}"
        key = elem.keyword or tag
        if elem.keyword in VOLATILE_KEYWORDS or elem.VR in VOLATILE_VRS or elem.tag.element == 0:
            continue
        if elem.keyword == "PixelData":
            yield key, f"sha256:{_pixel_digest(ds)}"
        elif elem.VR == "SQ":
            yield key, [dict(_elements(item, uids)) for item in elem.value]
        elif elem.VR == "UI":
            values = elem.value if elem.VM > 1 else [elem.value]
            yield key, [uids(str(v)) if v else "" for v in values]
        elif elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            yield key, f"sha256:{hashlib.sha256(bytes(elem.value or b'')).hexdigest()}"
        elif elem.VM > 1:
            yield key, [uids.text(str(v)) for v in elem.value]
        else:
            yield key, uids.text(str(elem.value)) if elem.value is not None else None


def dicom_values(path: Path, uids: UidNames) -> dict[str, Any]:
    """Every element of the file (its meta header too) with UIDs named and times left out."""
    ds = pydicom.dcmread(path)
    values = dict(_elements(ds.file_meta, uids))
    values.update(_elements(ds, uids))
    return values


def picture_digest(path: Path) -> str:
    """SHA-256 of the decoded RGB(A) pixels: the same picture whatever PNG encoder wrote it."""
    with Image.open(path) as image:
        pixels = np.asarray(image)
    return f"{pixels.shape}:{hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()}"


def outputs_of(out_dir: Path, work: Path) -> dict[str, Any]:
    """The reduced outputs of one analysis folder (as ``analyse(..., out_dir)`` writes it);
    ``work`` is the folder the inputs were written in."""
    uids = UidNames(work)
    result = json.loads((out_dir / "result.json").read_text())
    reduced: dict[str, Any] = {"result.json": _walk_json(result, uids)}
    labels = out_dir / "l3_labels.npy"
    if labels.exists():
        reduced["l3_labels.npy"] = hashlib.sha256(np.load(labels).tobytes()).hexdigest()
    for name in ("l3_qc.png", "l3_overlay.png"):
        if (out_dir / name).exists():
            reduced[name] = picture_digest(out_dir / name)
    for name in ("seg", "sr", "overlay"):
        path = out_dir / "dicom" / f"{name}.dcm"
        if path.exists():
            reduced[f"{name}.dcm"] = dicom_values(path, uids)
    return reduced


def run_cases(work: Path) -> dict[str, Any]:
    """Analyse both golden CTs into ``work`` and return their reduced outputs by case name."""
    from tests.dicom_builder import series_from_volume
    from workers.load.source import load_series
    from workers.pipeline import AnalysisOptions, PatientOverrides, analyse

    derived = work / "example_ct_dicom"
    derived.mkdir()
    series_from_volume(load_series(EXAMPLE_CT), derived)
    patient = PatientOverrides(height_m=1.72, weight_kg=70.0, sex="M")
    cases = {"example_ct": derived, "hcc_tace_seg_048": HCC_DICOM}
    reduced: dict[str, Any] = {}
    for name, source in cases.items():
        out = work / name
        analyse(source, AnalysisOptions(write_dicom=True, patient=patient), out)
        reduced[name] = outputs_of(out, work)
    return reduced


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Where two reduced outputs differ, as readable paths (first few hundred at most)."""
    found: list[str] = []
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in sorted(set(expected) | set(actual)):
            if key not in actual:
                found.append(f"{where}/{key}: missing now")
            elif key not in expected:
                found.append(f"{where}/{key}: new, {str(actual[key])[:80]}")
            else:
                found += differences(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found += differences(e, a, f"{where}[{i}]")
    elif expected != actual:
        found.append(f"{where}: {str(expected)[:80]} -> {str(actual)[:80]}")
    return found[:300]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write the golden file from this tree")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        reduced = run_cases(Path(tmp))
    if args.write:
        GOLDEN_FILE.parent.mkdir(exist_ok=True)
        GOLDEN_FILE.write_text(json.dumps(reduced, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN_FILE}")
        return 0
    found = differences(json.loads(GOLDEN_FILE.read_text()), reduced)
    print("\n".join(found) or "outputs equal the golden file")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
