"""The ``bodycomp`` command.

Subcommands: ``serve`` runs the DICOM node (C-ECHO, C-STORE into a durable spool);
``inspect PATH`` describes what a folder or file holds and which series would be analysed;
``analyze PATH --out DIR`` runs the analysis and writes ``DIR/result.json``.
Exit codes: 0 success (also when a result is flagged for review), 2 bad input or configuration,
3 the anatomy to measure is not in the field of view.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.config import ConfigError, Settings, load_settings
from node.scp import serve
from workers import __version__
from workers.errors import BodycompError
from workers.load import load_series
from workers.pipeline import AnalysisOptions, analyse
from workers.report import describe, format_text

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

    serve = sub.add_parser("serve", help="run the DICOM node: C-ECHO and C-STORE into the spool")
    serve.add_argument("--config", help="TOML settings file (default: $BODYCOMP_CONFIG)")
    serve.add_argument("--ae-title", help="this node's AE title (default BODYCOMP)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 11112)")
    serve.add_argument("--spool", type=Path, help="folder for received instances (default var/spool)")
    serve.add_argument("-v", "--verbose", action="store_true")

    analyze = sub.add_parser("analyze", help="analyse one CT and write DIR/result.json")
    analyze.add_argument("path", type=Path, help="DICOM folder (recursive), DICOM file or NIfTI file")
    analyze.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    _add_common(analyze)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, dict[str, Any]] = {}
    if args.command == "serve":
        overrides["node"] = {
            "ae_title": args.ae_title,
            "host": args.host,
            "port": args.port,
            "spool_dir": args.spool,
        }
    else:
        overrides["selection"] = {
            "series_instance_uid": args.series,
            "allow_derived": False if args.no_derived else None,
        }
    return load_settings(args.config, overrides)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    logging.getLogger("bodycomp").setLevel(logging.INFO)
    try:
        serve(settings.node, block=True)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"bodycomp: cannot listen on {settings.node.host}:{settings.node.port}: {exc}", file=sys.stderr)
        return 1
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace, settings: Settings) -> int:
    volume = load_series(args.path, settings.selection, settings.stack)
    if args.json:
        print(json.dumps(describe(volume), indent=2, default=str))
    else:
        print(format_text(volume))
    return EXIT_OK


def cmd_analyze(args: argparse.Namespace, settings: Settings) -> int:
    options = AnalysisOptions(selection=settings.selection, stack=settings.stack)
    result = analyse(args.path, options, out_dir=args.out)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"result written to {args.out / 'result.json'} (status: {result['status']})")
    return EXIT_OK


COMMANDS = {"inspect": cmd_inspect, "analyze": cmd_analyze, "serve": cmd_serve}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = _settings(args)
        return COMMANDS[args.command](args, settings)
    except ConfigError as exc:
        print(f"bodycomp: configuration error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BodycompError as exc:
        print(f"bodycomp: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
