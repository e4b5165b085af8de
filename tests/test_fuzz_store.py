"""Hostile instances over real associations (issue #8, "bad input"), while a real study arrives.

A running ``bodycomp serve`` receives at least 1,000 corrupted or hostile instances drawn from
:mod:`tests.hostile` (hypothesis, derandomised: the same instances on every run), each sent over
a real association by pynetdicom with the file's dataset bytes undecoded, while DCMTK storescu
sends a well-formed CT study at the same time. What must hold:

* the node never crashes or hangs: it answers every C-STORE, answers C-ECHO during and after the
  run, and its process is alive;
* every instance gets the status its kind requires (Success only for storable instances; 0xA900,
  0xC000 or 0xC001 otherwise) and a log line (``event=stored`` or ``event=refused``) naming its
  SOP Instance UID when that is a valid UID, and the log holds no patient name or ID;
* nothing lands outside ``DATA/spool/studies/<study>/<series>/<sop>.dcm`` (hostile UIDs such as
  ``../../../escaped``), no temporary file stays behind (the node's ``TMPDIR`` and ``spool/tmp``);
* every acknowledged instance is in the spool and the index, once;
* the well-formed study is analysed correctly (``done``, plausible muscle area in its result).

Duplicate SOP Instance UIDs (:func:`test_duplicate_sop_instance_uid_policy`): the same bytes
again are a harmless duplicate; different content in the same series replaces the instance (a
corrected re-send; the study is analysed again); the same UID in another series or study is
refused with 0xC001 and changes nothing (a UID collision or a mis-filed instance, perhaps another
patient's). Two associations racing with different content for one UID leave the spool file and
the index digest in agreement.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import settings as settings_
from pynetdicom import AE, _config
from pynetdicom.dsutils import split_dataset

from node.store.index import Index, digest_file
from node.store.spool import UID_PATTERN
from tests import hostile
from tests.reliability import recorded
from tests.test_node_support import DCMTK, NodeProc, copy_study, start_node, storescu, study_status, wait_for

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.network,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::UserWarning"),  # pydicom on the hostile values we write
]

N_INSTANCES = 1100
ANALYSIS_TIMEOUT = 240


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    """One node for the module, with its own ``TMPDIR`` (where pynetdicom spools C-STOREs)."""
    base = tmp_path_factory.mktemp("fuzz-store")
    node_tmp = base / "node-tmp"
    node_tmp.mkdir()
    proc = start_node(base / "data", stable_seconds=4, env={"TMPDIR": str(node_tmp)})
    try:
        yield proc
    finally:
        proc.stop()


def node_tmp(node: NodeProc) -> Path:
    return node.data_dir.parent / "node-tmp"


@contextmanager
def raw_sending() -> Iterator[None]:
    """pynetdicom sends a file's dataset bytes as they are (no decode and re-encode)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


class Sender:
    """A pynetdicom SCU proposing every (SOP class, transfer syntax) pair the fuzzer uses."""

    def __init__(self, port: int, calling: str = "FUZZER") -> None:
        self.port = port
        self.ae = AE(ae_title=calling)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 60
        for sop_class in hostile.SOP_CLASSES:
            for ts in hostile.ALL_SYNTAXES:
                self.ae.add_requested_context(sop_class, [ts])
        self.ae.add_requested_context("1.2.840.10008.1.1")
        self.assoc: Any = None
        self.associations = 0

    def ensure(self) -> Any:
        if self.assoc is None or not self.assoc.is_established:
            self.assoc = self.ae.associate("127.0.0.1", self.port, ae_title="BODYCOMP")
            self.associations += 1
            assert self.assoc.is_established, "the node refused an association"
        return self.assoc

    def store(self, path: Path) -> int | None:
        """The status of one C-STORE, None when no response came."""
        status = self.ensure().send_c_store(path)
        if not status or "Status" not in status:
            self.assoc = None
            return None
        return int(status.Status)

    def echo(self) -> int | None:
        status = self.ensure().send_c_echo()
        return int(status.Status) if status and "Status" in status else None

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


def spool_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "spool" / "studies").rglob("*") if p.is_file())


