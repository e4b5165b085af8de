"""Cohort throughput of ``bodycomp batch``: studies per hour, ``--jobs 1`` vs ``--jobs 2``, with and
without ``--dicom`` (issue #25).

A cohort of N studies of ~500 slices (512 × 512) is built once under --cache: one series from the
real example CT (bench/make_series.py), then N-1 copies of it as other patients (new Study,
Series and SOP Instance UIDs, PatientID, AccessionNumber), each in its own folder. Every
configuration runs the real command, ``bodycomp batch COHORT --out FRESH --jobs J [--dicom]``, in
a child process into a fresh output folder, and its wall time (discovery, analyses, table and
gallery included) gives the rate. The per-study times come from the run's results.csv. Runs
alternate configurations round by round (the machine is shared: see docs/benchmarks.md). Prints
a table and writes JSON. Timing is measured here, never asserted in tests.

The machine is shared with other engineers' test runs, and on 2 cores one other busy process
halves what ``--jobs 2`` can gain. So each run waits (up to --wait-quiet seconds) until the CPUs
have been idle for a moment, and measures the CPU time spent by others during it: all CPU time
of the machine (/proc/stat) minus the batch's own (its main process, from the rusage of this
child, and each study's analysing process, ``result.json``'s ``batch.cpu_s``). The table shows,
per configuration, the run with the least CPU taken by others (``other CPU s``), and the CPU
seconds each study cost, which other load does not change.

    .venv/bin/python bench/bench_batch.py --studies 8 --slices 500 --rounds 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.make_series import make_series  # noqa: E402

BODYCOMP = Path(sys.executable).with_name("bodycomp")
CONFIGS = [(1, False), (2, False), (1, True), (2, True)]


def build_cohort(folder: Path, studies: int, slices: int, syntax: str) -> Path:
    """``studies`` studies of ``slices`` slices under ``folder`` (cached: built once)."""
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    first = folder / "P000"
    start = time.perf_counter()
    make_series(slices, first, syntax)
    for number in range(1, studies):
        study, series = generate_uid(), generate_uid()
        target = folder / f"P{number:03d}"
        target.mkdir(parents=True)
        for path in sorted(first.iterdir()):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.PatientID, ds.AccessionNumber = f"BENCH-{number:03d}", f"ACC-{number:03d}"
            ds.save_as(target / path.name, enforce_file_format=True)
    done.touch()
    print(
        f"built {studies} studies of {slices} slices in {time.perf_counter() - start:.0f} s", file=sys.stderr
    )
    return folder


def busy_fraction(seconds: float = 2.0) -> float:
    """How busy all CPUs were over the next ``seconds`` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(limit_s: float, threshold: float = 0.1) -> float:
    """Wait until the CPUs are nearly idle (at most ``limit_s``); the last busy fraction."""
    deadline = time.monotonic() + limit_s
    busy = busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


