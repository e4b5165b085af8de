"""What an operator asks the node: ``status``, ``export --csv``, ``echo`` and ``resend``.

``status`` and ``export`` open the index read-only in their own process (WAL mode lets them read
while the node writes). ``export`` writes one row per analysed study for researchers: study and
patient identifiers (the CSV is PHI; the logs never are), the analysed series and the scalar
values of its ``result.json`` flattened to dotted column names, so new metrics and flags of the
analysis appear as new columns without a change here.

Header values (a Modality, a description, a calling AE title, the reasons quoting them) are
attacker-controlled text: ``status`` prints them with their control characters escaped and
``export`` neutralises cells a spreadsheet would run as formulas (see :func:`csv_cell`).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any, TextIO

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import tls
from node.config import ConfigError, NodeSettings, parse_destination
from node.privacy import csv_cell, escape_controls
from node.send.outbox import queue_results
from node.store.index import Index
from workers.result import NOT_FOUND, TISSUE_KEYS, ResultDocument, ResultFileError, read_result


def _open(node: NodeSettings, write: bool = False) -> Index:
    """The node's index, read-only unless ``write``; what is wrong said in one line (exit 2)."""
    path = node.index_path
    try:
        found = path.exists()
    except PermissionError:
        found = True  # (a folder on the way is not ours: opening says so below)
    if not found:
        raise ConfigError(f"no node index at {path} (wrong --data-dir?)")
    try:
        return Index(path) if write else Index.read_only(path)
    except (sqlite3.Error, OSError) as exc:
        access = os.access(path, os.W_OK if write else os.R_OK)
        hint = (
            ""
            if access
            else f": run it as the node's service user (sudo -u {_owner(path)} bodycomp ...), who owns "
            "the data directory"
        )
        raise ConfigError(
            f"cannot {'write' if write else 'read'} the node's index {path} ({exc}){hint}"
        ) from exc


def _owner(path: Path) -> str:
    """The user owning the data directory (the service user), or ``bodycomp``."""
    import pwd

    for candidate in (path, path.parent):
        try:
            return pwd.getpwuid(candidate.stat().st_uid).pw_name
        except (OSError, KeyError):
            continue
    return "bodycomp"


def resend_dead(node: NodeSettings, study_uid: str | None = None, destination: str | None = None) -> int:
    """Queue dead-lettered results (of one study, to one destination) for delivery again.

    The node, running or started later, sends them within a second (its sender polls the index).
    This process writes to the index beside the running node; SQLite's locking (WAL mode, busy
    timeout) serialises the two, as it does the node's receiving processes.
    """
    if destination is not None:
        parse_destination(destination)  # a typo would match nothing: say so instead
    index = _open(node, write=True)
    try:
        return index.requeue_dead(study_uid, destination)
    finally:
        index.close()


def result_summary(result: ResultDocument) -> dict[str, Any]:
    """What an operator checks first in a job's ``result.json``: the level and how sure, the QC
    verdict and why, the main numbers, how long it took (the full file is beside it). A result
    without L3 has its status and times; the rest is None."""
    analysis_s = round(sum(v for v in result["timings_s"].values() if isinstance(v, int | float)), 2)
    if result["status"] == NOT_FOUND:
        return {
            "status": result["status"],
            "qc_reasons": [],
            "level_method": None,
            "level_confidence": None,
            "slice_z_mm": None,
            "slice_sop_instance_uid": None,
            "areas_cm2": dict.fromkeys(TISSUE_KEYS),
            "muscle_mean_hu": None,
            "smi_cm2_m2": None,
            "smi_missing_because": None,
            "analysis_s": analysis_s,
            "correction": None,
        }
    l3, tissues, metrics, first = result["l3"], result["tissues"], result["metrics"], result["slices"][0]
    correction = result.get("correction")  # (a corrected result only)
    return {
        "status": result["status"],
        "qc_reasons": list(result["qc"]["reasons"]),
        "level_method": l3["method"],
        "level_confidence": None if l3["manual"] else l3["confidence"],
        "slice_z_mm": first["z_mm"],
        "slice_sop_instance_uid": first.get("sop_instance_uid"),  # (DICOM input only)
        "areas_cm2": {k: tissues[k]["area_cm2"] for k in TISSUE_KEYS},
        "muscle_mean_hu": tissues["skeletal_muscle"]["mean_hu"],
        "smi_cm2_m2": metrics["smi_cm2_m2"],
        "smi_missing_because": metrics["reasons"].get("smi_cm2_m2"),  # (only a missing value has one)
        "analysis_s": analysis_s,
        # a correction (issue #23): what was corrected, by whom, from which instance
        "correction": None if correction is None else correction["description"],
    }


