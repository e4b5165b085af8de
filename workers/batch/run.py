"""Analyse every study of a cohort in parallel processes, resumably, with a progress bar.

Why this shape:

* **One fresh process per study** (:class:`~concurrent.futures.ProcessPoolExecutor` with
  ``max_tasks_per_child=1``, forked from a *forkserver* that has imported the analysis once,
  :mod:`workers.batch.preload`): the memory of a 1,000-slice study goes back to the system after
  it, as in the node's workers, and a new process costs milliseconds, not the 1.5 s of imports.
* **Resumable**: a study's ``result.json`` is written last and atomically
  (:mod:`workers.batch.records`) with the fingerprint of its input files, options and engine
  versions; a re-run skips the studies whose fingerprint matches and retries the failed ones. A
  run killed at any point loses only the studies being analysed at that moment.
* **A crash is one study's failure, not the cohort's**: when an analysing process dies (out of
  memory, a signal), the pool breaks and every study in flight fails with it; those are run
  again one at a time, so the one that kills its process is found and reported, and the others
  finish.
* **Private**: the analysing processes create files 0600 (umask 077) and die with the batch.
* **Input staged by symbolic links** in the study's ``.partial/input/`` (neutral names): the
  loader sees the study's files only (whatever else shares their folders), and its error texts
  name staged files, never the archive's paths, which may hold patient names.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from node.privacy import escape_controls, redact
from workers import __version__
from workers.batch import gallery, table
from workers.batch.discover import Discovery, Study, discover
from workers.batch.inputs import (
    APPLIED_CORRECTIONS,
    Correction,
    HeightsTable,
    fill_from_file,
    merge,
    read_corrections,
    read_heights,
    write_corrections,
)
from workers.batch.pseudonym import Pseudonymiser, load_or_create
from workers.batch.records import (
    FAILURE,
    PARTIAL,
    RESULT,
    STUDIES,
    BatchSection,
    FailureRecord,
)
from workers.batch.table import StudyStatus
from workers.errors import BodycompError, InputError, NotInFieldOfViewError
from workers.jsonfile import write_json
from workers.pipeline import AnalysisOptions, PatientOverrides, analyse
from workers.result import ResultDocument, ResultFileError, read_result

log = logging.getLogger("bodycomp.batch")

LOCK = ".lock"
#: Source of the patient values ``--heights`` supplies, in result.json's ``patient_inputs``.
HEIGHTS_FILE_SOURCE = "heights-file"
#: The error of a study whose analysing process died (found by running it alone).
DIED = "the analysing process died (killed by a signal or out of memory)"


@dataclass(frozen=True)
class BatchOptions:
    """What ``bodycomp batch`` was asked to do."""

    root: Path
    out: Path
    analysis: AnalysisOptions = field(default_factory=AnalysisOptions)
    """Selection, stack, engines, preset, rule set and slices (from the settings); per study the
    patient values and the reader's slice are added."""
    jobs: int = 0
    """Analyses at once; 0: one per core this process may use."""
    heights: Path | None = None
    corrections: Path | None = None
    pseudonymise: bool = False
    dicom: bool = False
    progress: bool | None = None
    """Show progress bars; None: when standard error is a terminal."""
    verbose: bool = False


@dataclass(frozen=True)
class StudyTask:
    """One study to analyse, with everything the analysing process needs (it is pickled)."""

    study: Study
    source_path: Path
    """The study's folder or file in the archive (absolute)."""
    study_dir: Path
    options: AnalysisOptions
    fingerprint: str
    dicom_note: str | None = None
    heights_file_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How a study's analysis ended: ``done``, ``l3_not_found`` or ``failed`` (with the error)."""

    study_key: str
    status: StudyStatus
    error: str | None
    wall_s: float


@dataclass(frozen=True)
class BatchSummary:
    """What a run did, for the command's last lines."""

    studies: int
    analysed: int
    """Studies analysed by this run (failures included)."""
    skipped: int
    """Studies whose result was current (not analysed again)."""
    failed: int
    """Studies that failed in this run."""
    by_status: dict[str, int]
    """The whole cohort's rows by status (``done``, ``l3_not_found``, ``failed``, ``pending``)."""
    files_seen: int
    files_skipped: dict[str, int]
    results_csv: Path
    results_parquet: Path | None
    gallery: Path
    seconds: float
    interrupted: bool = False


def default_jobs() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _engines(options: AnalysisOptions) -> str:
    """``localiser@version segmenter@version``: a new engine means new results."""
    from workers.l3.engine import get_localiser
    from workers.tissues.engine import get_segmenter

    localiser, segmenter = get_localiser(options.localiser), get_segmenter(options.segmenter)
    return f"{localiser.name}@{localiser.version} {segmenter.name}@{segmenter.version}"


