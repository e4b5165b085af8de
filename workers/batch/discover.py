"""Every study under a folder, found from file headers only: DICOM grouped by StudyInstanceUID,
each NIfTI file a study of its own.

Why headers only: an export of hundreds of studies holds hundreds of thousands of files; reading
pixel data to find out what belongs together would take hours. Each file's header is read with
the loader's own reader (:func:`workers.load.scan.scan_dicom`: deflated datasets bounded,
DICOMDIRs and non-DICOM files skipped and counted), in the process pool when one is given, and
kept only as a small :class:`FileRecord` (a 500-study archive's full headers would not fit in
memory). Which series of a study is analysed is decided later, in the analysing process, by the
project's series selection (:mod:`workers.load.selection`) over the study's files, exactly as
``bodycomp analyze`` does on a study folder; the choice and every series' verdict are recorded in
the study's ``result.json``.

Layouts are free: studies spread over several folders, several studies mixed in one folder, any
file names, symbolic links to files or folders. Files whose StudyInstanceUID is empty (some
anonymisers blank it) are grouped by folder instead.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset

from workers.batch.pseudonym import Pseudonymiser
from workers.load.scan import scan_dicom
from workers.load.source import NIFTI_SUFFIXES

#: Files whose headers one pool task reads: each task is a fresh process (~30 ms), a header
#: ~0.5 ms, so 1,024 keep the start-up under 10 % of the reading.
CHUNK = 1024


@dataclass(frozen=True)
class FileRecord:
    """What discovery keeps of one DICOM file: where it is and the study-level header values."""

    path: Path
    size: int
    mtime_ns: int
    study_uid: str
    series_uid: str
    patient_id: str
    accession_number: str
    study_date: str
    patient_size: str
    patient_weight: str
    patient_sex: str


@dataclass(frozen=True)
class Study:
    """One study to analyse: its files, identifiers, header inputs and input fingerprint."""

    key: str
    """Keyed pseudonym of :attr:`identity`: the folder name under ``DIR/studies`` and the log name."""
    identity: str
    kind: str
    """``dicom`` or ``nifti``."""
    source: str
    """Folder (DICOM: the files' common folder) or file (NIfTI), relative to ROOT."""
    files: tuple[Path, ...]
    fingerprint: str
    """Hash of the files' ROOT-relative paths, sizes and modification times: a file added,
    replaced or removed changes it; reading the pixels is not needed to know."""
    patient_id: str = ""
    accession_number: str = ""
    study_uid: str = ""
    study_date: str = ""
    series_uids: tuple[str, ...] = ()
    header_height_m: float | None = None
    header_weight_kg: float | None = None
    header_sex: str | None = None
    problem: str | None = None
    """Why the study is not analysed although its files were read (reported as a failure)."""


@dataclass
class Discovery:
    """The studies found under ROOT and what was skipped, with counts."""

    studies: list[Study] = field(default_factory=list)
    files_seen: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


def walk(root: Path, exclude: Path | None = None) -> Iterator[Path]:
    """Every regular file under ``root`` in a stable order, following symbolic links to folders
    (cohorts are often assembled from links) but never into a loop, and never into ``exclude``
    (the output folder, when it lies inside ROOT)."""
    if root.is_file():
        yield root
        return
    seen: set[str] = set()
    excluded = os.path.realpath(exclude) if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen or real == excluded:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_file():
                yield path


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_records(paths: list[Path]) -> tuple[list[FileRecord], dict[str, int]]:
    """Headers of ``paths`` (DICOM files only) as records, and the skipped files by reason.

    Runs in a pool process: returns small records, never the headers themselves.
    """
    records: list[FileRecord] = []
    skipped: dict[str, int] = {}
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scan = scan_dicom(path)
        for reason, count in scan.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
        for found in scan.files:
            header = found.header
            try:
                stat = path.stat()
            except OSError:  # removed since the walk
                skipped["unreadable"] = skipped.get("unreadable", 0) + 1
                continue
            records.append(
                FileRecord(
                    path=path,
                    size=stat.st_size,
                    mtime_ns=stat.st_mtime_ns,
                    study_uid=_text(header, "StudyInstanceUID"),
                    series_uid=_text(header, "SeriesInstanceUID"),
                    patient_id=_text(header, "PatientID"),
                    accession_number=_text(header, "AccessionNumber"),
                    study_date=_text(header, "StudyDate"),
                    patient_size=_text(header, "PatientSize"),
                    patient_weight=_text(header, "PatientWeight"),
                    patient_sex=_text(header, "PatientSex").upper(),
                )
            )
    return records, skipped


def _text(header: Dataset, keyword: str) -> str:
    """A header value as text ("" when absent or empty)."""
    value = header.get(keyword)
    return "" if value is None else str(value).strip()


def _chunks(paths: list[Path], size: int) -> list[list[Path]]:
    return [paths[i : i + size] for i in range(0, len(paths), size)]


def _number(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def fingerprint(root: Path, paths: Iterable[Path]) -> str:
    """Hash of (ROOT-relative path, size, mtime) of ``paths``, in a stable order."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{_relative(root, path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass
class _Group:
    """What discovery keeps of one DICOM study while headers come in: the files with their sizes
    and times, the study-level header values of its first file (by path), and the series and
    PatientIDs seen (a 500-study archive's records would not all fit in memory)."""

    first: FileRecord
    files: list[tuple[Path, int, int]] = field(default_factory=list)
    series: set[str] = field(default_factory=set)
    patients: set[str] = field(default_factory=set)

    def add(self, record: FileRecord) -> None:
        if record.path < self.first.path:
            self.first = record
        self.files.append((record.path, record.size, record.mtime_ns))
        self.series.add(record.series_uid)
        self.patients.add(record.patient_id)


def _dicom_study(root: Path, identity: str, group: _Group, keys: Pseudonymiser) -> Study:
    files = sorted(group.files)
    digest = hashlib.sha256()
    for path, size, mtime_ns in files:
        digest.update(f"{_relative(root, path)}\0{size}\0{mtime_ns}\n".encode())
    folder = Path(os.path.commonpath([path.parent for path, _, _ in files]))
    first = group.first
    problem = None
    if len(group.patients) > 1:
        # the node refuses such a series too (docs/node.md): two patients under one UID is an
        # export or anonymisation error that a measurement must not hide
        problem = f"the files of this study carry {len(group.patients)} different PatientIDs (not analysed)"
    return Study(
        key=keys.study_key(identity),
        identity=identity,
        kind="dicom",
        source=_relative(root, folder) if folder != root else ".",
        files=tuple(path for path, _, _ in files),
        fingerprint=digest.hexdigest(),
        patient_id=first.patient_id,
        accession_number=first.accession_number,
        study_uid=first.study_uid,
        study_date=first.study_date,
        series_uids=tuple(sorted(group.series)),
        header_height_m=_number(first.patient_size),
        header_weight_kg=_number(first.patient_weight),
        header_sex=first.patient_sex or None,
        problem=problem,
    )


def discover(
    root: Path,
    keys: Pseudonymiser,
    executor: Executor | None = None,
    exclude: Path | None = None,
    on_files: Callable[[int], None] | None = None,
) -> Discovery:
    """Every study under ``root``; headers are read in ``executor`` when given.

    ``on_files(n)`` is called as headers of ``n`` more files have been read (for a progress bar).
    """
    root = root.resolve()
    found = Discovery()
    candidates: list[Path] = []
    niftis: list[Path] = []
    for path in walk(root, exclude):
        found.files_seen += 1
        (niftis if is_nifti(path) else candidates).append(path)
    chunks = _chunks(candidates, CHUNK)
    results = executor.map(read_records, chunks) if executor is not None else map(read_records, chunks)
    groups: dict[str, _Group] = {}
    for chunk, (records, skipped) in zip(chunks, results, strict=True):
        for reason, count in skipped.items():
            found.skipped[reason] = found.skipped.get(reason, 0) + count
        for record in records:
            if record.study_uid:
                identity = f"dicom:{record.study_uid}"
            else:  # no StudyInstanceUID: the folder is the study
                identity = f"dicom-folder:{_relative(root, record.path.parent)}"
            if identity not in groups:
                groups[identity] = _Group(record)
            groups[identity].add(record)
        if on_files is not None:
            on_files(len(chunk))
    for identity, group in groups.items():
        found.studies.append(_dicom_study(root, identity, group, keys))
    for path in niftis:
        identity = f"nifti:{_relative(root, path)}"
        found.studies.append(
            Study(
                key=keys.study_key(identity),
                identity=identity,
                kind="nifti",
                source=_relative(root, path),
                files=(path,),
                fingerprint=fingerprint(root, [path]),
            )
        )
    found.studies.sort(key=lambda s: (s.source, s.identity))
    return found
