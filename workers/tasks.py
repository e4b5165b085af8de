"""The one Celery task: analyse one series of one stable study. Thin on purpose.

The node prepares a *job folder* under the data directory before it enqueues the task
(``results/<study>/<series>/<input hash>/``)::

    input/         hard links to exactly the instances of the job's input (a late or replaced
                   instance in the spool cannot change what this job analyses)
    job.json       the job: ids, UIDs, input hash
    started.json   written here at the start of each attempt (attempt count, host, pid)
    out/           what :func:`workers.pipeline.analyse` wrote: result.json, dicom/*.dcm, ...
    outcome.json   written here last, atomically: done or failed, reason, the output files

The task never touches the node's SQLite index: workers may run on other hosts that share only
the data directory, and SQLite must not be shared over a network file system. The node reads
``outcome.json`` and records it (:mod:`node.schedule.results`). Everything is idempotent: a job whose
``outcome.json`` says done is not run again, and a rerun after a crash rewrites the same files.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure

from workers.app import app
from workers.corrections.options import correction_options
from workers.errors import BodycompError
from workers.job import INPUT, OUT, OUTCOME, STARTED, JobSpec, JobState, Outcome, read_outcome
from workers.jsonfile import read_json, write_json
from workers.load.selection import SelectionPolicy
from workers.load.stack import StackPolicy
from workers.pipeline import AnalysisOptions, PatientOverrides, analyse
from workers.revision import CorrectionSpec

log = logging.getLogger("bodycomp.worker")

#: Held (``flock``) by the process running an attempt; the kernel releases it when that process dies.
LOCK = ".lock"


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs besides the job: where the data directory is mounted, the policies."""

    data_dir: Path = Path("var")
    selection: SelectionPolicy = field(default_factory=SelectionPolicy)
    stack: StackPolicy = field(default_factory=StackPolicy)
    max_retries: int = 2
    extra_options: dict[str, Any] = field(default_factory=dict)
    """Further :class:`AnalysisOptions` fields (by name) when the pipeline offers them."""


_config = WorkerConfig()


def configure(config: WorkerConfig) -> None:
    """Set the worker's configuration (``bodycomp worker`` calls this before starting Celery)."""
    global _config
    _config = config


def analysis_options(
    config: WorkerConfig, series_uid: str, node_flags: tuple[str, ...] = ()
) -> AnalysisOptions:
    """The worker's policies, with selection pinned to the job's series and the node's flags."""
    options = AnalysisOptions(
        selection=dataclasses.replace(config.selection, series_instance_uid=series_uid),
        stack=config.stack,
        node_flags=node_flags,
    )
    known = {f.name for f in dataclasses.fields(AnalysisOptions)}
    extra = {k: v for k, v in config.extra_options.items() if k in known}
    return dataclasses.replace(options, **extra) if extra else options


#: An analysis whose process died this many times while its worker lived on (killed by the kernel
#: for memory, a crash in native code) is failed and its input quarantined by the node: a stored
#: instance that kills whatever reads it must not be read again on every retry and restart (#18).
#: Two, not one: one death can be bad luck (another analysis' memory, an operator's kill).
CRASHES_BEFORE_QUARANTINE = 2


@dataclass(frozen=True)
class Attempt:
    """This attempt's number, and how many earlier attempts crashed (see :func:`begin_attempt`)."""

    number: int
    crashes: int


