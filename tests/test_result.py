"""The result document (issue #22): a ``result.json`` without a key every result has is refused
when read back, with the key named, and an encoder reads the keys it needs without defaults (a
renamed key fails loudly instead of becoming "not measured"). mypy checks the key names in the
code; these check the files and the contract at run time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.result_documents import measured_result
from workers.encode.sr import quality_evaluations
from workers.jsonfile import write_json
from workers.result import ResultFileError, check_result, read_result


def test_a_complete_result_is_read_back(tmp_path: Path) -> None:
    write_json(tmp_path / "result.json", measured_result())
    result = read_result(tmp_path / "result.json")
    assert result["status"] == "review" and result["tissues"]["skeletal_muscle"]["area_cm2"] > 0


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (("qc",), "qc"),
        (("metrics", "lsmm", "status"), "metrics.lsmm.status"),
        (("tissues", "vat"), "tissues.vat"),
        (("l3", "manual"), "l3.manual"),
        (("input", "volume", "patient"), "input.volume.patient"),
    ],
)
def test_a_result_without_a_required_key_is_refused_with_the_key_named(
    tmp_path: Path, path: tuple[str, ...], named: str
) -> None:
    result = measured_result()
    part = result
    for key in path[:-1]:
        part = part[key]
    del part[path[-1]]
    write_json(tmp_path / "result.json", result)
    with pytest.raises(ResultFileError, match=f"no '{named}'"):
        read_result(tmp_path / "result.json")


def test_optional_keys_may_be_absent_and_a_result_without_l3_is_its_own_kind() -> None:
    result = measured_result()
    del result["slices"][0]["sop_instance_uid"]  # (NIfTI input)
    result["metrics"]["reasons"] = {}
    assert "correction" not in check_result(result)
    common = ("bodycomp_version", "input", "hu_preset", "rule_set", "timings_s", "files")
    not_found = {key: result[key] for key in common}
    not_found.update(status="l3_not_found", l3=None, reason="no spine found")
    with pytest.raises(ResultFileError, match="no 'l3_search'"):
        check_result(not_found)
    search = {k: v for k, v in result["l3"].items() if k not in ("sop_instance_uid", "canonical_slice_index")}
    check_result({**not_found, "l3_search": search})


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ResultFileError, match="missing"):
        read_result(tmp_path / "result.json")
    (tmp_path / "result.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ResultFileError, match="not a JSON object"):
        read_result(tmp_path / "result.json")


def test_the_sr_reads_the_verdict_without_a_default() -> None:
    """Before, a result without ``qc`` gave an SR whose verdict was "review" by default and whose
    reasons were none: now the encoder fails on the missing key."""
    result = measured_result()
    assert len(quality_evaluations(result).ContentSequence) > 2
    del result["qc"]
    with pytest.raises(KeyError, match="qc"):
        quality_evaluations(result)
