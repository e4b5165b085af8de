"""The ``bodycomp`` command.

Subcommands: ``serve`` runs the DICOM node (receive, queue, analyse, send back; see
:mod:`node.operate.service`); ``worker`` runs a Celery worker for a node with an external broker;
``status`` shows recent studies and their states; ``export --csv`` one row per analysed study;
``echo AE@HOST:PORT`` checks connectivity with C-ECHO;
``inspect PATH`` describes what a folder or file holds and which series would be analysed;
``analyze PATH --out DIR`` runs the analysis and writes ``DIR/result.json``.
Exit codes: 0 success (also when a result is flagged for review), 2 bad input or configuration,
3 the anatomy to measure is not in the field of view.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.config import ConfigError, Settings, load_settings
from node.logs import configure_logging
from workers import __version__
from workers.errors import BodycompError, NotInFieldOfViewError
from workers.load.describe import describe, format_text, summary_text
from workers.load.source import load_series
from workers.pipeline import AnalysisOptions, PatientOverrides, analyse

log = logging.getLogger("bodycomp")

EXIT_OK, EXIT_INPUT, EXIT_NOT_IN_FOV = 0, 2, 3


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML settings file (default: $BODYCOMP_CONFIG)")
    parser.add_argument("--series", metavar="UID", help="analyse this SeriesInstanceUID only")
    parser.add_argument("--no-derived", action="store_true", help="never analyse DERIVED series")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bodycomp",
        description="Body composition at L3 on abdominal CT: a DICOM node and its analysis.",
    )
    parser.add_argument("--version", action="version", version=f"bodycomp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    inspect = sub.add_parser("inspect", help="describe the series in a folder or file and the one chosen")
    inspect.add_argument("path", type=Path, help="DICOM folder (recursive), DICOM file or NIfTI file")
    _add_common(inspect)

    _add_node_commands(sub)

    analyze = sub.add_parser("analyze", help="analyse one CT and write DIR/result.json")
    analyze.add_argument("path", type=Path, help="DICOM folder (recursive), DICOM file or NIfTI file")
    analyze.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    analyze.add_argument(
        "--slice", type=int, metavar="K", help="analyse slice K (source indexing) instead of finding L3"
    )
    analyze.add_argument(
        "--slices", type=int, metavar="N", help="average over N contiguous slices centred on L3"
    )
    analyze.add_argument("--height-m", type=float, help="patient height in metres (overrides PatientSize)")
    analyze.add_argument("--weight-kg", type=float, help="patient weight in kg (overrides PatientWeight)")
    analyze.add_argument("--sex", choices=["M", "F"], help="patient sex (overrides PatientSex)")
    analyze.add_argument(
        "--rule-set", help="cut-off rule set, e.g. martin2013@1 (default), fujiwara2015@1, ha2018@1"
    )
    analyze.add_argument("--preset", help="HU window preset: tomovision-l3@1 (default) or uniform-fat@1")
    analyze.add_argument(
        "--dicom", action="store_true", help="also write DIR/dicom/seg.dcm, sr.dcm, overlay.dcm"
    )
    _add_common(analyze)

    batch = sub.add_parser(
        "batch", help="analyse every study under a folder: DIR/results.csv and a QC gallery (resumable)"
    )
    batch.add_argument("root", type=Path, metavar="ROOT", help="the cohort: DICOM in any layout, NIfTI files")
    batch.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder (created 0700)")
    batch.add_argument("--jobs", type=int, metavar="N", help="analyses at once (default: one per core)")
    batch.add_argument(
        "--heights", type=Path, metavar="FILE.csv", help="heights/weights by patient_id or accession_number"
    )
    batch.add_argument(
        "--corrections",
        type=Path,
        metavar="FILE.csv",
        help="the gallery's export: studies marked wrong level are measured at the reader's slice",
    )
    batch.add_argument(
        "--pseudonymise", action="store_true", help="keyed pseudonyms instead of PatientID, accession, UIDs"
    )
    batch.add_argument("--dicom", action="store_true", help="also write the DICOM SEG, SR and overlay")
    batch.add_argument("--config", help="TOML settings file (default: $BODYCOMP_CONFIG)")
    batch.add_argument("--no-derived", action="store_true", help="never analyse DERIVED series")
    batch.add_argument("-v", "--verbose", action="store_true")
    batch.set_defaults(series=None)
    return parser


def _add_node_commands(sub: Any) -> None:
    """``serve``, ``worker``, ``status``, ``export``, ``echo`` (the node's command-line contract).

    Every flag is also ``BODYCOMP_<FLAG>`` in the environment and ``[node] <flag>`` in the TOML
    file (``-`` as ``_``; ``--destination`` is the list ``destinations``).
    """
    config_help = "TOML settings file (default: $BODYCOMP_CONFIG)"
    serve = sub.add_parser("serve", help="run the DICOM node: receive, queue, analyse, send results back")
    serve.add_argument("--config", help=config_help)
    serve.add_argument("--data-dir", type=Path, help="spool, index, results, embedded broker (default var)")
    serve.add_argument("--ae-title", help="this node's AE title (default BODYCOMP)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 11112)")
    serve.add_argument("--stable-seconds", type=float, help="idle time after which a study is complete (30)")
    serve.add_argument(
        "--destination",
        action="append",
        metavar="AE@HOST:PORT",
        help="send results there (repeatable); none: results stay in the data directory",
    )
    serve.add_argument("--allow-ae", action="append", metavar="AE", help="accept only these calling AEs")
    serve.add_argument("--broker-url", help="redis://… or amqp://… (default: embedded SQLite broker)")
    serve.add_argument("--all-series", action="store_true", default=None, help="analyse all eligible series")
    serve.add_argument("--workers", type=int, help="worker processes to start (default 1 if embedded broker)")
    serve.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve /healthz and /metrics on port P (default off)"
    )
    serve.add_argument("--metrics-host", help="address of the metrics endpoint (default 127.0.0.1)")
    serve.add_argument(
        "--max-associations", type=int, metavar="N", help="associations at once (16); more are rejected"
    )
    serve.add_argument(
        "--receivers",
        type=int,
        metavar="N",
        help="processes receiving on the port (1); see docs/benchmarks.md",
    )
    serve.add_argument(
        "--network-timeout", type=float, metavar="S", help="drop a connection silent for S seconds (120)"
    )
    serve.add_argument(
        "--tls-cert", type=Path, metavar="PEM", help="this node's certificate: listen with DICOM TLS only"
    )
    serve.add_argument("--tls-key", type=Path, metavar="PEM", help="private key of --tls-cert")
    serve.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="CA bundle for client and +tls destination certificates"
    )
    serve.add_argument(
        "--tls-crl", type=Path, metavar="PEM", help="CRLs of those CAs: revoked certificates are refused"
    )
    serve.add_argument(
        "--tls-verify-client",
        action="store_true",
        default=None,
        help="require callers to present a certificate signed by --tls-ca",
    )
    serve.add_argument(
        "--hl7-port", type=int, metavar="P", help="HL7 v2 (MLLP) listener for height and weight (default off)"
    )
    serve.add_argument(
        "--site-table", type=Path, metavar="CSV", help="heights and weights of the site (re-read on change)"
    )
    serve.add_argument("-v", "--verbose", action="store_true")

    worker = sub.add_parser("worker", help="run a Celery worker (with an external broker)")
    worker.add_argument("--config", help=config_help)
    worker.add_argument("--data-dir", type=Path, help="the node's data directory (shared storage)")
    worker.add_argument("--broker-url", help="the node's broker (redis://… or amqp://…)")
    worker.add_argument("--concurrency", type=int, help="analyses at once (default 1)")
    worker.add_argument("-v", "--verbose", action="store_true")

    status = sub.add_parser("status", help="recent studies, their states, failures and deliveries")
    status.add_argument("--config", help=config_help)
    status.add_argument("--data-dir", type=Path, help="the node's data directory")
    status.add_argument("--limit", type=int, default=50, help="how many studies (default 50)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument("-v", "--verbose", action="store_true")

    export = sub.add_parser("export", help="one CSV row per analysed study (for research)")
    export.add_argument("--config", help=config_help)
    export.add_argument("--data-dir", type=Path, help="the node's data directory")
    export.add_argument(
        "--csv",
        type=Path,
        nargs="?",
        const=Path("-"),
        default=Path("-"),
        metavar="FILE",
        help="CSV file to write (mode 0600); without FILE, or -: standard output",
    )
    export.add_argument("-v", "--verbose", action="store_true")

    resend = sub.add_parser(
        "resend",
        help="send dead-lettered results again (after fixing the PACS); with --study, that study's "
        "current results, also delivered ones and to destinations added since",
    )
    resend.add_argument("--config", help=config_help)
    resend.add_argument("--data-dir", type=Path, help="the node's data directory")
    resend.add_argument("--study", dest="resend_study", metavar="UID", help="only this study's results")
    resend.add_argument(
        "--destination",
        dest="resend_destination",
        metavar="AE@HOST:PORT",
        help="only those to this destination",
    )
    resend.add_argument("-v", "--verbose", action="store_true")

    reanalyze = sub.add_parser(
        "reanalyze",
        help="correct a study's result: another slice, or other patient values; the running node "
        "analyses it and sends a superseding SEG, SR and overlay",
    )
    reanalyze.add_argument("--config", help=config_help)
    reanalyze.add_argument("--data-dir", type=Path, help="the node's data directory")
    reanalyze.add_argument("--study", dest="correct_study", metavar="UID", required=True)
    where = reanalyze.add_mutually_exclusive_group()
    where.add_argument("--slice-uid", metavar="SOP", help="analyse this CT instance (method manual)")
    where.add_argument("--z", type=float, metavar="MM", help="analyse the slice nearest this z (mm)")
    reanalyze.add_argument("--height-m", type=float, help="height in metres")
    reanalyze.add_argument("--weight-kg", type=float, help="weight in kilograms")
    reanalyze.add_argument("--sex", choices=["M", "F"], help="sex for the cut-offs")
    reanalyze.add_argument("--reason", default="", help="why (kept in the new SR and result)")
    reanalyze.add_argument("-v", "--verbose", action="store_true")

    echo = sub.add_parser("echo", help="C-ECHO a DICOM peer: bodycomp echo AE@HOST:PORT")
    echo.add_argument("target", metavar="AE@HOST:PORT")
    echo.add_argument("--config", help=config_help)
    echo.add_argument("--ae-title", help="calling AE title (default: the node's)")
    echo.add_argument("-v", "--verbose", action="store_true")


NODE_COMMANDS = ("serve", "worker", "status", "export", "resend", "echo", "reanalyze")
NODE_FLAGS = (
    "data_dir",
    "ae_title",
    "host",
    "port",
    "stable_seconds",
    "broker_url",
    "all_series",
    "concurrency",
    "metrics_port",
    "metrics_host",
    "max_associations",
    "receivers",
    "network_timeout",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "tls_crl",
    "tls_verify_client",
    "hl7_port",
    "site_table",
)

#: ``serve`` and ``worker`` create files readable by the service user only: the spool, the index,
#: results and the broker hold PHI (set before any file or child process is created).
SERVICE_UMASK = 0o077


def _private_data_dir(settings: Settings) -> None:
    """Use a private umask and create the data directory 0700; warn if an existing one is open."""
    os.umask(SERVICE_UMASK)
    data_dir = settings.node.data_dir
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not os.access(data_dir, os.R_OK | os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not readable and writable by this user")
    except OSError as exc:  # a setting the node cannot run with: exit 2, no restart loop
        raise ConfigError(f"node.data_dir {data_dir}: cannot use it ({exc.strerror or exc})") from exc
    mode = data_dir.stat().st_mode & 0o777
    if mode & 0o007:
        log.warning(
            "event=data_dir_permissions path=%s mode=%03o (others may read PHI: chmod 700)", data_dir, mode
        )


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if args.command in NODE_COMMANDS:
        node: dict[str, Any] = {name: getattr(args, name, None) for name in NODE_FLAGS}
        node["destinations"] = tuple(args.destination) if getattr(args, "destination", None) else None
        node["allow_ae"] = tuple(args.allow_ae) if getattr(args, "allow_ae", None) else None
        node["embedded_workers"] = getattr(args, "workers", None)
        overrides["node"] = node
    else:
        overrides["selection"] = {
            "series_instance_uid": args.series,
            "allow_derived": False if args.no_derived else None,
        }
    if args.command == "analyze":
        overrides["analysis"] = {"rule_set": args.rule_set, "preset": args.preset, "slices": args.slices}
    return load_settings(args.config, overrides)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from node.operate.service import run
    from node.tls import server_context

    logging.getLogger("bodycomp").setLevel(logging.INFO)
    server_context(settings.node)  # unusable certificate files: exit 2 before anything starts
    _private_data_dir(settings)
    try:
        return run(settings, args.config)
    except OSError as exc:
        print(f"bodycomp: cannot listen on {settings.node.host}:{settings.node.port}: {exc}", file=sys.stderr)
        # an address this machine does not have, a name that does not resolve or a port it may not
        # open is a setting to fix (exit 2: systemd does not restart); anything else may pass
        unusable = isinstance(exc, socket.gaierror) or exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES)
        return EXIT_INPUT if unusable else 1


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from node.operate.worker import run_worker

    logging.getLogger("bodycomp").setLevel(logging.INFO)
    _private_data_dir(settings)
    return run_worker(settings)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from node.operate.status import format_status, read_status

    report = read_status(settings.node, limit=args.limit)
    # both forms are safe for a terminal: format_status escapes control characters, and JSON
    # (ASCII-only by default) writes them as \uXXXX
    print(json.dumps(report, indent=2, default=str) if args.json else format_status(report))
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    """``--csv FILE`` writes FILE (mode 0600); ``--csv -`` writes to standard output, the
    summary line then going to standard error so that the output is the CSV alone."""
    from node.operate.status import export_csv

    if str(args.csv) == "-":
        rows = export_csv(settings.node, sys.stdout)
        print(f"{rows} analysed studies written to standard output", file=sys.stderr)
    else:
        rows = export_csv(settings.node, args.csv)
        print(f"{rows} analysed studies written to {args.csv}")
    return EXIT_OK


def cmd_resend(args: argparse.Namespace, settings: Settings) -> int:
    from node.operate.status import resend_dead, resend_study

    scope = "".join(
        f" {label} {value}"
        for label, value in (("of study", args.resend_study), ("to", args.resend_destination))
        if value
    )
    if args.resend_study:
        count = resend_study(settings.node, args.resend_study, args.resend_destination)
        print(
            f"{count} result(s){scope} queued for delivery (the node sends them)"
            if count
            else f"no results{scope}: the study has no finished analysis"
        )
        return EXIT_OK
    count = resend_dead(settings.node, args.resend_study, args.resend_destination)
    if count:
        print(f"{count} dead-lettered result(s){scope} queued for delivery again (the node sends them)")
    else:
        print(f"no dead-lettered results{scope}")
    return EXIT_OK


def cmd_reanalyze(args: argparse.Namespace, settings: Settings) -> int:
    from node.schedule.corrections import Correction, reanalyze

    os.umask(SERVICE_UMASK)  # the job folder it writes is the node's: private, as serve's
    correction = Correction(
        slice_sop_uid=args.slice_uid,
        z_mm=args.z,
        height_m=args.height_m,
        weight_kg=args.weight_kg,
        sex=args.sex,
        reason=args.reason,
        source="bodycomp reanalyze",
    )
    job_id, new = reanalyze(settings.node, args.correct_study, correction)
    if new:
        print(f"correction queued as job {job_id} (the running node analyses it and sends the new results)")
    else:
        print(f"the same correction was asked before: job {job_id} (see bodycomp status); nothing queued")
    return EXIT_OK


def cmd_echo(args: argparse.Namespace, settings: Settings) -> int:
    from node.operate.status import echo

    if not getattr(args, "verbose", False):  # our one line says what failed; pynetdicom's repeat it
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

    ok, message = echo(args.target, settings.node.ae_title, settings=settings.node)
    print(message, file=sys.stdout if ok else sys.stderr)
    return EXIT_OK if ok else 1


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    volume = load_series(args.path, settings.selection, settings.stack)
    if args.json:
        print(json.dumps(describe(volume), indent=2, default=str))
    else:
        print(format_text(volume))
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    analysis = settings.analysis
    options = AnalysisOptions(
        selection=settings.selection,
        stack=settings.stack,
        localiser=analysis.localiser,
        segmenter=analysis.segmenter,
        preset=analysis.preset,
        rule_set=analysis.rule_set,
        slices=analysis.slices,
        slice_index=args.slice,
        patient=PatientOverrides(height_m=args.height_m, weight_kg=args.weight_kg, sex=args.sex),
        write_dicom=args.dicom,
    )
    try:
        result = analyse(args.path, options, out_dir=args.out)
    except NotInFieldOfViewError as exc:
        if args.json and (args.out / "result.json").exists():
            print((args.out / "result.json").read_text(), end="")
        print(f"bodycomp: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2, default=str) if args.json else summary_text(result))
    return EXIT_OK


def cmd_batch(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when every study has a result (L3 outside the field of view is a result), 1 when
    some failed (each has a row with its error in results.csv), 130 when interrupted."""
    from workers.batch.run import BatchOptions, run_batch

    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: at least 1")
    os.umask(SERVICE_UMASK)  # results, pictures and the table are PHI, as the node's data directory
    analysis = settings.analysis
    options = BatchOptions(
        root=args.root,
        out=args.out,
        analysis=AnalysisOptions(
            selection=settings.selection,
            stack=settings.stack,
            localiser=analysis.localiser,
            segmenter=analysis.segmenter,
            preset=analysis.preset,
            rule_set=analysis.rule_set,
            slices=analysis.slices,
        ),
        jobs=args.jobs or 0,
        heights=args.heights,
        corrections=args.corrections,
        pseudonymise=args.pseudonymise,
        dicom=args.dicom,
        verbose=args.verbose,
    )
    try:
        summary = run_batch(options)
    except KeyboardInterrupt:  # while reading headers: nothing analysed yet
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(summary.files_skipped.items()))
    status = summary.by_status
    print(
        f"{summary.studies} stud{'y' if summary.studies == 1 else 'ies'} in {summary.files_seen} files"
        + (f" (skipped: {skipped})" if skipped else "")
        + f": {summary.analysed} analysed now, {summary.skipped} already done"
    )
    print(
        f"cohort: {status.get('done', 0)} measured, {status.get('l3_not_found', 0)} without L3 in the "
        f"field of view, {status.get('failed', 0)} failed, {status.get('pending', 0)} pending "
        f"({summary.seconds:.0f} s)"
    )
    tables = f"{summary.results_csv}" + (f" and {summary.results_parquet}" if summary.results_parquet else "")
    print(f"table: {tables}\ngallery: {summary.gallery}")
    if summary.interrupted:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return EXIT_OK if not status.get("failed") else 1


COMMANDS = {
    "inspect": cmd_inspect,
    "analyze": cmd_analyze,
    "batch": cmd_batch,
    "serve": cmd_serve,
    "worker": cmd_worker,
    "status": cmd_status,
    "export": cmd_export,
    "resend": cmd_resend,
    "echo": cmd_echo,
    "reanalyze": cmd_reanalyze,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    try:
        settings = _settings(args)
        return COMMANDS[args.command](args, settings)
    except BrokenPipeError:
        # `bodycomp status | head`: the reader has what it wanted; no traceback, the shell's code
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python's advice: no 2nd error)
        return 128 + 13
    except ConfigError as exc:
        print(f"bodycomp: configuration error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BodycompError as exc:
        print(f"bodycomp: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
