"""Ready for a pilot site (#24): what a new integration engineer and a security tester ran into.

Each test is one finding, checked the way they met it: a real command, a real socket, the files a
fresh clone has.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from node import prometheus as metrics
from node.config import ConfigError, NodeSettings, load_settings
from node.receive.scp import serve
from node.store.index import Index
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.orthanc import running_orthanc
from tests.test_node_support import BODYCOMP, storescu

# The pilot's commands as real processes, and Orthanc: the full suite only.
pytestmark = [pytest.mark.network, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def test_the_default_data_directory_is_never_committed() -> None:
    """``./scripts/run.sh`` keeps received patient CTs in ``./var``, inside the checkout."""
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "var/spool/studies/x.dcm"], cwd=REPO, capture_output=True
    )
    assert ignored.returncode == 0, "var/ is not git-ignored"


def test_run_sh_says_what_it_does_before_the_first_install() -> None:
    """The first run was 72 s of silence (pip)."""
    script = (REPO / "scripts" / "run.sh").read_text().splitlines()
    install = next(i for i, line in enumerate(script) if "pip install" in line and "-e ." in line)
    said = [line for line in script[:install] if line.strip().startswith("echo") and "installing" in line]
    assert said, "run.sh installs without saying so"
    assert "--progress-bar off" in script[install]


def test_status_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """``bodycomp status | head`` ended in a BrokenPipeError traceback."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    Index(data / "index.sqlite").close()
    run = subprocess.run(
        f"'{BODYCOMP}' status --data-dir '{data}' | head -c 10", shell=True, capture_output=True, text=True
    )
    assert run.stdout == "data direc"
    assert "Traceback" not in run.stderr and "BrokenPipe" not in run.stderr, run.stderr


def test_port_0_listens_on_a_chosen_port_and_logs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = NodeSettings(port=0, data_dir=tmp_path / "data")
    with caplog.at_level(logging.INFO, logger="bodycomp"):
        server = serve(settings, block=False)
    try:
        port = int(server.server_address[1])
        assert port > 0
        [line] = [r for r in caplog.records if "event=listening" in r.getMessage()]
        assert f"address=127.0.0.1:{port} " in line.getMessage(), line
        assert line.levelno == logging.INFO, "start-up is not a warning (#24: levels should mean something)"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        server.shutdown()
    with pytest.raises(ConfigError, match="needs receivers = 1"):
        load_settings(environ={"BODYCOMP_PORT": "0", "BODYCOMP_RECEIVERS": "2"})


def _answer(port: int, path: str, method: str) -> tuple[int, str | None]:
    """(status, Allow header) of one request, error statuses included."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=b"x" if method not in ("GET", "HEAD") else None, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.headers["Allow"]
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers["Allow"]


def test_the_metrics_endpoint_answers_only_get_and_head(tmp_path: Path) -> None:
    """It answered 200 to any method (a POST looked as if it did something)."""
    (tmp_path / "data").mkdir()
    server = metrics.MetricsServer(NodeSettings(data_dir=tmp_path / "data", metrics_port=0))
    port = int(server.httpd.server_port)
    try:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            assert _answer(port, "/metrics", method) == (405, "GET, HEAD"), method
        assert _answer(port, "/metrics", "GET")[0] == 200
        assert _answer(port, "/metrics", "HEAD")[0] == 200
        assert _answer(port, "/healthz", "GET")[0] in (200, 503)  # (503: no broker in this test)
        assert _answer(port, "/healthz", "HEAD")[0] in (200, 503)
        assert _answer(port, "/healthz", "POST") == (405, "GET, HEAD")
    finally:
        server.stop()


def _as_other_user(command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` as a user who does not own the data directory: ``nobody`` when we are root (as
    on the test machines), else ourselves (the caller then takes our own rights away)."""
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder the other user can reach (pytest's own are private to us)."""
    # (in /tmp itself: TMPDIR may be a private folder the other user cannot enter, as in CI)
    folder = Path(tempfile.mkdtemp(prefix="bodycomp-pilot-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _node_data(folder: Path) -> Path:
    data = folder / "data"
    data.mkdir(mode=0o700)
    Index(data / "index.sqlite").close()
    return data


@pytest.mark.parametrize("command", [["status"], ["export", "--csv", "-"], ["resend", "--study", "1.2.3"]])
def test_a_user_who_cannot_read_the_data_directory_gets_one_line_and_exit_2(
    open_dir: Path, command: list[str]
) -> None:
    """On the systemd install the data directory is the service user's (0700): ``status`` run by
    anyone else ended in a Python traceback and exit 1."""
    data = _node_data(open_dir)
    if os.geteuid() != 0:
        data.chmod(0)
    try:
        run = _as_other_user([BODYCOMP, command[0], "--data-dir", str(data), *command[1:]])
    finally:
        data.chmod(0o700)
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "sudo -u" in run.stderr and "service user" in run.stderr, run.stderr
    assert f"the node's index {data}" in run.stderr, "refused for another reason"
    assert "Permission denied" in run.stderr or "unable to open database file" in run.stderr, run.stderr


def test_status_reads_without_writing(open_dir: Path) -> None:
    """``status`` took the writer's lock file and failed on a read-only index: it must only read."""
    data = _node_data(open_dir)
    before = sorted(p.name for p in data.iterdir())
    data.chmod(0o755)
    (data / "index.sqlite").chmod(0o644)  # readable by the other user, writable by nobody else
    run = _as_other_user([BODYCOMP, "status", "--data-dir", str(data)])
    assert run.returncode == 0, run
    assert "studies: none" in run.stdout
    assert sorted(p.name for p in data.iterdir()) == before, "status created files in the data directory"


def _orthanc_json(path: Path) -> dict[str, object]:
    """Orthanc's configuration format: JSON with // comments."""
    text = "\n".join(
        line.split("//", 1)[0] if line.strip().startswith("//") else line
        for line in path.read_text().splitlines()
    )
    return dict(json.loads(text))


def test_the_production_orthanc_snippet_adds_routing_and_nothing_else() -> None:
    """Merged into a real Orthanc as the docs say, DicomAlwaysAllowStore false refused every
    modality the site had not declared."""
    keys = _orthanc_json(REPO / "deploy" / "orthanc" / "orthanc.json")
    assert set(keys) == {"DicomModalities", "LuaScripts"}, sorted(keys)


def test_the_demo_orthanc_accepts_the_documented_test_send(tmp_path: Path) -> None:
    """The compose demo PACS refused the README's `storescu -aec ORTHANC …` ("This AET is not
    listed in DicomModalities"). Its store policy, in a real Orthanc, takes a send from any AE."""
    demo = _orthanc_json(REPO / "deploy" / "compose" / "orthanc" / "orthanc.json")
    policy = {k: demo[k] for k in ("DicomAlwaysAllowStore", "DicomCheckModalityHost")}
    g = axial_geometry(n_slices=3)
    files = write_series(tmp_path / "ct", sample(block_phantom(), g), g, SeriesOptions())
    with running_orthanc(tmp_path / "orthanc", **policy) as orthanc:
        out = storescu(orthanc.dicom_port, files, calling="STORESCU", called=orthanc.ae_title)
    assert out.count("Received Store Response (Success)") == len(files), out
