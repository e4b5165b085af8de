"""Receive throughput: DCMTK storescu → storescp, Orthanc and ``bodycomp serve`` (issues #9, #27).

The same CT series (bench/make_series.py, cached under --cache) is sent by ``/usr/bin/storescu``
(``TCP_NODELAY=1``) over loopback to

* ``storescp``: DCMTK's storescp writing to disk (no fsync), one association;
* ``orthanc``: Orthanc (``/usr/sbin/Orthanc``) with a temporary configuration: storage
  uncompressed, its default SQLite index, HTTP for localhost only, the storage under the bench's
  folder; one association, and ``orthanc x4`` with 4 concurrent associations;
* ``bodycomp``: ``bodycomp serve`` with ``--stable-seconds`` far beyond the run and no worker, so
  only the receive path (spool with fsync + index commit) runs, one association;
* ``bodycomp x4``: the same, the series split over 4 concurrent associations (4 storescu);
* ``storescp x4``: storescp ``--fork`` with 4 concurrent associations, for reference;
* ``bodycomp-rxN x4`` (``--receivers N``, default 2): ``bodycomp serve --receivers N``, N
  receiving processes sharing the port, 4 concurrent associations;
* ``baseline x1``, ``baseline-rxN x4`` (``--baseline DIR``): the same with the ``node`` package of
  another checkout (e.g. ``git worktree add DIR HEAD``), to compare a change in the same rounds;
* ``pynetdicom x1`` (``--noop``): a bare pynetdicom SCP with the node's settings (chunked receive,
  TCP_NODELAY, unlimited PDU) whose handler answers Success at once: the ceiling of any handler.

Every receiver starts fresh (new process, empty folder) for each run and the modes alternate
within a round, so a noisy machine slows them alike; ratios are taken within a round: to
``storescp x1`` (issue #9's targets), to Orthanc with the same number of associations and to
storescp with the same number of associations (issue #27: bodycomp/Orthanc ≥ 1). A run counts
only if every instance arrived (files in storescp's folder, rows in bodycomp's index, Orthanc's
instance count). Prints a table and writes JSON. With ``--profile`` one more bodycomp run per
syntax is sampled by py-spy and the hottest functions are written next to the JSON.

    .venv/bin/python bench/bench_receive.py --slices 300 --syntaxes raw j2k --runs 3   # --receivers 2 default
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
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.make_series import make_series  # noqa: E402

STORESCU = "/usr/bin/storescu"  # DCMTK's, never the venv's pynetdicom app of the same name
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
#: The calling AE title of the bench's storescu; the only AE Orthanc accepts instances from.
BENCH_AE = "BENCH"
BODYCOMP = str(Path(sys.executable).with_name("bodycomp"))
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
SEND_TIMEOUT = 600
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: The ``--noop`` receiver: pynetdicom as the node configures it, doing nothing with the data.
NOOP_SCP = """
import socket, sys
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from node.receive import reactor
from node.receive.scp import TRANSFER_SYNTAXES
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
#: ``--baseline DIR``: another checkout whose ``node`` package the ``baseline`` modes run.
BASELINE: list[Path] = []


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


