"""Receive throughput: DCMTK storescu → DCMTK storescp vs ``bodycomp serve`` (issue #9, item 1).

The same CT series (bench/make_series.py, cached under --cache) is sent by ``/usr/bin/storescu``
(``TCP_NODELAY=1``) over loopback to

* ``storescp``: DCMTK's storescp writing to disk (no fsync), one association;
* ``bodycomp``: ``bodycomp serve`` with ``--stable-seconds`` far beyond the run and no worker, so
  only the receive path (spool with fsync + index commit) runs, one association;
* ``bodycomp x4``: the same, the series split over 4 concurrent associations (4 storescu);
* ``storescp x4``: storescp ``--fork`` with 4 concurrent associations, for reference;
* ``bodycomp-rxN x4`` (``--receivers N``): ``bodycomp serve --receivers N``, N receiving
  processes sharing the port, 4 concurrent associations;
* ``pynetdicom x1`` (``--noop``): a bare pynetdicom SCP with the node's settings (chunked receive,
  TCP_NODELAY, unlimited PDU) whose handler answers Success at once: the ceiling of any handler.

Every receiver starts fresh (new process, empty folder) for each run and the modes alternate
within a round, so a noisy machine slows them alike; ratios are taken within a round. A run counts
only if every instance arrived (files in storescp's folder, rows in bodycomp's index). Prints a
table and writes JSON. With ``--profile`` one more bodycomp run per syntax is sampled by py-spy and
the hottest functions are written next to the JSON.

    .venv/bin/python bench/bench_receive.py --slices 500 --syntaxes raw j2k --runs 3
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.make_series import make_series  # noqa: E402

STORESCU = "/usr/bin/storescu"  # DCMTK's, never the venv's pynetdicom app of the same name
STORESCP = "/usr/bin/storescp"
BODYCOMP = str(Path(sys.executable).with_name("bodycomp"))
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
SEND_TIMEOUT = 600
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The ``--noop`` receiver: pynetdicom as the node configures it, doing nothing with the data.
NOOP_SCP = """
import socket, sys
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from node import reactor
from node.scp import TRANSFER_SYNTAXES
_config.STORE_RECV_CHUNKED_DATASET = True
def nodelay(event):
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
ae = AE(ae_title="NOOP")
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
ae.maximum_pdu_size = 0
handlers = [(evt.EVT_CONN_OPEN, nodelay), (evt.EVT_C_STORE, lambda event: 0x0000)]
reactor.start_server(ae, ("127.0.0.1", int(sys.argv[1])), block=True, evt_handlers=handlers, ssl_context=None)
"""
#: Extra environment for ``bodycomp serve`` (``--node-env KEY=VALUE``), e.g. a setting to compare.
NODE_ENV: dict[str, str] = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"receiver not listening on {port} after {timeout} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its living children (``bodycomp serve --receivers``)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Receiver:
    """One fresh receiving process in its own folder."""

    def __init__(self, kind: str, work: Path, concurrent: int) -> None:
        self.kind = kind
        self.work = work
        self.port = free_port()
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log = (work / "receiver.log").open("wb")
        if kind == "storescp":
            self.ae = "STORESCP"
            command = [STORESCP, "-aet", self.ae, "+xa", "-od", str(work / "out")]
            if concurrent > 1:
                command.append("--fork")
            (work / "out").mkdir()
            command.append(str(self.port))
        elif kind == "pynetdicom":
            self.ae = "NOOP"
            command = [sys.executable, "-c", NOOP_SCP, str(self.port)]
        else:
            self.ae = "BODYCOMP"
            receivers = int(kind.partition("-rx")[2] or 1)
            command = [
                BODYCOMP,
                "serve",
                "--data-dir",
                str(work / "data"),
                "--port",
                str(self.port),
                "--ae-title",
                self.ae,
                "--stable-seconds",
                "100000",
                "--workers",
                "0",
                "--receivers",
                str(receivers),
            ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BODYCOMP_")}
        env["TCP_NODELAY"] = "1"
        env["PYTHONPATH"] = str(ROOT)
        if kind.startswith("bodycomp"):
            env.update(NODE_ENV)
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        log.close()
        wait_port(self.port, self.proc)
        if kind.startswith("bodycomp"):
            time.sleep(1.0 + receivers)  # let the node's start-up (scheduler, sender, receivers) settle

    def count(self) -> int:
        if self.kind == "pynetdicom":
            return -1  # keeps nothing; storescu's exit status says every instance was answered
        if self.kind == "storescp":
            return sum(1 for p in (self.work / "out").iterdir() if p.is_file())
        db = sqlite3.connect(f"file:{self.work / 'data' / 'index.sqlite'}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
        finally:
            db.close()

    def close(self) -> None:
        stop(self.proc)
        shutil.rmtree(self.work, ignore_errors=True)


def send(port: int, ae: str, files: list[Path], concurrent: int) -> float:
    """``concurrent`` storescu processes, each with every n-th file; wall seconds until all are done."""
    shards = [files[i::concurrent] for i in range(concurrent)]
    env = {"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-xv", "-aet", "BENCH", "-aec", ae, "127.0.0.1", str(port), *map(str, shard)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        for shard in shards
    ]
    outputs = [p.communicate(timeout=SEND_TIMEOUT)[0].decode(errors="replace") for p in procs]
    elapsed = time.perf_counter() - start
    for proc, output in zip(procs, outputs, strict=True):
        if proc.returncode != 0 or "Failed" in output or "E:" in output:
            raise RuntimeError(f"storescu failed ({proc.returncode}):\n{output[-2000:]}")
    return elapsed


def one_run(kind: str, files: list[Path], concurrent: int, work: Path) -> dict[str, Any]:
    receiver = Receiver(kind, work, concurrent)
    try:
        cpu0 = cpu_seconds(receiver.proc.pid)
        elapsed = send(receiver.port, receiver.ae, files, concurrent)
        cpu = cpu_seconds(receiver.proc.pid) - cpu0
        got = receiver.count()
        if got not in (len(files), -1):
            raise RuntimeError(f"{kind}: {got} of {len(files)} instances arrived")
    finally:
        receiver.close()
    row = {"seconds": elapsed, "instances_per_s": len(files) / elapsed}
    if not (kind == "storescp" and concurrent > 1):  # storescp's forks end before they are counted
        row["receiver_cpu_ms_per_instance"] = 1000 * cpu / len(files)
    return row


def profile_run(files: list[Path], work: Path, out: Path, top: int = 25) -> dict[str, Any]:
    """One bodycomp run sampled by py-spy (all threads, active samples only); summarise by function."""
    receiver = Receiver("bodycomp", work, 1)
    raw = out.with_suffix(".collapsed.txt")
    spy = subprocess.Popen(
        [
            PY_SPY,
            "record",
            "--pid",
            str(receiver.proc.pid),
            "--rate",
            "250",
            "--format",
            "raw",
            "-o",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # py-spy attached
        elapsed = send(receiver.port, receiver.ae, files, 1)
        time.sleep(0.3)
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()
        receiver.close()
    inclusive: collections.Counter[str] = collections.Counter()
    self_time: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            for f in stack.split(";")
        ]
        total += count
        self_time[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    summary = {
        "seconds": elapsed,
        "samples": total,
        "self": [(f, round(100 * c / total, 1)) for f, c in self_time.most_common(top)],
        "inclusive": [(f, round(100 * c / total, 1)) for f, c in inclusive.most_common(3 * top)],
    }
    out.write_text(json.dumps(summary, indent=1))
    return summary


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--syntaxes", nargs="+", default=["raw", "j2k"], choices=["raw", "j2k"])
    parser.add_argument("--runs", type=int, default=3, help="rounds; each round runs every mode once")
    parser.add_argument("--concurrent", type=int, default=4, help="associations in the concurrent modes")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bodycomp-bench"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "receive.json")
    parser.add_argument("--profile", action="store_true", help="one extra bodycomp run under py-spy")
    parser.add_argument("--noop", action="store_true", help="also a bare pynetdicom SCP answering at once")
    parser.add_argument(
        "--receivers", type=int, nargs="*", default=[], metavar="N", help="also bodycomp --receivers N, x4"
    )
    parser.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for bodycomp serve, e.g. BODYCOMP_NODE__STREAM_TO_DISK=false",
    )
    args = parser.parse_args()
    NODE_ENV.update(item.split("=", 1) for item in args.node_env)
    modes = [("storescp", 1), ("bodycomp", 1), ("bodycomp", args.concurrent), ("storescp", args.concurrent)]
    if args.noop:
        modes.append(("pynetdicom", 1))
    modes += [(f"bodycomp-rx{n}", args.concurrent) for n in args.receivers]
    work = args.cache / "receive-work"
    results: dict[str, Any] = {"slices": args.slices, "runs": args.runs, "node_env": NODE_ENV, "syntaxes": {}}
    for syntax in args.syntaxes:
        series = args.cache / f"series-{args.slices}-{syntax}"
        if not series.exists():
            make_series(args.slices, series, syntax)
        files = sorted(p for p in series.rglob("*") if p.is_file())
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        one_run("storescp", files, 1, work)  # warm the page cache with the source files
        runs: dict[str, list[dict[str, Any]]] = {f"{k} x{c}": [] for k, c in modes}
        for round_no in range(args.runs):
            for kind, concurrent in modes:
                row = one_run(kind, files, concurrent, work)
                runs[f"{kind} x{concurrent}"].append(row)
                print(
                    f"{syntax} round {round_no + 1}: {kind} x{concurrent}: "
                    f"{row['instances_per_s']:.0f} instances/s",
                    file=sys.stderr,
                )
        base = [r["instances_per_s"] for r in runs["storescp x1"]]
        entry: dict[str, Any] = {"instances": len(files), "megabytes": round(size_mb, 1), "modes": {}}
        for name, rows in runs.items():
            rates = [r["instances_per_s"] for r in rows]
            ratios = [r / b for r, b in zip(rates, base, strict=True)]
            cpu = [r["receiver_cpu_ms_per_instance"] for r in rows if "receiver_cpu_ms_per_instance" in r]
            entry["modes"][name] = {
                "instances_per_s": [round(r, 1) for r in rates],
                "median_instances_per_s": round(median(rates), 1),
                "ratio_to_storescp_x1": [round(r, 3) for r in ratios],
                "median_ratio_to_storescp_x1": round(median(ratios), 3),
                "median_mb_per_s": round(median(rates) * size_mb / len(files), 1),
                "median_receiver_cpu_ms_per_instance": round(median(cpu), 2) if cpu else None,
            }
        if args.profile:
            prof = args.json.with_name(f"receive-profile-{syntax}.json")
            entry["profile"] = str(prof)
            profile_run(files, work, prof)
        results["syntaxes"][syntax] = entry

    print(f"\n{args.slices} slices of 512x512, {args.runs} alternating rounds, loopback, TCP_NODELAY=1")
    print(
        f"{'syntax':>6} {'receiver':>13} {'inst/s (median)':>16} {'MB/s':>6} {'ratio to storescp x1':>21} "
        f"{'per run':>22} {'CPU ms/inst':>11}"
    )
    for syntax, entry in results["syntaxes"].items():
        for name, m in entry["modes"].items():
            per_run = " ".join(f"{r:.2f}" for r in m["ratio_to_storescp_x1"])
            cpu = m["median_receiver_cpu_ms_per_instance"]
            cpu_text = "" if cpu is None else f"{cpu:.2f}"
            print(
                f"{syntax:>6} {name:>13} {m['median_instances_per_s']:>16.0f} {m['median_mb_per_s']:>6.0f} "
                f"{m['median_ratio_to_storescp_x1']:>21.2f} {per_run:>22} {cpu_text:>11}"
            )
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "storescu": subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout.split(
            "\n"
        )[0],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
