"""Keep patient-identifying values out of logs and ``bodycomp status``, whatever library wrote them,
and keep header values from forging log lines or repainting a terminal.

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

Every text that comes from a DICOM header (a Modality, a description, a calling AE title, a
reason quoting them) is also attacker-controlled: a newline in it would start a forged log line
("... event=delivered ...") and an ESC sequence would repaint the operator's terminal. The same
factory passes each record's message through :func:`escape_controls`; ``bodycomp status`` and
``export --csv`` (:mod:`node.operate.status`) use it for what they print and write.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Iterator
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


#: Characters that move the cursor, end a line or start a terminal escape sequence: C0 controls
#: but TAB, DEL, C1 controls (NEL, CSI...) and the Unicode line and paragraph separators.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with its control characters written as visible escapes (``\\n``, ``\\x1b``).

    Why: header values reach log lines and the operator's terminal; a newline in one would start
    a line that looks like the node's own (a forged ``event=delivered``), an ESC or CSI sequence
    would clear or repaint the screen. Only those characters are escaped, the way ``repr`` writes
    them; TAB, backslashes and printable Unicode (accented names, CJK) stay as they are.
    """
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(lambda m: repr(m.group())[1:-1], text)


def _exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions a traceback prints with it (causes and contexts)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        if exc.__cause__ is not None:
            exc = exc.__cause__
        else:
            exc = None if exc.__suppress_context__ else exc.__context__


def _escape_exception_messages(text: str, exc: BaseException | None) -> str:
    """A formatted traceback with the *messages* of its exceptions escaped.

    A traceback is several lines by nature and stays so; but ``ValueError: <a header value>`` is
    a value like any other, and a newline in it must not start a line of its own either.
    """
    for item in _exception_chain(exc):
        for line in traceback.format_exception_only(type(item), item):
            line = line.rstrip("\n")
            escaped = escape_controls(line)
            if escaped != line:
                text = text.replace(line, escaped)
    return text


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
    # one line per record whatever the values in it (a trailing line break, as captured warnings
    # have, is dropped rather than shown)
    cleaned = redact(escape_controls(message.rstrip("\r\n")))
    if cleaned != message:
        record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[0] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(_escape_exception_messages(text, record.exc_info[1]))
        if cleaned != text:
            record.exc_text = cleaned  # formatters use this instead of formatting the exception


def install() -> None:
    """Redact and escape every log record this process creates from now on (idempotent)."""
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


#: A number as the export writes it, or a ``;``-joined list of them (``l3.level_ranges.L3`` is
#: ``-804.5;-766.5``): digits, a sign, a point and an exponent cannot make a formula call anything.
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBERS = re.compile(rf"{_NUMBER}(?:;{_NUMBER})*")
#: First characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet shows and never runs.

    Why: the export holds header values (PatientID, the calling AE title) and a spreadsheet runs a
    cell starting with ``=``, ``+``, ``-`` or ``@`` as a formula (``=HYPERLINK(...)`` sends data
    away). Such text gets a leading ``'``, as OWASP advises, and its control characters are
    escaped; numbers, and text that is only numbers, stay as they are (``-29.0`` is a value).
    """
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = escape_controls(str(value))
    if text.startswith(_FORMULA_START) and not _NUMBERS.fullmatch(text):
        return "'" + text
    return text
