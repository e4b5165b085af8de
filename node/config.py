"""One settings object for the whole product: defaults < TOML file < environment < command line.

* TOML file: ``--config PATH`` or ``BODYCOMP_CONFIG``; sections are the attribute names of
  :class:`Settings` (``[node]``, ``[selection]``, ``[stack]``, ``[analysis]``), keys their fields.
* Environment: ``BODYCOMP_<SECTION>__<KEY>`` (double underscore), e.g.
  ``BODYCOMP_STACK__MAX_GAP_MM=20``; and, for the node's command-line flags, the flat
  ``BODYCOMP_<FLAG>`` form of the command-line contract (``BODYCOMP_STABLE_SECONDS=10``,
  ``BODYCOMP_BROKER_URL=redis://…``, ``BODYCOMP_DATA_DIR=/srv/bodycomp``,
  ``BODYCOMP_DESTINATION=PACS@10.0.0.5:104,ARCHIVE@10.0.0.6:11112``): a flat name is a key of
  ``[node]`` (or one of :data:`NODE_ALIASES`). When both forms name the same key, the sectioned
  form wins (it is the more specific).
* Command-line flags override both (each subcommand maps its flags onto the same fields).

Unknown sections or keys are errors, not silently ignored: a typo in a hospital's config must not
fall back to a default without anyone noticing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.load.selection import SelectionPolicy
from workers.load.stack import StackPolicy

ENV_PREFIX = "BODYCOMP_"
ENV_CONFIG = "BODYCOMP_CONFIG"
#: Not a setting: arms a crash of the process for the crash tests (:mod:`node.receive.failpoints`).
ENV_FAILPOINT = "BODYCOMP_FAILPOINT"


class ConfigError(ValueError):
    """A configuration value or key that cannot be used."""


log = logging.getLogger("bodycomp.config")


@dataclass(frozen=True)
class AnalysisSettings:
    """Which engines, presets and rule sets an analysis uses."""

    localiser: str = "classical"
    segmenter: str = "classical"
    preset: str = "tomovision-l3@1"
    rule_set: str = "martin2013@1"
    slices: int = 1


@dataclass(frozen=True)
class NodeSettings:
    """The DICOM node: who it is, where it keeps data, whom it trusts, where results go.

    Field names are the long command-line flags of ``bodycomp serve`` with ``_`` for ``-``, so
    ``--stable-seconds``, ``BODYCOMP_STABLE_SECONDS`` and ``[node] stable_seconds`` are one
    setting.
    """

    ae_title: str = "BODYCOMP"
    host: str = "127.0.0.1"
    port: int = 11112
    data_dir: Path = Path("var")
    """Holds ``spool/`` (received instances), ``index.sqlite``, ``results/`` and the embedded broker."""
    stream_to_disk: bool = True
    """Receive each dataset into a temporary file (pynetdicom's ``STORE_RECV_CHUNKED_DATASET``)
    instead of memory: bounded memory for large multi-frame instances and many associations."""
    min_free_mb: int = 512
    """Refuse C-STORE with 0xA700 (out of resources) below this much free space in the spool."""
    allow_ae: tuple[str, ...] = ()
    """Calling AE titles allowed to associate; empty: any."""
    check_host: bool = False
    """Also require a calling AE listed in ``destinations`` to connect from that host."""
    require_called_ae: bool = True
    max_inflated_mb: int = 256
    """A Deflated Explicit VR Little Endian instance that inflates beyond this is refused (0xA700)
    before the memory is spent: deflate shrinks zeros a thousandfold (a 1 MB upload of 1 GiB).
    Stored instances are held to it again when their study is planned."""
    max_associations: int = 16
    """Associations served at once; one more is rejected (A-ASSOCIATE-RJ transient, "local limit
    exceeded") so the sender retries later. Each costs two threads and, while a C-STORE arrives,
    at most one PDU (1 MiB) in memory: 16 takes a busy PACS' parallel sends on two cores."""
    event_driven: bool = True
    """Serve associations with :mod:`node.receive.reactor`'s loops, which wait for data instead of
    pynetdicom's 1 ms polling (~2 × the receive rate of a bare SCP); false: pynetdicom's own."""
    receivers: int = 1
    """Processes receiving on the DICOM port (Linux ``SO_REUSEPORT``: the kernel spreads
    associations over them). One Python process executes on one core at a time; several let
    concurrent associations use several cores (docs/benchmarks.md). ``max_associations`` holds
    per process. 1: the node process alone, as before."""
    network_timeout: float = 120.0
    """Seconds a connection may stay silent, and the most one PDU may take to arrive, before the
    node drops it (a stalled or trickling peer cannot hold a slot); also bounds association
    negotiation (at most 30 s)."""
    stable_seconds: float = 30.0
    """A study is complete after this long without a new instance (association release is a hint)."""
    destinations: tuple[str, ...] = ()
    """``AE@HOST:PORT`` of the PACS that receive results; empty: results stay in the data directory."""
    return_to_sender: bool = True
    """Send results only to the AE that sent the study when it is a destination; else to all."""
    all_series: bool = False
    """Analyse every eligible CT series of a study instead of the one the selection rules choose."""
    keep_ignored: bool = True
    """Keep instances of studies that cannot be analysed (non-CT, reports) in the spool."""
    broker_url: str = ""
    """Celery broker; empty: the embedded SQLite broker in the data directory (no server needed)."""
    queue: str = "bodycomp.analyses"
    """Celery queue name: give each node its own when several share one Redis or RabbitMQ."""
    embedded_workers: int | None = None
    """Worker processes ``serve`` starts itself; default 1 with the embedded broker, else 0."""
    concurrency: int = 1
    """Analyses at once per worker process (each in its own child process)."""
    jobs_per_sender: int = 0
    """Analyses of one calling AE in the broker or running at once; the others wait in the index
    and are published in turns with other senders' (:mod:`node.schedule.fairness`), so a flood from one
    sender delays only that sender. 0: twice the analyses the node's own workers run at once
    (``embedded_workers`` × ``concurrency``, at least 2); with external workers, set it to at
    least the analyses they run at once, or the workers idle while one sender's jobs wait."""
    max_tasks_per_child: int = 1
    """Recycle a worker child after this many analyses, releasing its memory."""
    task_time_limit: int = 1800
    """Seconds after which an analysis is killed and the job fails (soft limit 60 s earlier)."""
    max_retries: int = 2
    """Retries of an analysis after an unexpected error or a lost worker, then failed."""
    send_retry_seconds: float = 10.0
    """First delay before resending a result; doubles on each failure up to ``send_retry_max_seconds``."""
    send_retry_max_seconds: float = 600.0
    send_give_up_hours: float = 72.0
    """An undelivered result is dead-lettered after this long (visible in ``bodycomp status``)."""
    metrics_port: int | None = None
    """Port of the HTTP endpoint with ``/healthz`` and ``/metrics`` (Prometheus); None: off."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds to (loopback unless a scraper on another host needs it)."""
    tls_cert: Path | None = None
    """PEM certificate (chain) of this node. Set (with ``tls_key``), the listener speaks DICOM TLS
    only, never plaintext, and the node presents it as its client certificate to ``+tls``
    destinations. Unset: plaintext listener (keep it on a trusted segment)."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert`` (unencrypted: the service starts unattended; mode 0600)."""
    tls_ca: Path | None = None
    """PEM CA bundle trusted for client certificates (``tls_verify_client``) and for the
    certificates of ``+tls`` destinations; unset: the system's trust store for destinations."""
    tls_crl: Path | None = None
    """PEM file of certificate revocation lists, one per CA of ``tls_ca`` (or of the destinations'
    CAs): a caller's certificate (``tls_verify_client``) or a destination's certificate listed
    there is refused. Set, it is strict, as OpenSSL's leaf check is: a certificate whose CA has no
    CRL in the file, or whose CRL is past its next update, is refused too; keep it current. Read
    by the listener at start (restart after renewing it), for destinations on every round."""
    tls_verify_client: bool = False
    """Require every caller to present a certificate signed by ``tls_ca`` (mutual TLS); without
    it, TLS encrypts and authenticates the node but callers are identified by AE title only."""
    tls_check_hostname: bool = True
    """A ``+tls`` destination's certificate must name its HOST (DNS or IP subject alternative
    name); turn off only for a PACS whose certificate does not, and rely on ``tls_ca`` then."""
    hl7_port: int | None = None
    """Port of the HL7 v2 listener (MLLP) that takes height and weight from ADT^A08/A31 and
    ORM^O01/OMI^O23 messages (:mod:`node.hl7.listener`); None: off."""
    hl7_host: str = "127.0.0.1"
    """Address the HL7 listener binds to (loopback unless the interface engine is on another host)."""
    hl7_max_age_days: float = 365.0
    """A height or weight observed (OBX-14) longer than this before receipt is refused, and one
    observed longer than this before or after a study's date is not used for that study."""
    hl7_destinations: tuple[str, ...] = ()
    """``HOST:PORT`` of the HL7 v2 receivers (MLLP) that get an ORU^R01 per analysed study."""
    site_table: Path | None = None
    """CSV of heights and weights (the columns of ``bodycomp batch --heights``), re-read when it
    changes; used where the header and the HL7 feed have no value."""
    site_table_key: str = "patient_id"
    """Which column of ``site_table`` identifies a study: ``patient_id`` or ``accession_number``."""

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def effective_broker_url(self) -> str:
        """The broker URL, with the embedded default resolved to an absolute SQLite path."""
        return self.broker_url or f"sqla+sqlite:///{(self.data_dir / 'broker.sqlite').resolve()}"

    @property
    def broker_is_embedded(self) -> bool:
        return not self.broker_url or self.broker_url.startswith("sqla+sqlite:")

    def destination_list(self) -> list[Destination]:
        return [parse_destination(text) for text in self.destinations]

    @property
    def workers_to_start(self) -> int:
        if self.embedded_workers is not None:
            return self.embedded_workers
        return 1 if self.broker_is_embedded else 0

    @property
    def effective_jobs_per_sender(self) -> int:
        """``jobs_per_sender``, or its default: twice the node's own analysis slots, at least 2."""
        if self.jobs_per_sender:
            return self.jobs_per_sender
        return max(2, 2 * self.workers_to_start * self.concurrency)


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to (like an entry of Orthanc's ``DicomModalities``)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    """Deliver over DICOM TLS (written ``AE@HOST:PORT+tls``, as DCMTK's ``+tls`` flag); never
    falls back to plaintext."""

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}{TLS_SUFFIX if self.tls else ''}"


#: Suffix of a destination reached over DICOM TLS: ``PACS@10.0.0.5:2762+tls``.
TLS_SUFFIX = "+tls"


def parse_destination(text: str) -> Destination:
    """Parse ``AE@HOST:PORT`` or ``AE@HOST:PORT+tls`` (IPv6 hosts in brackets: ``AE@[::1]:104``)."""
    text = text.strip()
    tls = text.lower().endswith(TLS_SUFFIX)
    if tls:
        text = text[: -len(TLS_SUFFIX)]
    ae, sep, address = text.strip().partition("@")
    host, colon, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not colon or not ae or not host or not port.isdigit():
        raise ConfigError(f"destination {text!r} is not AE@HOST:PORT")
    if len(ae) > 16 or "\\" in ae or not all(" " <= c <= "~" for c in ae):
        raise ConfigError(
            f"destination {text!r}: an AE title has at most 16 printable ASCII characters and no backslash"
        )
    if not 0 < int(port) < 65536:
        raise ConfigError(f"destination {text!r}: port out of range")
    return Destination(ae, host, int(port), tls)


def parse_hl7_destination(text: str) -> tuple[str, int]:
    """Parse an HL7 destination ``HOST:PORT`` (IPv6 hosts in brackets: ``[::1]:2575``)."""
    host, colon, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"HL7 destination {text!r} is not HOST:PORT")
    return host, int(port)


#: Flat ``BODYCOMP_<FLAG>`` names whose flag differs from the ``[node]`` key (repeated flags).
NODE_ALIASES = {"destination": "destinations"}


@dataclass(frozen=True)
class Settings:
    node: NodeSettings = field(default_factory=NodeSettings)
    selection: SelectionPolicy = field(default_factory=SelectionPolicy)
    stack: StackPolicy = field(default_factory=StackPolicy)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        return _coerce(value, non_none[0], where)
    if origin is tuple:
        return _coerce_tuple(value, args, where)
    scalar = _SCALARS.get(annotation)
    if scalar is None:
        raise ConfigError(f"{where}: unsupported setting type {annotation}")
    try:
        return scalar(value, where)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}"
        ) from exc


def _coerce_tuple(value: Any, args: tuple[Any, ...], where: str) -> tuple[Any, ...]:
    """A tuple setting: a TOML array or a comma-separated environment value; ``tuple[T, ...]``
    takes any number of items, ``tuple[A, B]`` exactly as many as it names."""
    items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0], where) for v in items)
    if len(items) != len(args):
        raise ConfigError(f"{where}: expected {len(args)} comma-separated values, got {value!r}")
    return tuple(_coerce(v, a, where) for v, a in zip(items, args, strict=True))


def _to_bool(value: Any, where: str) -> bool:
    """TOML's true/false, or the words an environment variable uses for them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _to_int(value: Any, where: str) -> int:
    if isinstance(value, bool):  # TOML true is not a count
        raise ValueError(value)
    return int(value)


def _to_float(value: Any, where: str) -> float:
    number = float(value)
    if not math.isfinite(number):  # nan and inf pass every range check: refuse them here
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return number


#: The scalar setting types and their converters (each raises ValueError or ConfigError).
_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: lambda value, where: str(value),
    Path: lambda value, where: Path(str(value)).expanduser(),
}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {f.name: hints[f.name] for f in dataclasses.fields(Settings)}


def _apply(settings: Settings, updates: Mapping[str, Mapping[str, Any]], source: str) -> Settings:
    sections = _section_types()
    changed: dict[str, Any] = {}
    for section_name, values in updates.items():
        if section_name not in sections:
            raise ConfigError(f"{source}: unknown section [{section_name}] (known: {', '.join(sections)})")
        cls = sections[section_name]
        hints = typing.get_type_hints(cls)
        current = changed.get(section_name, getattr(settings, section_name))
        kwargs = {}
        for key, raw in values.items():
            if section_name == "node":
                key = NODE_ALIASES.get(key, key)
            if key not in hints:
                raise ConfigError(f"{source}: unknown key {section_name}.{key} (known: {', '.join(hints)})")
            kwargs[key] = _coerce(raw, hints[key], f"{source}: {section_name}.{key}")
        changed[section_name] = dataclasses.replace(current, **kwargs)
    return dataclasses.replace(settings, **changed)


def _env_updates(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``BODYCOMP_<SECTION>__<KEY>`` and the flat ``BODYCOMP_<FLAG>`` (a ``[node]`` key)."""
    flat: dict[str, str] = {}
    sectioned: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (ENV_CONFIG, ENV_FAILPOINT):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if "__" in rest:
            section, key = rest.split("__", 1)
            sectioned.setdefault(section, {})[key] = value
        else:
            flat[NODE_ALIASES.get(rest, rest)] = value
    updates: dict[str, dict[str, str]] = {"node": flat} if flat else {}
    for section, values in sectioned.items():
        updates.setdefault(section, {}).update(values)
    return updates


def load_settings(
    config_path: str | Path | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, the TOML file, the environment and CLI overrides."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    path = config_path or environ.get(ENV_CONFIG)
    from_file: dict[str, Any] = {}
    if path:
        try:
            with Path(path).open("rb") as handle:
                from_file = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        settings = _apply(settings, from_file, str(path))
    from_environment = _env_updates(environ)
    for section, values in from_environment.items():
        for key in sorted(set(values) & set(from_file.get(section) or {})):
            # one place for each setting: a value in both is a trap (an example env file's
            # placeholder destination silently replaced the TOML's real one), so say which wins
            log.warning(
                "event=config_overridden setting=%s.%s file=%s (the environment's value is used)",
                section,
                key,
                path,
            )
    settings = _apply(settings, from_environment, "environment")
    if overrides:
        cleaned = {s: {k: v for k, v in vals.items() if v is not None} for s, vals in overrides.items()}
        settings = _apply(settings, {s: v for s, v in cleaned.items() if v}, "command line")
    validate(settings)
    return settings


#: The range each numeric setting must lie in, inclusive (``None``: unbounded), by section. A value
#: outside is refused when the settings are loaded: a zero timeout, a negative retry delay or a
#: disk reserve below zero would not stop the node, they would break it quietly.
BOUNDS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "node": {
        "port": (0, 65535),  # 0: a port the system chooses (logged in event=listening)
        "metrics_port": (1, 65535),
        "min_free_mb": (0, None),
        "max_inflated_mb": (1, 65536),
        "max_associations": (1, 1024),
        "receivers": (1, 64),
        "network_timeout": (1, 86400),
        "stable_seconds": (0, 86400),
        "embedded_workers": (0, 64),
        "concurrency": (1, 64),
        "jobs_per_sender": (0, 10000),
        "max_tasks_per_child": (1, None),
        "task_time_limit": (2, None),  # (the soft limit ends an analysis earlier: at least 1 s)
        "max_retries": (0, 100),
        "send_retry_seconds": (0.1, 86400),
        "send_retry_max_seconds": (0.1, 30 * 86400),
        "send_give_up_hours": (0.01, 24 * 365),
        "hl7_port": (0, 65535),
        "hl7_max_age_days": (1, 36500),
    },
    "selection": {"min_slices": (1, None), "max_axial_angle_deg": (0, 90)},
    "stack": {
        "max_missing_slices": (0, None),
        "max_gap_mm": (0, None),
        "max_tilt_deg": (0, 90),
        "uneven_tolerance": (0, None),
        "position_tolerance_mm": (0, None),
    },
    "analysis": {"slices": (1, 99)},
}


def check_ae_title(title: str, where: str) -> str:
    """An AE title as DICOM allows it: 1-16 printable ASCII characters, no backslash, not blank."""
    if (
        not 0 < len(title) <= 16
        or not title.strip()
        or "\\" in title
        or not all(" " <= c <= "~" for c in title)
    ):
        raise ConfigError(
            f"{where}: {title!r} is not an AE title (1-16 printable ASCII characters, no backslash)"
        )
    return title


def validate(settings: Settings) -> None:
    """Refuse settings the node cannot run with (each with the one line that says why)."""
    for section, bounds in BOUNDS.items():
        values = getattr(settings, section)
        for name, (lo, hi) in bounds.items():
            value = getattr(values, name)
            if value is None:
                continue
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                allowed = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
                raise ConfigError(f"{section}.{name} = {value} is out of range (it must be {allowed})")
    node = settings.node
    if node.send_retry_max_seconds < node.send_retry_seconds:
        raise ConfigError("node.send_retry_max_seconds must not be below node.send_retry_seconds")
    if node.port == 0 and node.receivers > 1:
        raise ConfigError("node.port 0 (any free port) needs receivers = 1: each receiver would get its own")
    check_ae_title(node.ae_title, "node.ae_title")
    for title in node.allow_ae:
        check_ae_title(title, "node.allow_ae")
    for text in node.destinations:
        parse_destination(text)
    if (node.tls_cert is None) != (node.tls_key is None):
        raise ConfigError("node.tls_cert and node.tls_key go together (the certificate and its key)")
    if node.tls_verify_client and (node.tls_cert is None or node.tls_ca is None):
        raise ConfigError("node.tls_verify_client needs tls_cert, tls_key (the listener's) and tls_ca")
    for text in node.hl7_destinations:
        parse_hl7_destination(text)
    if node.hl7_port is not None and node.hl7_port != 0 and node.hl7_port == node.port:
        raise ConfigError("node.hl7_port must differ from node.port (the DICOM port)")
    if node.site_table_key not in ("patient_id", "accession_number"):
        raise ConfigError("node.site_table_key must be patient_id or accession_number")
