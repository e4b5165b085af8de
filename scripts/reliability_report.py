#!/usr/bin/env python
"""Write ``docs/reliability.md`` from the tallies the fault, load, fuzz and security tests recorded.

Why: the figures a hospital reads must come from a test run, not from someone's keyboard. Each
scenario test appends a tally per run to ``.cache/reliability/results.jsonl`` (see
``tests/reliability.py``); this script keeps, for every scenario, the runs of the latest pytest
session that ran it, adds them up and renders the table, with the machine and the commit.

Usage::

    ./scripts/test.sh -m reliability                 # the fast scenarios (also part of the full suite)
    ./scripts/test.sh -m long                         # the long ones (20+ min)
    .venv/bin/python scripts/reliability_report.py --write docs/reliability.md

Without ``--write`` the table is printed. ``--check`` exits 1 when a scenario failed or lost data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability import Tally, log_path  # noqa: E402

COLUMNS = (
    ("runs", "runs"),
    ("sent", "instances sent"),
    ("acknowledged", "acknowledged"),
    ("refused", "refused"),
    ("stored", "stored"),
    ("analysed", "studies analysed"),
    ("delivered", "results delivered"),
    ("duplicates", "duplicates"),
    ("lost", "lost"),
)


def load(path: Path) -> list[Tally]:
    tallies = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            tallies.append(Tally(**json.loads(line)))
    return tallies


def latest_per_scenario(tallies: list[Tally]) -> OrderedDict[str, list[Tally]]:
    """Each scenario's runs from the latest session that ran it, in first-recorded order."""
    latest_session: dict[str, str] = {}
    latest_time: dict[str, float] = {}
    for tally in tallies:
        if tally.recorded_at >= latest_time.get(tally.scenario, 0.0):
            latest_time[tally.scenario] = tally.recorded_at
            latest_session[tally.scenario] = tally.session
    grouped: OrderedDict[str, list[Tally]] = OrderedDict()
    for tally in sorted(tallies, key=lambda t: t.recorded_at):
        if tally.session == latest_session[tally.scenario]:
            grouped.setdefault(tally.scenario, []).append(tally)
    return grouped


def summarise(runs: list[Tally]) -> Tally:
    total = Tally(scenario=runs[0].scenario, runs=0)
    for run in runs:
        total.add(run)
    total.passed = all(run.passed for run in runs)
    total.seconds = round(sum(run.seconds for run in runs), 1)
    notes = [run.notes for run in runs if run.notes]
    total.notes = notes[-1] if notes else ""
    total.recorded_at = max(run.recorded_at for run in runs)
    return total


def ratio(done: int, expected: int) -> str:
    return f"{done}/{expected}" if expected else str(done)


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "?"
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU ({cpu or 'unknown'}), "
        f"Python {platform.python_version()}; report written at commit {commit or '?'}"
    )


def render(grouped: OrderedDict[str, list[Tally]]) -> str:
    header = "| scenario | " + " | ".join(title for _, title in COLUMNS) + " | time (s) | verdict |"
    rule = "|" + "---|" * (len(COLUMNS) + 3)
    rows = []
    details = []
    for scenario, runs in grouped.items():
        total = summarise(runs)
        cells: list[Any] = []
        for name, _ in COLUMNS:
            if name == "analysed":
                cells.append(ratio(total.analysed, total.expected_analysed))
            elif name == "delivered":
                cells.append(ratio(total.delivered, total.expected_delivered))
            else:
                cells.append(getattr(total, name))
        verdict = "pass" if total.passed and total.lost == 0 and total.duplicates == 0 else "**FAIL**"
        rows.append(
            f"| {scenario} | " + " | ".join(str(c) for c in cells) + f" | {total.seconds} | {verdict} |"
        )
        extra = {k: v for run in runs for k, v in run.extra.items()}
        if total.notes or extra:
            figures = ", ".join(f"{k} = {v}" for k, v in sorted(extra.items()))
            details.append(f"- **{scenario}**: {total.notes}" + (f" ({figures})" if figures else ""))
    when = time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime(max(r.recorded_at for runs in grouped.values() for r in runs))
    )
    lines = [
        "# Reliability: faults, load, hostile input and security, in figures",
        "",
        "<!-- Generated by scripts/reliability_report.py from the tests' tallies; do not edit. -->",
        "",
        f"Recorded {when} on {machine()}.",
        "",
        "Every row is a test in `tests/` that drives real processes on loopback (the node as",
        "`bodycomp serve`, DCMTK `storescu`/`storescp`, Orthanc, private Redis/RabbitMQ instances the",
        "test starts itself) and counts from the peers' side: what the sender offered, what got a",
        "Success status, what is in the spool, what was analysed and what the destination holds.",
        "Counts are distinct instances (a re-sent instance counts once). *Lost* = acknowledged but",
        "not stored, plus expected results never delivered; *duplicates* = the same instance twice",
        "or a study's results delivered twice under different UIDs.",
        "",
        header,
        rule,
        *rows,
        "",
    ]
    if details:
        lines += ["## Notes per scenario", "", *details, ""]
    lines += [
        "## How to reproduce",
        "",
        "```",
        "./scripts/test.sh                      # the fast scenarios run with the whole suite",
        "./scripts/test.sh -m long              # the long scenarios (marker `long`)",
        ".venv/bin/python scripts/reliability_report.py --write docs/reliability.md",
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, default=None, help="tallies file (default: the tests' one)")
    parser.add_argument("--write", type=Path, default=None, help="write the Markdown here")
    parser.add_argument("--check", action="store_true", help="exit 1 if a scenario failed or lost data")
    args = parser.parse_args(argv)
    path = args.input or log_path()
    if not path.exists():
        print(f"no tallies at {path}: run the tests first (./scripts/test.sh)", file=sys.stderr)
        return 2
    grouped = latest_per_scenario(load(path))
    if not grouped:
        print(f"{path} holds no tallies", file=sys.stderr)
        return 2
    text = render(grouped)
    if args.write:
        args.write.write_text(text, encoding="utf-8")
        print(f"wrote {args.write} ({len(grouped)} scenarios)")
    else:
        print(text)
    if args.check:
        bad = [
            s for s, runs in grouped.items() if not (t := summarise(runs)).passed or t.lost or t.duplicates
        ]
        if bad:
            print("failed or lossy scenarios: " + ", ".join(bad), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