def process_start(pid: int) -> str | None:
    """The start time of a live process (``/proc/PID/stat``, field 22), None when it is gone.

    With the pid it names one process: a pid re-used by a later process has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def begin_attempt(job_dir: Path) -> Attempt:
    """Count this attempt in ``started.json`` (it survives a killed worker) and return it.

    An earlier attempt that neither finished nor ended with an error (:func:`end_attempt`) died.
    It *crashed* when its worker's main process on this host is still the one that ran it: only
    the analysing child died, which is what the kernel's out-of-memory killer or a fault in native
    code do. When the whole worker went (the node was killed or restarted, the worker stopped),
    the attempt was interrupted, not crashed: that says nothing about the input.
    """
    previous = read_json(job_dir / STARTED) or {}
    crashes = int(previous.get("crashes", 0))
    if previous and not previous.get("ended"):
        worker = int(previous.get("worker_pid", 0))
        alive = process_start(worker) if worker > 0 else None
        same_worker = (
            previous.get("host") == socket.gethostname()
            and alive is not None
            and alive == previous.get("worker_start")
        )
        crashes += int(same_worker)
    attempt = Attempt(int(previous.get("attempts", 0)) + 1, crashes)
    write_json(
        job_dir / STARTED,
        {
            "attempts": attempt.number,
            "crashes": attempt.crashes,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "worker_pid": os.getppid(),
            "worker_start": process_start(os.getppid()),
            "time": time.time(),
        },
    )
    return attempt


def end_attempt(job_dir: Path) -> None:
    """Say in ``started.json`` that the attempt ended with an error (it is retried), not a crash."""
    started = read_json(job_dir / STARTED)
    if started is not None:
        write_json(job_dir / STARTED, {**started, "ended": True})


def finish(
    job_dir: Path, state: JobState, reason: str, attempts: int, outputs: list[str], quarantine: bool = False
) -> Outcome:
    """Write ``outcome.json``; ``quarantine``: the node is to move the job's input out of the spool."""
    outcome = Outcome(
        state=state,
        reason=reason,
        attempts=attempts,
        finished=time.time(),
        host=socket.gethostname(),
        outputs=tuple(outputs),
        quarantine=quarantine,
    )
    write_json(job_dir / OUTCOME, outcome.to_json())
    return outcome


def patient_fallbacks(spec: JobSpec) -> tuple[PatientOverrides, ...]:
    """The job's height/weight sources after the header, in order (written by
    :func:`node.patients.sources.fallbacks_for`)."""
    return tuple(
        PatientOverrides(height_m=f.height_m, weight_kg=f.weight_kg, sex=None, source=f.source)
        for f in spec.patient_fallbacks
    )


def run_analysis(
    job_dir: Path,
    series_uid: str,
    config: WorkerConfig,
    node_flags: tuple[str, ...] = (),
    fallbacks: tuple[PatientOverrides, ...] = (),
    correction: CorrectionSpec | None = None,
) -> list[str]:
    """Analyse ``job_dir/input`` into a private folder, then rename it to ``job_dir/out``.

    Returns the DICOM results (paths relative to ``job_dir``): whatever ``.dcm`` files the
    analysis left in ``out/dicom/``. The rename makes ``out/`` appear complete or not at all.
    """
    work = job_dir / f".work-{uuid.uuid4().hex}"
    try:
        options = dataclasses.replace(analysis_options(config, series_uid, node_flags), fallbacks=fallbacks)
        if correction is not None:  # (a correction job, see node.schedule.corrections)
            options = correction_options(options, correction, job_dir, config.data_dir)
        analyse(job_dir / INPUT, options, out_dir=work)
        final = job_dir / OUT
        if final.exists():  # an earlier attempt finished the analysis but died before its outcome
            stale = job_dir / f".stale-{uuid.uuid4().hex}"
            final.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        work.rename(final)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return sorted(str(p.relative_to(job_dir)) for p in (final / "dicom").glob("*.dcm"))


