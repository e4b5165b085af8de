"""Header values never forge a log line, repaint a terminal or run as a spreadsheet formula (#18).

A DICOM header is attacker-controlled text: a Modality holding a newline and a line in the node's
log format, an ESC sequence, a PatientID ``=HYPERLINK(...)``. They must reach the log, ``bodycomp
status`` and ``export --csv`` escaped (:func:`node.privacy.escape_controls`, :func:`node.privacy.csv_cell`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import stat
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from node import privacy
from node.config import NodeSettings
from node.operate.cli import main
from node.operate.status import format_status, read_status
from node.privacy import csv_cell, escape_controls
from node.schedule.dispatch import dispatch_study
from node.store.index import Index, InstanceRecord
from tests.clock import claim_after_idle
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.index_records import record_file
from tests.result_documents import measured_result
from workers.load.selection import SelectionPolicy

#: The node's log format (node.logs.configure_logging).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: A line of that format, to be smuggled in after a newline, and a "clear the screen" sequence.
FORGED = "2026-01-01 INFO bodycomp.sender: event=delivered study=1.2.3 sop=1.2.3.4 destination=PACS"
CLEAR = "\x1b[2J"
HOSTILE = f"MR{CLEAR}\n{FORGED}"
HOSTILE_AE = "EVIL\x1b]0;owned\x07"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """``privacy.install()`` (directly or through ``main``) changes the whole process: undo it."""
    factory, showwarning = logging.getLogRecordFactory(), warnings.showwarning
    yield
    logging.setLogRecordFactory(factory)
    if warnings.showwarning is not showwarning:
        logging.captureWarnings(False)


@pytest.fixture
def node_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger set up as the node's (privacy installed, the node's format) and what a real
    handler wrote for it."""
    privacy.install()  # as node.logs.configure_logging does
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger("bodycomp.test_escaping")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_escape_controls_escapes_only_controls() -> None:
    assert escape_controls(HOSTILE) == "MR\\x1b[2J\\n" + FORGED
    assert escape_controls("a\rb\x00c\x7fd\x85e\x9bf\u2028g") == "a\\rb\\x00c\\x7fd\\x85e\\x9bf\\u2028g"
    kept = "MÜLLER^Zoë\t山田 C:\\dicom\\x1b"  # printable Unicode, TAB and backslashes as they are
    assert escape_controls(kept) == kept


def test_a_header_value_cannot_forge_a_log_line(node_log: tuple[logging.Logger, io.StringIO]) -> None:
    logger, written = node_log
    logger.warning("refused an instance from %s: modality %s", HOSTILE_AE, HOSTILE)
    out = written.getvalue()
    assert out.count("\n") == 1, out  # one record, one line
    assert "\x1b" not in out and "\x07" not in out
    assert f"modality MR\\x1b[2J\\n{FORGED}" in out and "from EVIL\\x1b]0;owned\\x07:" in out
    assert not any(line.startswith("2026-01-01") for line in out.splitlines())


