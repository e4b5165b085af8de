"""Analysis time per stage and peak memory per study size (issue #9, items 2 and 3).

For each size (slices of 512 × 512) and transfer syntax, a series is built from the real example
CT (bench/make_series.py, cached under --cache) and analysed in a fresh child process with
``--dicom`` so that the peak RSS of one analysis is measured on its own. The child first imports
what the worker imports before forking (workers/warmup.py), so the stage times are those of a
worker's analysis child, and the peak RSS includes those modules. Prints a table and writes
JSON. Timing is measured here, never asserted in tests.

    .venv/bin/python bench/bench_analysis.py --sizes 200 500 1000 --syntaxes raw j2k j2k-full

A syntax suffixed ``-full`` analyses the same series with ``AnalysisOptions(preview=False)``: every
slice decoded at full resolution, as before reduced-resolution JPEG 2000 decoding
(workers/load/preview.py), for a before/after ratio in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.make_series import make_series  # noqa: E402

CHILD = """
import json, sys, time
from pathlib import Path
from workers.warmup import preload
preload_s = preload()  # as the worker does before forking its analysis children (workers/warmup.py)
from workers.pipeline import AnalysisOptions, analyse
start = time.perf_counter()
options = AnalysisOptions(write_dicom=True, preview=sys.argv[3] != "full")
result = analyse(sys.argv[1], options, out_dir=Path(sys.argv[2]))
total = time.perf_counter() - start
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would inherit the peak
# of the benchmark process that built the series.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"timings_s": result["timings_s"], "total_s": total, "peak_rss_mb": hwm / 1024,
                  "preload_s": preload_s,
                  "l3_slice": result["l3"]["slice_index"], "status": result["status"]}))
"""


def run_one(series: Path, out: Path, mode: str = "preview") -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(series), str(out), mode],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-2000:])
    data: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000])
    parser.add_argument("--syntaxes", nargs="+", default=["raw", "j2k"])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bodycomp-bench"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "analysis.json")
    args = parser.parse_args()
    rows = []
    for variant in args.syntaxes:
        syntax, full, _ = variant.partition("-full")
        for size in args.sizes:
            series = args.cache / f"series-{size}-{syntax}"
            if not series.exists():
                start = time.perf_counter()
                make_series(size, series, syntax)
                print(f"built {series} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            data = run_one(series, args.cache / f"out-{size}-{variant}", "full" if full else "preview")
            rows.append({"slices": size, "syntax": variant, **data})
    stages = sorted(
        {s for r in rows for s in r["timings_s"]},
        key=lambda s: list(rows[0]["timings_s"]).index(s) if s in rows[0]["timings_s"] else 99,
    )
    header = (
        f"{'slices':>6} {'syntax':>8} "
        + " ".join(f"{s[:12]:>12}" for s in stages)
        + f" {'total s':>8} {'RSS MB':>7}"
    )
    print(header)
    for r in rows:
        cells = " ".join(f"{r['timings_s'].get(s, 0):12.2f}" for s in stages)
        print(f"{r['slices']:>6} {r['syntax']:>8} {cells} {r['total_s']:8.2f} {r['peak_rss_mb']:7.0f}")
    base = [r for r in rows if r["slices"] == min(args.sizes)]
    for r in rows:
        ref = next(b for b in base if b["syntax"] == r["syntax"])
        r["time_ratio_to_smallest"] = round(r["total_s"] / ref["total_s"], 2)
        r["rss_ratio_to_smallest"] = round(r["peak_rss_mb"] / ref["peak_rss_mb"], 2)
    machine = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
