"""The README's five-minute path, run as written (#24): a new user's first contact.

The fenced ``sh`` blocks under "## Five minutes" are taken from README.md and run literally, with
three substitutions only: the CT folder (the real liver CT hcc_tace_seg_048), the demo data
directory (a temporary one) and the port (a free one, so that a node already on 11112 does not
interfere). ``./scripts/run.sh`` starts the node exactly as a user does.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.test_node_support import free_port, port_open, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def five_minute_blocks() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Five minutes", 1)[1].split("\n## ", 1)[0]
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def test_the_five_minute_path_works_as_written(tmp_path: Path) -> None:
    ct = SHARED_DATA / "hcc_tace_seg_048" / "dicom"
    assert ct.is_dir(), f"{ct} missing: the shared data folder must sit beside the repository"
    port = free_port()
    data = tmp_path / "demo"

    def literal(line: str) -> str:
        return (
            line.replace("/path/to/abdominal/ct/folder", str(ct))
            .replace("/tmp/bodycomp-demo", str(data))
            .replace("11112", str(port))
        )

    [start], commands = five_minute_blocks()[0], five_minute_blocks()[1]
    assert start.startswith("./scripts/run.sh ")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BODYCOMP_")}
    log = tmp_path / "run.log"
    with log.open("wb") as handle:
        node = subprocess.Popen(
            f"{literal(start)} --port {port}",
            shell=True,
            cwd=REPO,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        wait_for("the node to listen", lambda: port_open(port) or node.poll() is not None, 300, log)
        assert node.poll() is None, log.read_text()[-3000:]
        outputs = []
        for line in commands:
            run = subprocess.run(
                literal(line), shell=True, cwd=REPO, capture_output=True, text=True, timeout=300, env=env
            )
            assert run.returncode == 0, (line, run.stdout[-2000:], run.stderr[-2000:])
            outputs.append(run.stdout + run.stderr)
        echo, _, _, status = outputs
        assert "success" in echo, echo

        def done() -> str | None:
            text = subprocess.run(
                literal(commands[-1]), shell=True, cwd=REPO, capture_output=True, text=True, env=env
            ).stdout
            return text if re.search(r"\bdone\b", text) else None

        status = (
            status if re.search(r"\bdone\b", status) else wait_for("the study to be done", done, 120, log)
        )
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
    assert "L3 at z" in status and "QC " in status and "SM " in status, status
    assert f"{len(list(ct.iterdir()))} instances" in status, "not every instance was stored"
    folder = Path(re.search(r"results in (\S+)", status).group(1))  # type: ignore[union-attr]
    for name in ("l3_overlay.png", "l3_qc.png", "result.json", "dicom/seg.dcm", "dicom/sr.dcm"):
        assert (folder / name).is_file(), name