def test_a_traceback_stays_readable_and_its_message_cannot_forge_a_line(
    node_log: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, written = node_log
    try:
        try:
            raise RuntimeError(HOSTILE_AE)
        except RuntimeError as exc:
            raise ValueError(f"unexpected modality {HOSTILE}") from exc
    except ValueError:
        logger.exception("event=job_failed job=%d", 7)
    out = written.getvalue()
    lines = out.splitlines()
    assert lines[0].endswith("event=job_failed job=7") and lines[1] == "Traceback (most recent call last):"
    assert any(line.startswith('  File "') for line in lines), lines  # frames on lines of their own
    assert f"ValueError: unexpected modality MR\\x1b[2J\\n{FORGED}" in lines
    assert "RuntimeError: EVIL\\x1b]0;owned\\x07" in lines
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert "\x1b" not in out


def ignored_study_with_hostile_headers(node: NodeSettings) -> str:
    """A study whose Modality and description hold a forged log line and an ESC sequence, sent by
    a calling AE with an OSC sequence, received and dispatched by the node's own code (it is
    ignored: the reason quotes the Modality). Returns its Study Instance UID."""
    g = axial_geometry(n_slices=3)
    options = SeriesOptions(modality=HOSTILE, description=f"Abdomen{CLEAR}\nX")
    study_dir = node.spool_dir / "studies" / options.study_uid
    with warnings.catch_warnings():  # pydicom warns about such values, and writes and reads them
        warnings.simplefilter("ignore")
        paths = write_series(study_dir / options.series_uid, sample(block_phantom(), g), g, options)
        index = Index(node.index_path)
        try:
            for path in paths:
                record_file(index, path, HOSTILE_AE, now=0)
            [stable] = claim_after_idle(index)
            assert dispatch_study(stable, index, node, SelectionPolicy(), lambda _: None) == []
        finally:
            index.close()
    return options.study_uid


def test_status_prints_header_values_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    node = NodeSettings(data_dir=tmp_path / "data")
    study_uid = ignored_study_with_hostile_headers(node)
    report = read_status(node)
    [study] = report["studies"]
    assert HOSTILE in study["reason"] and study["calling_ae"] == HOSTILE_AE  # the raw values, stored
    text = format_status(report)
    assert "\x1b" not in text and "\x07" not in text
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    [line] = [line for line in text.splitlines() if study_uid in line]
    assert "from EVIL\\x1b]0;owned\\x07" in line
    [reason] = [line for line in text.splitlines() if line.startswith("    reason: ")]
    assert f"MR\\x1b[2J\\n{FORGED}" in reason
    # --json: JSON escapes the control characters itself, and keeps the exact values
    assert main(["status", "--data-dir", str(node.data_dir), "--json"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\n2026-01-01" not in out
    assert json.loads(out)["studies"][0]["reason"] == study["reason"]


def analysed_study(node: NodeSettings, patient_id: str, calling_ae: str) -> str:
    """An analysed (``done``) study in the index, with a result.json holding computed negative
    numbers; returns its Study Instance UID."""
    study, series = generate_uid(), generate_uid()
    index = Index(node.index_path)
    try:
        index.record_instance(
            InstanceRecord(
                study, series, generate_uid(), "1.2.840.10008.5.1.4.1.1.2", Path("/x"), 1, "d", calling_ae,
                patient_id=patient_id, study_date="20260101",
            )
        )  # fmt: skip
        job_id, _ = index.create_job(study, series, "hash", "results/job", calling_ae)
        index.update_job(job_id, state="done", finished=time.time())
    finally:
        index.close()
    result = measured_result()
    result["hu_preset"]["windows"]["skeletal_muscle"]["min_hu"] = -29
    result["l3"].update(z_mm=-785.5, level_ranges={"L3": [-804.5, -766.5]}, notes=["-cut\nat the edge"])
    out = node.data_dir / "results" / "job" / "out"
    out.mkdir(parents=True)
    (out / "result.json").write_text(json.dumps(result))
    return study


def check_export(text: str, study_uid: str) -> None:
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert row["study_uid"] == study_uid and row["study_date"] == "20260101"
    assert row["patient_id"] == """'=HYPERLINK("http://x","y")"""
    assert row["calling_ae"] == "'@SUM(1+1)"
    assert row["hu_preset.windows.skeletal_muscle.min_hu"] == "-29"  # numbers the node computed
    assert row["l3.z_mm"] == "-785.5" and row["l3.level_ranges.L3"] == "-804.5;-766.5"
    assert row["l3.notes"] == "'-cut\\nat the edge"


def test_export_csv_neutralises_formulas_is_private_and_can_go_to_stdout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    node = NodeSettings(data_dir=tmp_path / "data")
    study_uid = analysed_study(node, '=HYPERLINK("http://x","y")', "@SUM(1+1)")
    target = tmp_path / "export.csv"
    assert main(["export", "--data-dir", str(node.data_dir), "--csv", str(target)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    check_export(target.read_text(), study_uid)
    target.chmod(0o644)  # written by an older version: made private when exported again
    assert main(["export", "--data-dir", str(node.data_dir), "--csv", str(target)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    capsys.readouterr()

    monkeypatch.chdir(tmp_path)
    assert main(["export", "--data-dir", str(node.data_dir), "--csv", "-"]) == 0
    written = capsys.readouterr()
    check_export(written.out, study_uid)
    assert "1 analysed studies written to standard output" in written.err
    assert not (tmp_path / "-").exists()
    # no file name at all is standard output too (#24: --csv required one)
    for args in (["--csv"], []):
        assert main(["export", "--data-dir", str(node.data_dir), *args]) == 0
        check_export(capsys.readouterr().out, study_uid)


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("-12.5", "-12.5"),
        ("+3;-4e2", "+3;-4e2"),
        (-12.5, -12.5),
        ("-1+2", "'-1+2"),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("\tx", "'\tx"),
        ("\r=1", "\\r=1"),
        ("a\nb", "a\\nb"),
        ("MÜLLER^ZOË", "MÜLLER^ZOË"),
        (None, None),
    ],
)
def test_csv_cell(value: object, cell: object) -> None:
    assert csv_cell(value) == cell
