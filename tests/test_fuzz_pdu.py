"""Malformed association traffic from raw sockets (issue #8, "bad input"): the node stays up.

A running ``bodycomp serve`` (network timeout 4 s, so that stalled peers are dropped quickly)
gets garbage bytes, truncated PDUs, PDUs announcing gigabytes, A-ASSOCIATE-RQs with absurd
fields (hypothesis, derandomised), a peer that sends one byte a second, C-STOREs cut off in the
middle of their dataset, and dozens of half-open connections. After each scenario:

* the process is alive and a normal DCMTK storescu association stores a study (also *during*
  the stalled connections, as long as they are fewer than ``max_associations``);
* the node's threads and open file descriptors (``/proc/<pid>/status``, ``/proc/<pid>/fd``)
  return to their baseline within a bounded wait: no connection holds a thread or a socket
  after the peer stalls, trickles or vanishes;
* no partly received dataset stays in the node's ``TMPDIR`` or ``spool/tmp``.

Weaknesses these tests found in pynetdicom 3.0's acceptor, fixed in :mod:`node.receive.connection`: a
PDU announced and then withheld (or trickled) held two threads and a socket for as long as the
peer liked; a PDU announcing 4 GiB was read into memory as it came; a C-STORE cut off mid-dataset
left its temporary file for ever.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

from tests.reliability import Tally, recorded
from tests.test_node_support import NodeProc, copy_study, start_node, storescu, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.network, pytest.mark.slow]

NETWORK_TIMEOUT = 4.0
CT = b"1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = b"1.2.840.10008.1.2.1"
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
RELEASE_WAIT = 60  # seconds for threads and descriptors to come back to their baseline


# -- PDUs by hand ---------------------------------------------------------------------------------------


def item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body) & 0xFFFF) + body


def associate_rq(
    called: bytes = b"BODYCOMP",
    calling: bytes = b"RAWFUZZ",
    contexts: list[tuple[int, bytes, list[bytes]]] | None = None,
    version: int = 1,
    max_pdu: int = 16384,
    app_context: bytes = APP_CONTEXT,
    user_extra: bytes = b"",
    implementation: bytes = b"1.2.826.0.1.3680043.8.498.1",
) -> bytes:
    """An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) with every field under the caller's control."""
    contexts = [(1, CT, [EXPLICIT])] if contexts is None else contexts
    body = item(0x10, app_context)
    for cid, abstract, syntaxes in contexts:
        body += item(
            0x20,
            bytes([cid & 0xFF, 0, 0, 0]) + item(0x30, abstract) + b"".join(item(0x40, t) for t in syntaxes),
        )
    body += item(
        0x50, item(0x51, struct.pack(">L", max_pdu & 0xFFFFFFFF)) + item(0x52, implementation) + user_extra
    )
    fixed = (
        struct.pack(">HH", version & 0xFFFF, 0) + called.ljust(16)[:16] + calling.ljust(16)[:16] + b"\0" * 32
    )
    return struct.pack(">BBL", 1, 0, len(fixed) + len(body)) + fixed + body


def pdata(cid: int, fragment: bytes, command: bool, last: bool) -> bytes:
    pdv = (
        struct.pack(">L", len(fragment) + 2)
        + bytes([cid, (1 if command else 0) | (2 if last else 0)])
        + fragment
    )
    return struct.pack(">BBL", 4, 0, len(pdv)) + pdv


def c_store_command(sop_instance: str) -> bytes:
    cmd = Dataset()
    cmd.AffectedSOPClassUID = CT.decode()
    cmd.CommandField = 0x0001
    cmd.MessageID = 1
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = sop_instance
    body = encode(cmd, True, True)
    assert body is not None
    return struct.pack("<HHL", 0, 0, 4) + struct.pack("<L", len(body)) + body


# -- the node and its resources ------------------------------------------------------------------------------


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


