"""Ready for a pilot site (#24): what a new integration engineer and a security tester ran into.

Each test is one finding, checked the way they met it: a real command, a real socket, the files a
fresh clone has.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from node import metrics
from node.config import ConfigError, NodeSettings, load_settings
from node.scp import serve
from tests.test_node_support import BODYCOMP

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
    from node.index import Index

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
    with caplog.at_level(logging.WARNING, logger="bodycomp"):
        server = serve(settings, block=False)
    try:
        port = int(server.server_address[1])
        assert port > 0
        [line] = [r.getMessage() for r in caplog.records if "event=listening" in r.getMessage()]
        assert f"address=127.0.0.1:{port} " in line, line
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
