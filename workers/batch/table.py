"""``DIR/results.csv`` (and ``results.parquet`` when pyarrow is importable): one row per study.

Why typed: the table is the contract with the researcher's statistics script, so its columns
are the fields of :class:`Row`, in order, each documented with its unit in ``docs/research.md``
(``tests/test_batch.py`` checks that every field is there). A row is built from the study's
``result.json`` read into :class:`ResultRecord` (the keys the pipeline always writes are indexed,
not looked up with defaults: a renamed key fails loudly instead of emptying a column), or from
``failure.json``. Identifiers come from the headers read at discovery; with ``--pseudonymise``
they are replaced by keyed pseudonyms (:mod:`workers.batch.pseudonym`) and the study date and
archive path are left out.

Cells are written as :func:`node.privacy.csv_cell` writes the node's export: a header value that
starts like a formula is neutralised, control characters escaped.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import logging
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from node.privacy import csv_cell
from workers.batch.discover import Study
from workers.batch.inputs import Correction
from workers.batch.pseudonym import Pseudonymiser
from workers.batch.records import (
    FAILURE,
    RESULT,
    STUDIES,
    BatchSection,
    FailureRecord,
    batch_section,
)
from workers.jsonfile import read_json
from workers.result import (
    NOT_FOUND,
    DeterminationJson,
    DeterminationKey,
    MeasuredResult,
    NumberInputJson,
    NumberMetric,
    ResultDocument,
    SexInputJson,
    TissueJson,
    TissueKey,
    check_result,
)

log = logging.getLogger("bodycomp.batch")

CSV = "results.csv"
PARQUET = "results.parquet"
#: Column prefix and result.json key of each tissue.
TISSUES: tuple[tuple[str, TissueKey], ...] = (
    ("sm", "skeletal_muscle"),
    ("imat", "imat"),
    ("vat", "vat"),
    ("sat", "sat"),
)
#: The number metrics of the table, in column order.
METRICS: tuple[NumberMetric, ...] = (
    "smi_cm2_m2",
    "sati_cm2_m2",
    "vati_cm2_m2",
    "bmi",
    "vat_sat_ratio",
    "imat_percent",
    "waist_circumference_cm",
)
VERDICTS: tuple[DeterminationKey, ...] = ("lsmm", "myosteatosis", "high_vsr")
#: result.json's name of a value from the DICOM header; the table writes ``dicom`` (the other
#: sources, ``heights-file`` and ``command line``, as they are).
DICOM_HEADER = "dicom-header"


@dataclass(frozen=True)
class TissueValues:
    area_cm2: float | None
    mean_hu: float | None
    sd_hu: float | None

    @classmethod
    def from_json(cls, data: TissueJson) -> TissueValues:
        return cls(data["area_cm2"], data["mean_hu"], data["sd_hu"])


@dataclass(frozen=True)
class Verdict:
    """A cut-off verdict (LSMM, myosteatosis, high VAT/SAT): True, False or None (with why)."""

    value: bool | None
    status: str

    @classmethod
    def from_json(cls, data: DeterminationJson) -> Verdict:
        return cls(data["value"], data["status"])


@dataclass(frozen=True)
class PatientValue:
    """A patient value the metrics used (None: missing or implausible) and where it came from."""

    value: float | str | None
    source: str

    @classmethod
    def from_json(cls, data: NumberInputJson | SexInputJson) -> PatientValue:
        source = data["source"] if data["raw"] is not None and data["source"] else ""
        return cls(data["value"], "dicom" if source == DICOM_HEADER else source)


@dataclass(frozen=True)
class Measurement:
    """What was measured at L3 (absent when L3 was not in the field of view)."""

    slice_index: int
    z_mm: float
    confidence: float | None
    """None when the slice was the reader's (``manual``)."""
    method: str
    manual: bool
    l3_flags: tuple[str, ...]
    n_slices: int
    qc_status: str
    qc_flags: tuple[str, ...]
    qc_reasons: tuple[str, ...]
    tissues: dict[str, TissueValues]
    metrics: dict[str, float | None]
    smi_missing_reason: str | None
    verdicts: dict[str, Verdict]
    patient: dict[str, PatientValue]
    segmenter: str

    @classmethod
    def from_json(cls, data: MeasuredResult) -> Measurement:
        l3, qc, metrics = data["l3"], data["qc"], data["metrics"]
        return cls(
            slice_index=int(l3["slice_index"]),
            z_mm=float(l3["z_mm"]),
            confidence=None if l3["manual"] else l3["confidence"],
            method=str(l3["method"]),
            manual=bool(l3["manual"]),
            l3_flags=tuple(l3["flags"]),
            n_slices=int(data["n_slices"]),
            qc_status=str(qc["status"]),
            qc_flags=tuple(qc["flags"]),
            qc_reasons=tuple(qc["reasons"]),
            tissues={name: TissueValues.from_json(data["tissues"][name]) for _, name in TISSUES},
            metrics={name: metrics[name] for name in METRICS},
            # an optional key: present only when SMI could not be computed
            smi_missing_reason=metrics["reasons"].get("smi_cm2_m2"),
            verdicts={name: Verdict.from_json(metrics[name]) for name in VERDICTS},
            patient={
                "height_m": PatientValue.from_json(data["patient_inputs"]["height_m"]),
                "weight_kg": PatientValue.from_json(data["patient_inputs"]["weight_kg"]),
                "sex": PatientValue.from_json(data["patient_inputs"]["sex"]),
            },
            segmenter=str(data["segmentation"]["segmenter"]),
        )