class Node:
    """The node under test, its baseline and a well-formed study to prove it still serves."""

    def __init__(self, proc: NodeProc, study: list[Path]) -> None:
        self.proc = proc
        self.pid = proc.process.pid
        self.study = study
        self.stored_ok = 0
        self.sends = 0
        self.check_serves()  # warms up pynetdicom's lazily created pieces before the baseline
        time.sleep(1)
        self.baseline = (threads(self.pid), fds(self.pid))

    def check_serves(self) -> None:
        output = storescu(self.proc.port, self.study)
        self.sends += len(self.study)
        assert "Failed" not in output and "Error" not in output and "Rejected" not in output, output
        self.stored_ok += len(self.study)

    def released(self, tally: Tally, scenario_peak: tuple[int, int] | None = None) -> None:
        """Threads and descriptors back to the baseline (+1 of slack each); no partial files."""
        assert self.proc.process.poll() is None, "the node died:\n" + self.proc.text()[-3000:]
        base_threads, base_fds = self.baseline

        def back() -> bool:
            return threads(self.pid) <= base_threads + 1 and fds(self.pid) <= base_fds + 1

        started = time.monotonic()
        wait_for(
            f"threads/fds back to baseline {self.baseline} (now {threads(self.pid)}, {fds(self.pid)})",
            back,
            RELEASE_WAIT,
            self.proc.log,
        )
        tmp = self.proc.data_dir.parent / "node-tmp"
        wait_for("no partial datasets", lambda: not list(tmp.glob("*.dcm")), 30, self.proc.log)
        assert not list((self.proc.data_dir / "spool" / "tmp").iterdir())
        tally.extra.update(
            {
                "baseline_threads": base_threads,
                "baseline_fds": base_fds,
                "after_threads": threads(self.pid),
                "after_fds": fds(self.pid),
                "release_s": round(time.monotonic() - started, 1),
            }
        )
        if scenario_peak:
            tally.extra.update({"peak_threads": scenario_peak[0], "peak_fds": scenario_peak[1]})
        self.check_serves()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, example_ct_dicom: Path) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("fuzz-pdu")
    (base / "node-tmp").mkdir()
    study, _ = copy_study(example_ct_dicom, base / "study")
    proc = start_node(
        base / "data",
        "--network-timeout",
        str(NETWORK_TIMEOUT),
        stable_seconds=600,  # nothing is analysed here: only the receiving side is under test
        env={"TMPDIR": str(base / "node-tmp")},
    )
    try:
        yield Node(proc, study[:5])
    finally:
        proc.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def answer(sock: socket.socket, timeout: float = 10.0) -> str:
    """What the node did: ``AC``, ``RJ``, ``ABORT``, ``closed`` or ``silent``."""
    sock.settimeout(timeout)
    try:
        head = sock.recv(1)
    except TimeoutError:
        return "silent"
    except OSError:
        return "closed"
    return {b"\x02": "AC", b"\x03": "RJ", b"\x07": "ABORT", b"": "closed"}.get(head, f"0x{head.hex()}")


def peak(pid: int) -> tuple[int, int]:
    return threads(pid), fds(pid)


# -- scenarios --------------------------------------------------------------------------------


def test_garbage_truncated_and_oversized_pdus(node: Node) -> None:
    rng = random.Random(8)
    with recorded("raw sockets: garbage, truncated and oversized PDUs") as tally:
        outcomes: Counter[str] = Counter()
        held = []
        garbage = []
        for _ in range(12):  # garbage of every size; the peers keep their sockets open
            sock = connect(node.proc.port)
            sock.sendall(rng.randbytes(rng.choice([1, 5, 6, 7, 100, 5000])))
            garbage.append(sock)
        for sock in garbage:  # the node answers (A-ABORT) or drops each by itself
            outcomes["garbage:" + answer(sock, 2 * NETWORK_TIMEOUT + 5)] += 1
            held.append(sock)
        for kind in (1, 4, 5, 7):  # announced 1000 bytes, sent 10, then nothing
            sock = connect(node.proc.port)
            sock.sendall(struct.pack(">BBL", kind, 0, 1000) + b"x" * 10)
            held.append(sock)
        rss_before = rss_kb(node.pid)
        for kind in (1, 4):  # announced 4 GiB, then 20 MiB of data as fast as loopback goes
            sock = connect(node.proc.port)
            sock.sendall(struct.pack(">BBL", kind, 0, 0xFFFFFFF0))
            sent = 0
            try:
                while sent < 20 * 1024 * 1024:
                    sock.sendall(b"\0" * 65536)
                    sent += 65536
            except OSError:
                pass
            outcomes[f"oversized:{'dropped' if sent < 20 * 1024 * 1024 else 'read'}"] += 1
            held.append(sock)
        tally.extra["rss_growth_kb"] = rss_kb(node.pid) - rss_before
        top = peak(node.pid)
        # The node must drop the truncated ones itself (within its network timeout), peers still open.
        node.released(tally, top)
        for sock in held:
            sock.close()
        tally.sent = node.sends
        tally.acknowledged = tally.stored = node.stored_ok
        tally.refused = sum(outcomes.values())
        tally.extra.update({f"outcome:{k}": v for k, v in sorted(outcomes.items())})
        assert outcomes["oversized:dropped"] == 2, outcomes
        assert tally.extra["rss_growth_kb"] < 50_000, "an announced 4 GiB PDU must not be read into memory"
        assert all(
            k.split(":")[1] in ("ABORT", "closed", "RJ") for k in outcomes if k.startswith("garbage")
        ), outcomes
        tally.notes = "peers kept their sockets open: the node dropped them by itself"


