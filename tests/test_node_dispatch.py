"""Which series of a stable study are analysed (the foundation's selection rules), and what
happens to a study with nothing to analyse."""

from __future__ import annotations

from pathlib import Path

from node.config import NodeSettings
from node.schedule.dispatch import dispatch_study, plan_study
from node.store.index import Index
from tests.clock import claim_after_idle
from tests.dicom_builder import SeriesOptions, axial_geometry, block_phantom, sample, write_series
from tests.index_records import record_file
from workers.load.selection import SelectionPolicy


def two_series_study(root: Path) -> tuple[str, str, str]:
    """A study with a soft-tissue and a bone-kernel reconstruction of the same CT."""
    g = axial_geometry(n_slices=5)
    hu = sample(block_phantom(), g)
    soft = SeriesOptions(kernel="B30f", series_number=3)
    bone = SeriesOptions(kernel="B70f", series_number=4, study_uid=soft.study_uid)
    write_series(root / soft.series_uid, hu, g, soft)
    write_series(root / bone.series_uid, hu, g, bone)
    return soft.study_uid, soft.series_uid, bone.series_uid


def test_one_series_per_study_by_default_or_every_eligible_one(tmp_path: Path) -> None:
    _, soft, bone = two_series_study(tmp_path / "study")
    assert plan_study(tmp_path / "study", SelectionPolicy(), all_series=False).series == (soft,)
    assert set(plan_study(tmp_path / "study", SelectionPolicy(), all_series=True).series) == {soft, bone}


def test_study_with_nothing_to_analyse_is_ignored_and_optionally_not_kept(tmp_path: Path) -> None:
    node = NodeSettings(data_dir=tmp_path / "data", keep_ignored=False)
    index = Index(node.index_path)
    g = axial_geometry(n_slices=3)
    options = SeriesOptions(modality="MR")
    study_dir = node.spool_dir / "studies" / options.study_uid
    paths = write_series(study_dir / options.series_uid, sample(block_phantom(), g), g, options)
    for path in paths:
        record_file(index, path, "X", now=0)
    [stable] = claim_after_idle(index)
    published: list[object] = []
    assert dispatch_study(stable, index, node, SelectionPolicy(), published.append) == []
    assert published == []
    study = index.study(options.study_uid)
    assert study is not None and study["state"] == "ignored" and "not CT" in study["reason"]
    assert not study_dir.exists(), "keep_ignored = false removes the instances"


def test_results_go_back_to_the_sender_when_it_is_a_destination_else_to_all() -> None:
    from node.send.outbox import destinations_for

    node = NodeSettings(destinations=("PACS@10.0.0.5:104", "ARCHIVE@10.0.0.6:11112"))
    assert destinations_for(node, "PACS") == ["PACS@10.0.0.5:104"]
    assert destinations_for(node, "MODALITY") == ["PACS@10.0.0.5:104", "ARCHIVE@10.0.0.6:11112"]
    everywhere = NodeSettings(destinations=node.destinations, return_to_sender=False)
    assert len(destinations_for(everywhere, "PACS")) == 2
    assert destinations_for(NodeSettings(), "PACS") == [], "no destinations: results stay in the data dir"
