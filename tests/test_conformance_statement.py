"""docs/conformance-statement.md against what the code actually does, so the two cannot drift.

* the SCP's transfer syntaxes (``node/receive/scp.py``) and Storage SOP classes (the AE it builds);
* Verification's transfer syntaxes;
* what the sender proposes: a real association on loopback to a pynetdicom SCP that records the
  presentation contexts requested, with the three result SOP classes;
* the SOP classes, transfer syntaxes and *every* code of a SEG, SR and SC the encoders write
  (plus every code declared in ``workers/encode/codes.py``);
* the SCP's timeouts, PDU size and status codes as stated.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import tls
from node.config import TLS_SUFFIX, NodeSettings
from node.receive import scp
from node.send.sender import send_to_destination
from node.store.index import Index, InstanceRecord
from tests.dicom_builder import SeriesOptions, axial_geometry, sample, write_series
from tests.test_encode import encode_slice
from tests.test_node_support import free_port
from workers.encode import codes
from workers.load.source import load_series

DOC = Path(__file__).resolve().parents[1] / "docs" / "conformance-statement.md"
UID_IN_TICKS = re.compile(r"`(1\.2\.840\.10008\.[0-9.]+)`")
CT = "1.2.840.10008.5.1.4.1.1.2"
SEG, SR, SC = "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def section(doc: str, start: str, end: str) -> str:
    """Text from the line containing ``start`` to the next line containing ``end``."""
    begin = doc.index(start)
    return doc[begin : doc.index(end, begin + len(start))]


def table_uids(text: str) -> list[str]:
    return [m for line in text.splitlines() if line.startswith("|") for m in UID_IN_TICKS.findall(line)]


def test_scp_transfer_syntaxes_are_exactly_those_of_the_code(doc: str) -> None:
    table = section(doc, "Transfer syntaxes accepted (SCP)", "Instances are stored as received")
    assert table_uids(table) == list(scp.TRANSFER_SYNTAXES)
    for uid in scp.TRANSFER_SYNTAXES:  # the names are pydicom's, not invented
        assert UID(uid).is_transfer_syntax, uid


def test_every_storage_sop_class_the_scp_accepts_is_listed_with_every_transfer_syntax(doc: str) -> None:
    ae = scp.build_ae(NodeSettings())
    contexts = {cx.abstract_syntax: cx for cx in ae.supported_contexts}
    storage = {uid for uid in contexts if uid != Verification}
    listed = table_uids(doc[doc.index("### 8.4 Storage SOP classes") :])
    assert set(listed) == storage and len(listed) == len(storage), set(listed) ^ storage
    assert len(storage) == len(AllStoragePresentationContexts)
    assert f"{len(storage)} SOP classes" in doc
    assert f"(CT Image Storage and {len(storage) - 1} others)" in doc
    for uid in storage:
        assert contexts[uid].transfer_syntax == list(scp.TRANSFER_SYNTAXES), uid
    for uid in (SEG, SR, SC, "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"):
        assert uid in storage
    verification = section(doc, "Verification transfer syntaxes (SCP and SCU)", "**C-STORE SCP conformance")
    assert set(UID_IN_TICKS.findall(verification)) == set(contexts[Verification].transfer_syntax)


def test_association_policies_as_configured_in_code(doc: str) -> None:
    settings = NodeSettings()
    ae = scp.build_ae(settings)
    assert ae.maximum_pdu_size == 1048576 and "| received, as SCP | 1048576 bytes" in doc
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (30, 120, 120)
    assert "ACSE (association negotiation) 30 s; DIMSE 120 s; network (idle connection" in doc
    assert ae.maximum_associations == settings.max_associations == 16
    assert "Maximum simultaneous associations as SCP | 16" in doc
    assert ae.require_called_aet is True and settings.require_called_ae
    assert f"`{settings.ae_title}`" in doc and f"`{settings.host}:{settings.port}`" in doc
    assert ae.implementation_class_uid in doc and ae.implementation_version_name in doc
    assert f"| `min_free_mb` | `{settings.min_free_mb}` |" in doc
    statuses = section(doc, "**Status codes returned by the C-STORE SCP.**", "**C-ECHO SCP.**")
    for name in dir(scp):
        if name.startswith("STATUS_"):
            assert f"`0x{getattr(scp, name):04X}`" in statuses, name


def _result_file(folder: Path, sop_class: str) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "OT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
        sop_class,
        ds.SOPInstanceUID,
    )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.network
def test_the_sender_proposes_what_the_statement_says(doc: str, tmp_path: Path) -> None:
    """A real C-STORE SCU association on loopback to an SCP that records what was requested."""
    requested: list[tuple[str, list[str]]] = []
    stored: list[str] = []
    peer = AE(ae_title="PACS")
    for cx in AllStoragePresentationContexts:
        peer.add_supported_context(cx.abstract_syntax, scp.TRANSFER_SYNTAXES)

    def on_requested(event: Any) -> None:
        for cx in event.assoc.requestor.requested_contexts:
            requested.append((str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax]))

    def on_store(event: Any) -> int:
        stored.append(str(event.request.AffectedSOPClassUID))
        return 0x0000

    port = free_port()
    server = peer.start_server(
        ("127.0.0.1", port),
        block=False,
        evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, on_store)],
    )
    index = Index(tmp_path / "index.sqlite")
    try:
        study = generate_uid()
        index.record_instance(
            InstanceRecord(study, generate_uid(), generate_uid(), CT, tmp_path / "x", 1, "d", "PACS")
        )
        job_id, _ = index.create_job(study, generate_uid(), "hash", "results/x", "PACS")
        items = [(str(_result_file(tmp_path, c)), generate_uid(), c) for c in (SEG, SR, SC)]
        destination = f"PACS@127.0.0.1:{port}"
        index.add_outbox(job_id, study, items, [destination])
        delivered = send_to_destination(index, NodeSettings(), destination, index.due_outbox())
    finally:
        server.shutdown()
        index.close()
    assert delivered == 3 and sorted(stored) == sorted([SEG, SR, SC])
    table = section(doc, "files to send, each with these transfer syntaxes", "Timeouts (SCU)")
    rows = {
        m.group(1): UID_IN_TICKS.findall(m.group(2)) for m in re.finditer(r"`([0-9.]+)` \|([^\n]*)", table)
    }
    assert dict(requested) == rows
    assert "Timeouts (SCU): ACSE 30 s, DIMSE 120 s, network 60 s" in doc


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A SEG, SR and SC written by the encoders for a small phantom CT."""
    tmp = tmp_path_factory.mktemp("conformance")

    def phantom(points: np.ndarray) -> np.ndarray:
        radius = np.hypot(points[:, 0], points[:, 1])
        return np.where(radius < 40, 50, np.where(radius < 80, -100, -1000))

    geometry = axial_geometry(rows=64, columns=64, n_slices=5)
    write_series(tmp / "ct", sample(phantom, geometry), geometry, SeriesOptions())
    _, outputs = encode_slice(load_series(tmp / "ct"), 2)
    return dict(outputs.write(tmp / "out"))


