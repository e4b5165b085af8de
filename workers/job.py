"""The job contract between the node and its workers: what to analyse, how it ended, the states.

Why typed: the node writes ``job.json`` and publishes it over the broker; the worker writes
``outcome.json`` and the node reads it. As dicts read with ``.get(key, default)`` a renamed key
became a silent default (no flags, no fallbacks, "failed" for an unknown state); here a missing
or mistyped key is a :class:`ValueError` naming it. Neither Celery nor the network is imported:
the node, the Celery task and the tests share this module (issue #22).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from workers.jsonfile import read_json
from workers.revision import CorrectionSpec

log = logging.getLogger("bodycomp.worker")
T = TypeVar("T")

#: A job's folder (``DATA/results/<study>/<series>/<hash>/``): the spec the node writes, the input
#: links, the worker's ``started.json`` per attempt, its results and, last, its outcome.
JOB, INPUT, STARTED, OUT, OUTCOME = "job.json", "input", "started.json", "out", "outcome.json"


class JobState(StrEnum):
    """A job's state in the index (``jobs.state``) and in ``outcome.json`` (done/failed)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    """A correction (issue #23) replaced this job's result."""


class StudyState(StrEnum):
    """A study's state: ``received`` (instances arriving), ``stable`` (idle, being dispatched),
    then the state of its jobs, or ``ignored`` (nothing to analyse)."""

    RECEIVED = "received"
    STABLE = "stable"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    IGNORED = "ignored"


@dataclass(frozen=True)
class PatientValues:
    """Height and weight of a source after the DICOM header (the node's HL7 feed, its site
    table), as the node found them at dispatch (:mod:`node.patients.sources`)."""

    source: str
    height_m: float | None = None
    weight_kg: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "height_m": self.height_m, "weight_kg": self.weight_kg}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatientValues:
        return cls(str(data["source"]), _float_or_none(data, "height_m"), _float_or_none(data, "weight_kg"))


@dataclass(frozen=True)
class JobSpec:
    """One series to analyse: ``job.json`` in the job's folder and the broker message."""

    job_id: int
    study_uid: str
    series_uid: str
    input_hash: str
    job_dir: str
    """The job's folder, relative to the data directory."""
    instances: int
    flags: tuple[str, ...] = ()
    """What the receiving node found about the input (e.g. ``series_uid_shared``), for QC."""
    patient_fallbacks: tuple[PatientValues, ...] = ()
    correction: CorrectionSpec | None = None
    """This job corrects an earlier result (issue #23)."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "job_id": self.job_id,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "input_hash": self.input_hash,
            "job_dir": self.job_dir,
            "instances": self.instances,
            "flags": list(self.flags),
            "patient_fallbacks": [f.to_json() for f in self.patient_fallbacks],
        }
        if self.correction is not None:
            data["correction"] = self.correction.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSpec:
        """Raises :class:`ValueError` naming what is missing or wrong. A ``job.json`` written by an
        earlier node has no ``flags``, ``patient_fallbacks`` or ``correction``: those are optional."""
        try:
            return cls(
                job_id=int(data["job_id"]),
                study_uid=str(data["study_uid"]),
                series_uid=str(data["series_uid"]),
                input_hash=str(data["input_hash"]),
                job_dir=str(data["job_dir"]),
                instances=int(data["instances"]),
                flags=tuple(str(f) for f in data.get("flags", ())),
                patient_fallbacks=tuple(
                    PatientValues.from_json(f) for f in data.get("patient_fallbacks", ())
                ),
                correction=CorrectionSpec.from_json(data["correction"]) if data.get("correction") else None,
            )
        except KeyError as exc:
            raise ValueError(f"job spec without {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job spec with a wrong value: {exc}") from None


@dataclass(frozen=True)
class Outcome:
    """How a job ended: ``outcome.json``, written once by the worker, read by the node."""

    state: JobState
    """:attr:`JobState.DONE` or :attr:`JobState.FAILED`."""
    reason: str
    attempts: int
    finished: float
    host: str
    outputs: tuple[str, ...] = field(default=())
    """The job's DICOM outputs, relative to its folder."""
    quarantine: bool = False
    """The node is to move the job's input out of the spool (it crashed the analysis)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "state": str(self.state),
            "reason": self.reason,
            "attempts": self.attempts,
            "outputs": list(self.outputs),
            "finished": self.finished,
            "host": self.host,
            "quarantine": self.quarantine,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        """Raises :class:`ValueError` naming what is missing or wrong."""
        try:
            state = JobState(data["state"])
            if state not in (JobState.DONE, JobState.FAILED):
                raise ValueError(f"an outcome cannot be {state!r}")
            return cls(
                state=state,
                reason=str(data["reason"]),
                attempts=int(data["attempts"]),
                finished=float(data["finished"]),
                host=str(data.get("host", "")),
                outputs=tuple(str(o) for o in data.get("outputs", ())),
                quarantine=bool(data.get("quarantine", False)),
            )
        except KeyError as exc:
            raise ValueError(f"outcome without {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ValueError(f"outcome with a wrong value: {exc}") from None


def _float_or_none(data: dict[str, Any], key: str) -> float | None:
    value = data.get(key)
    return None if value is None else float(value)


def read_outcome(job_dir: Path) -> Outcome | None:
    """The job's ``outcome.json``, or None when it has none (or an unreadable one: logged)."""
    return _read(job_dir / OUTCOME, Outcome.from_json)


def read_job_spec(job_dir: Path) -> JobSpec | None:
    """The job's ``job.json``, or None when it has none (or an unreadable one: logged; the node
    then rebuilds it from the index)."""
    return _read(job_dir / JOB, JobSpec.from_json)


def _read(path: Path, parse: Callable[[dict[str, Any]], T]) -> T | None:
    data = read_json(path)
    if data is None:
        return None
    try:
        return parse(data)
    except ValueError as exc:
        log.warning("event=job_file_unreadable path=%s reason=%s", path, exc)
        return None