def test_hostile_instances_get_clear_statuses_while_a_study_is_analysed(
    node: NodeProc, example_ct_derived_dicom: Path, tmp_path: Path
) -> None:
    files, study_uid = copy_study(example_ct_derived_dicom, tmp_path / "study")
    uids = hostile.UidSource(run=1)
    pool = hostile.Pool.make(uids)
    sent: list[tuple[hostile.Hostile, int | None]] = []
    outputs: list[str] = []
    work = tmp_path / "instances"
    work.mkdir()
    sender = Sender(node.port)
    echoes: list[int | None] = []

    def send_study() -> None:
        outputs.append(storescu(node.port, files))

    @settings(
        max_examples=N_INSTANCES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile.hostile_instances(uids, pool))
    def send_one(instance: hostile.Hostile) -> None:
        path = work / f"{len(sent)}.dcm"
        path.write_bytes(instance.data)
        sent.append((instance, sender.store(path)))
        path.unlink()
        if len(sent) % 100 == 0:
            echoes.append(sender.echo())
        if len(sent) == N_INSTANCES // 2:  # the study again (identical), in the middle of the run
            threads.append(threading.Thread(target=send_study))
            threads[-1].start()

    with recorded("hostile instances over real associations, with a study sent meanwhile") as tally:
        threads = [threading.Thread(target=send_study)]
        threads[0].start()
        started = time.monotonic()
        with raw_sending():
            send_one()
        fuzz_seconds = time.monotonic() - started
        for thread in threads:
            thread.join(timeout=300)
        sender.close()

        statuses = [status for _, status in sent]
        wrong = [
            (h.kind, h.note, None if s is None else f"0x{s:04X}", h.expect)
            for h, s in sent
            if not h.allowed(s)
        ]
        accepted = {h.sop_instance: h for h, s in sent if s == 0}
        tally.sent = len(sent) + len(files)
        tally.acknowledged = len(accepted)
        tally.refused = sum(1 for s in statuses if s not in (0, None))
        tally.extra = {
            "hostile_instances": len(sent),
            "study_instances": len(files),
            "associations": sender.associations,
            "no_response": statuses.count(None),
            "instances_per_s": round(len(sent) / fuzz_seconds, 1),
            **{f"kind:{kind}": n for kind, n in sorted(Counter(h.kind for h, _ in sent).items())},
            **{
                f"status:0x{s:04X}": n
                for s, n in sorted(Counter(s for s in statuses if s is not None).items())
            },
        }
        assert len(sent) >= 1000, f"only {len(sent)} instances generated"
        assert not wrong, f"{len(wrong)} instances got the wrong status, e.g. {wrong[:15]}"
        assert all(e == 0 for e in echoes), echoes
        assert all("Failed" not in o and "Error" not in o for o in outputs), outputs
        assert node.process.poll() is None, "the node died"
        echo = subprocess.run(
            [str(DCMTK / "echoscu"), "-aec", "BODYCOMP", "127.0.0.1", str(node.port)],
            capture_output=True,
            timeout=60,
            env={"TCP_NODELAY": "1"},
        )
        assert echo.returncode == 0, echo.stderr

        # The well-formed study: analysed, with a plausible result.
        study = wait_for(
            "the well-formed study to be done",
            lambda: (s := study_status(node.data_dir, study_uid)) and s["state"] in ("done", "failed") and s,
            ANALYSIS_TIMEOUT,
            node.log,
        )
        assert study["state"] == "done" and study["instances"] == len(files), study
        assert [j["state"] for j in study["jobs"]] == ["done"], study["jobs"]
        result = json.loads(next(node.data_dir.glob(f"results/{study_uid}/*/*/out/result.json")).read_text())
        assert 50 < result["tissues"]["skeletal_muscle"]["area_cm2"] < 300
        tally.analysed, tally.expected_analysed = 1, 1

        # Every acknowledged instance in the spool and the index, once; nothing anywhere else.
        index = Index(node.data_dir / "index.sqlite")
        try:
            rows = {r["sop_uid"]: r for r in index.query("SELECT sop_uid, path, digest FROM instances")}
        finally:
            index.close()
        on_disk = spool_files(node.data_dir)
        stored = {p.stem for p in on_disk}
        tally.stored = len(stored & set(accepted))
        tally.lost = len(set(accepted) - stored) + len(set(accepted) - set(rows))
        tally.duplicates = len(on_disk) - len(stored)
        for path in on_disk:
            rel = path.relative_to(node.data_dir / "spool" / "studies").parts
            assert len(rel) == 3 and rel[2].endswith(".dcm"), path
            assert all(UID_PATTERN.match(part.removesuffix(".dcm")) for part in rel), path
        assert tally.lost == 0 and tally.duplicates == 0
        for sop in accepted:
            row = rows[sop]
            assert digest_file(Path(row["path"]), split_dataset(Path(row["path"]))[1]) == row["digest"]
        assert len(rows) == len(on_disk), "the index and the spool agree"
        base = node.data_dir.parent.parent
        escaped = list(base.rglob("*escaped*")) + list(Path("/tmp").glob("escaped*"))
        assert not escaped, escaped
        # pynetdicom's files of received datasets (the worker children share TMPDIR for their own).
        wait_for(
            "no received datasets in TMPDIR", lambda: not list(node_tmp(node).glob("*.dcm")), 30, node.log
        )
        assert not list((node.data_dir / "spool" / "tmp").iterdir())

        # A log line for every instance; no patient name or ID anywhere in the log.
        text = node.text()
        logged = set(re.findall(r"event=(?:stored|refused) .*?sop=([0-9.]+)", text))
        missing = [
            h.sop_instance
            for h, _ in sent
            if hostile.uid_is_valid(h.sop_instance) and h.sop_instance.strip() not in logged
        ]
        assert not missing, f"{len(missing)} instances without a log line, e.g. {missing[:5]}"
        refusals = len(re.findall(r"event=refused ", text))
        assert refusals >= tally.refused, (refusals, tally.refused)
        for secret in ("Fuzzsecret", "Patientname", hostile.PATIENT_ID, "PHANTOM-001", "Phantom^Test"):
            assert secret.lower() not in text.lower(), f"{secret} in the node's log"
        tally.notes = (
            "statuses as required for every kind; node alive and answering C-ECHO; "
            "nothing outside the spool; no temp files left; no patient data in the log"
        )


