"""The two CSV files a researcher gives ``bodycomp batch``: heights and the reader's corrections.

Heights (``--heights FILE.csv``): CT headers often lack PatientSize and PatientWeight, and SMI
needs the height; the research team has them in its clinical table. One row per patient or
study, keyed by ``patient_id`` or ``accession_number`` (DICOM) or ``path`` (a NIfTI file,
relative to ROOT), with ``height_m`` (or ``height_cm``), ``weight_kg`` and ``sex`` (M/F), each
optional. A value in the header wins; the file fills what the header lacks (or holds outside the
plausible range); ``result.json`` and the table say which source each value came from. Unknown
columns are refused rather than ignored (``hieght_m`` must not silently mean "no heights").

Corrections (``--corrections FILE.csv``, exported by the gallery): ``study_key``, ``mark``
(``ok``, ``wrong_level``, ``wrong_outline``) and ``slice_index`` for ``wrong_level``. They are
merged into ``DIR/corrections.csv`` so that a later run without ``--corrections`` keeps them: a
study re-analysed at the reader's slice must not go back to the automatic level.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from workers.batch.discover import Study
from workers.errors import InputError
from workers.measure.composition import HEIGHT_RANGE_M, WEIGHT_RANGE_KG

HEIGHT_KEYS = ("accession_number", "patient_id", "path")
"""Key columns of the heights file, in the order they are matched (the study's own first)."""
HEIGHT_VALUES = ("height_m", "height_cm", "weight_kg", "sex")

MARKS = ("ok", "wrong_level", "wrong_outline")
CORRECTION_COLUMNS = ("study_key", "mark", "slice_index")
#: The corrections applied so far, in the output folder (same columns as the gallery's export).
APPLIED_CORRECTIONS = "corrections.csv"


@dataclass(frozen=True)
class PatientValues:
    """Height (m), weight (kg) and sex (M/F) of one row of the heights file; None where empty."""

    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None


@dataclass(frozen=True)
class HeightsTable:
    """The heights file indexed by each key column."""

    rows: dict[tuple[str, str], PatientValues]

    def lookup(self, study: Study) -> PatientValues | None:
        """The row for ``study``: by its AccessionNumber, else its PatientID, else its NIfTI path."""
        own = {
            "accession_number": study.accession_number,
            "patient_id": study.patient_id,
            "path": study.source if study.kind == "nifti" else "",
        }
        for column in HEIGHT_KEYS:
            if own[column] and (column, own[column]) in self.rows:
                return self.rows[(column, own[column])]
        return None


def _reader(path: Path) -> tuple[csv.DictReader[str], list[str], str]:
    """A CSV reader for ``path``, its columns and its delimiter (comma, semicolon or tab, as
    spreadsheets write them in different locales; a BOM is accepted)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from exc
    first = text.splitlines()[0] if text.strip() else ""
    delimiter = max(",;\t", key=first.count)
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    return reader, columns, delimiter


def _float(text: str, where: str, decimal_comma: bool) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text.replace(",", ".") if decimal_comma else text)
    except ValueError:
        raise InputError(f"{where}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: {text!r} is not a finite number")
    return value


def read_heights(path: Path) -> HeightsTable:
    """Parse a heights file; every problem is one line naming the row (never a patient's ID)."""
    reader, columns, delimiter = _reader(path)
    unknown = [c for c in columns if c not in HEIGHT_KEYS + HEIGHT_VALUES]
    if unknown:
        raise InputError(
            f"{path}: unknown column(s) {', '.join(unknown)} "
            f"(known: {', '.join(HEIGHT_KEYS + HEIGHT_VALUES)}; see docs/research.md)"
        )
    if not set(columns) & set(HEIGHT_KEYS):
        raise InputError(f"{path}: needs a key column: {', '.join(HEIGHT_KEYS)}")
    if not set(columns) & set(HEIGHT_VALUES):
        raise InputError(f"{path}: needs at least one of {', '.join(HEIGHT_VALUES)}")
    decimal_comma = delimiter != ","
    rows: dict[tuple[str, str], PatientValues] = {}
    first_row: dict[tuple[str, str], int] = {}
    for number, raw in enumerate(reader, start=2):
        cells = {k: (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path} row {number}"
        height = _float(cells.get("height_m", ""), f"{where} height_m", decimal_comma)
        centimetres = _float(cells.get("height_cm", ""), f"{where} height_cm", decimal_comma)
        if height is None and centimetres is not None:
            height = centimetres / 100.0
        sex = cells.get("sex", "").upper() or None
        if sex not in (None, "M", "F"):
            raise InputError(f"{where}: sex must be M or F (or empty)")
        values = PatientValues(
            height_m=height,
            weight_kg=_float(cells.get("weight_kg", ""), f"{where} weight_kg", decimal_comma),
            sex=sex,
        )
        keys = [(column, cells[column]) for column in HEIGHT_KEYS if cells.get(column)]
        if not keys:
            raise InputError(f"{where}: no {', '.join(HEIGHT_KEYS)} given")
        for key in keys:
            if key in rows and rows[key] != values:
                raise InputError(f"{where}: row {first_row[key]} gives other values for the same {key[0]}")
            rows[key], first_row[key] = values, first_row.get(key, number)
    return HeightsTable(rows)


def needs_value(header: float | None, plausible: tuple[float, float]) -> bool:
    """Whether a header value is missing or outside the plausible range (then the file's is used)."""
    return header is None or not plausible[0] <= header <= plausible[1]


def fill_from_file(study: Study, row: PatientValues | None) -> tuple[PatientValues, tuple[str, ...]]:
    """The heights-file values to give the analysis for ``study`` (only what the header lacks)
    and the names of the values taken from the file."""
    if row is None:
        return PatientValues(), ()
    height = row.height_m if needs_value(study.header_height_m, HEIGHT_RANGE_M) else None
    weight = row.weight_kg if needs_value(study.header_weight_kg, WEIGHT_RANGE_KG) else None
    sex = row.sex if study.header_sex not in ("M", "F") else None
    taken = tuple(
        name
        for name, value in (("height_m", height), ("weight_kg", weight), ("sex", sex))
        if value is not None
    )
    return PatientValues(height_m=height, weight_kg=weight, sex=sex), taken


@dataclass(frozen=True)
class Correction:
    """A reader's mark on one study, and the slice to analyse when the level was wrong."""

    study_key: str
    mark: str
    slice_index: int | None = None


def read_corrections(path: Path) -> dict[str, Correction]:
    """Parse a corrections file (the gallery's export, or ``DIR/corrections.csv``)."""
    reader, columns, _ = _reader(path)
    missing = [c for c in ("study_key", "mark") if c not in columns]
    unknown = [c for c in columns if c not in CORRECTION_COLUMNS]
    if missing or unknown:
        raise InputError(
            f"{path}: columns must be {', '.join(CORRECTION_COLUMNS)} "
            f"({'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(unknown)})"
        )
    corrections: dict[str, Correction] = {}
    for number, raw in enumerate(reader, start=2):
        cells = {k: (v or "").strip() for k, v in raw.items() if k is not None}
        where = f"{path} row {number}"
        mark = cells["mark"]
        if mark not in MARKS:
            raise InputError(f"{where}: mark must be one of {', '.join(MARKS)}")
        slice_text = cells.get("slice_index", "")
        if slice_text and not slice_text.isdigit():
            raise InputError(f"{where}: slice_index must be a slice number (0, 1, 2, ...)")
        corrections[cells["study_key"]] = Correction(
            cells["study_key"], mark, int(slice_text) if slice_text else None
        )
    return corrections


def merge(applied: dict[str, Correction], new: dict[str, Correction]) -> dict[str, Correction]:
    """``new`` marks over ``applied`` ones; a slice given earlier stays until a new wrong-level
    mark gives another (a reader who marks the corrected study ``ok`` accepts that slice)."""
    merged = dict(applied)
    for key, correction in new.items():
        before = merged.get(key)
        slice_index = correction.slice_index if correction.mark == "wrong_level" else None
        if slice_index is None and before is not None:
            slice_index = before.slice_index
        merged[key] = Correction(key, correction.mark, slice_index)
    return merged


def write_corrections(path: Path, corrections: dict[str, Correction]) -> None:
    """``corrections`` to ``path`` atomically, mode 0600."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CORRECTION_COLUMNS)
        for c in sorted(corrections.values(), key=lambda c: c.study_key):
            writer.writerow([c.study_key, c.mark, "" if c.slice_index is None else c.slice_index])
    tmp.replace(path)
