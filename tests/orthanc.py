"""A real Orthanc for tests: Debian's package, a temporary config and storage, loopback ports.

Used wherever a test needs "a real PACS": it accepts C-STORE, answers REST queries about what it
holds, and (with ``modalities``) can send on to other AEs. With ``dicomweb=True`` it also loads
Debian's DICOMweb plugin (package orthanc-dicomweb) and serves QIDO-RS/WADO-RS under
``/dicom-web/`` (what a web viewer such as OHIF reads). Orthanc is stopped and its storage removed
when the context ends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.timing import free_port, scaled


@dataclass(frozen=True)
class Orthanc:
    http_port: int
    dicom_port: int
    ae_title: str
    log: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read()
        return json.loads(text) if text else None

    def upload(self, path: Path) -> Any:
        """Store one DICOM file through the REST API (faster than C-STORE for a test's fixtures)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/instances", data=path.read_bytes(), method="POST"
        )
        request.add_header("Content-Type", "application/dicom")
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def series_by_modality(self) -> dict[str, list[dict[str, Any]]]:
        """For each study UID: the series it holds, with their main tags."""
        studies: dict[str, list[dict[str, Any]]] = {}
        for study_id in self.get("/studies"):
            study = self.get(f"/studies/{study_id}")
            uid = study["MainDicomTags"]["StudyInstanceUID"]
            studies[uid] = [self.get(f"/series/{s}")["MainDicomTags"] for s in study["Series"]]
        return studies


#: Where Debian's orthanc-dicomweb package puts the plugin.
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def orthanc_binary() -> str:
    found = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if not found:
        pytest.fail(
            "Orthanc (Debian package orthanc) is required by the test suite: run the README's test command"
        )
    return found


@contextmanager
def running_orthanc(
    workdir: Path,
    ae_title: str = "ORTHANC",
    modalities: dict[str, list[Any]] | None = None,
    *,
    dicomweb: bool = False,
    **extra: Any,
) -> Iterator[Orthanc]:
    """Start Orthanc with a temporary configuration in ``workdir``; stop it afterwards.

    ``dicomweb=True`` loads the DICOMweb plugin (root ``/dicom-web/``); ``extra`` keys are added to
    the configuration as they are.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    plugins: list[str] = []
    if dicomweb:
        if not DICOMWEB_PLUGIN.exists():
            pytest.fail(
                f"{DICOMWEB_PLUGIN} missing (Debian package orthanc-dicomweb): run the README's test command"
            )
        plugins.append(str(DICOMWEB_PLUGIN))
        extra.setdefault("DicomWeb", {"Enable": True, "Root": "/dicom-web/"})
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "bodycomp-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": ae_title,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities or {},
        "Plugins": plugins,
        "HttpBindAddress": "127.0.0.1",
        "DicomBindAddress": "127.0.0.1",  # ignored by older Orthanc; loopback peers only anyway
        **extra,
    }
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log = workdir / "orthanc.log"
    with log.open("w") as handle:
        process = subprocess.Popen(
            [orthanc_binary(), str(config_path)], stdout=handle, stderr=subprocess.STDOUT
        )
    server = Orthanc(http_port, dicom_port, ae_title, log)
    try:
        deadline = time.monotonic() + scaled(30)
        while True:
            try:
                server.get("/system")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