def _instance(uids: hostile.UidSource, study: str, series: str, sop: str, seed: int) -> bytes:
    ds = hostile.base_dataset(hostile.CTImageStorage, study, series, sop, 8, 8, 16)
    ds.PixelData = hostile.pixels(8, 8, 16, 1, seed)
    ts = hostile.ExplicitVRLittleEndian
    return hostile.part10_header(hostile.CTImageStorage, sop, ts) + hostile.encode_dataset(ds, ts)


def test_duplicate_sop_instance_uid_policy(node: NodeProc, tmp_path: Path) -> None:
    uids = hostile.UidSource(run=2)
    study, series, other_series, other_study, sop = (uids() for _ in range(5))
    sender = Sender(node.port, calling="DUPES")
    paths = {}
    for name, (st_uid, se_uid, seed) in {
        "first": (study, series, 1),
        "changed": (study, series, 2),
        "other_series": (study, other_series, 3),
        "other_study": (other_study, series, 4),
    }.items():
        paths[name] = tmp_path / f"{name}.dcm"
        paths[name].write_bytes(_instance(uids, st_uid, se_uid, sop, seed))
    spooled = node.data_dir / "spool" / "studies" / study / series / f"{sop}.dcm"

    def dataset_digest(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()[split_dataset(path)[1] :]).hexdigest()

    def index_row(sop_uid: str) -> Any:
        index = Index(node.data_dir / "index.sqlite")
        try:
            return index.query("SELECT * FROM instances WHERE sop_uid=?", (sop_uid,))[0]
        finally:
            index.close()

    with recorded("duplicate SOP Instance UID with different content") as tally, raw_sending():
        answers = [
            sender.store(paths[name]) for name in ("first", "first", "changed", "other_series", "other_study")
        ]
        tally.sent, tally.acknowledged, tally.refused = 5, answers.count(0), answers.count(0xC001)
        assert answers == [0, 0, 0, 0xC001, 0xC001], [hex(a or 0) for a in answers]
        text = node.text()
        assert f"sop={sop} " in text and "outcome=new" in text
        outcomes = re.findall(rf"event=stored .*sop={re.escape(sop)} .*outcome=(\w+)", text)
        assert outcomes == ["new", "duplicate", "replaced"], outcomes
        assert dataset_digest(spooled) == dataset_digest(paths["changed"]), "the corrected content won"
        row = index_row(sop)
        assert (row["study_uid"], row["series_uid"], row["digest"]) == (
            study,
            series,
            dataset_digest(spooled),
        )
        assert not (node.data_dir / "spool" / "studies" / study / other_series).exists()
        assert not (node.data_dir / "spool" / "studies" / other_study).exists()

        # Two associations racing with different content for one new UID, 10 times.
        racers = [Sender(node.port, calling=f"RACE{i}") for i in range(2)]
        for round_ in range(10):
            race_sop = uids()
            contents = []
            for i in range(2):
                path = tmp_path / f"race{round_}-{i}.dcm"
                path.write_bytes(_instance(uids, study, series, race_sop, 100 + 2 * round_ + i))
                contents.append(path)
            results: list[int | None] = []
            threads = [
                threading.Thread(target=lambda r=r, p=p, out=results: out.append(r.store(p)))
                for r, p in zip(racers, contents, strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert results == [0, 0], results
            final = node.data_dir / "spool" / "studies" / study / series / f"{race_sop}.dcm"
            assert dataset_digest(final) == index_row(race_sop)["digest"], "spool file and index agree"
            assert dataset_digest(final) in {dataset_digest(p) for p in contents}
            tally.sent += 2
            tally.acknowledged += 2
        for racer in racers:
            racer.close()
        sender.close()
        tally.stored = len(list((node.data_dir / "spool" / "studies" / study).rglob("*.dcm")))
        tally.notes = (
            "same bytes: duplicate (Success, nothing changes); same series, new content: replaced "
            "(Success, analysed again); another series or study: refused 0xC001, nothing written; "
            "10 concurrent races: spool and index agree"
        )
        assert spooled.exists()


def test_index_refuses_a_sop_instance_uid_from_another_series(tmp_path: Path) -> None:
    """The index's own check (behind the SCP's): a conflicting record changes nothing."""
    from node.store.index import InstanceRecord

    index = Index(tmp_path / "index.sqlite")
    try:
        rec = InstanceRecord(
            "1.1", "1.1.1", "1.1.1.1", "1.2.840.10008.5.1.4.1.1.2", tmp_path / "a", 1, "d1", "AE"
        )
        assert index.record_instance(rec) == "new"
        moved = InstanceRecord("1.2", "1.2.1", "1.1.1.1", rec.sop_class_uid, tmp_path / "b", 1, "d2", "AE")
        assert index.record_instance(moved) == "conflict"
        assert index.instance_location("1.1.1.1") == ("1.1", "1.1.1")
        assert index.study("1.2") is None, "no study row for the refused instance"
        assert [r["digest"] for r in index.query("SELECT digest FROM instances")] == ["d1"]
    finally:
        index.close()


def test_hostile_instances_in_memory_receive_mode(tmp_path: Path) -> None:
    """``stream_to_disk = false`` decodes datasets in memory: the same answers, no crash (fewer draws)."""
    import socket as socket_module

    from node.config import NodeSettings
    from node.receive.scp import serve

    with socket_module.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    settings = NodeSettings(port=port, data_dir=tmp_path / "data", min_free_mb=1, stream_to_disk=False)
    server = serve(settings, block=False)
    uids = hostile.UidSource(run=3)
    pool = hostile.Pool.make(uids)
    sender = Sender(port)
    wrong: list[tuple[str, str, str]] = []
    count = [0, 0]  # sent, acknowledged
    accepted: set[str] = set()

    @settings_(
        max_examples=300,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile.hostile_instances(uids, pool))
    def send_one(instance: hostile.Hostile) -> None:
        path = tmp_path / "instance.dcm"
        path.write_bytes(instance.data)
        status = sender.store(path)
        count[0] += 1
        count[1] += status == 0
        if status == 0:
            accepted.add(instance.sop_instance.strip().rstrip("\0"))
        if not instance.allowed(status):
            wrong.append((instance.kind, instance.note, "none" if status is None else f"0x{status:04X}"))

    try:
        with recorded("hostile instances, in-memory receive mode") as tally, raw_sending():
            send_one()
            tally.sent = count[0]
            tally.acknowledged, tally.refused = len(accepted), count[0] - count[1]
            tally.stored = len(accepted & {p.stem for p in spool_files(settings.data_dir)})
            tally.lost = tally.acknowledged - tally.stored
            assert tally.lost == 0, accepted - {p.stem for p in spool_files(settings.data_dir)}
            assert not wrong, wrong[:15]
            assert sender.echo() == 0
    finally:
        sender.close()
        server.shutdown()


def test_spool_leaves_no_partial_file_whatever_stops_a_write(tmp_path: Path) -> None:
    """Not only I/O errors: any exception during a write removes the temporary file."""
    from node.store.spool import Spool

    spool = Spool(tmp_path / "spool", min_free_bytes=0)
    with pytest.raises(TypeError):
        spool.store("not bytes", "1.2", "1.2.3", "1.2.3.4")  # type: ignore[arg-type]
    assert not list(spool.tmp.iterdir()) and not list(spool.studies.rglob("*.dcm"))