@dataclass(frozen=True)
class ResultRecord:
    """The part of a study's ``result.json`` the table and the gallery show."""

    status: str
    """The pipeline's: ``ok``/``review``/``failed`` (QC verdict) or ``l3_not_found``."""
    series_uid: str | None
    levels_seen: tuple[str, ...]
    l3_not_found_reason: str | None
    measurement: Measurement | None
    rule_set: str
    hu_preset: str
    bodycomp_version: str
    timings_s: dict[str, float]
    batch: BatchSection

    @classmethod
    def from_json(cls, data: ResultDocument, batch: BatchSection) -> ResultRecord:
        if data["status"] == NOT_FOUND:
            levels_seen, reason, measurement = data["l3_search"]["levels_seen"], data["reason"], None
        else:
            levels_seen, reason, measurement = data["l3"]["levels_seen"], None, Measurement.from_json(data)
        return cls(
            status=str(data["status"]),
            series_uid=data["input"]["chosen_series_instance_uid"],
            levels_seen=tuple(levels_seen),
            l3_not_found_reason=reason,
            measurement=measurement,
            rule_set=str(data["rule_set"]["id"]),
            hu_preset=str(data["hu_preset"]["id"]),
            bodycomp_version=str(data["bodycomp_version"]),
            timings_s={str(k): float(v) for k, v in data["timings_s"].items()},
            batch=batch,
        )


class StudyStatus(StrEnum):
    """A cohort study's ``status`` column (and how its analysis ended)."""

    DONE = "done"
    L3_NOT_FOUND = "l3_not_found"
    """A measured fact about the scan (L3 not covered), not a failure."""
    FAILED = "failed"
    PENDING = "pending"
    """Not analysed yet (an interrupted run): ``bodycomp batch`` again resumes it."""