def task_fingerprint(study: Study, options: AnalysisOptions, engines: str) -> str:
    """Input files, analysis options (the DICOM outputs aside: checked on their own) and
    software versions, hashed: what makes two analyses of a study give the same result."""
    settings = dataclasses.asdict(options)
    settings.pop("write_dicom")
    payload = {"input": study.fingerprint, "bodycomp": __version__, "engines": engines, "options": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _dicom_note(study: Study) -> str | None:
    """Why DICOM outputs cannot be written for ``study`` (None: they can)."""
    if study.kind != "dicom":
        return "NIfTI input: no DICOM study to attach results to"
    if not study.study_uid or not all(study.series_uids):
        return "StudyInstanceUID or SeriesInstanceUID missing in the input"
    return None


def plan(
    discovery: Discovery,
    options: BatchOptions,
    heights: HeightsTable | None,
    corrections: dict[str, Correction],
) -> list[StudyTask]:
    """A task per study: the settings' options plus its patient values and the reader's slice."""
    engines = _engines(options.analysis)
    root = options.root.resolve()
    tasks = []
    for study in discovery.studies:
        values, taken = fill_from_file(study, heights.lookup(study) if heights is not None else None)
        correction = corrections.get(study.key)
        note = _dicom_note(study) if options.dicom else None
        study_options = dataclasses.replace(
            options.analysis,
            patient=PatientOverrides(
                height_m=values.height_m,
                weight_kg=values.weight_kg,
                sex=values.sex,
                source=HEIGHTS_FILE_SOURCE,
            ),
            slice_index=correction.slice_index if correction is not None else None,
            write_dicom=options.dicom and note is None,
        )
        tasks.append(
            StudyTask(
                study=study,
                source_path=root / study.source if study.source != "." else root,
                study_dir=options.out / STUDIES / study.key,
                options=study_options,
                fingerprint=task_fingerprint(study, study_options, engines),
                dicom_note=note,
                heights_file_values=taken,
            )
        )
    return tasks


def is_current(task: StudyTask) -> bool:
    """Whether the study's ``result.json`` was made from this input with these options (and has
    the DICOM outputs when they are asked for): then it is not analysed again."""
    record = table.read_record(task.study_dir)
    if not isinstance(record, table.ResultRecord) or record.batch.fingerprint != task.fingerprint:
        return False
    return record.batch.dicom_outputs or not task.options.write_dicom


# --- in the analysing process -------------------------------------------------------------------


def stage_input(study: Study, folder: Path) -> Path:
    """Symbolic links to the study's files under neutral names; the path to give ``analyse``."""
    folder.mkdir(parents=True)
    if study.kind == "nifti":
        source = study.files[0]
        link = folder / ("image.nii.gz" if source.name.lower().endswith(".gz") else "image.nii")
        link.symlink_to(source.resolve())
        return link
    for number, path in enumerate(study.files):
        (folder / f"{number:06d}.dcm").symlink_to(path.resolve())
    return folder


def _clear(study_dir: Path) -> None:
    """Remove a study's previous outputs (``result.json`` first: never a result beside stale files)."""
    for name in (RESULT, FAILURE):
        (study_dir / name).unlink(missing_ok=True)
    for item in study_dir.iterdir():
        if item.name == PARTIAL:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()


def _relocate(result: ResultDocument, task: StudyTask, out: Path) -> None:
    """Paths in the result as they are after the outputs moved into the study's folder, and the
    archive's path instead of the staged links (those are removed)."""
    result["files"] = {
        name: str(task.study_dir / Path(path).relative_to(out)) for name, path in result["files"].items()
    }
    source = str(task.source_path)
    result["input"]["input"] = source
    result["input"]["volume"]["source_path"] = source


def fail(task: StudyTask, error: str, error_type: str, wall_s: float, trace: str | None = None) -> Outcome:
    """Record a failure in ``failure.json`` (any earlier result removed: it no longer matches)."""
    error = escape_controls(redact(error))
    task.study_dir.mkdir(parents=True, exist_ok=True)
    _clear(task.study_dir)
    record = FailureRecord(
        task.study.key, task.fingerprint, error, error_type, _now(), round(wall_s, 3), trace
    )
    write_json(task.study_dir / FAILURE, record.to_json())
    shutil.rmtree(task.study_dir / PARTIAL, ignore_errors=True)
    return Outcome(task.study.key, StudyStatus.FAILED, error, wall_s)


def analyse_study(task: StudyTask) -> Outcome:
    """Analyse one study into its folder (runs in a pool process; never raises for the study's
    own problems: they are its outcome)."""
    start, cpu_start = time.perf_counter(), time.process_time()
    partial = task.study_dir / PARTIAL
    shutil.rmtree(partial, ignore_errors=True)
    staged = stage_input(task.study, partial / "input")
    out = partial / "out"
    status = StudyStatus.DONE
    result: ResultDocument
    try:
        result = analyse(staged, task.options, out_dir=out)
    except NotInFieldOfViewError:
        # a measured fact about the scan (written by analyse), not a failure
        status = StudyStatus.L3_NOT_FOUND
        try:
            result = read_result(out / RESULT)
        except ResultFileError as exc:
            return fail(
                task, f"L3 not in the field of view, but no result written ({exc})", "InputError", 0.0
            )
    except BodycompError as exc:
        return fail(task, str(exc), type(exc).__name__, time.perf_counter() - start)
    except Exception as exc:  # a bug or a library's surprise: this study fails, the cohort goes on
        return fail(
            task,
            f"{type(exc).__name__}: {exc}",
            type(exc).__name__,
            time.perf_counter() - start,
            redact(traceback.format_exc()),
        )
    gallery.make_thumbnails(out)
    (out / RESULT).unlink(missing_ok=True)  # ours, with the batch section, is written last
    _clear(task.study_dir)
    for item in out.iterdir():
        item.rename(task.study_dir / item.name)
    _relocate(result, task, out)
    wall = time.perf_counter() - start
    result["batch"] = BatchSection(
        study_key=task.study.key,
        fingerprint=task.fingerprint,
        kind=task.study.kind,
        dicom_outputs=task.options.write_dicom,
        dicom_note=task.dicom_note,
        heights_file_values=task.heights_file_values,
        analysed_at=_now(),
        wall_s=round(wall, 3),
        cpu_s=round(time.process_time() - cpu_start, 3),
    ).to_json()
    shutil.rmtree(partial, ignore_errors=True)  # (the staged links: nothing may follow result.json)
    write_json(task.study_dir / RESULT, result)
    return Outcome(task.study.key, status, None, wall)


def _init_worker(verbose: bool, lifeline: Connection) -> None:
    """In each analysing process: private files, quiet and redacted logs, die with the batch.

    Why a lifeline: the processes are forked by the forkserver, not by the batch, so the kernel
    cannot tell them when the batch dies (``kill -9``, out of memory), and one waiting for its
    next study would wait forever, keeping the forkserver alive with it. ``lifeline`` is the read
    end of a pipe only the batch can write to: its end of file means the batch is gone.

    Ctrl-C on the terminal reaches these processes too and stops their studies at once (left
    without a result, they are analysed by the next run), while the batch writes the table of
    what is done.
    """
    os.umask(0o077)
    threading.Thread(target=_exit_with_batch, args=(lifeline,), name="batch-lifeline", daemon=True).start()
    from node.logs import configure_logging

    configure_logging(verbose)
    if not verbose:  # the batch reports each study's failure; library warnings are in result.json
        logging.getLogger().setLevel(logging.ERROR)


def _exit_with_batch(lifeline: Connection) -> None:
    """Wait for the batch's end of the lifeline to close (nothing is ever sent), then exit."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv()
    os._exit(1)


# --- in the batch process -----------------------------------------------------------------------


def _lifeline() -> tuple[Connection, Connection]:
    """(read end for the analysing processes, write end the batch keeps open while it runs)."""
    reader, writer = multiprocessing.get_context("forkserver").Pipe(duplex=False)
    return reader, writer


def _pool(jobs: int, verbose: bool, lifeline: Connection) -> ProcessPoolExecutor:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["workers.batch.preload"])
    return ProcessPoolExecutor(
        jobs,
        mp_context=context,
        max_tasks_per_child=1,
        initializer=_init_worker,
        initargs=(verbose, lifeline),
    )


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One batch per output folder at a time (two would write the same studies)."""
    handle = (out / LOCK).open("a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{out}: another bodycomp batch is writing to this folder") from None
        yield
    finally:
        handle.close()


def run_tasks(
    tasks: list[StudyTask],
    jobs: int,
    verbose: bool,
    lifeline: Connection,
    on_done: Callable[[Outcome], None],
) -> None:
    """Analyse ``tasks`` with ``jobs`` processes; ``on_done`` gets each outcome as it comes.

    At most ``jobs`` studies are handed to the pool at a time, so that when the pool breaks (a
    process died) the studies in flight are exactly the suspects: those are then run one at a
    time, and one whose process dies alone is the one that kills it.
    """
    queue = deque(tasks)
    suspects: deque[StudyTask] = deque()
    running: dict[Future[Outcome], StudyTask] = {}
    executor = _pool(jobs, verbose, lifeline)
    try:
        while queue or suspects or running:
            if suspects:
                if not running:
                    task = suspects.popleft()
                    running[executor.submit(analyse_study, task)] = task
            else:
                while queue and len(running) < jobs:
                    task = queue.popleft()
                    running[executor.submit(analyse_study, task)] = task
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            if not any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                for future in done:
                    on_done(_outcome(future, running.pop(future)))
                continue
            wait(running)  # a broken pool fails every future it holds: collect them all
            in_flight = len(running)
            for future, task in list(running.items()):
                if isinstance(future.exception(), BrokenProcessPool):
                    if in_flight == 1:
                        on_done(fail(task, DIED, "ProcessDied", 0.0))
                    else:
                        suspects.append(task)
                else:
                    on_done(_outcome(future, task))
            running.clear()
            executor.shutdown(wait=True)
            executor = _pool(jobs, verbose, lifeline)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def _outcome(future: Future[Outcome], task: StudyTask) -> Outcome:
    """A finished future's outcome; an error outside the study's own handling (the outcome could
    not be sent back, the study folder could not be written) fails that study."""
    error = future.exception()
    if error is None:
        return future.result()
    return fail(task, f"{type(error).__name__}: {error}", type(error).__name__, 0.0)


def _bar(enabled: bool, **kwargs: Any) -> tqdm[Any]:
    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


def _prepare(out: Path) -> None:
    """The output folder, private (0700), like the node's data directory."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    (out / STUDIES).mkdir(mode=0o700, exist_ok=True)


def _corrections(options: BatchOptions) -> dict[str, Correction]:
    """The corrections applied before, with ``--corrections`` merged in (and saved)."""
    applied_path = options.out / APPLIED_CORRECTIONS
    applied = read_corrections(applied_path) if applied_path.exists() else {}
    if options.corrections is None:
        return applied
    merged = merge(applied, read_corrections(options.corrections))
    write_corrections(applied_path, merged)
    return merged


def run_batch(options: BatchOptions) -> BatchSummary:
    """Find, analyse (what is not current yet) and tabulate every study under ``options.root``."""
    start = time.perf_counter()
    root = options.root.resolve()
    if not root.exists():
        raise InputError(f"{options.root}: no such file or folder")
    heights = read_heights(options.heights) if options.heights is not None else None
    _prepare(options.out)
    jobs = options.jobs or default_jobs()
    progress = options.progress if options.progress is not None else bool(os.isatty(2))
    lifeline, keep_alive = _lifeline()
    with _locked(options.out), logging_redirect_tqdm(), lifeline, keep_alive:
        keys: Pseudonymiser = load_or_create(options.out)
        corrections = _corrections(options)
        with (
            _bar(progress, desc="reading headers", unit="file") as bar,
            _pool(jobs, options.verbose, lifeline) as pool,
        ):
            discovery = discover(root, keys, pool if jobs > 1 else None, options.out, bar.update)
        tasks = plan(discovery, options, heights, corrections)
        known = {s.key for s in discovery.studies}
        unknown = [key for key in corrections if key not in known]
        if unknown:
            log.warning(
                "event=corrections_unmatched count=%d (study keys not in this cohort: ignored)", len(unknown)
            )
        counts = {StudyStatus.DONE: 0, StudyStatus.L3_NOT_FOUND: 0, StudyStatus.FAILED: 0}
        for task in tasks:
            if task.study.problem is not None:
                _count(fail(task, task.study.problem, "InputError", 0.0), counts)
        todo = [t for t in tasks if t.study.problem is None and not is_current(t)]
        skipped = len(tasks) - len(todo) - counts[StudyStatus.FAILED]
        interrupted = False
        with _bar(progress, desc="analysing", unit="study", total=len(todo)) as bar:

            def on_done(outcome: Outcome) -> None:
                _count(outcome, counts)
                bar.update()
                bar.set_postfix(failed=counts[StudyStatus.FAILED], refresh=False)

            try:
                run_tasks(todo, jobs, options.verbose, lifeline, on_done)
            except KeyboardInterrupt:  # the table and gallery of what is done, then stop
                interrupted = True
        rows = table.write_tables(options.out, discovery.studies, keys, options.pseudonymise, corrections)
        gallery_path = gallery.write_gallery(options.out, rows, keys)
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
    parquet = options.out / table.PARQUET
    return BatchSummary(
        studies=len(tasks),
        analysed=len(todo),
        skipped=skipped,
        failed=counts[StudyStatus.FAILED],
        by_status=by_status,
        files_seen=discovery.files_seen,
        files_skipped=dict(discovery.skipped),
        results_csv=options.out / table.CSV,
        results_parquet=parquet if parquet.exists() else None,
        gallery=gallery_path,
        seconds=time.perf_counter() - start,
        interrupted=interrupted,
    )


def _count(outcome: Outcome, counts: dict[StudyStatus, int]) -> None:
    counts[outcome.status] += 1
    if outcome.status == StudyStatus.FAILED:
        log.warning("event=study_failed study=%s error=%s", outcome.study_key, outcome.error)
