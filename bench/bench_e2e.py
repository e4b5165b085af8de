"""End-to-end latency through the node: last instance received → results stored at the PACS.

Issue #9, items 2 and 4. A benchmark series (bench/make_series.py, cached under --cache) goes
through real processes on loopback, as the node runs in production (``bodycomp serve`` with its
embedded broker and one worker):

* ``node``: DCMTK ``storescu`` → ``bodycomp serve`` → results by C-STORE to DCMTK ``storescp``;
* ``orthanc`` (``--orthanc``): ``storescu`` → Orthanc, whose routing script from
  ``deploy/orthanc/`` sends the stable series to the node → results back into Orthanc.

The latency reported excludes the configured waits (the node's ``--stable-seconds``, and Orthanc's
``StableAge`` in the Orthanc mode). Stage times come from the node's index (``instances``, ``jobs``,
``outbox``) and the analysis' own ``timings_s``; the end is when the last result file appeared at
the destination (storescp's file times, or Orthanc's REST answer, polled every 0.1 s). Prints a
table and writes JSON; bounded in time; every process started here is stopped here.

    .venv/bin/python bench/bench_e2e.py --slices 500 --syntaxes raw j2k --runs 2 --orthanc
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_receive import STORESCP, free_port, send, stop, wait_port  # noqa: E402
from bench.make_series import make_series  # noqa: E402

BODYCOMP = str(Path(sys.executable).with_name("bodycomp"))
LUA = ROOT / "deploy" / "orthanc" / "route-to-bodycomp.lua"
RESULT_TIMEOUT = 300
RESULT_CLASSES = 3  # SEG, SR, colour SC


def start_node(
    data: Path, port: int, stable: float, destination: str, *extra: str
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BODYCOMP_")}
    env["TCP_NODELAY"] = "1"
    log = (data.parent / "serve.log").open("wb")
    command = [
        BODYCOMP,
        "serve",
        "--data-dir",
        str(data),
        "--port",
        str(port),
        "--ae-title",
        "BODYCOMP",
        "--stable-seconds",
        str(stable),
        "--destination",
        destination,
        *extra,
    ]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    wait_port(port, proc)
    # The embedded worker must be ready before the clock starts (its start-up is not latency).
    deadline = time.monotonic() + 60
    while "ready" not in (data.parent / "serve.log").read_text(errors="replace"):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("the node's worker did not become ready")
        time.sleep(0.2)
    return proc


def index_times(data: Path) -> dict[str, float]:
    db = sqlite3.connect(f"file:{data / 'index.sqlite'}?mode=ro", uri=True)
    try:
        first, last, count = db.execute(
            "SELECT min(received), max(received), count(*) FROM instances"
        ).fetchone()
        job = db.execute(
            "SELECT created, enqueued, started, finished, state, result_dir FROM jobs "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        delivered = db.execute(
            "SELECT max(delivered), count(*) FROM outbox WHERE state='delivered'"
        ).fetchone()
    finally:
        db.close()
    if job is None:
        raise RuntimeError("no analysis job in the index")
    created, enqueued, started, finished, state, result_dir = job
    if state != "done":
        raise RuntimeError(f"the analysis ended {state}")
    result = json.loads((data / result_dir / "out" / "result.json").read_text())
    return {
        "instances": count,
        "first_received": first,
        "last_received": last,
        "job_created": created,
        "job_enqueued": enqueued or created,
        "job_started": started or created,
        "job_finished": finished or created,
        "last_delivered": delivered[0] or 0.0,
        "delivered": delivered[1],
        "analysis_timings_s": result.get("timings_s", {}),
    }


def stages(t: dict[str, Any], stable: float, done: float) -> dict[str, Any]:
    """Seconds per step after the last instance; ``total_excl_wait_s`` is the headline."""
    last = t["last_received"]
    return {
        "stable_wait_s": round(t["job_created"] - last, 2),
        "dispatch_s": round(t["job_enqueued"] - t["job_created"], 2),
        "queue_to_worker_s": round(t["job_started"] - t["job_enqueued"], 2),
        "analysis_s": round(t["job_finished"] - t["job_started"], 2),
        "to_delivered_s": round(t["last_delivered"] - t["job_finished"], 2),
        "delivered_to_stored_s": round(done - t["last_delivered"], 2),
        "total_s": round(done - last, 2),
        "total_excl_wait_s": round(done - last - stable, 2),
        "analysis_timings_s": {k: round(v, 2) for k, v in t["analysis_timings_s"].items()},
    }


def run_node(files: list[Path], work: Path, stable: float) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    dest = work / "pacs"
    dest.mkdir(parents=True)
    dest_port, node_port = free_port(), free_port()
    with (work / "storescp.log").open("wb") as log:
        pacs = subprocess.Popen(
            [STORESCP, "-aet", "DEST", "+xa", "-od", str(dest), str(dest_port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"TCP_NODELAY": "1"},
        )
    node = None
    try:
        wait_port(dest_port, pacs)
        node = start_node(
            work / "data", node_port, stable, f"DEST@127.0.0.1:{dest_port}", "--allow-ae", "BENCH"
        )
        send(node_port, "BODYCOMP", files, 1)
        deadline = time.monotonic() + RESULT_TIMEOUT
        while len(list(dest.iterdir())) < RESULT_CLASSES:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no results after {RESULT_TIMEOUT} s: see {work / 'serve.log'}")
            time.sleep(0.1)
        time.sleep(0.5)  # the last file complete; storescp writes it before answering
        done = max(p.stat().st_mtime for p in dest.iterdir())
        # The outbox row is marked delivered just after the answer: give the node a moment.
        deadline = time.monotonic() + 30
        while (t := index_times(work / "data"))["delivered"] < RESULT_CLASSES and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        if node is not None:
            stop(node, timeout=60)
        stop(pacs)
    row = stages(t, stable, done)
    row["instances"] = t["instances"]
    shutil.rmtree(work, ignore_errors=True)
    return row


def run_orthanc(files: list[Path], work: Path, stable: float, stable_age: int) -> dict[str, Any]:
    from tests.orthanc import running_orthanc

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    node_port = free_port()
    with running_orthanc(
        work / "orthanc",
        modalities={"bodycomp": ["BODYCOMP", "127.0.0.1", node_port]},
        LuaScripts=[str(LUA)],
        StableAge=stable_age,
        OverwriteInstances=True,
    ) as orthanc:
        node = start_node(
            work / "data",
            node_port,
            stable,
            f"ORTHANC@127.0.0.1:{orthanc.dicom_port}",
            "--allow-ae",
            "ORTHANC",
        )
        try:
            start = time.time()
            send(orthanc.dicom_port, orthanc.ae_title, files, 1)
            sent = time.time()
            deadline = time.monotonic() + RESULT_TIMEOUT
            while True:
                series = orthanc.get("/series?expand")
                modalities = {s["MainDicomTags"].get("Modality") for s in series}
                if {"SEG", "SR", "OT"} <= modalities:
                    done = time.time()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no results in Orthanc after {RESULT_TIMEOUT} s")
                time.sleep(0.1)
            t = index_times(work / "data")
        finally:
            stop(node, timeout=60)
    row = stages(t, stable, done)
    row.update(
        {
            "instances": t["instances"],
            "storescu_to_orthanc_s": round(sent - start, 2),
            # Orthanc waits StableAge after its last instance, then sends the series to the node.
            "orthanc_stable_and_route_s": round(t["first_received"] - sent, 2),
            "orthanc_to_node_transfer_s": round(t["last_received"] - t["first_received"], 2),
            "total_from_last_at_orthanc_s": round(done - sent, 2),
            "total_excl_waits_s": round(done - sent - stable - stable_age, 2),
        }
    )
    shutil.rmtree(work, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--syntaxes", nargs="+", default=["raw"], choices=["raw", "j2k"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--stable-seconds", type=float, default=2.0, help="the node's stable wait")
    parser.add_argument("--orthanc", action="store_true", help="also through Orthanc and its routing script")
    parser.add_argument("--stable-age", type=int, default=2, help="Orthanc's StableAge in --orthanc")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bodycomp-bench"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "e2e.json")
    args = parser.parse_args()
    work = args.cache / "e2e-work"
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        for syntax in args.syntaxes:
            series = args.cache / f"series-{args.slices}-{syntax}"
            if not series.exists():
                make_series(args.slices, series, syntax)
            files = sorted(p for p in series.rglob("*") if p.is_file())
            modes = ["node", "orthanc"] if args.orthanc else ["node"]
            for mode in modes:
                if mode == "node":
                    row = run_node(files, work, args.stable_seconds)
                else:
                    row = run_orthanc(files, work, args.stable_seconds, args.stable_age)
                row.update({"mode": mode, "syntax": syntax, "slices": args.slices, "run": run + 1})
                rows.append(row)
                print(
                    f"run {run + 1} {mode} {syntax}: {row['total_excl_wait_s']:.1f} s after the stable wait",
                    file=sys.stderr,
                )
    print(f"\n{args.slices} slices of 512x512; node --stable-seconds {args.stable_seconds}; times in s")
    columns = [
        ("mode", 7),
        ("syntax", 6),
        ("run", 3),
        ("dispatch_s", 8),
        ("queue_to_worker_s", 8),
        ("analysis_s", 8),
        ("to_delivered_s", 9),
        ("delivered_to_stored_s", 8),
        ("total_excl_wait_s", 10),
    ]
    names = ["mode", "syntax", "run", "dispatch", "to worker", "analysis", "send", "stored", "e2e-wait"]
    print(" ".join(f"{n:>{w}}" for n, (_, w) in zip(names, columns, strict=True)))
    for r in rows:
        print(" ".join(f"{r[k]:>{w}}" for k, w in columns))
    for r in rows:
        if r["mode"] == "orthanc":
            print(
                f"orthanc {r['syntax']} run {r['run']}: StableAge {args.stable_age} s + routing "
                f"{r['orthanc_stable_and_route_s']} s, Orthanc→node {r['orthanc_to_node_transfer_s']} s, "
                f"last instance at Orthanc → results in Orthanc {r['total_from_last_at_orthanc_s']} s, "
                f"beyond both waits {r['total_excl_waits_s']} s"
            )
    summary = {}
    for mode in {r["mode"] for r in rows}:
        for syntax in args.syntaxes:
            values = [r["total_excl_wait_s"] for r in rows if r["mode"] == mode and r["syntax"] == syntax]
            if values:
                summary[f"{mode} {syntax}"] = round(statistics.median(values), 2)
    print("median latency after the node's stable wait:", summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"slices": args.slices, "stable_seconds": args.stable_seconds, "rows": rows, "median": summary},
            indent=2,
        )
    )
    print(f"written {args.json}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop children in the finally blocks
    main()
