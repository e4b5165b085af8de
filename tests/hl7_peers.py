"""Real HL7 peers for the tests: python-hl7's ``mllp_send`` (an independent MLLP client, its
console script) and python-hl7's asyncio MLLP server (a real listener receiving ORU^R01).

No test functions here. Loopback only; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp

MLLP_SEND = str(Path(sys.executable).with_name("mllp_send"))


def mllp_send(port: int, message: str, tmp: Path) -> str:
    """Send ``message`` (segments separated by CR) with python-hl7's ``mllp_send``, from a text
    file with one segment a line (``--loose``) as an interface analyst would write it; return its
    output (the ACK it received)."""
    tmp.write_bytes("\r\n".join(message.split("\r")).encode("utf-8") + b"\r\n")
    run = subprocess.run(
        [MLLP_SEND, "--loose", "--file", str(tmp), "--port", str(port), "127.0.0.1"],
        capture_output=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return run.stdout.decode("utf-8", errors="replace")


def ack_fields(output: str) -> tuple[str, str, str]:
    """(MSA-1, MSA-2, MSA-3) of the ACK in ``mllp_send``'s output."""
    message = hl7.parse(output.strip().replace("\n", "\r"))
    msa = message.segment("MSA")
    fields = [str(f) for f in msa] + ["", "", "", ""]
    return fields[1], fields[2], fields[3]


def body_message(
    control_id: str,
    patient_id: str,
    *,
    kind: str = "ADT^A08^ADT_A01",
    height: tuple[str, str] | None = ("180", "cm"),
    weight: tuple[str, str] | None = ("81", "kg"),
    observed: str = "",
    accession: str = "",
    sent: str = "",
) -> str:
    """An ADT or order message with body height/weight OBX (LOINC 8302-2, 29463-7); MSH-7 (the
    observation time when OBX-14 is empty) ``sent``, default now."""
    sent = sent or time.strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|EHR|HOSP|BODYCOMP|RAD|{sent}||{kind}|{control_id}|P|2.5.1",
        f"PID|1||{patient_id}^^^HOSP^MR||Test^Patient||19600101|M",
    ]
    if accession:
        segments.append(f"ORC|NW|ORD1|{accession}")
        segments.append(f"OBR|1|ORD1|{accession}|CTABD^CT abdomen^L")
    number = 0
    for code, name, value in (("8302-2", "Body height", height), ("29463-7", "Body weight", weight)):
        if value is None:
            continue
        number += 1
        segments.append(f"OBX|{number}|NM|{code}^{name}^LN||{value[0]}|{value[1]}|||||F|||{observed}")
    return "\r".join(segments)


@dataclass
class OruReceiver:
    """Messages received by the listener (each parsed with python-hl7), answered ``AA``."""

    port: int = 0
    messages: list[hl7.Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[hl7.Message]:
        with self.lock:
            return list(self.messages)


@contextmanager
def oru_receiver(ack_code: str = "AA") -> Iterator[OruReceiver]:
    """python-hl7's MLLP server on a free loopback port, in a thread of its own, answering each
    message with python-hl7's ACK of code ``ack_code``."""
    receiver = OruReceiver()
    loop = asyncio.new_event_loop()

    async def client(reader: Any, writer: Any) -> None:
        try:
            while True:
                try:
                    message = await reader.readmessage()
                except asyncio.IncompleteReadError:
                    break
                with receiver.lock:
                    receiver.messages.append(message)
                writer.writemessage(message.create_ack(ack_code=ack_code))
                await writer.drain()
        finally:
            writer.close()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        hl7.mllp.start_hl7_server(client, host="127.0.0.1", port=0), loop
    ).result(timeout=10)
    receiver.port = int(server.sockets[0].getsockname()[1])
    try:
        yield receiver
    finally:

        async def close() -> None:
            server.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
