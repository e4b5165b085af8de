"""Who may talk to the node, how, and what it lets out: DICOM TLS, AE checks, PHI in logs, file modes.

Real processes on loopback: ``bodycomp serve`` (and a ``bodycomp worker``), DCMTK's ``storescu``,
``echoscu`` and ``storescp`` with their ``+tls`` options as the modality and the PACS. The test
makes its own PKI with the ``openssl`` command: a test CA, the node's certificate, a client
certificate, a client certificate from another (untrusted) CA, and destination certificates
(trusted, untrusted, for the wrong host). Every scenario records its figures with
:func:`tests.reliability.recorded` for ``docs/reliability.md``.

What must hold (issue 8, "Security"):

* a TLS listener stores what DCMTK sends over TLS and refuses plaintext (nothing stored); with
  client verification, no certificate or an untrusted one is refused; a caller that connects and
  never handshakes does not stop others from being served;
* the sender delivers to a ``+tls`` destination, verifies its certificate and host name, and
  never falls back to plaintext: such deliveries retry with the TLS reason in ``bodycomp status``;
* calling-AE whitelist, called-AE check and ``check_host``;
* no patient-identifying value in any log the node and its worker wrote, nor in ``status``, after
  a study went through the whole path (plus a refused instance and a failed analysis);
* the spool, the index, the results and the broker are readable by the service user only.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import time
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.reliability import Tally, recorded
from tests.test_node_support import (
    BODYCOMP,
    DCMTK,
    NodeProc,
    free_port,
    port_open,
    received,
    start,
    start_node,
    status,
    storescp,
    study_status,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.network, pytest.mark.slow]

RESULT_TIMEOUT = 120
SUCCESS = "Received Store Response (Success)"


# -- a test PKI, made with the openssl command ---------------------------------------------------


@dataclass(frozen=True)
class Pki:
    folder: Path

    def crt(self, name: str) -> Path:
        return self.folder / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.folder / f"{name}.key"


def _openssl(*args: str | Path) -> None:
    run = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


def _make_ca(folder: Path, name: str, subject: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject,
        "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _make_cert(folder: Path, name: str, common_name: str, ca: str, san: str) -> None:
    ext = folder / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}",
        "-keyout", folder / f"{name}.key", "-out", folder / f"{name}.csr",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", folder / f"{name}.csr", "-days", "2", "-CA", folder / f"{ca}.crt",
        "-CAkey", folder / f"{ca}.key", "-CAcreateserial", "-extfile", ext, "-out", folder / f"{name}.crt",
    )  # fmt: skip
    (folder / f"{name}.key").chmod(0o600)


def _make_crl(folder: Path, ca: str, revoked: Sequence[str]) -> Path:
    """``<ca>.crl``: the CA's revocation list (valid two days) listing the ``revoked`` certificates."""
    (folder / f"{ca}-index.txt").write_text("")
    (folder / f"{ca}-crlnumber").write_text("01\n")
    config = folder / f"{ca}-ca.cnf"
    config.write_text(
        "[ca]\ndefault_ca = own\n[own]\n"
        f"database = {folder / f'{ca}-index.txt'}\ncrlnumber = {folder / f'{ca}-crlnumber'}\n"
        f"certificate = {folder / f'{ca}.crt'}\nprivate_key = {folder / f'{ca}.key'}\n"
        "default_md = sha256\ndefault_crl_days = 2\n"
    )
    for name in revoked:
        _openssl("ca", "-config", config, "-revoke", folder / f"{name}.crt")
    _openssl("ca", "-config", config, "-gencrl", "-out", folder / f"{ca}.crl")
    return folder / f"{ca}.crl"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    _make_ca(folder, "ca", "/O=bodycomp tests/CN=Test Hospital CA")
    _make_ca(folder, "rogue", "/O=elsewhere/CN=Rogue CA")
    loopback = "DNS:localhost,IP:127.0.0.1"
    _make_cert(folder, "node", "BODYCOMP", "ca", loopback)
    _make_cert(folder, "client", "STORESCU", "ca", "DNS:modality.example")
    _make_cert(folder, "untrusted", "STORESCU", "rogue", "DNS:modality.example")
    _make_cert(folder, "pacs", "TLSPACS", "ca", loopback)
    _make_cert(folder, "roguepacs", "ROGUEPACS", "rogue", loopback)
    _make_cert(folder, "otherhost", "OTHERHOST", "ca", "DNS:pacs.elsewhere.example")
    _make_cert(folder, "revoked", "STORESCU", "ca", "DNS:modality.example")  # a stolen modality's
    _make_cert(folder, "revokedpacs", "OLDPACS", "ca", loopback)
    _make_crl(folder, "ca", revoked=["revoked", "revokedpacs"])
    return Pki(folder)