@st.composite
def absurd_associate_rq(draw: st.DrawFn) -> bytes:
    version = draw(st.sampled_from([0, 1, 2, 0xFFFF]))
    called = draw(
        st.sampled_from([b"BODYCOMP", b"", b"\x00" * 16, b"\xff" * 16, b"BODYCOMP\\X", b"bodycomp"])
    )
    calling = draw(st.sampled_from([b"RAWFUZZ", b"", b" " * 16, b"\x00\x01\x02", b"A" * 40]))
    n_contexts = draw(st.sampled_from([0, 1, 2, 127, 128, 129, 500]))
    cid = draw(st.sampled_from([0, 1, 2, 255]))
    abstract = draw(st.sampled_from([CT, b"", b"1.2.3", b"x" * 5000, b"../../etc", b"\x00" * 64]))
    syntaxes = draw(st.sampled_from([[EXPLICIT], [], [b""], [b"9.9.9"] * 50, [b"y" * 300]]))
    contexts = [((cid + 2 * k) & 0xFF, abstract, syntaxes) for k in range(n_contexts)]
    max_pdu = draw(st.sampled_from([0, 1, 6, 16384, 0xFFFFFFFF]))
    app = draw(st.sampled_from([APP_CONTEXT, b"", b"1.2.3", b"z" * 70000]))
    extra = draw(st.sampled_from([b"", item(0x55, b"x" * 70), item(0x54, b"\xff" * 9), item(0x99, b"")]))
    pdu = associate_rq(called, calling, contexts, version, max_pdu, app, extra)
    how = draw(st.sampled_from(["whole", "cut", "length+1000", "length-10"]))
    if how == "cut":
        return pdu[: draw(st.integers(0, len(pdu) - 1))]
    if how == "length+1000":  # announces more than it sends: the node must not wait for ever
        return pdu[:2] + struct.pack(">L", len(pdu) - 6 + 1000) + pdu[6:]
    if how == "length-10":
        return pdu[:2] + struct.pack(">L", max(0, len(pdu) - 16)) + pdu[6:]
    return pdu