def _with_results(node: NodeSettings, studies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each job of ``studies`` with its result summary (None while it has none) and folder; a
    ``result.json`` that is there but not a result document gives ``result_error`` instead."""
    for study in studies:
        for job in study["jobs"]:
            folder = node.data_dir / job["result_dir"] / "out"
            job["result_folder"] = str(folder)
            job["result"] = None
            if (folder / "result.json").exists():
                try:
                    job["result"] = result_summary(read_result(folder / "result.json"))
                except ResultFileError as exc:
                    job["result_error"] = str(exc)
    return studies


def resend_study(node: NodeSettings, study_uid: str, destination: str | None = None) -> int:
    """Send a study's current results again: to ``destination``, or to every configured one (in
    this command's configuration; without one, wherever they were sent before).

    Results already delivered or dead-lettered there are queued again, and destinations that never
    had them get them (a PACS added since). Nothing is analysed again. Returns the results queued.
    """
    if destination is not None:
        parse_destination(destination)
    index = _open(node, write=True)
    try:
        if index.study(study_uid) is None:
            raise ConfigError(f"no study {study_uid} in the node's index")
        targets = (
            [destination]
            if destination is not None
            else [str(d) for d in node.destination_list()] or index.outbox_destinations(study_uid)
        )
        if not targets:
            raise ConfigError(
                "no destination: the study's results were never sent and none is configured "
                "(give --destination AE@HOST:PORT)"
            )
        added = sum(
            queue_results(index, node, job, job["calling_ae"], destinations=targets)
            for job in index.done_jobs_of(study_uid)
        )
        return added + sum(index.requeue_sent(study_uid, target) for target in targets)
    finally:
        index.close()


def read_status(node: NodeSettings, limit: int = 50) -> dict[str, Any]:
    index = _open(node)
    try:
        counts = index.state_counts("studies")
        outbox = index.state_counts("outbox")
        dead_rows, retrying_rows = index.outbox_trouble(limit=20)
        dead = [
            {"sop_uid": r["sop_uid"], "destination": r["destination"], "error": r["last_error"]}
            for r in dead_rows
        ]
        # Deliveries that failed at least once and are retried: why (a refused association, a
        # failed TLS handshake...) is what the operator needs before they become dead letters.
        retrying = [
            {
                "sop_uid": r["sop_uid"],
                "destination": r["destination"],
                "attempts": r["attempts"],
                "next_try": r["next_try"],
                "error": r["last_error"],
            }
            for r in retrying_rows
        ]
        hl7_counts, hl7_dead = _hl7_outbox(index)
        return {
            "data_dir": str(node.data_dir),
            "studies_by_state": counts,
            "outbox_by_state": outbox,
            "dead_letters": dead,
            "retrying": retrying,
            "hl7_outbox_by_state": hl7_counts,
            "hl7_dead_letters": hl7_dead,
            "studies": _with_results(node, index.recent_studies(limit)),
        }
    finally:
        index.close()


def _hl7_outbox(index: Index) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """ORU deliveries by state and the dead letters (none for an index without the HL7 tables,
    written by an older node and opened read-only)."""
    try:
        rows = index.hl7_outbox_rows("dead")
        return index.hl7_outbox_counts(), [
            {"control_id": r["control_id"], "destination": r["destination"], "error": r["last_error"]}
            for r in rows
        ]
    except sqlite3.OperationalError:
        return {}, []


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_status(report: dict[str, Any]) -> str:
    """The report as text for a terminal, one line per item.

    Every line is passed through :func:`escape_controls` once built: it holds header values
    (calling AE, reasons quoting a Modality or a description) and peers' error texts, and a
    newline or an ESC sequence in one must neither add a line nor repaint the terminal.
    """

    def counts(key: str) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(report[key].items())) or "none"

    lines = [
        f"data directory {report['data_dir']}",
        f"studies: {counts('studies_by_state')}",
        f"results to send: {counts('outbox_by_state')}",
        "",
    ]
    for s in report["studies"]:
        sent = ", ".join(f"{k} {v}" for k, v in sorted(s["outbox"].items())) or "-"
        lines.append(
            f"{_when(s['last_received'])}  {s['state']:<8} {s['study_uid']}  from {s['calling_ae']}  "
            f"{s['instances']} instances/{s['series']} series  results: {sent}"
        )
        if s["reason"]:
            lines.append(f"    reason: {s['reason']}")
        for j in s["jobs"]:
            extra = f" ({j['reason']})" if j["reason"] else ""
            lines.append(
                f"    job {j['id']}: {j['state']}{extra}, series {j['series_uid']}, attempts {j['attempts']}"
            )
            if j.get("result") and j["result"].get("correction"):
                lines.append(f"        corrects: {j['result']['correction']}")
            if j.get("result") and j["state"] != "superseded":
                lines += [f"        {text}" for text in _result_lines(j)]
            if j.get("result_error"):
                lines.append(f"        result unreadable: {j['result_error']}")
        for destination, states in sorted((s.get("deliveries") or {}).items()):
            lines.append(f"    to {destination}: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    for d in report["dead_letters"]:
        lines.append(f"dead letter: {d['sop_uid']} to {d['destination']}: {d['error']}")
    if report["dead_letters"]:
        lines.append("(after fixing the cause: bodycomp resend [--study UID] [--destination AE@HOST:PORT])")
    if report.get("hl7_outbox_by_state"):
        lines.append(f"HL7 results (ORU^R01): {counts('hl7_outbox_by_state')}")
    for d in report.get("hl7_dead_letters", []):
        lines.append(f"HL7 dead letter: {d['control_id']} to {d['destination']}: {d['error']}")
    for r in report.get("retrying", []):
        lines.append(
            f"retrying: {r['sop_uid']} to {r['destination']} (attempt {r['attempts']}, "
            f"next {_when(r['next_try'])}): {r['error']}"
        )
    return "\n".join(escape_controls(line) for line in lines)


def _number(value: Any, unit: str = "", digits: int = 1) -> str:
    return "n/a" if not isinstance(value, int | float) else f"{value:.{digits}f}{unit}"


def _result_lines(job: dict[str, Any]) -> list[str]:
    """A job's :func:`result_summary` and times as three lines of ``status``."""
    r = job["result"]
    times = f"analysis {_number(r['analysis_s'], ' s')}"
    if job.get("created") and job.get("started") and job.get("finished"):
        times = (
            f"waited {job['started'] - job['created']:.1f} s, ran {job['finished'] - job['started']:.1f} s "
            f"({times})"
        )
    confidence = "" if r["level_confidence"] is None else f", confidence {r['level_confidence']:.2f}"
    verdict = f"QC {r['status'] or '?'}" + (": " + "; ".join(r["qc_reasons"]) if r["qc_reasons"] else "")
    areas = r["areas_cm2"]
    smi = _number(r["smi_cm2_m2"], " cm2/m2") + (
        f" ({r['smi_missing_because']})" if r["smi_cm2_m2"] is None and r["smi_missing_because"] else ""
    )
    return [
        f"L3 at z {_number(r['slice_z_mm'], ' mm')} ({r['level_method'] or '?'}{confidence}); {verdict}",
        f"SM {_number(areas['skeletal_muscle'])} cm2 ({_number(r['muscle_mean_hu'], ' HU')}), "
        f"IMAT {_number(areas['imat'])}, VAT {_number(areas['vat'])}, SAT {_number(areas['sat'])} cm2; "
        f"SMI {smi}",
        f"{times}; results in {job['result_folder']}",
    ]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Scalars of a nested JSON value as ``a.b.c`` columns; lists of scalars joined with ``;``."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            out[prefix] = ";".join("" if v is None else str(v) for v in value)
    else:
        out[prefix] = value
    return out


EXPORT_FIRST = [
    "study_uid",
    "patient_id",
    "study_date",
    "series_uid",
    "job_id",
    "calling_ae",
    "analysed",
    "history",
]


def export_rows(index: Index, data_dir: Path) -> list[dict[str, Any]]:
    """The latest done job of each study, with its result.json flattened (``input`` left out)."""
    latest: dict[str, sqlite3.Row] = {}
    for job in index.done_jobs():
        latest[job["study_uid"]] = job
    rows = []
    for job in latest.values():
        row: dict[str, Any] = {
            "study_uid": job["study_uid"],
            "patient_id": job["patient_id"],
            "study_date": job["study_date"],
            "series_uid": job["series_uid"],
            "job_id": job["id"],
            "calling_ae": job["calling_ae"],
            "analysed": _when(job["finished"]),
            # the results this one supersedes (corrections, issue #23), oldest first
            "history": ";".join(
                f"job {j['id']} {j['state']}" for j in index.jobs_of(job["study_uid"]) if j["id"] != job["id"]
            ),
        }
        path = data_dir / job["result_dir"] / "out" / "result.json"
        if path.exists():
            try:
                result = read_result(path)
            except ResultFileError as exc:
                row["result_error"] = str(exc)  # (a column of its own, rather than empty values)
            else:
                row.update(flatten({key: value for key, value in result.items() if key != "input"}))
        rows.append(row)
    return rows


def _write_csv(rows: list[dict[str, Any]], handle: TextIO) -> None:
    extra = sorted({k for r in rows for k in r} - set(EXPORT_FIRST))
    columns = EXPORT_FIRST + extra
    writer = csv.writer(handle)
    writer.writerow([csv_cell(name) for name in columns])
    writer.writerows([csv_cell(row.get(name, "")) for name in columns] for row in rows)


def _open_private(target: Path) -> TextIO:
    """``target`` for writing, readable by this user only (the CSV is PHI, like the data directory).

    Created 0600 whatever the umask; a regular file that exists (an export of an older version,
    made 0644) is made 0600 too. Other files (``/dev/null``, a pipe) are written as they are.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
        return open(fd, "w", newline="")
    except BaseException:
        os.close(fd)
        raise


def export_csv(node: NodeSettings, target: Path | TextIO) -> int:
    """Write one row per analysed study to ``target`` (a file, created private, or a stream such
    as standard output); return the number of rows."""
    index = _open(node)
    try:
        rows = export_rows(index, node.data_dir)
    finally:
        index.close()
    if isinstance(target, Path):
        with _open_private(target) as handle:
            _write_csv(rows, handle)
    else:
        _write_csv(rows, target)
    return len(rows)


def echo(
    target: str, calling_ae: str, timeout: float = 10.0, settings: NodeSettings | None = None
) -> tuple[bool, str]:
    """C-ECHO ``AE@HOST:PORT`` (``+tls``: over TLS with the node's ``tls_*`` settings, as the
    sender would connect); return (success, a line for the operator)."""
    dest = parse_destination(target)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    context = tls.client_context(settings or NodeSettings()) if dest.tls else None
    tls_args = (context, dest.host) if context is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "did not answer"
        if context is not None and context.handshake_error:
            why = f"TLS handshake failed: {context.handshake_error}"
        return False, f"C-ECHO {dest}: failed ({dest.host}:{dest.port} {why})"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code == 0:
        return True, f"C-ECHO {dest}: success"
    return False, f"C-ECHO {dest}: failed (status {code})"