@dataclass(frozen=True)
class Row:
    """One line of ``results.csv``; field order is column order (units: docs/research.md)."""

    study_key: str
    status: StudyStatus
    error: str | None
    source_kind: str
    source: str | None
    patient_id: str
    accession_number: str
    study_instance_uid: str
    series_instance_uid: str | None
    study_date: str | None
    pseudonymised: bool
    qc_status: str | None
    qc_flags: str | None
    qc_reasons: str | None
    l3_slice_index: int | None
    l3_z_mm: float | None
    l3_confidence: float | None
    l3_method: str | None
    l3_manual: bool | None
    l3_flags: str | None
    levels_seen: str | None
    l3_not_found_reason: str | None
    n_slices: int | None
    sm_area_cm2: float | None
    sm_mean_hu: float | None
    sm_sd_hu: float | None
    imat_area_cm2: float | None
    imat_mean_hu: float | None
    imat_sd_hu: float | None
    vat_area_cm2: float | None
    vat_mean_hu: float | None
    vat_sd_hu: float | None
    sat_area_cm2: float | None
    sat_mean_hu: float | None
    sat_sd_hu: float | None
    smi_cm2_m2: float | None
    sati_cm2_m2: float | None
    vati_cm2_m2: float | None
    bmi_kg_m2: float | None
    vat_sat_ratio: float | None
    imat_percent: float | None
    waist_circumference_cm: float | None
    smi_missing_reason: str | None
    lsmm: bool | None
    lsmm_status: str | None
    myosteatosis: bool | None
    myosteatosis_status: str | None
    high_vsr: bool | None
    high_vsr_status: str | None
    height_m: float | None
    height_source: str | None
    weight_kg: float | None
    weight_source: str | None
    sex: str | None
    sex_source: str | None
    rule_set: str | None
    hu_preset: str | None
    segmenter: str | None
    bodycomp_version: str | None
    reader_mark: str | None
    reader_slice_index: int | None
    dicom_outputs: bool | None
    time_load_s: float | None
    time_l3_s: float | None
    time_segment_s: float | None
    time_pictures_s: float | None
    time_dicom_s: float | None
    time_analysis_s: float | None
    time_wall_s: float | None
    analysed_at: str | None


COLUMNS = tuple(f.name for f in dataclasses.fields(Row))


def _blank_row(study: Study, keys: Pseudonymiser, pseudonymise: bool, status: StudyStatus) -> dict[str, Any]:
    """Every column empty but the study's identity, status and identifiers."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    ids = {
        "patient_id": study.patient_id,
        "accession_number": study.accession_number,
        "study_instance_uid": study.study_uid,
    }
    if pseudonymise:
        ids = {name: keys.pseudonym(name, value) for name, value in ids.items()}
    row.update(ids)
    row.update(
        study_key=study.key,
        status=status,
        source_kind=study.kind,
        source=None if pseudonymise else study.source,
        study_date=None if pseudonymise else study.study_date,
        pseudonymised=pseudonymise,
    )
    return row


def _seconds(timings: dict[str, float], *stages: str) -> float | None:
    found = [timings[s] for s in stages if s in timings]
    return round(sum(found), 3) if found else None


def _measured(row: dict[str, Any], m: Measurement) -> None:
    row.update(
        qc_status=m.qc_status,
        qc_flags=";".join(m.qc_flags),
        qc_reasons=" | ".join(m.qc_reasons),
        l3_slice_index=m.slice_index,
        l3_z_mm=m.z_mm,
        l3_confidence=m.confidence,
        l3_method=m.method,
        l3_manual=m.manual,
        l3_flags=";".join(m.l3_flags),
        n_slices=m.n_slices,
        smi_missing_reason=m.smi_missing_reason,
        segmenter=m.segmenter,
    )
    for prefix, key in TISSUES:
        tissue = m.tissues[key]
        row[f"{prefix}_area_cm2"] = tissue.area_cm2
        row[f"{prefix}_mean_hu"] = tissue.mean_hu
        row[f"{prefix}_sd_hu"] = tissue.sd_hu
    for name, value in m.metrics.items():
        row["bmi_kg_m2" if name == "bmi" else name] = value
    for name, verdict in m.verdicts.items():
        row[name], row[f"{name}_status"] = verdict.value, verdict.status
    for name, column in (("height_m", "height"), ("weight_kg", "weight"), ("sex", "sex")):
        given = m.patient[name]
        row[name] = given.value
        row[f"{column}_source"] = given.source


def _from_result(row: dict[str, Any], record: ResultRecord) -> None:
    t = record.timings_s
    row.update(
        status=StudyStatus.DONE if record.measurement is not None else StudyStatus.L3_NOT_FOUND,
        series_instance_uid=record.series_uid,
        levels_seen=";".join(record.levels_seen),
        l3_not_found_reason=record.l3_not_found_reason,
        rule_set=record.rule_set,
        hu_preset=record.hu_preset,
        bodycomp_version=record.bodycomp_version,
        dicom_outputs=record.batch.dicom_outputs,
        time_load_s=_seconds(t, "load", "load_full_resolution"),
        time_l3_s=_seconds(t, "l3"),
        time_segment_s=_seconds(t, "segment", "measure"),
        time_pictures_s=_seconds(t, "l3_qc_picture", "overlay_picture"),
        time_dicom_s=_seconds(t, "encode_dicom"),
        time_analysis_s=_seconds(t, *t),
        time_wall_s=record.batch.wall_s,
        analysed_at=record.batch.analysed_at,
    )
    if record.measurement is not None:
        _measured(row, record.measurement)


def read_record(study_dir: Path) -> ResultRecord | FailureRecord | None:
    """The study folder's outcome: its result, its failure, or None (not analysed yet, or a
    result this version cannot read: the study is then analysed again)."""
    result = read_json(study_dir / RESULT)
    section = batch_section(result) if result is not None else None
    if result is not None and section is not None:
        try:
            return ResultRecord.from_json(check_result(result, str(study_dir / RESULT)), section)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning(
                "event=result_unreadable study=%s error=%s: %s", section.study_key, type(exc).__name__, exc
            )
            return None
    failure = read_json(study_dir / FAILURE)
    if failure is None:
        return None
    try:
        return FailureRecord.from_json(failure)
    except (KeyError, TypeError, ValueError):
        return None


def build_row(
    study: Study,
    study_dir: Path,
    keys: Pseudonymiser,
    pseudonymise: bool,
    correction: Correction | None,
) -> Row:
    record = read_record(study_dir)
    row = _blank_row(study, keys, pseudonymise, StudyStatus.PENDING)
    if isinstance(record, ResultRecord):
        _from_result(row, record)
    elif isinstance(record, FailureRecord):
        row.update(
            status=StudyStatus.FAILED,
            error=record.error,
            time_wall_s=record.wall_s,
            analysed_at=record.failed_at,
        )
    if pseudonymise and row["series_instance_uid"]:
        row["series_instance_uid"] = keys.pseudonym("series_instance_uid", row["series_instance_uid"])
    if correction is not None:
        row.update(reader_mark=correction.mark, reader_slice_index=correction.slice_index)
    return Row(**row)


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else csv_cell(value)


def write_csv(path: Path, rows: list[Row]) -> None:
    """``rows`` to ``path`` atomically, mode 0600 (identifiers are PHI unless pseudonymised)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_cell(getattr(row, name)) for name in COLUMNS])
    tmp.replace(path)