def _codes(ds: Dataset) -> set[tuple[str, str]]:
    found = set()
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                if "CodeValue" in item and "CodingSchemeDesignator" in item:
                    found.add((str(item.CodeValue), str(item.CodingSchemeDesignator)))
                found |= _codes(item)
    return found


#: 99BODYCOMP values built at run time (see the statement's rows ``NC<REASON>``, ``<RULESET>V<n>``).
DYNAMIC = re.compile(r"^(NC[A-Z0-9]*|[A-Z0-9]+V[0-9]+|[A-Z0-9]+)$")


def documented(doc: str, value: str, scheme: str) -> bool:
    return f"| `{value}` | {scheme} |" in doc


def test_the_iods_written_are_those_stated(doc: str, written: dict[str, Path]) -> None:
    expected = {"seg": SEG, "sr": SR, "overlay": SC}
    for name, path in written.items():
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == expected[name]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert f"(`{expected[name]}`)" in doc
    seg = pydicom.dcmread(written["seg"])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [f"L3 {t.name}" for t in codes.TISSUES]
    for t in codes.TISSUES:
        assert f'"L3 {t.name}"' in doc
    assert "series 9001" in doc and "series 9002" in doc and "series 9003" in doc
    assert int(seg.SeriesNumber) == 9001
    assert int(pydicom.dcmread(written["sr"]).SeriesNumber) == 9002
    assert int(pydicom.dcmread(written["overlay"]).SeriesNumber) == 9003
    sr = pydicom.dcmread(written["sr"])
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    assert "Completion Flag COMPLETE, Verification Flag\nUNVERIFIED, Preliminary Flag PRELIMINARY" in doc
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_every_code_in_the_outputs_is_documented(doc: str, written: dict[str, Path]) -> None:
    missing = []
    for path in written.values():
        for value, scheme in sorted(_codes(pydicom.dcmread(path))):
            if documented(doc, value, scheme):
                continue
            if (
                scheme == codes.PRIVATE_SCHEME
                and DYNAMIC.match(value)
                and (value.startswith("NC") or value.endswith("V1") or value.isalpha())
            ):
                continue  # run-time values: the NC…, rule-set and input-source rows
            missing.append((value, scheme))
    assert not missing, f"codes written but not in the conformance statement: {missing}"


def test_every_code_declared_in_codes_py_is_documented(doc: str) -> None:
    declared = [v for v in vars(codes).values() if isinstance(v, CodedConcept)]
    declared += [c for t in codes.TISSUES for c in (t.category, t.type, t.anatomic_region) if c is not None]
    assert len(declared) > 30
    missing = [
        (c.value, c.scheme_designator) for c in declared if not documented(doc, c.value, c.scheme_designator)
    ]
    assert not missing, missing
    assert f"`{codes.PRIVATE_SCHEME}`" in doc and codes.PRIVATE_SCHEME_NAME in doc
    assert codes.rule_set_method("martin2013@1").value in doc
    for scheme in ("SCT", "DCM", "UCUM", "LN"):
        assert f"`{scheme}`" in doc


def test_templates_named(doc: str) -> None:
    for tid in ("TID 1500", "TID 1410", "TID 1501", "TID 300", "TID 1001", "TID 4019", "TID 1600"):
        assert f"| {tid}" in doc, tid
    # 7.1 DICOM TLS as the code does it: the versions, the settings, the handshake limit.
    assert ssl.TLSVersion(tls.MINIMUM_VERSION).name == "TLSv1_2" and "TLS 1.2 and TLS 1.3" in doc
    for name in ("tls_cert", "tls_key", "tls_ca", "tls_crl", "tls_verify_client", "tls_check_hostname"):
        assert f"`{name}`" in doc and hasattr(NodeSettings(), name), name
    assert f"{tls.HANDSHAKE_TIMEOUT:.0f} s, in the association's own thread" in doc
    assert f"`AE@HOST:PORT{TLS_SUFFIX}`" in doc