@contextmanager
def job_lock(job_dir: Path) -> Iterator[bool]:
    """Yield True while this process holds the job's lock, False if another live process does.

    Why: one job can be in the broker twice (the node re-publishes open jobs when it restarts or
    its worker dies, and a worker left over from a killed node may still be running the first
    copy). Two attempts at once in one folder would race on ``out/`` and ``started.json``; with
    the lock the second copy steps aside, and a killed holder frees it at once.
    """
    fd = os.open(job_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def run_job(spec: JobSpec, config: WorkerConfig) -> Outcome | None:
    """The task's body as a plain function: returns the outcome, None when another process holds
    the job (not an outcome: the holder writes it, or dies and the node re-publishes the job);
    raises on a retryable error."""
    job_dir = config.data_dir / spec.job_dir
    with job_lock(job_dir) as held:
        if not held:
            log.warning("event=job_busy job=%s reason=another process is running this job", spec.job_id)
            return None
        return _run_locked(job_dir, spec, config)


def _run_locked(job_dir: Path, spec: JobSpec, config: WorkerConfig) -> Outcome:
    """One attempt, under the job's lock (see :func:`run_job`)."""
    done = read_outcome(job_dir)
    if done is not None:
        log.info("event=job_skipped job=%s reason=already %s", spec.job_id, done.state)
        return done
    attempt = begin_attempt(job_dir)
    attempts = attempt.number
    if attempt.crashes >= min(CRASHES_BEFORE_QUARANTINE, config.max_retries + 1):
        reason = (
            f"the analysis crashed {attempt.crashes} times (its process was killed: out of memory?); "
            "its instances were quarantined"
        )
        log.error("event=job_failed job=%s reason=crashed %d times", spec.job_id, attempt.crashes)
        return finish(job_dir, JobState.FAILED, reason, attempts, [], quarantine=True)
    if attempts > config.max_retries + 1:
        reason = f"worker lost {attempts - 1} times (killed, out of memory?)"
        return finish(job_dir, JobState.FAILED, reason, attempts, [])
    log.info(
        "event=job_started job=%s study=%s series=%s attempt=%d",
        spec.job_id,
        spec.study_uid,
        spec.series_uid,
        attempts,
    )
    try:
        outputs = run_analysis(
            job_dir, spec.series_uid, config, spec.flags, patient_fallbacks(spec), spec.correction
        )
    except BodycompError as exc:
        # The input cannot be analysed (no L3 in the field of view, bad stack, ...): no retry.
        log.warning("event=job_failed job=%s reason=%s", spec.job_id, exc)
        return finish(job_dir, JobState.FAILED, str(exc), attempts, [])
    except SoftTimeLimitExceeded:
        log.error("event=job_failed job=%s reason=time limit", spec.job_id)
        return finish(job_dir, JobState.FAILED, "analysis exceeded the time limit", attempts, [])
    log.info("event=job_done job=%s outputs=%d", spec.job_id, len(outputs))
    return finish(job_dir, JobState.DONE, "", attempts, outputs)


@app.task(bind=True, name="bodycomp.analyse_series", acks_late=True, reject_on_worker_lost=True)
def analyse_series(self: Any, message: dict[str, Any]) -> str:
    """Analyse one series (see module docstring); unexpected errors retry, then fail the job."""
    config = _config
    spec = JobSpec.from_json(message)  # a malformed message is a bug of the node: fails loudly
    try:
        outcome = run_job(spec, config)
        return "busy" if outcome is None else str(outcome.state)
    except Exception as exc:
        job_dir = config.data_dir / spec.job_dir
        reason = f"{type(exc).__name__}: {exc}"
        if self.request.retries < config.max_retries:
            log.warning("event=job_retry job=%s reason=%s", spec.job_id, reason)
            end_attempt(job_dir)
            raise self.retry(exc=exc, countdown=5 * 2**self.request.retries) from exc
        attempts = int((read_json(job_dir / STARTED) or {}).get("attempts", 0))
        finish(job_dir, JobState.FAILED, reason, attempts, [])
        log.error("event=job_failed job=%s reason=%s", spec.job_id, reason)
        return str(JobState.FAILED)


@task_failure.connect
def record_hard_time_limit(
    sender: Any = None, exception: BaseException | None = None, args: Any = None, **_: Any
) -> None:
    """Write the failed outcome of an analysis stopped by the hard time limit.

    Why: a hang the soft limit cannot interrupt (stuck in native code, a stopped process) ends
    with the pool killing the child; Celery acknowledges the message and nothing in the job folder
    would say what happened, so the node would wait for its lease and run the hang again. Celery
    fires ``task_failure`` for a hard time limit in the worker's main process, which records the
    reason here; the node then marks the job failed, not retried.
    """
    if not isinstance(exception, TimeLimitExceeded) or getattr(sender, "name", "") != analyse_series.name:
        return
    spec = args[0] if isinstance(args, list | tuple) and args else None
    if not isinstance(spec, dict) or "job_dir" not in spec:
        return
    job_dir = _config.data_dir / str(spec["job_dir"])
    if read_json(job_dir / OUTCOME) is not None:
        return
    limit = exception.args[0] if exception.args else "?"
    attempts = int((read_json(job_dir / STARTED) or {}).get("attempts", 0))
    reason = f"analysis exceeded the time limit ({limit} s) and was stopped; not retried"
    finish(job_dir, JobState.FAILED, reason, attempts, [])
    log.error("event=job_failed job=%s reason=hard time limit (%s s)", spec.get("job_id"), limit)