#: Parquet type of each annotation of :class:`Row` (``from __future__ import annotations``: text).
_ARROW_TYPES = {
    "str": "string",
    "str | None": "string",
    "float | None": "float64",
    "int | None": "int64",
    "bool": "bool_",
    "bool | None": "bool_",
}


def write_parquet(path: Path, rows: list[Row]) -> bool:
    """``rows`` as Parquet when pyarrow is importable (not a dependency); whether written.

    A pyarrow that fails (an incompatible build) costs the Parquet copy only, with a log line:
    the CSV is written already and the gallery still comes.
    """
    if importlib.util.find_spec("pyarrow") is None:
        return False
    try:
        import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]

        schema = pa.schema(
            [(f.name, getattr(pa, _ARROW_TYPES[str(f.type)])()) for f in dataclasses.fields(Row)]
        )
        data = pa.Table.from_pylist([dataclasses.asdict(r) for r in rows], schema=schema)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as handle:
            pq.write_table(data, handle)
        tmp.replace(path)
    except Exception as exc:
        log.warning("event=parquet_not_written error=%s: %s", type(exc).__name__, exc)
        return False
    return True


def write_tables(
    out: Path,
    studies: list[Study],
    keys: Pseudonymiser,
    pseudonymise: bool,
    corrections: dict[str, Correction],
) -> list[Row]:
    """``results.csv`` (and ``results.parquet``) for ``studies``; returns the rows.

    Pseudonymised rows are ordered by study key: the archive's order (often patient names in
    folder names) would say more than the pseudonyms.
    """
    rows = [build_row(s, out / STUDIES / s.key, keys, pseudonymise, corrections.get(s.key)) for s in studies]
    if pseudonymise:
        rows.sort(key=lambda r: r.study_key)
    write_csv(out / CSV, rows)
    if not write_parquet(out / PARQUET, rows):
        (out / PARQUET).unlink(missing_ok=True)  # never a stale Parquet beside a new CSV
    return rows