def orthanc_config(work: Path, ae: str, dicom_port: int, http_port: int) -> Path:
    """A temporary Orthanc configuration in ``work``; returns its path.

    Storage uncompressed and the default SQLite index, both under ``work``; only the bench's
    storescu AE (``BENCH`` from 127.0.0.1) may store, and HTTP answers localhost only. Orthanc
    1.10 ignores ``DicomBindAddress``/``HttpBindAddress`` and listens on every interface, so the
    store permission is the bench AE's own (``AllowStore``, host checked) rather than
    ``DicomAlwaysAllowStore``, which would accept any host for the seconds a run lasts.
    """
    storage = work / "orthanc-storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "bodycomp-bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae,
        "HttpBindAddress": "127.0.0.1",
        "DicomBindAddress": "127.0.0.1",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {
            "bench": {"AET": BENCH_AE, "Host": "127.0.0.1", "Port": 104, "AllowStore": True},
        },
        "Plugins": [],
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def is_node(kind: str) -> bool:
    """``bodycomp``, ``bodycomp-rxN``, ``baseline``, ``baseline-rxN``: a ``bodycomp serve``."""
    return kind.startswith(("bodycomp", "baseline"))


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
        elif kind == "orthanc":
            self.ae = "ORTHANC"
            self.http_port = free_port()
            command = [ORTHANC, str(orthanc_config(work, self.ae, self.port, self.http_port))]
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
                "86400",  # the largest allowed; far beyond a run
                "--workers",
                "0",
                "--receivers",
                str(receivers),
            ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BODYCOMP_")}
        env["TCP_NODELAY"] = "1"
        env["PYTHONPATH"] = str(BASELINE[0] if kind.startswith("baseline") else ROOT)
        if is_node(kind):
            env.update(NODE_ENV)
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
        log.close()
        if kind == "orthanc":
            self._wait_orthanc()
        wait_port(self.port, self.proc)
        if is_node(kind):
            time.sleep(1.0 + receivers)  # let the node's start-up (scheduler, sender, receivers) settle

    def _orthanc_get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def _wait_orthanc(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._orthanc_get("/system")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start (see {self.work / 'receiver.log'})") from None
                time.sleep(0.1)

    def count(self) -> int:
        if self.kind == "pynetdicom":
            return -1  # keeps nothing; storescu's exit status says every instance was answered
        if self.kind == "orthanc":
            return int(self._orthanc_get("/statistics")["CountInstances"])
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
            [STORESCU, "-xv", "-aet", BENCH_AE, "-aec", ae, "127.0.0.1", str(port), *map(str, shard)],
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


def profile_run(
    files: list[Path], work: Path, out: Path, top: int = 25, kind: str = "bodycomp"
) -> dict[str, Any]:
    """One bodycomp run sampled by py-spy (all threads, active samples only); summarise by function."""
    receiver = Receiver(kind, work, 1)
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


def ratios(rates: list[float], base: list[float]) -> list[float]:
    """Rate / peer's rate, round by round."""
    return [r / b for r, b in zip(rates, base, strict=True)]


def per_run(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--syntaxes", nargs="+", default=["raw", "j2k"], choices=["raw", "j2k"])
    parser.add_argument("--runs", type=int, default=3, help="rounds; each round runs every mode once")
    parser.add_argument("--concurrent", type=int, default=4, help="associations in the concurrent modes")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bodycomp-bench"))
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "receive.json")
    parser.add_argument("--profile", action="store_true", help="one extra bodycomp run under py-spy")
    parser.add_argument("--noop", action="store_true", help="also a bare pynetdicom SCP answering at once")
    parser.add_argument(
        "--receivers",
        type=int,
        nargs="*",
        default=[2],
        metavar="N",
        help="also bodycomp --receivers N, x4 (default: 2; none: --receivers)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also run the node of another checkout (e.g. git worktree add DIR HEAD) in the same rounds",
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
    if args.baseline is not None:
        BASELINE.append(args.baseline.resolve())
    # Within a round bodycomp runs next to its peers, one association first, then N.
    baseline = [("baseline", 1)] if BASELINE else []
    modes = [("storescp", 1), ("bodycomp", 1), *baseline, ("orthanc", 1)]
    if args.noop:
        modes.append(("pynetdicom", 1))
    modes += [("storescp", args.concurrent), ("bodycomp", args.concurrent)]
    for n in args.receivers:
        modes.append((f"bodycomp-rx{n}", args.concurrent))
        if BASELINE:
            modes.append((f"baseline-rx{n}", args.concurrent))
    modes.append(("orthanc", args.concurrent))
    work = args.cache / "receive-work"
    results: dict[str, Any] = {
        "slices": args.slices,
        "runs": args.runs,
        "node_env": NODE_ENV,
        "baseline": str(BASELINE[0]) if BASELINE else None,
        "syntaxes": {},
    }
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
        rates_of = {name: [r["instances_per_s"] for r in rows] for name, rows in runs.items()}
        entry: dict[str, Any] = {"instances": len(files), "megabytes": round(size_mb, 1), "modes": {}}
        for (kind, concurrent), (name, rows) in zip(modes, runs.items(), strict=True):
            rates = rates_of[name]
            cpu = [r["receiver_cpu_ms_per_instance"] for r in rows if "receiver_cpu_ms_per_instance" in r]
            to_x1 = ratios(rates, rates_of["storescp x1"])
            # same round, same number of associations (issue #27): bodycomp/Orthanc, bodycomp/storescp
            to_orthanc = ratios(rates, rates_of[f"orthanc x{concurrent}"])
            to_storescp = ratios(rates, rates_of[f"storescp x{concurrent}"])
            entry["modes"][name] = {
                "receiver": kind,
                "associations": concurrent,
                "instances_per_s": [round(r, 1) for r in rates],
                "median_instances_per_s": round(median(rates), 1),
                "ratio_to_storescp_x1": [round(r, 3) for r in to_x1],
                "median_ratio_to_storescp_x1": round(median(to_x1), 3),
                "ratio_to_orthanc": [round(r, 3) for r in to_orthanc],
                "median_ratio_to_orthanc": round(median(to_orthanc), 3),
                "ratio_to_storescp": [round(r, 3) for r in to_storescp],
                "median_ratio_to_storescp": round(median(to_storescp), 3),
                "median_mb_per_s": round(median(rates) * size_mb / len(files), 1),
                "median_receiver_cpu_ms_per_instance": round(median(cpu), 2) if cpu else None,
            }
        if args.profile:
            prof = args.json.with_name(f"receive-profile-{syntax}.json")
            entry["profile"] = str(prof)
            profile_run(files, work, prof)
        results["syntaxes"][syntax] = entry

    print(f"\n{args.slices} slices of 512x512, {args.runs} alternating rounds, loopback, TCP_NODELAY=1")
    print("ratios within each round; 'vs Orthanc' and 'vs storescp': the peer with as many associations")
    print(
        f"{'syntax':>6} {'receiver':>16} {'inst/s (median)':>16} {'MB/s':>6} {'ratio to storescp x1':>21} "
        f"{'per run':>17} {'CPU ms/inst':>11} {'vs Orthanc':>10} {'per run':>17} {'vs storescp':>11} "
        f"{'per run':>17}"
    )
    for syntax, entry in results["syntaxes"].items():
        for name, m in entry["modes"].items():
            cpu = m["median_receiver_cpu_ms_per_instance"]
            cpu_text = "" if cpu is None else f"{cpu:.2f}"
            print(
                f"{syntax:>6} {name:>16} {m['median_instances_per_s']:>16.0f} {m['median_mb_per_s']:>6.0f} "
                f"{m['median_ratio_to_storescp_x1']:>21.2f} {per_run(m['ratio_to_storescp_x1']):>17} "
                f"{cpu_text:>11} {m['median_ratio_to_orthanc']:>10.2f} {per_run(m['ratio_to_orthanc']):>17} "
                f"{m['median_ratio_to_storescp']:>11.2f} {per_run(m['ratio_to_storescp']):>17}"
            )
    results["machine"] = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "storescu": subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout.split(
            "\n"
        )[0],
        "orthanc": subprocess.run([ORTHANC, "--version"], capture_output=True, text=True).stdout.split("\n")[
            0
        ],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
