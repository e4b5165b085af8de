"""Real peers for the node's integration tests: ``bodycomp serve``/``worker`` processes, DCMTK.

No test functions here; the other ``test_node_*`` modules import these helpers. Everything runs on
loopback with free ports, and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import pydicom.errors
from pydicom.uid import generate_uid

from tests.timing import free_port, scaled

BODYCOMP = str(Path(sys.executable).with_name("bodycomp"))
DCMTK = Path("/usr/bin")  # never the venv's pynetdicom apps of the same names
T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float, log: Path | Sequence[Path] | None = None
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with ``what`` and the tail of each log
    (the node's and, where a separate worker runs, the worker's) after ``timeout`` seconds times
    ``BODYCOMP_TEST_TIMEOUT_SCALE`` (:mod:`tests.timing`)."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            logs = [] if log is None else [log] if isinstance(log, Path) else list(log)
            tails = "".join(
                f"\n--- {p.name} ---\n{p.read_text(errors='replace')[-4000:]}" for p in logs if p.exists()
            )
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tails}")
        time.sleep(0.25)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Proc:
    """A child process with its log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=scaled(timeout))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def start(args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BODYCOMP_")}
    full_env.update(env or {})
    with log.open("ab") as handle:
        process = subprocess.Popen(list(args), stdout=handle, stderr=subprocess.STDOUT, env=full_env)
    return Proc(process, log)


@dataclass
class NodeProc(Proc):
    port: int
    data_dir: Path
    ae_title: str = "BODYCOMP"

    def status(self) -> dict[str, Any]:
        return status(self.data_dir)


def start_node(
    data_dir: Path,
    *args: str,
    port: int | None = None,
    stable_seconds: float = 1.5,
    env: dict[str, str] | None = None,
    log_name: str = "serve.log",
    prefix: Sequence[str] = (),
) -> NodeProc:
    """``bodycomp serve`` (embedded broker unless ``--broker-url`` is in ``args``); wait until listening.
    ``prefix`` wraps the command (e.g. ``prlimit --data=…``)."""
    port = port or free_port()
    command = [
        *prefix,
        BODYCOMP,
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--ae-title",
        "BODYCOMP",
        "--stable-seconds",
        str(stable_seconds),
        *args,
    ]
    base = {"BODYCOMP_SEND_RETRY_SECONDS": "1", "BODYCOMP_SEND_RETRY_MAX_SECONDS": "2"}
    proc = start(command, data_dir.parent / log_name, {**base, **(env or {})})
    node = NodeProc(proc.process, proc.log, port, data_dir)
    wait_for(
        "bodycomp serve to listen", lambda: port_open(port) or node.process.poll() is not None, 30, node.log
    )
    assert node.process.poll() is None, node.text()
    return node


def start_worker(data_dir: Path, broker_url: str, log: Path, env: dict[str, str] | None = None) -> Proc:
    return start(
        [BODYCOMP, "worker", "--data-dir", str(data_dir), "--broker-url", broker_url], log, env or {}
    )


def status(data_dir: Path) -> dict[str, Any]:
    result = subprocess.run(
        [BODYCOMP, "status", "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=scaled(60),
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def study_status(data_dir: Path, study_uid: str) -> dict[str, Any] | None:
    for study in status(data_dir)["studies"]:
        if study["study_uid"] == study_uid:
            return dict(study)
    return None


def storescu(port: int, files: Sequence[Path], calling: str = "STORESCU", called: str = "BODYCOMP") -> str:
    """DCMTK storescu, one association for ``files``; returns its output (``-v``)."""
    result = subprocess.run(
        [str(DCMTK / "storescu"), "-v", "-xv", "-aet", calling, "-aec", called, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=scaled(180),
        env={"TCP_NODELAY": "1"},
    )
    return result.stdout + result.stderr


def store_responses(output: str) -> dict[str, str]:
    """File → the status storescu got for it (``Success``, ``Out of Resources``, …), from ``-v``.

    A file sent with no response (association aborted, refused) maps to ``no response``.
    """
    answers: dict[str, str] = {}
    current: str | None = None
    for line in output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
            answers[current] = "no response"
            continue
        response = re.search(r"Received Store Response \((.+)\)", line)
        if response and current is not None:
            answers[current] = response.group(1).strip()
            current = None
    return answers


@contextmanager
def storescp(
    out_dir: Path, ae_title: str = "DEST", port: int | None = None, unique_files: bool = False
) -> Iterator[int]:
    """DCMTK storescp writing what it receives into ``out_dir``; yields its port.

    ``unique_files`` (``+uf``): one new file per C-STORE received, so that an object delivered
    twice shows up as two files instead of overwriting the first.
    """
    port = port or free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    unique = ["+uf"] if unique_files else []
    proc = start(
        [str(DCMTK / "storescp"), "-aet", ae_title, "-od", str(out_dir), *unique, "--fork", str(port)],
        out_dir.parent / f"storescp-{ae_title}-{port}.log",
        {"TCP_NODELAY": "1"},
    )
    try:
        wait_for("storescp to listen", lambda: port_open(port), 15, proc.log)
        yield port
    finally:
        proc.stop(10)


def received(out_dir: Path) -> list[pydicom.Dataset]:
    """The instances storescp has finished writing (a file still being written is skipped).

    storescp creates the file, then writes it: polled mid-write, a file can be shorter than its
    preamble. Once the caller's count is reached, every file is complete (checked again later).
    """
    out: list[pydicom.Dataset] = []
    for p in sorted(out_dir.iterdir()):
        if not p.is_file():
            continue
        try:
            out.append(pydicom.dcmread(p))
        except (pydicom.errors.InvalidDicomError, EOFError, OSError):
            continue
    return out


def copy_study(src: Path, dst: Path, keep_sop: bool = False) -> tuple[list[Path], str]:
    """Copy a series with a new StudyInstanceUID (and new series/SOP UIDs); return files, study UID."""
    dst.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        if not keep_sop:
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = dst / path.name
        ds.save_as(out, enforce_file_format=True)
        paths.append(out)
    return paths, study
