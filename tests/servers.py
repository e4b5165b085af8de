"""Private broker servers for fault tests: Redis and RabbitMQ on free loopback ports, stoppable.

Why private instances: the fault tests stop the broker for a minute while the node runs; doing
that to the machine's shared Redis (6379) or RabbitMQ (5672) would break everything else using
them. Each server here has its own port, its own data directory in a temporary folder and its own
process, and keeps queued messages across :meth:`stop` / :meth:`start`:

* Redis: ``appendonly yes`` + ``appendfsync always`` (every write is in the AOF before Redis
  answers), so messages published before the stop are there after the start;
* RabbitMQ: its own node name, AMQP and distribution ports, Mnesia and log directories, Erlang
  cookie (``HOME``), config file (no management plugin, nothing from ``/etc/rabbitmq``) and its own
  ``epmd`` on a private port; Celery's queues are durable and its messages persistent.

Every start and stop waits a bounded time and fails with the server's log when it is exceeded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from tests.timing import free_port, scaled

START_TIMEOUT = scaled(90.0)
STOP_TIMEOUT = scaled(60.0)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


class BrokerServer:
    """A broker process the test owns: :meth:`start`, :meth:`stop` (messages kept), :meth:`close`."""

    name = "broker"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / f"{self.name}.log"

    # Subclasses say how to run the server and check that it answers.
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def ready(self) -> bool:
        return port_open(self.port)

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        assert not self.running, f"{self.name} already running"
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                self.command(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C of pytest does not hit it before teardown
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}\n{_tail(self.log)}")
            if time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"{self.name} did not start within {timeout:.0f} s\n{_tail(self.log)}")
            time.sleep(0.2)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop cleanly (SIGTERM) and wait until the port is closed; queued messages stay on disk."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                self._kill()
                raise RuntimeError(
                    f"{self.name} did not stop within {timeout:.0f} s\n{_tail(self.log)}"
                ) from exc
        self.process = None
        deadline = time.monotonic() + timeout
        while port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}'s port {self.port} still open after the stop")
            time.sleep(0.2)

    def close(self) -> None:
        """Stop for good (teardown): never leaves a process behind."""
        try:
            self.stop()
        except RuntimeError:
            pass
        finally:
            self._kill()

    def _kill(self) -> None:
        """SIGKILL the server's process group (its own session: the server and its children only)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self.process = None

    def __enter__(self) -> BrokerServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class RedisServer(BrokerServer):
    """``redis-server`` on a free loopback port, every write fsync'd to its append-only file."""

    name = "redis"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def ready(self) -> bool:
        if not port_open(self.port):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class RabbitMQServer(BrokerServer):
    """A private RabbitMQ node (own name, ports, directories, cookie, epmd; no plugins)."""

    name = "rabbitmq"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.nodename = f"bctest{uuid.uuid4().hex[:8]}@localhost"
        self.epmd: subprocess.Popen[bytes] | None = None
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = true\n"
            "log.file = false\n"
            "disk_free_limit.absolute = 1MB\n"
        )
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq-env.conf").write_text("")

    @staticmethod
    def installed() -> bool:
        return Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists() or bool(shutil.which("rabbitmq-server"))

    def command(self) -> list[str]:
        # Debian's /usr/sbin wrapper switches to the system rabbitmq user and its /var/lib home:
        # run the real script, as the test's user, on the test's directories.
        direct = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
        return [str(direct) if direct.exists() else (shutil.which("rabbitmq-server") or "rabbitmq-server")]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.root / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.root / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_PID_FILE=str(self.root / "rabbitmq.pid"),
            RABBITMQ_SERVER_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
        )
        return env

    def _start_epmd(self) -> None:
        if self.epmd is not None and self.epmd.poll() is None:
            return
        binary = shutil.which("epmd") or "/usr/bin/epmd"
        with (self.root / "epmd.log").open("ab") as handle:
            self.epmd = subprocess.Popen(
                [binary, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + scaled(20)
        while not port_open(self.epmd_port):
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start\n{_tail(self.root / 'epmd.log')}")
            time.sleep(0.1)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        self._start_epmd()
        super().start(timeout)

    def ready(self) -> bool:
        """The AMQP handshake works (the port opens before the node accepts logins)."""
        if not port_open(self.port):
            return False
        from kombu import Connection

        try:
            with Connection(self.url, connect_timeout=3) as conn:
                conn.ensure_connection(max_retries=1)
                return True
        except Exception:
            return False

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.epmd is not None and self.epmd.poll() is None:
                self.epmd.terminate()
                try:
                    self.epmd.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.epmd.kill()
                    self.epmd.wait(timeout=10)
            self.epmd = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"


SERVERS: dict[str, type[BrokerServer]] = {"redis": RedisServer, "rabbitmq": RabbitMQServer}
