"""Incoming HL7 v2 messages → typed body measurements (height, weight), or a refusal with a reason.

Accepted: ADT^A08 (update patient information), ADT^A31 (update person information), ORM^O01
(order) and OMI^O23 (imaging order), each with OBX segments coded LOINC 8302-2 (body height) or
29463-7 (body weight). Who: PID-3 (the repetition whose identifier type, CX-5, is ``MR``, else the
first), the same identifier the modality writes into PatientID. Which order: the accession number
from IPC-1 (OMI), else OBR-18 (placer field 1, where most RIS put it), else ORC-3/OBR-3 (filler
order number). When: OBX-14, else MSH-7, else the time of receipt.

A message is taken whole or refused whole (:class:`RefusedError`): an implausible value
(:mod:`node.patients.limits`), an observation too old (``hl7_max_age_days``) or in the future, a
unit that is not one of the UCUM units below, a missing patient ID. An accepted message type
without height or weight OBX is acknowledged and stores nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import hl7

from node.patients.limits import PatientLimits

HEIGHT_LOINC = "8302-2"
WEIGHT_LOINC = "29463-7"
#: Accepted message types (MSH-9.1 ^ MSH-9.2).
ACCEPTED_TYPES = ("ADT^A08", "ADT^A31", "ORM^O01", "OMI^O23")
#: UCUM units accepted per quantity, with the factor to metres or kilograms.
UNITS: dict[str, dict[str, float]] = {
    "height_m": {"cm": 0.01, "m": 1.0, "[in_i]": 0.0254},
    "weight_kg": {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237},
}
#: OBX-11 result statuses that carry a value to use (final, corrected, preliminary, results entered).
USABLE_STATUSES = ("", "F", "C", "P", "R")


class RefusedError(Exception):
    """The message is not taken; ``ack_code`` AE or AR, ``error_code`` from HL7 table 0357."""

    def __init__(self, ack_code: str, error_code: str, reason: str) -> None:
        super().__init__(reason)
        self.ack_code = ack_code
        self.error_code = error_code
        self.reason = reason


@dataclass(frozen=True)
class BodyMeasurement:
    """One height or weight as the node stores it: SI value, when it was observed."""

    kind: str
    """``height_m`` or ``weight_kg``."""
    value: float
    """In metres or kilograms."""
    unit: str
    """The unit it arrived in (UCUM code)."""
    observed: float
    """Epoch seconds."""


@dataclass(frozen=True)
class BodyMessage:
    """What the node takes from one accepted message."""

    control_id: str
    message_type: str
    patient_id: str
    accession: str
    measurements: tuple[BodyMeasurement, ...]


@dataclass(frozen=True)
class Header:
    """MSH fields needed to answer any message, even one that is refused."""

    control_id: str
    message_type: str
    trigger: str
    version: str
    sending_application: str
    sending_facility: str


def _fields(segment: hl7.Segment) -> list[str]:
    """Fields of a segment by HL7 number (``[n]`` is field n; MSH-1 is the field separator)."""
    text = str(segment)
    parts = text.split("|")
    if parts[0] == "MSH":
        parts.insert(1, "|")
    return parts


def _field(segment: hl7.Segment, number: int) -> str:
    parts = _fields(segment)
    return parts[number] if number < len(parts) else ""


def _component(value: str, number: int) -> str:
    parts = value.split("^")
    return parts[number - 1].strip() if number <= len(parts) else ""


def _segments(message: hl7.Message, name: str) -> list[hl7.Segment]:
    return [segment for segment in message if str(segment[0]) == name]


def header(message: hl7.Message) -> Header:
    """The MSH fields of ``message`` (empty strings where absent)."""
    found = _segments(message, "MSH")
    if not found:
        raise RefusedError("AR", "100", "no MSH segment")
    msh = found[0]
    kind = _field(msh, 9)
    return Header(
        control_id=_field(msh, 10),
        message_type=_component(kind, 1),
        trigger=_component(kind, 2),
        version=_field(msh, 12) or "2.5.1",
        sending_application=_field(msh, 3),
        sending_facility=_field(msh, 4),
    )


_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")


def parse_time(text: str) -> float | None:
    """An HL7 DTM (``YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]``) as epoch seconds; without a zone,
    the node's local time (as most interface engines send it). None for an empty or bad value."""
    match = _TS.match(_component(text, 1))
    if match is None:
        return None
    year, month, day, hour, minute, second, zone = match.groups()
    try:
        when = dt.datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError:
        return None
    if zone:
        sign = 1 if zone[0] == "+" else -1
        offset = dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        return when.replace(tzinfo=dt.timezone(sign * offset)).timestamp()
    return when.timestamp()


def _patient_id(message: hl7.Message) -> str:
    pids = _segments(message, "PID")
    if not pids:
        return ""
    repetitions = [r for r in _field(pids[0], 3).split("~") if _component(r, 1)]
    medical_record = [r for r in repetitions if _component(r, 5).upper() == "MR"]
    chosen = (medical_record or repetitions or [""])[0]
    return _component(chosen, 1)


