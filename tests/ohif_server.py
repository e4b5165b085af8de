"""OHIF's prebuilt viewer, served same-origin with a DICOMweb proxy to a test Orthanc.

* :func:`ohif_dist` returns the ``dist/`` folder of the npm package ``@ohif/app`` (a prebuilt
  web app), fetched with ``npm pack`` into ``.cache/ohif/<version>/`` (git-ignored) when missing.
* :func:`serving_ohif` runs a small HTTP server on a loopback port that serves that folder, with
  ``index.html`` for OHIF's client-side routes (``/viewer?StudyInstanceUIDs=…``), a generated
  ``/app-config.js`` pointing at ``/dicom-web/``, and proxies ``/dicom-web/`` to Orthanc's
  DICOMweb plugin. Same origin means no CORS (Orthanc 1.10 sends no CORS headers); the Host header
  is passed through so the bulk-data URLs Orthanc writes into metadata point back at this server.
  COOP/COEP headers make the page cross-origin isolated, which OHIF prefers (SharedArrayBuffer).
"""

from __future__ import annotations

import fcntl
import http.client
import json
import mimetypes
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

OHIF_VERSION = "3.13.2"
REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "ohif"

mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}


def ohif_dist(version: str = OHIF_VERSION, cache: Path = CACHE) -> Path:
    """The unpacked ``dist/`` of ``@ohif/app@version``; ``npm pack`` fetches it once into ``cache``."""
    target = cache / version / "dist"
    if (target / "index.html").exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed once to fetch OHIF (@ohif/app): run ./scripts/test.sh")
    cache.mkdir(parents=True, exist_ok=True)
    # One fetch at a time (parallel test workers, two checkouts' runs): the others wait, then use it.
    with (cache / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "index.html").exists():
            return target
        _fetch(npm, version, cache, target)
    return target


def _fetch(npm: str, version: str, cache: Path, target: Path) -> None:
    """``npm pack`` ``@ohif/app@version`` into a temporary folder of ``cache``; its ``dist/`` becomes
    ``target``."""
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [npm, "pack", f"@ohif/app@{version}", "--silent"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=600,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tarball) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith("package/dist/")]
            archive.extractall(tmp, members=members, filter="data")
        unpacked = Path(tmp) / "package" / "dist"
        if not (unpacked / "index.html").exists():
            raise RuntimeError(f"@ohif/app@{version} has no dist/index.html")
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        unpacked.replace(target)


def app_config(dicomweb_root: str = "/dicom-web") -> str:
    """OHIF's ``window.config``: one DICOMweb data source on this origin, no start-up dialogs."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "wadoUriRoot": dicomweb_root,
            "qidoRoot": dicomweb_root,
            "wadoRoot": dicomweb_root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "showErrorDetails": "always",
        "defaultDataSourceName": "orthanc",
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


@dataclass(frozen=True)
class OhifServer:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def viewer_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"


def _handler(dist: Path, config_js: bytes, orthanc_port: int) -> type[BaseHTTPRequestHandler]:
    root = dist.resolve()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _send(
            self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=120)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                passed = {
                    k: v
                    for k, v in response.getheaders()
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-type"
                }
                self._send(
                    response.status,
                    payload,
                    response.getheader("Content-Type", "application/octet-stream"),
                    passed,
                )
            finally:
                connection.close()

        def _static(self) -> None:
            path = urlsplit(self.path).path
            if path == "/app-config.js":
                self._send(200, config_js, "text/javascript")
                return
            candidate = (root / path.lstrip("/")).resolve()
            if not candidate.is_relative_to(root) or not candidate.is_file():
                candidate = root / "index.html"  # OHIF routes are client-side
            content_type = mimetypes.guess_type(candidate.name)[0] or "application/octet-stream"
            self._send(200, candidate.read_bytes(), content_type)

        def _route(self) -> None:
            if self.path.startswith("/dicom-web/") or self.path == "/dicom-web":
                self._proxy()
            else:
                self._static()

        def do_GET(self) -> None:
            self._route()

        def do_HEAD(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

    return Handler


@contextmanager
def serving_ohif(dist: Path, orthanc_http_port: int) -> Iterator[OhifServer]:
    """Serve ``dist`` and proxy ``/dicom-web/`` to Orthanc on a free loopback port, in a thread."""
    handler = _handler(dist, app_config().encode(), orthanc_http_port)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ohif-server", daemon=True)
    thread.start()
    try:
        yield OhifServer(int(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
