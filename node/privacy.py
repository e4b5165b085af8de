"""Keep patient-identifying values out of logs and ``bodycomp status``, whatever library wrote them.

Why: the node's own log lines carry UIDs only, but the libraries it runs quote *dataset values*
in their messages when a value is not quite standard, and such values are common in real PACS
data: pydicom ("Invalid value for VR DA: '17.04.1923'", "Unable to convert '17.04.1923' to 'DA'
object"), highdicom ('value of argument "patient_name" is potentially invalid: "DOE JOHN"'), and
Celery repeats the exception text of a failed task. A patient's birth date or name would then
reach journald or a central log system (found by ``tests/test_security.py``).

:func:`install` redacts those quoted values in every log record of the process (a log-record
factory, so it applies to every logger and handler, Celery's included, and to the worker's
forked children) and routes Python warnings through logging so they are redacted too;
:func:`redact` is also applied to failure reasons before they are stored in the index.
"""

from __future__ import annotations

import logging
import re
from typing import Any

REDACTED = "<redacted>"

_QUOTED = r"""(?:b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*")"""
#: Library messages that quote a dataset value, and the part of them to keep.
_PATTERNS = [
    re.compile(r"(Invalid value for VR \w{2}: )" + _QUOTED),  # pydicom validation
    re.compile(r"(Unable to convert (?:non-conformant value )?)" + _QUOTED),  # pydicom DA/DT/TM
    re.compile(r"(Value )" + _QUOTED + r"(?= is not valid for elements with a VR)"),  # pydicom DS/IS
    re.compile(r"(is potentially invalid: )" + _QUOTED),  # highdicom person names
    re.compile(r"(The string )" + _QUOTED + r"(?= is unlikely to represent)"),  # highdicom too
    re.compile(r"(invalid literal for int\(\) with base 10: )" + _QUOTED),  # IS values
    re.compile(r"(could not convert string to float: )" + _QUOTED),  # DS values
]


def redact(text: str) -> str:
    """``text`` with the dataset values quoted by known library messages replaced."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def _redact_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a record with bad arguments: logging reports that itself
        return
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(text)
        if cleaned != text:
            record.exc_text = cleaned  # formatters use this instead of formatting the exception


def install() -> None:
    """Redact every log record this process creates from now on (idempotent)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "bodycomp_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    factory.bodycomp_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    logging.captureWarnings(True)  # warnings.warn(...) → the "py.warnings" logger → redacted