def _accession(message: hl7.Message) -> str:
    for name, number in (("IPC", 1), ("OBR", 18), ("ORC", 3), ("OBR", 3)):
        for segment in _segments(message, name):
            value = _component(_field(segment, number), 1)
            if value:
                return value
    return ""


def _measurement(
    obx: hl7.Segment, number: int, default_time: float, now: float, limits: PatientLimits, max_age_days: float
) -> BodyMeasurement | None:
    code = _component(_field(obx, 3), 1)
    kind = {HEIGHT_LOINC: "height_m", WEIGHT_LOINC: "weight_kg"}.get(code)
    if kind is None or _field(obx, 11).strip().upper() not in USABLE_STATUSES:
        return None
    where = f"OBX {number} ({code})"
    raw = _field(obx, 5).strip()
    try:
        value = float(raw)
    except ValueError:
        raise RefusedError("AE", "102", f"{where}: the value is not a number") from None
    unit = _component(_field(obx, 6), 1)
    units = UNITS[kind]
    factor = units.get(unit, units.get(unit.lower()))
    if factor is None:
        raise RefusedError("AE", "103", f"{where}: unknown unit {unit[:20]!r} (accepted: {', '.join(units)})")
    si = value * factor
    implausible = limits.check(kind, si)
    if implausible is not None:
        raise RefusedError("AE", "207", f"{where}: {implausible} ({limits.id})")
    observed = parse_time(_field(obx, 14)) if _field(obx, 14).strip() else default_time
    if observed is None:
        raise RefusedError("AE", "102", f"{where}: OBX-14 is not an HL7 date/time")
    if now - observed > max_age_days * 86400:
        raise RefusedError(
            "AE",
            "207",
            f"{where}: observed {(now - observed) / 86400:.0f} days ago, more than the "
            f"{max_age_days:g} days accepted (hl7_max_age_days)",
        )
    if observed - now > limits.future_tolerance_hours * 3600:
        raise RefusedError("AE", "207", f"{where}: the observation time is in the future")
    return BodyMeasurement(kind=kind, value=si, unit=unit, observed=observed)


def read_body_message(
    message: hl7.Message, limits: PatientLimits, max_age_days: float, now: float
) -> BodyMessage:
    """The heights and weights of ``message``; raises :class:`RefusedError` (see module docstring)."""
    head = header(message)
    kind = f"{head.message_type}^{head.trigger}"
    if kind not in ACCEPTED_TYPES:
        code = "200" if head.message_type not in {t.split("^")[0] for t in ACCEPTED_TYPES} else "201"
        raise RefusedError(
            "AR", code, f"message type {kind[:20]} is not accepted ({', '.join(ACCEPTED_TYPES)})"
        )
    if not head.control_id:
        raise RefusedError("AR", "101", "MSH-10 (message control ID) is missing")
    patient_id = _patient_id(message)
    if not patient_id:
        raise RefusedError("AE", "101", "PID-3 (patient identifier) is missing")
    msh = _segments(message, "MSH")[0]
    default_time = parse_time(_field(msh, 7)) or now
    measurements = []
    for number, obx in enumerate(_segments(message, "OBX"), start=1):
        measurement = _measurement(obx, number, default_time, now, limits, max_age_days)
        if measurement is not None:
            measurements.append(measurement)
    return BodyMessage(
        control_id=head.control_id,
        message_type=kind,
        patient_id=patient_id,
        accession=_accession(message),
        measurements=tuple(measurements),
    )


def _clean(text: str) -> str:
    """Text for an HL7 field: no delimiters, no segment breaks."""
    return re.sub(r"[|^~\\&\r\n]", " ", text)[:200]


def ack(head: Header, code: str, reason: str = "", error_code: str = "", now: float | None = None) -> str:
    """The ACK for a message: MSA with ``code`` (AA, AE, AR), MSA-3 and an ERR segment with the
    reason (HL7 table 0357 code in ERR-3) when it is refused. Segments separated by CR."""
    stamp = dt.datetime.fromtimestamp(now if now is not None else dt.datetime.now().timestamp())
    when = stamp.strftime("%Y%m%d%H%M%S")
    control = f"ACK{when}{head.control_id}"[:20]
    segments = [
        f"MSH|^~\\&|BODYCOMP||{_clean(head.sending_application)}|{_clean(head.sending_facility)}|{when}||"
        f"ACK^{_clean(head.trigger)}^ACK|{_clean(control)}|P|{_clean(head.version)}",
        f"MSA|{code}|{_clean(head.control_id)}" + (f"|{_clean(reason)}" if reason else ""),
    ]
    if code != "AA":
        # ERR-3 the HL7 error code (table 0357), ERR-4 severity E, ERR-8 the reason for a person
        segments.append(f"ERR|||{error_code}^{_clean(reason)[:60]}^HL70357|E||||{_clean(reason)}")
    return "\r".join(segments)
