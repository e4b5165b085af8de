"""Several receiving processes on one port (``bodycomp serve --receivers N``), real processes only.

DCMTK storescu sends concurrent associations to a real ``bodycomp serve``; the kernel spreads them
over the node process and its receiving children (``SO_REUSEPORT``). What must hold: every
instance is stored and recorded once, whichever process took it; the node's metrics and scheduler
see the children's instances; a killed child is restarted and nothing acknowledged is lost; the
children stop with the node; and a port someone else already listens on is refused, not shared.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from node.store.index import Index
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.test_node_support import (
    BODYCOMP,
    NodeProc,
    free_port,
    start,
    start_node,
    store_responses,
    storescu,
    wait_for,
)

# Several real `bodycomp serve` processes per test: the full suite only.
pytestmark = [pytest.mark.network, pytest.mark.slow]

ASSOCIATIONS = 16  # all on one of two sockets by chance: 2 × 2**-16


def _series(folder: Path, n_slices: int) -> list[Path]:
    geometry = axial_geometry(rows=32, columns=32, n_slices=n_slices)
    return write_series(folder, sample(block_phantom(), geometry), geometry, SeriesOptions())


def _receiver_pids(node: NodeProc, expected: int) -> list[int]:
    def started() -> list[int] | None:
        pids = [int(p) for p in re.findall(r"event=receiver_started receiver=\d+ pid=(\d+)", node.text())]
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
        return alive if len(alive) >= expected else None

    return wait_for(f"{expected} receiving children", started, 60, node.log)


def _send_concurrently(port: int, files: Sequence[Path], associations: int) -> dict[str, str]:
    shards = [list(files[i::associations]) for i in range(associations)]
    with ThreadPoolExecutor(associations) as pool:
        outputs = list(pool.map(lambda shard: storescu(port, shard), shards))
    answers: dict[str, str] = {}
    for output in outputs:
        answers.update(store_responses(output))
    return answers


def _serving_pids(node: NodeProc) -> set[int]:
    return {int(p) for p in re.findall(r"event=association_end from=\S+ pid=(\d+)", node.text())}


def test_two_receivers_share_the_port_and_every_instance_is_recorded_once(tmp_path: Path) -> None:
    files = _series(tmp_path / "series", 2 * ASSOCIATIONS)
    metrics_port = free_port()
    node = start_node(
        tmp_path / "data", "--workers", "0", "--receivers", "2", "--metrics-port", str(metrics_port)
    )
    try:
        children = _receiver_pids(node, 1)
        answers = _send_concurrently(node.port, files, ASSOCIATIONS)
        assert len(answers) == len(files) and set(answers.values()) == {"Success"}, answers
        wait_for(
            "every association logged",
            lambda: len(re.findall("association_end", node.text())) >= ASSOCIATIONS,
            30,
        )
        serving = _serving_pids(node)
        assert serving == {node.process.pid, *children}, "both processes took associations"

        index = Index(tmp_path / "data" / "index.sqlite")
        try:
            rows = index.query("SELECT path, digest FROM instances")
        finally:
            index.close()
        assert len(rows) == len(files) and all(Path(r["path"]).is_file() and r["digest"] for r in rows)

        # The node process counts the children's instances too (they report through a queue).
        def received_total() -> float | None:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            )
            total = sum(
                float(m)
                for m in re.findall(r'^bodycomp_instances_received_total\{outcome="new"\} (\S+)$', text, re.M)
            )
            return total if total == len(files) else None

        wait_for("metrics to count every instance", received_total, 20, node.log)
        # And its scheduler sees the study as soon as it is stable, whoever received it.
        wait_for("the study to be claimed", lambda: "event=study_stable" in node.text() or None, 30, node.log)
    finally:
        assert node.stop() == 0, node.text()[-3000:]
    wait_for(
        "the receivers to end with the node",
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in children) or None,
        20,
    )


def test_a_killed_receiver_is_restarted_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    files = _series(tmp_path / "series", 2 * ASSOCIATIONS)
    node = start_node(tmp_path / "data", "--workers", "0", "--receivers", "2", stable_seconds=600)
    try:
        (child,) = _receiver_pids(node, 1)
        first = _send_concurrently(node.port, files[:ASSOCIATIONS], ASSOCIATIONS)
        os.kill(child, signal.SIGKILL)
        wait_for(
            "the restart", lambda: f"receiver=1 pid={child} code=-9 (restarting)" in node.text() or None, 40
        )
        (replacement,) = wait_for(
            "a new receiver", lambda: [p for p in _receiver_pids(node, 1) if p != child] or None, 60, node.log
        )
        second = _send_concurrently(node.port, files[ASSOCIATIONS:], ASSOCIATIONS)
        assert set(first.values()) | set(second.values()) == {"Success"}
        wait_for(
            "the replacement to serve",
            lambda: replacement in _serving_pids(node) or None,
            30,
            node.log,
        )
        index = Index(tmp_path / "data" / "index.sqlite")
        try:
            assert int(index.query("SELECT count(*) AS n FROM instances")[0]["n"]) == len(files)
        finally:
            index.close()
    finally:
        assert node.stop() == 0, node.text()[-3000:]


def test_a_port_in_use_is_refused_not_shared(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # would let a careless node join
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        proc = start(
            [
                BODYCOMP,
                "serve",
                "--data-dir",
                str(tmp_path / "data"),
                "--port",
                str(port),
                "--receivers",
                "2",
            ],
            tmp_path / "serve.log",
        )
        try:
            code = proc.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.stop()
            pytest.fail("the node started on a port another process listens on")
    assert code == 1, proc.text()
    assert "cannot listen" in proc.text() and "another process listens" in proc.text()