def tls_flags(pki: Pki, identity: str | None) -> list[str]:
    """DCMTK TLS options: ``+tls KEY CRT`` (or ``+tla``: TLS without a certificate) trusting the CA."""
    own = ["+tls", str(pki.key(identity)), str(pki.crt(identity))] if identity else ["+tla"]
    return [*own, "+cf", str(pki.crt("ca"))]


# -- DCMTK as the modality -----------------------------------------------------------------------


def dcmtk(tool: str, args: Sequence[str | Path], timeout: float = 180) -> str:
    result = subprocess.run(
        [str(DCMTK / tool), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"TCP_NODELAY": "1", "PATH": os.environ.get("PATH", "/usr/bin")},
    )
    return result.stdout + result.stderr


def send(
    port: int,
    files: Sequence[Path],
    tls: Sequence[str] = (),
    calling: str = "STORESCU",
    called: str = "BODYCOMP",
) -> tuple[int, str]:
    """storescu over one association; return (instances answered Success, output)."""
    output = dcmtk("storescu", ["-v", "-aet", calling, "-aec", called, *tls, "127.0.0.1", port, *files])
    return output.count(SUCCESS), output


def echo(port: int, tls: Sequence[str] = ()) -> bool:
    output = dcmtk("echoscu", ["-v", "-aec", "BODYCOMP", *tls, "127.0.0.1", port], timeout=60)
    return "Received Echo Response (Success)" in output


def handshake_version(pki: Pki, port: int, *options: str) -> str | None:
    """The protocol ``openssl s_client`` negotiates with ``options``, or None if refused."""
    run = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.crt("ca")), *options],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"^New, (TLSv[0-9.]+), Cipher is (?!\(NONE\))", run.stdout, re.MULTILINE)
    return found.group(1) if found else None


def thread_count(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())


def small_study(folder: Path, n: int = 4, **extra: Any) -> tuple[list[Path], str]:
    """A small synthetic CT series (64×64, uncompressed) in a new study; return files, study UID."""
    options = SeriesOptions(extra=extra)
    g = axial_geometry(n_slices=n)
    return write_series(folder, sample(block_phantom(), g), g, options), options.study_uid


def spooled(data_dir: Path, study_uid: str) -> int:
    return len(list((data_dir / "spool" / "studies" / study_uid).rglob("*.dcm")))


@contextmanager
def tls_storescp(
    out_dir: Path, pki: Pki, identity: str, ae_title: str, port: int | None = None
) -> Iterator[int]:
    """DCMTK storescp over TLS only (``+tls``; requires and verifies the caller's certificate)."""
    port = port or free_port()
    out_dir.mkdir(parents=True, exist_ok=True)
    proc = start(
        [
            str(DCMTK / "storescp"), "-v", "-aet", ae_title, "-od", str(out_dir),
            "+tls", str(pki.key(identity)), str(pki.crt(identity)), "+cf", str(pki.crt("ca")),
            "-rc", str(port),
        ],
        out_dir.parent / f"storescp-{ae_title}.log",
        {"TCP_NODELAY": "1"},
    )  # fmt: skip
    try:
        wait_for("storescp +tls to listen", lambda: port_open(port), 15, proc.log)
        yield port
    finally:
        proc.stop(10)


def tls_node_args(pki: Pki, verify_client: bool = False) -> list[str]:
    args = [
        "--tls-cert",
        str(pki.crt("node")),
        "--tls-key",
        str(pki.key("node")),
        "--tls-ca",
        str(pki.crt("ca")),
    ]
    return [*args, "--tls-verify-client"] if verify_client else args


# -- the TLS listener ----------------------------------------------------------------------------