def cpu_seconds() -> float:
    """CPU seconds all CPUs of the machine have been busy since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def run_once(cohort: Path, out: Path, jobs: int, dicom: bool) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    command = [str(BODYCOMP), "batch", str(cohort), "--out", str(out), "--jobs", str(jobs)]
    if dicom:
        command.append("--dicom")
    busy_start, own_start = cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False, timeout=3600)
    wall = time.perf_counter() - start
    busy, own = cpu_seconds() - busy_start, resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu = own.ru_utime + own.ru_stime - own_start.ru_utime - own_start.ru_stime
    if completed.returncode != 0:
        raise RuntimeError(completed.stdout[-2000:] + completed.stderr[-2000:])
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    done = [r for r in rows if r["status"] == "done"]
    if len(done) != len(rows):
        raise RuntimeError(f"{len(rows) - len(done)} studies not measured: {[r['error'] for r in rows]}")

    def mean(column: str) -> float:
        values = [float(r[column]) for r in done if r[column]]
        return round(statistics.mean(values), 3) if values else 0.0

    cpu = [
        json.loads((out / "studies" / r["study_key"] / "result.json").read_text())["batch"]["cpu_s"]
        for r in done
    ]

    return {
        "jobs": jobs,
        "dicom": dicom,
        "studies": len(rows),
        "wall_s": round(wall, 2),
        "studies_per_hour": round(len(rows) / wall * 3600),
        "mean_study_wall_s": mean("time_wall_s"),
        "mean_analysis_s": mean("time_analysis_s"),
        "mean_load_s": mean("time_load_s"),
        "mean_l3_s": mean("time_l3_s"),
        "mean_segment_s": mean("time_segment_s"),
        "mean_pictures_s": mean("time_pictures_s"),
        "mean_dicom_s": mean("time_dicom_s"),
        "mean_cpu_s": round(statistics.mean(cpu), 3),
        "machine_cpu_s": round(busy, 1),
        "batch_cpu_s": round(main_cpu + sum(cpu), 1),
        "other_cpu_s": round(max(0.0, busy - main_cpu - sum(cpu)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--syntax", choices=["raw", "j2k"], default="raw")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every configuration, alternated")
    parser.add_argument("--wait-quiet", type=float, default=300, help="seconds to wait for idle CPUs per run")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bodycomp-bench"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "batch.json")
    args = parser.parse_args()
    cohort = build_cohort(
        args.cache / f"batch-cohort-{args.studies}x{args.slices}-{args.syntax}",
        args.studies,
        args.slices,
        args.syntax,
    )
    runs = []
    for round_number in range(args.rounds):
        for jobs, dicom in CONFIGS:
            busy = wait_quiet(args.wait_quiet)
            result = run_once(cohort, args.cache / "batch-out", jobs, dicom)
            result["round"] = round_number
            result["busy_before"] = round(busy, 2)
            runs.append(result)
            print(
                f"round {round_number} jobs {jobs} dicom {dicom!s:5}: {result['wall_s']:.1f} s, "
                f"{result['studies_per_hour']} studies/h, others used {result['other_cpu_s']} CPU s "
                f"(CPUs {busy:.0%} busy before)",
                file=sys.stderr,
            )
    rows = []
    for jobs, dicom in CONFIGS:
        mine = [r for r in runs if r["jobs"] == jobs and r["dicom"] == dicom]
        cleanest = min(mine, key=lambda r: (r["other_cpu_s"], r["wall_s"]))
        row = {k: v for k, v in cleanest.items() if k != "round"}
        row["median_studies_per_hour"] = round(statistics.median(r["studies_per_hour"] for r in mine))
        rows.append(row)
    base = {r["dicom"]: r["studies_per_hour"] for r in rows if r["jobs"] == 1}
    print(
        f"{'jobs':>4} {'dicom':>5} {'wall s':>7} {'studies/h':>9} {'x jobs1':>7} "
        f"{'study s':>7} {'CPU s':>6} {'analysis':>8} {'load':>6} {'L3':>6} {'segment':>7} {'pictures':>8} "
        f"{'DICOM':>6} {'other CPU s':>11} {'median/h':>8}"
    )
    for r in rows:
        r["speedup_vs_jobs1"] = round(r["studies_per_hour"] / base[r["dicom"]], 2)
        print(
            f"{r['jobs']:>4} {r['dicom']!s:>5} {r['wall_s']:7.1f} {r['studies_per_hour']:9.0f} "
            f"{r['speedup_vs_jobs1']:7.2f} {r['mean_study_wall_s']:7.2f} {r['mean_cpu_s']:6.2f} "
            f"{r['mean_analysis_s']:8.2f} {r['mean_load_s']:6.2f} {r['mean_l3_s']:6.2f} "
            f"{r['mean_segment_s']:7.2f} {r['mean_pictures_s']:8.2f} {r['mean_dicom_s']:6.2f} "
            f"{r['other_cpu_s']:11.1f} {r['median_studies_per_hour']:8.0f}"
        )
    machine = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "studies": args.studies,
        "slices": args.slices,
        "syntax": args.syntax,
        "rounds": args.rounds,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows, "runs": runs}, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