def test_absurd_associate_requests(node: Node) -> None:
    outcomes: Counter[str] = Counter()
    pending: list[socket.socket] = []

    @settings(
        max_examples=80,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(absurd_associate_rq())
    def send(pdu: bytes) -> None:
        sock = connect(node.proc.port)
        try:
            sock.sendall(pdu)
        except OSError:
            outcomes["send failed"] += 1
            sock.close()
            return
        result = answer(sock, 0.3)
        outcomes[result] += 1
        if result == "silent":
            pending.append(sock)  # waiting for the rest of a PDU: the node must drop it by itself
        else:
            sock.close()
        if len(pending) >= 12:  # stay below max_associations
            for waiting in pending:
                outcomes["dropped later:" + answer(waiting, 3 * NETWORK_TIMEOUT)] += 1
                waiting.close()
            pending.clear()

    with recorded("raw sockets: A-ASSOCIATE-RQ with absurd fields") as tally:
        send()
        for waiting in pending:
            outcomes["dropped later:" + answer(waiting, 3 * NETWORK_TIMEOUT)] += 1
            waiting.close()
        tally.extra.update({f"outcome:{k}": v for k, v in sorted(outcomes.items())})
        tally.refused = sum(v for k, v in outcomes.items() if k != "AC")
        node.released(tally)
        tally.sent, tally.acknowledged, tally.stored = node.sends, node.stored_ok, node.stored_ok
        assert sum(outcomes.values()) >= 80
        assert outcomes["dropped later:silent"] == 0, "a connection the node never dropped"


def test_slow_sender_is_dropped_and_others_are_served(node: Node) -> None:
    """One byte a second keeps no connection open beyond the network timeout per PDU."""
    with recorded("raw sockets: slow senders (1 byte/s) while storescu sends") as tally:
        rq = associate_rq()
        socks = [connect(node.proc.port) for _ in range(4)]
        stop = threading.Event()
        dropped_after: list[float] = []

        def drip(sock: socket.socket) -> None:
            started = time.monotonic()
            for byte in rq:
                if stop.wait(1.0):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    dropped_after.append(time.monotonic() - started)
                    return

        drippers = [threading.Thread(target=drip, args=(s,), daemon=True) for s in socks]
        for thread in drippers:
            thread.start()
        node.check_serves()  # served while the slow peers hold their connections
        wait_for("the slow peers to be dropped", lambda: len(dropped_after) == len(socks), 60)
        stop.set()
        for sock in socks:
            sock.close()
        node.released(tally)
        tally.sent, tally.acknowledged, tally.stored = node.sends, node.stored_ok, node.stored_ok
        tally.refused = len(dropped_after)
        tally.extra["dropped_after_s_max"] = round(max(dropped_after), 1)
        tally.extra["network_timeout_s"] = NETWORK_TIMEOUT


def test_abrupt_disconnect_mid_dataset_leaves_no_partial_file(node: Node, example_ct_dicom: Path) -> None:
    source = sorted(example_ct_dicom.iterdir())[0]
    data = pydicom.dcmread(source)
    data.decompress()  # JPEG 2000 to Explicit VR Little Endian, as the context below proposes
    body = encode(data, False, True)
    assert body is not None
    with recorded("raw sockets: connection cut in the middle of a C-STORE dataset") as tally:
        outcomes: Counter[str] = Counter()
        for round_ in range(20):
            sock = connect(node.proc.port)
            sock.sendall(associate_rq(max_pdu=65536))
            assert answer(sock) == "AC"
            header = sock.recv(5, socket.MSG_WAITALL)
            length = struct.unpack(">L", header[1:5])[0]
            sock.recv(length, socket.MSG_WAITALL)
            sock.sendall(pdata(1, c_store_command(str(data.SOPInstanceUID)), command=True, last=True))
            cut = len(body) * (round_ + 1) // 22
            for start in range(0, cut, 60000):
                sock.sendall(pdata(1, body[start : min(cut, start + 60000)], command=False, last=False))
            if round_ % 2:  # RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            outcomes["reset" if round_ % 2 else "closed"] += 1
        node.released(tally)
        tally.sent, tally.acknowledged, tally.stored = node.sends + 20, node.stored_ok, node.stored_ok
        tally.refused = 20
        tally.extra.update({f"cut:{k}": v for k, v in outcomes.items()})
        tally.notes = "20 C-STOREs cut between 5% and 95% of their dataset; none stored, no temp file left"
        assert "event=partial_dataset_removed" in node.proc.text()


def test_many_half_open_connections(node: Node) -> None:
    """60 connections that never speak: dropped after the ACSE timeout; then storescu works."""
    with recorded("raw sockets: 60 half-open connections") as tally:
        socks = [connect(node.proc.port) for _ in range(60)]
        time.sleep(0.5)
        top = peak(node.pid)
        results = Counter(answer(s, 4 * NETWORK_TIMEOUT) for s in socks)
        for sock in socks:
            sock.close()
        node.released(tally, top)
        tally.sent, tally.acknowledged, tally.stored = node.sends, node.stored_ok, node.stored_ok
        tally.refused = results["closed"]
        tally.extra.update({f"outcome:{k}": v for k, v in results.items()})
        assert results["silent"] == 0, results
        tally.notes = (
            "each silent connection holds a slot until the ACSE timeout (min(30 s, network_timeout)); "
            "storescu is rejected (transient) while max_associations of them are open"
        )