def test_tls_listener_stores_over_tls_and_refuses_plaintext(pki: Pki, tmp_path: Path) -> None:
    tls_files, tls_study = small_study(tmp_path / "tls", n=5)
    plain_files, plain_study = small_study(tmp_path / "plain", n=5)
    node = start_node(tmp_path / "data", *tls_node_args(pki), stable_seconds=600)
    with recorded("TLS listener: storescu over TLS stored, plaintext refused, a silent caller") as tally:
        try:
            # A caller that opens a TCP connection and never starts the handshake: it must not
            # stop anyone else from being served (pynetdicom alone would handshake in its accept loop).
            silent = socket.create_connection(("127.0.0.1", node.port))
            try:
                assert echo(node.port, tls_flags(pki, None)), "C-ECHO over TLS (no client certificate)"
                ok, output = send(node.port, tls_files, tls_flags(pki, "client"))
            finally:
                silent.close()
            assert ok == len(tls_files), output
            plain_ok, plain_output = send(node.port, plain_files)
            assert not echo(node.port), "plaintext C-ECHO must fail on a TLS listener"
            # Refused callers release their association at once: more of them in a row than the
            # listener's maximum associations, then a TLS caller is still served (pynetdicom alone
            # would hold each for the 30 s ACSE timeout and reject everyone meanwhile).
            threads = thread_count(node.process.pid)
            refused_in_a_row = sum(not echo(node.port) for _ in range(15))
            assert refused_in_a_row == 15 and echo(node.port, tls_flags(pki, None))
            wait_for(
                "the refused associations' threads to end",
                lambda: thread_count(node.process.pid) <= threads,
                10,
                node.log,
            )
            # TLS 1.2 is the oldest version accepted (openssl s_client may offer 1.1 at level 0).
            assert handshake_version(pki, node.port, "-tls1_2") == "TLSv1.2"
            assert handshake_version(pki, node.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0") is None
            tally.sent = len(tls_files) + len(plain_files)
            tally.acknowledged = ok + plain_ok
            tally.refused = len(plain_files) - plain_ok
            tally.stored = spooled(node.data_dir, tls_study) + spooled(node.data_dir, plain_study)
            tally.lost = ok - spooled(node.data_dir, tls_study)
            assert plain_ok == 0, plain_output
            assert spooled(node.data_dir, tls_study) == len(tls_files)
            assert spooled(node.data_dir, plain_study) == 0
            assert {s["study_uid"] for s in status(node.data_dir)["studies"]} == {tls_study}
            log = node.text()
            assert "tls=on" in log and "event=tls_established" in log
            assert log.count("event=tls_refused") >= 2, log[-3000:]  # plaintext store and echo
            assert "WRONG_VERSION_NUMBER" in log and "UNSUPPORTED_PROTOCOL" in log
            tally.notes = "DCMTK storescu/echoscu +tls; plaintext ones refused at the TLS handshake"
        finally:
            assert node.stop() == 0, node.text()[-3000:]


def send_as_caller(
    node: NodeProc, tally: Tally, folder: Path, flags: Sequence[str], accepted: bool, caller: str
) -> None:
    """A small study from one TLS caller: all of it stored if ``accepted``, else none (counted)."""
    files, study = small_study(folder, n=3)
    ok, output = send(node.port, files, flags)
    tally.sent += len(files)
    tally.acknowledged += ok
    tally.refused += len(files) - ok
    tally.stored += spooled(node.data_dir, study)
    assert ok == (len(files) if accepted else 0), f"{caller}: {output}"
    assert spooled(node.data_dir, study) == ok, caller


def test_client_certificate_verification(pki: Pki, tmp_path: Path) -> None:
    node = start_node(tmp_path / "data", *tls_node_args(pki, verify_client=True), stable_seconds=600)
    callers = {
        "certificate from the hospital CA": (tls_flags(pki, "client"), True),
        "no client certificate": (tls_flags(pki, None), False),
        "certificate from an untrusted CA": (tls_flags(pki, "untrusted"), False),
        "plaintext": ([], False),
    }
    with recorded("TLS listener with client-certificate verification: 4 callers") as tally:
        try:
            for i, (caller, (flags, accepted)) in enumerate(callers.items()):
                send_as_caller(node, tally, tmp_path / f"caller{i}", flags, accepted, caller)
            log = node.text()
            for reason in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED"):
                assert reason in log, log[-3000:]
            assert "peer=STORESCU" in log  # the verified caller's certificate name is logged
            assert len(status(node.data_dir)["studies"]) == 1
            tally.notes = "accepted only the caller with a certificate from tls_ca"
        finally:
            assert node.stop() == 0, node.text()[-3000:]


def test_revoked_client_certificate_is_refused_with_tls_crl(pki: Pki, tmp_path: Path) -> None:
    """``tls_crl``: a caller whose certificate the hospital CA revoked (a stolen or retired device)
    is refused at the handshake, while one with a valid certificate from the same CA is served."""
    node = start_node(
        tmp_path / "data",
        *tls_node_args(pki, verify_client=True),
        "--tls-crl",
        str(pki.folder / "ca.crl"),
        stable_seconds=600,
    )
    with recorded("TLS listener with a CRL: a revoked and a valid client certificate") as tally:
        try:
            for name, accepted in (("revoked", False), ("client", True)):
                send_as_caller(node, tally, tmp_path / name, tls_flags(pki, name), accepted, name)
            log = node.text()
            assert "tls=on+client-cert+crl" in log
            assert "certificate revoked" in log, log[-3000:]
            tally.notes = "the revoked certificate refused at the handshake; the valid one served"
        finally:
            assert node.stop() == 0, node.text()[-3000:]


def test_unusable_certificate_files_stop_serve_with_exit_2(pki: Pki, tmp_path: Path) -> None:
    """A typo in a certificate path must not give a plaintext node: configuration error, exit 2."""
    bad = subprocess.run(
        [BODYCOMP, "serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
         "--tls-cert", str(pki.crt("node")), "--tls-key", str(tmp_path / "missing.key")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "tls_key" in bad.stderr, bad.stderr
    mismatched = subprocess.run(
        [BODYCOMP, "serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
         "--tls-cert", str(pki.crt("node")), "--tls-key", str(pki.key("client"))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert mismatched.returncode == 2 and "KEY_VALUES_MISMATCH" in mismatched.stderr, mismatched.stderr
    not_a_crl = tmp_path / "empty.crl"
    not_a_crl.write_text("")
    no_crl = subprocess.run(
        [BODYCOMP, "serve", "--data-dir", str(tmp_path / "d"), "--port", str(free_port()),
         *tls_node_args(pki, verify_client=True), "--tls-crl", str(not_a_crl)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert no_crl.returncode == 2 and "tls_crl" in no_crl.stderr, no_crl.stderr


# -- the sender over TLS -------------------------------------------------------------------------


def test_sender_delivers_over_tls_and_never_falls_back_to_plaintext(
    pki: Pki, example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    """Results go to a ``+tls`` destination and nowhere a verified TLS association is impossible."""
    files = copy_series(example_ct_derived_dicom, tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    plain_dir, rogue_dir, host_dir, tls_dir = (tmp_path / n for n in ("plain", "rogue", "host", "tlspacs"))
    with (
        tls_storescp(tls_dir, pki, "pacs", "TLSPACS") as tls_port,
        storescp(plain_dir, "PLAIN") as plain_port,
        tls_storescp(rogue_dir, pki, "roguepacs", "ROGUEPACS") as rogue_port,
        tls_storescp(host_dir, pki, "otherhost", "OTHERHOST") as host_port,
    ):
        good = f"TLSPACS@127.0.0.1:{tls_port}+tls"
        refused = {
            f"PLAIN@127.0.0.1:{plain_port}+tls": "closed during the TLS handshake",
            f"ROGUEPACS@127.0.0.1:{rogue_port}+tls": "CERTIFICATE_VERIFY_FAILED",
            f"OTHERHOST@127.0.0.1:{host_port}+tls": "CERTIFICATE_VERIFY_FAILED (IP address mismatch",
        }
        destinations = [arg for d in (good, *refused) for arg in ("--destination", d)]
        node = start_node(tmp_path / "data", *tls_node_args(pki), *destinations, stable_seconds=1)
        with recorded("sender: results over TLS; plaintext, untrusted, wrong-host peers refused") as tally:
            try:
                ok, output = send(node.port, files, tls_flags(pki, "client"))
                tally.sent, tally.acknowledged = len(files), ok
                assert ok == len(files), output
                wait_for(
                    "SEG, SR and overlay at the TLS destination",
                    lambda: len(received(tls_dir)) >= 3,
                    RESULT_TIMEOUT,
                    node.log,
                )

                def retried() -> dict[str, Any] | None:
                    report = status(node.data_dir)
                    rows = [r for r in report["retrying"] if r["destination"] in refused]
                    return report if len(rows) == 3 * len(refused) else None

                report = wait_for("every refused destination retried", retried, 60, node.log)
                tally.stored = spooled(node.data_dir, study_uid)
                done = (study_status(node.data_dir, study_uid) or {}).get("state") == "done"
                tally.analysed = int(done)
                tally.expected_analysed = 1
                tally.delivered = len(received(tls_dir))
                tally.expected_delivered = 3
                for dest, reason in refused.items():
                    errors = {r["error"] for r in report["retrying"] if r["destination"] == dest}
                    assert all("TLS handshake failed" in e and reason in e for e in errors), (dest, errors)
                text = subprocess.run(
                    [BODYCOMP, "status", "--data-dir", str(node.data_dir)], capture_output=True, text=True
                ).stdout
                assert "retrying:" in text and "TLS handshake failed" in text, text
                # Nothing went anywhere but the verified TLS destination, in plaintext or otherwise.
                for folder in (plain_dir, rogue_dir, host_dir):
                    assert not any(folder.iterdir()), folder
                assert len(received(tls_dir)) == 3
                outbox = study_status(node.data_dir, study_uid)["outbox"]  # type: ignore[index]
                assert outbox == {"delivered": 3, "pending": 9}, outbox
                # bodycomp echo reaches the peers as the sender does, with the same settings.
                env = {
                    **os.environ,
                    "BODYCOMP_TLS_CA": str(pki.crt("ca")),
                    "BODYCOMP_TLS_CERT": str(pki.crt("node")),
                    "BODYCOMP_TLS_KEY": str(pki.key("node")),
                }
                ok_echo = subprocess.run([BODYCOMP, "echo", good], capture_output=True, text=True, env=env)
                assert ok_echo.returncode == 0 and "success" in ok_echo.stdout, ok_echo.stderr
                plain = next(iter(refused))
                bad_echo = subprocess.run([BODYCOMP, "echo", plain], capture_output=True, text=True, env=env)
                assert bad_echo.returncode == 1 and "TLS handshake failed" in bad_echo.stderr, bad_echo.stderr
                tally.extra = {"deliveries_withheld": 3 * len(refused), "plaintext_deliveries": 0}
                tally.notes = "3 of 3 results at the TLS peer; 9 deliveries to 3 refused peers kept retrying"
            finally:
                assert node.stop() == 0, node.text()[-3000:]


def test_revoked_destination_certificate_is_refused_with_tls_crl(pki: Pki, tmp_path: Path) -> None:
    """``tls_crl`` on the sending side, through ``bodycomp echo`` (the sender's TLS context and
    settings): a PACS whose certificate was revoked is refused, a valid one reached; without the
    CRL the revoked certificate would pass (it is signed by the trusted CA)."""
    env = {
        **os.environ,
        "BODYCOMP_TLS_CA": str(pki.crt("ca")),
        "BODYCOMP_TLS_CERT": str(pki.crt("node")),
        "BODYCOMP_TLS_KEY": str(pki.key("node")),
    }
    with (
        tls_storescp(tmp_path / "good", pki, "pacs", "TLSPACS") as good_port,
        tls_storescp(tmp_path / "old", pki, "revokedpacs", "OLDPACS") as old_port,
    ):

        def echo_peer(target: str, **extra: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [BODYCOMP, "echo", target], capture_output=True, text=True, env={**env, **extra}, timeout=60
            )

        crl = {"BODYCOMP_TLS_CRL": str(pki.folder / "ca.crl")}
        good = echo_peer(f"TLSPACS@127.0.0.1:{good_port}+tls", **crl)
        assert good.returncode == 0 and "success" in good.stdout, good.stderr
        revoked = echo_peer(f"OLDPACS@127.0.0.1:{old_port}+tls", **crl)
        assert revoked.returncode == 1 and "certificate revoked" in revoked.stderr, revoked.stderr
        unchecked = echo_peer(f"OLDPACS@127.0.0.1:{old_port}+tls")
        assert unchecked.returncode == 0, unchecked.stderr


# -- AE titles and hosts -------------------------------------------------------------------------


def test_calling_ae_called_ae_and_host_checks(tmp_path: Path) -> None:
    local_port = free_port()  # LOCAL's own (unused) port: only its host matters here
    metrics_port = free_port()
    node = start_node(
        tmp_path / "data",
        "--metrics-port",
        str(metrics_port),
        stable_seconds=600,
        env={
            "BODYCOMP_ALLOW_AE": "PACS,LOCAL,OTHER",
            "BODYCOMP_CHECK_HOST": "true",
            # PACS is known at another address; LOCAL by a host name that resolves to loopback.
            "BODYCOMP_DESTINATION": f"PACS@10.255.0.1:104,LOCAL@localhost:{local_port}",
        },
    )
    cases = {
        # name: (calling, called, stored?, expected text in storescu's output)
        "unlisted calling AE": ("INTRUDER", "BODYCOMP", False, "Calling AE Title Not Recognized"),
        "wrong called AE": ("OTHER", "NOTBODYCOMP", False, "Called AE Title Not Recognized"),
        "known AE from the wrong host": ("PACS", "BODYCOMP", False, "Status: 0x124"),
        "known AE from its host (by name)": ("LOCAL", "BODYCOMP", True, SUCCESS),
        "listed AE that is not a destination": ("OTHER", "BODYCOMP", True, SUCCESS),
    }
    with recorded("calling-AE whitelist, called-AE check, check_host: 5 callers") as tally:
        try:
            for i, (case, (calling, called, stored, expected)) in enumerate(cases.items()):
                files, study = small_study(tmp_path / f"case{i}", n=3)
                ok, output = send(node.port, files, calling=calling, called=called)
                tally.sent += len(files)
                tally.acknowledged += ok
                tally.refused += len(files) - ok
                tally.stored += spooled(node.data_dir, study)
                assert expected.lower() in output.lower(), f"{case}: {output}"
                assert ok == (len(files) if stored else 0), f"{case}: {output}"
                assert spooled(node.data_dir, study) == ok, case
            assert "connected from an unexpected host" in node.text()
            assert len(status(node.data_dir)["studies"]) == 2
            # each rejected association: one line in the node's own log and a counter, by reason
            lines = [ln for ln in node.text().splitlines() if "event=association_rejected" in ln]
            assert len(lines) == 2, lines
            assert "from=INTRUDER address=127.0.0.1 called=BODYCOMP reason=calling_ae_not_allowed" in lines[0]
            assert (
                "from=OTHER address=127.0.0.1 called=NOTBODYCOMP reason=called_ae_not_this_node" in lines[1]
            )
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()
            for reason in ("calling_ae_not_allowed", "called_ae_not_this_node"):
                assert f'bodycomp_associations_rejected_total{{reason="{reason}"}} 1.0' in text, text
            tally.notes = "2 of 5 callers stored; rejections by A-ASSOCIATE-RJ (AE titles) and 0x0124 (host)"
        finally:
            assert node.stop() == 0, node.text()[-3000:]


# -- PHI in logs, file modes ---------------------------------------------------------------------

#: Unusual values no log line could contain by chance.
PHI = {
    "PatientName": "Quaxwell^Zebulonia^Ottilie",
    "PatientID": "QZX-73106-PHI",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACQ99173Z",
    "InstitutionName": "Sankt Quirinus Klinikum",
}
#: The same as older modalities write them: no component separators, a dotted date. Libraries
#: quote such values in their warnings and errors (the leak this test found).
PHI_OLD_STYLE = {**PHI, "PatientName": "QUAXWELL ZEBULONIA OTTILIE", "PatientBirthDate": "17.04.1923"}
#: What may not appear in a log, in any case: each value and each part of the name.
PHI_NEEDLES = [*PHI.values(), *PHI_OLD_STYLE.values(), "Quaxwell", "Zebulonia", "Ottilie", "1923-04-17"]


def copy_series(src: Path, dst: Path, **attributes: Any) -> list[Path]:
    """Copy a series into a new study (new UIDs), setting ``attributes`` on every instance."""
    dst.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(dst / path.name, enforce_file_format=True)
        paths.append(dst / path.name)
    return paths


@dataclass
class FullRun:
    data_dir: Path
    logs: dict[str, str]
    status_outputs: list[str]
    study_uid: str
    failed_study: str
    results: list[pydicom.Dataset]
    figures: dict[str, int]


@pytest.fixture(scope="module")
def full_run(example_ct_derived_dicom: Path, tmp_path_factory: pytest.TempPathFactory) -> FullRun:
    """One study with known PHI through the whole path with verbose logs, a failed analysis of
    another, and a refused instance; the node and a separate verbose worker, then stopped."""
    tmp = tmp_path_factory.mktemp("phi")
    with warnings.catch_warnings():  # pydicom warns about the non-standard values we write on purpose
        warnings.simplefilter("ignore")
        files = copy_series(example_ct_derived_dicom, tmp / "study", **PHI_OLD_STYLE)
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        failing, failed_study = small_study(tmp / "no-l3", n=8, **PHI)
        refused = copy_series(tmp / "no-l3", tmp / "refused", **PHI)[:1]
        ds = pydicom.dcmread(refused[0])
        ds.SeriesInstanceUID = "1.2.840.99.07.3"  # "07": not a valid UID component → 0xC000
        ds.save_as(refused[0], enforce_file_format=True)
    data = tmp / "data"
    dest = tmp / "pacs"
    figures: dict[str, int] = {}
    began = time.monotonic()
    with storescp(dest, "DEST") as dest_port:
        node = start_node(
            data, "-v", "--workers", "0", "--destination", f"DEST@127.0.0.1:{dest_port}", stable_seconds=1
        )
        worker = start(
            [BODYCOMP, "worker", "-v", "--data-dir", str(data), "--broker-url",
             f"sqla+sqlite:///{(data / 'broker.sqlite').resolve()}"],
            tmp / "worker.log",
        )  # fmt: skip
        try:
            ok, output = send(node.port, files)
            assert ok == len(files), output
            figures["sent"], figures["acknowledged"] = len(files), ok
            ok_failing, output = send(node.port, failing)
            assert ok_failing == len(failing), output
            ok_refused, output = send(node.port, refused)
            assert ok_refused == 0 and "cannotunderstand" in output.lower(), output
            figures["sent"] += len(failing) + len(refused)
            figures["acknowledged"] += ok_failing
            figures["refused"] = len(refused) - ok_refused
            wait_for("the results", lambda: len(received(dest)) >= 3, RESULT_TIMEOUT, [node.log, worker.log])
            wait_for(
                "the failed analysis",
                lambda: (study_status(data, failed_study) or {}).get("state") == "failed",
                RESULT_TIMEOUT,
                [node.log, worker.log],
            )
            wait_for(
                "delivered",
                lambda: (study_status(data, study_uid) or {}).get("outbox", {}).get("delivered") == 3,
                30,
                node.log,
            )
            status_outputs = [
                subprocess.run(
                    [BODYCOMP, "status", "--data-dir", str(data), *extra], capture_output=True, text=True
                ).stdout
                for extra in ([], ["--json"])
            ]
        finally:
            node.stop()
            worker.stop()
        results = received(dest)
    logs = {p.name: p.read_text(errors="replace") for p in tmp.glob("*.log")}
    figures["stored"] = len(list((data / "spool" / "studies").rglob("*.dcm")))
    figures["seconds"] = round(time.monotonic() - began)
    return FullRun(data, logs, status_outputs, study_uid, failed_study, results, figures)


def test_no_patient_identifiers_in_logs_or_status(full_run: FullRun) -> None:
    run = full_run
    with recorded("no PHI in logs: full path, verbose, a refused instance, a failed analysis") as tally:
        tally.sent = run.figures["sent"]
        tally.acknowledged = run.figures["acknowledged"]
        tally.refused = run.figures["refused"]
        tally.stored = run.figures["stored"]
        tally.analysed, tally.expected_analysed = 2, 2
        tally.delivered, tally.expected_delivered = len(run.results), 3
        # The values did travel: in the spool, and copied into the results the PACS got (all three,
        # although the birth date is not a valid DA: it is left empty in the results).
        assert {str(r.PatientID) for r in run.results} == {PHI["PatientID"]}
        assert {str(r.PatientName) for r in run.results} == {PHI_OLD_STYLE["PatientName"]}
        assert {str(r.get("PatientBirthDate", "")) for r in run.results} == {""}
        spool_bytes = b"".join(p.read_bytes()[:4096] for p in (run.data_dir / "spool").rglob("*.dcm"))
        assert PHI["PatientID"].encode() in spool_bytes
        node_logs = {name: text for name, text in run.logs.items() if not name.startswith("storescp")}
        assert {"serve.log", "worker.log"} <= set(node_logs), sorted(run.logs)
        assert "event=stored" in node_logs["serve.log"] and "DEBUG" in node_logs["serve.log"], "verbose"
        assert "0xC000" in node_logs["serve.log"] or "refused" in node_logs["serve.log"]
        texts = {**node_logs, "status": run.status_outputs[0], "status --json": run.status_outputs[1]}
        leaks = [
            f"{needle!r} in {name}: …{text[max(0, m.start() - 120) : m.end() + 40]}…"
            for name, text in texts.items()
            for needle in PHI_NEEDLES
            for m in [re.search(re.escape(needle), text, re.IGNORECASE)]
            if m
        ]
        tally.extra = {
            "log_bytes": sum(len(t) for t in node_logs.values()),
            "leaks": len(leaks),
            "run_seconds": run.figures["seconds"],
        }
        tally.notes = f"{len(PHI_NEEDLES)} values searched in {len(texts)} logs/outputs: {len(leaks)} found"
        assert not leaks, "\n".join(leaks)


def test_spool_index_results_and_broker_are_private(full_run: FullRun) -> None:
    data = full_run.data_dir
    with recorded("files private to the service user (umask 077, data dirs 0700)") as tally:
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        groups = {
            "spool": list((data / "spool").rglob("*")),
            "index": list(data.glob("index.sqlite*")),
            "results": list((data / "results").rglob("*")),
            "broker": list(data.glob("broker.sqlite*")),
        }
        for name, paths in groups.items():
            assert paths, f"no {name} files to check"
        assert any(p.suffix == ".dcm" for p in groups["spool"]) and any(
            p.name == "result.json" for p in groups["results"]
        )
        open_to_others = [
            f"{p.relative_to(data)} {stat.S_IMODE(p.stat().st_mode):04o}"
            for paths in groups.values()
            for p in paths
            if stat.S_IMODE(p.stat().st_mode) & 0o077
        ]
        checked = sum(len(paths) for paths in groups.values())
        tally.stored = sum(1 for p in groups["spool"] if p.suffix == ".dcm")
        tally.extra = {"paths_checked": checked, "readable_by_others": len(open_to_others)}
        tally.notes = f"{checked} files and folders checked, {len(open_to_others)} readable by others"
        assert not open_to_others, open_to_others


def test_library_messages_quoting_dataset_values_are_redacted() -> None:
    """The messages found in the full run, and their relatives, in a process set up as ``serve``."""
    script = """
import logging, warnings, pydicom
from node import privacy
logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
privacy.install()
ds = pydicom.Dataset()
ds.PatientBirthDate = "17.04.1923"                      # pydicom: Invalid value for VR DA: '…'
warnings.warn('The string "QUAXWELL ZEBULONIA" is unlikely to represent the intended person name')
try:
    pydicom.valuerep.DA("17.04.1923")
except ValueError:
    logging.getLogger("bodycomp.worker").exception("event=job_failed job=1")
logging.getLogger("celery").info("retry: %r", ValueError("Unable to convert '1923-04-17' to 'DA' object"))
logging.getLogger("bodycomp").info("event=stored sop=%s", "1.2.3.4")
"""
    run = subprocess.run(
        [str(Path(BODYCOMP).with_name("python")), "-c", script], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    for needle in ("17.04.1923", "1923-04-17", "QUAXWELL", "ZEBULONIA"):
        assert needle not in run.stderr, run.stderr
    assert run.stderr.count("<redacted>") >= 4, run.stderr
    assert "event=stored sop=1.2.3.4" in run.stderr and "Traceback" in run.stderr


def test_tls_settings_and_destinations_parse_as_documented(tmp_path: Path) -> None:
    from node.config import ConfigError, load_settings, parse_destination

    dest = parse_destination("PACS@pacs.hospital.example:2762+tls")
    assert (dest.ae_title, dest.host, dest.port, dest.tls) == ("PACS", "pacs.hospital.example", 2762, True)
    assert str(dest) == "PACS@pacs.hospital.example:2762+tls" and not parse_destination("P@h:104").tls
    assert parse_destination("P@[::1]:2762+TLS").host == "::1"
    env = {
        "BODYCOMP_TLS_CERT": "/etc/bodycomp/tls/node.crt",
        "BODYCOMP_TLS_KEY": "/etc/bodycomp/tls/node.key",
        "BODYCOMP_TLS_CA": "/etc/bodycomp/tls/ca.crt",
        "BODYCOMP_TLS_VERIFY_CLIENT": "true",
        "BODYCOMP_DESTINATION": "PACS@10.0.0.5:2762+tls,ARCHIVE@10.0.0.6:104",
    }
    node = load_settings(environ=env).node
    assert node.tls_cert == Path("/etc/bodycomp/tls/node.crt") and node.tls_verify_client
    assert [d.tls for d in node.destination_list()] == [True, False]
    for broken in (
        {"BODYCOMP_TLS_CERT": "/x.crt"},  # a certificate without its key
        {"BODYCOMP_TLS_VERIFY_CLIENT": "true"},  # client verification without a listener or CA
        {"BODYCOMP_DESTINATION": "PACS@10.0.0.5:2762+ssl"},
    ):
        with pytest.raises(ConfigError):
            load_settings(environ=broken)
