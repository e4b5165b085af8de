"""DICOM TLS (PS3.15 Annex B, BCP 195): the SSL contexts of the listener and of ``+tls`` destinations.

Why a module of its own: both directions must agree on one policy a hospital's security team can
read in one place: TLS 1.2 or newer only, the node's certificate and key from ``tls_cert`` and
``tls_key``, the CA bundle ``tls_ca`` and its revocation lists ``tls_crl``, optional
client-certificate verification (``tls_verify_client``) and host-name verification of
destinations (``tls_check_hostname``).

* **Listener.** With ``tls_cert`` set, :func:`server_context` wraps every accepted connection: the
  SCP speaks TLS only, a plaintext association fails its handshake and nothing is stored.
  pynetdicom wraps a connection in its accept loop; with the handshake done there, one caller that
  connects and stays silent would stop the whole listener from accepting anyone. So the context
  defers the handshake (:class:`DeferredHandshakeContext`) and :func:`handshake`, bound to
  ``EVT_CONN_OPEN``, runs it in the association's own thread with a time limit.
* **Destinations.** :func:`client_context` verifies the destination's certificate against
  ``tls_ca`` (or the system trust store) and its host name, and presents ``tls_cert`` as the
  client certificate when the node has one. There is no fallback to plaintext: a failed
  handshake fails the delivery attempt, with the TLS reason, and the outbox retries it.

Contexts are built from the files on every call (the listener at start, destinations on every
delivery round), so a renewed destination-side certificate or CA needs no restart; a renewed
listener certificate takes effect at the next (safe) restart.
"""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path
from typing import Any

from node.config import ConfigError, NodeSettings

log = logging.getLogger("bodycomp.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: Seconds a caller has to complete the TLS handshake (as the ACSE timeout for the association).
HANDSHAKE_TIMEOUT = 30.0


class DeferredHandshakeContext(ssl.SSLContext):
    """A server context whose sockets handshake later, in :func:`handshake`, not in ``accept``."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if kwargs.get("server_side"):
            kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


class RecordingSSLSocket(ssl.SSLSocket):
    """Keeps the handshake error on its context: pynetdicom only logs it, the outbox shows it."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except (ssl.SSLError, OSError) as exc:
            if isinstance(self.context, ClientContext):
                self.context.handshake_error = describe(exc)
            raise


class ClientContext(ssl.SSLContext):
    """A destination's context; ``handshake_error`` says why the last handshake failed."""

    sslsocket_class = RecordingSSLSocket
    handshake_error: str = ""


def describe(exc: BaseException) -> str:
    """A short, operator-readable reason (OpenSSL's reason code when there is one)."""
    if isinstance(exc, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError)):
        return "connection closed during the TLS handshake (a plaintext-only peer?)"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{exc.reason} ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "TLS handshake timed out"
    return f"{type(exc).__name__}: {exc}"


def _readable(path: Path | None, what: str) -> str:
    if path is None:
        raise ConfigError(f"node.{what} is not set")
    if not path.is_file():
        raise ConfigError(f"node.{what}: {path} is not a readable file")
    return str(path)


def _load_identity(context: ssl.SSLContext, settings: NodeSettings) -> None:
    cert = _readable(settings.tls_cert, "tls_cert")
    key = _readable(settings.tls_key, "tls_key")
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"node.tls_cert/tls_key ({cert}, {key}): {describe(exc)}") from exc


def _load_ca(context: ssl.SSLContext, settings: NodeSettings) -> None:
    ca = _readable(settings.tls_ca, "tls_ca")
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"node.tls_ca ({ca}): {describe(exc)}") from exc


def _load_crl(context: ssl.SSLContext, settings: NodeSettings) -> None:
    """With ``tls_crl``: load the CRLs and check every peer (leaf) certificate against them."""
    if settings.tls_crl is None:
        return
    crl = _readable(settings.tls_crl, "tls_crl")
    try:
        context.load_verify_locations(cafile=crl)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"node.tls_crl ({crl}): {describe(exc)}") from exc
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def listener_uses_tls(settings: NodeSettings) -> bool:
    return settings.tls_cert is not None


def server_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """The listener's context, or None for a plaintext listener (no ``tls_cert``).

    Raises :class:`ConfigError` when a file is missing or unusable, so ``serve`` stops at once with
    exit code 2 instead of listening without the protection the configuration asked for.
    """
    if not listener_uses_tls(settings):
        return None
    context = DeferredHandshakeContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    _load_identity(context, settings)
    if settings.tls_verify_client:
        _load_ca(context, settings)
        _load_crl(context, settings)
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(settings: NodeSettings) -> ClientContext:
    """A context for one association to a ``+tls`` destination (verifies it; presents ours)."""
    context = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.options |= ssl.OP_NO_COMPRESSION
    context.check_hostname = settings.tls_check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.tls_ca is not None:
        _load_ca(context, settings)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    _load_crl(context, settings)
    if settings.tls_cert is not None:
        _load_identity(context, settings)
    return context


def _peer_name(sock: ssl.SSLSocket) -> str:
    """The common name of the caller's certificate (verified), or ``-`` without one."""
    cert: dict[str, Any] = dict(sock.getpeercert() or {})
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "-"


def handshake(event: Any) -> None:
    """``EVT_CONN_OPEN`` handler of a TLS listener: the handshake, in the association's thread.

    On failure (a plaintext caller, no or an untrusted client certificate, an old TLS version, a
    silent caller) the connection is closed before any DICOM is read, with one log line saying why.
    """
    sock = event.assoc.dul.socket.socket
    address = event.address[0] if event.address else "?"
    if not isinstance(sock, ssl.SSLSocket):
        return
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.do_handshake()
        sock.settimeout(None)
    except (ssl.SSLError, OSError) as exc:
        log.warning("event=tls_refused from=%s reason=%s", address, describe(exc))
        event.assoc.dul.socket.close()
        # pynetdicom would otherwise keep this association's thread (and one of the listener's
        # maximum associations) for the ACSE timeout, waiting for a request that cannot come:
        # ten refused callers would shut everyone out for 30 s.
        event.assoc.acse_timeout = 0
        return
    log.info(
        "event=tls_established from=%s version=%s cipher=%s peer=%s",
        address,
        sock.version(),
        (sock.cipher() or ("-",))[0],
        _peer_name(sock),
    )
