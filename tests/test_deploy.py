"""deploy/systemd and deploy/compose, checked with the real tools where this machine has them.

* systemd units: ``systemd-analyze verify`` (offline: it needs no running systemd) on the units
  with ExecStart pointed at this checkout's ``bodycomp``, plus ``systemd-analyze security
  --offline`` for the hardening; the example settings files load without a configuration error.
* Compose: ``docker compose config`` (plugin v2) or, where only Debian's ``docker-compose`` v1 is
  installed, ``docker-compose config`` — both validate and interpolate the file without a Docker
  engine (none runs here, so nothing is built or started); the node's environment in it loads as
  bodycomp settings.
* Dockerfile: its HEALTHCHECK command is run, as Docker would run it, against a real
  ``bodycomp serve --metrics-port`` (exit 0 when healthy, 1 when /healthz says 503).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.config import load_settings
from tests.test_node_support import BODYCOMP, free_port, start_node

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "deploy" / "systemd"
COMPOSE = REPO / "deploy" / "compose"
UNITS = ("bodycomp.service", "bodycomp-worker@.service", "bodycomp-workers.target")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit (all sections; repeated keys kept in order)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile / .env: ``KEY=value`` lines, comments ignored."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


@pytest.fixture()
def installed_units(tmp_path: Path) -> Path:
    """The units as installed, with ExecStart pointing at this checkout's bodycomp."""
    for name in UNITS:
        text = (SYSTEMD / name).read_text().replace("/opt/bodycomp/.venv/bin/bodycomp", BODYCOMP)
        (tmp_path / name).write_text(text)
    return tmp_path


def systemd_analyze() -> str:
    """The tool, or a failure (a missing tool fails the test, it never skips it)."""
    if SYSTEMD_ANALYZE is None:
        pytest.fail("systemd-analyze is not installed (Debian package systemd; scripts/test.sh installs it)")
    return SYSTEMD_ANALYZE


def verify(folder: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *units],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_systemd_analyze_verify_accepts_the_units(installed_units: Path) -> None:
    run = verify(installed_units, "bodycomp.service", "bodycomp-worker@1.service", "bodycomp-workers.target")
    assert run.returncode == 0 and run.stderr.strip() == "", run.stderr
    # The check is real: a typo in a unit is reported.
    broken = installed_units / "bodycomp.service"
    broken.write_text(broken.read_text().replace("PrivateTmp=yes", "PrivateTmp=yes\nProtectSytem=strict"))
    run = verify(installed_units, "bodycomp.service")
    assert "Unknown key 'ProtectSytem'" in run.stderr, run.stderr


@pytest.mark.parametrize("unit", ["bodycomp.service", "bodycomp-worker@1.service"])
def test_systemd_hardening_exposure_is_low(installed_units: Path, unit: str) -> None:
    run = subprocess.run(
        [systemd_analyze(), "security", "--offline=yes", "--no-pager", str(installed_units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", run.stdout)
    assert match, run.stdout + run.stderr
    assert float(match.group(1)) < 4.0, run.stdout  # systemd rates < 4.5 "OK"; a default unit is 9.x


@pytest.mark.parametrize("name", ["bodycomp.service", "bodycomp-worker@.service"])
def test_units_have_the_expected_policy(name: str) -> None:
    unit = unit_settings(SYSTEMD / name)
    for key, value in {
        "User": "bodycomp",
        "Group": "bodycomp",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/srv/bodycomp",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "EnvironmentFile": "-/etc/bodycomp/bodycomp.env",  # optional: settings live in the TOML
    }.items():
        assert unit.get(key) == [value], (key, unit.get(key))
    command = unit["ExecStart"][0].split()
    assert command[0] == "/opt/bodycomp/.venv/bin/bodycomp"
    assert command[1] == ("serve" if name == "bodycomp.service" else "worker")
    assert "CapabilityBoundingSet" in unit
    if name == "bodycomp.service":  # binding port 104
        assert unit["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
        assert unit["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    else:
        assert unit["CapabilityBoundingSet"] == [""]


def test_example_settings_files_are_valid_bodycomp_settings(caplog: pytest.LogCaptureFixture) -> None:
    """The EnvironmentFile and TOML examples load (unknown keys would be errors), and every
    setting has one place: the environment file's placeholder destination once silently replaced
    the TOML's (#24), so it sets no BODYCOMP_* variable at all."""
    env = env_file(SYSTEMD / "bodycomp.env.example")
    assert not [name for name in env if name.startswith("BODYCOMP_")], env
    with caplog.at_level(logging.WARNING, logger="bodycomp.config"):
        settings = load_settings(SYSTEMD / "bodycomp.toml.example", environ=env)
    assert "config_overridden" not in caplog.text
    node = settings.node
    assert str(node.data_dir) == "/srv/bodycomp" and node.host == "0.0.0.0"
    assert node.metrics_port == 9464 and node.metrics_host == "127.0.0.1"
    assert [str(d) for d in node.destination_list()] == ["PACS@10.0.0.5:104"]
    assert node.allow_ae == ("PACS",) and node.broker_is_embedded


def test_an_environment_variable_overriding_the_file_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "bodycomp.toml"
    config.write_text('[node]\ndestinations = ["PACS@10.1.1.1:104"]\nport = 104\n')
    with caplog.at_level(logging.WARNING, logger="bodycomp.config"):
        node = load_settings(config, environ={"BODYCOMP_DESTINATION": "OTHER@10.0.0.5:104"}).node
    assert node.destinations == ("OTHER@10.0.0.5:104",), "the environment wins, as documented"
    [line] = [r.getMessage() for r in caplog.records if "config_overridden" in r.getMessage()]
    assert "setting=node.destinations" in line and str(config) in line


# -- compose -------------------------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) if it runs, else Debian's ``docker-compose`` (v1)."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


COMPOSE_CMD = compose_command()


def yaml_to_json(text: str) -> Any:
    """Compose prints YAML; the system Python has PyYAML (a docker-compose dependency)."""
    run = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if run.returncode != 0:
        pytest.fail(
            "no PyYAML in /usr/bin/python3 to read compose's output (Debian package python3-yaml, a "
            f"docker-compose dependency): {run.stderr.strip()[-200:]}"
        )
    return json.loads(run.stdout)


def compose_config(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if COMPOSE_CMD is None:
        pytest.fail(
            "neither `docker compose` nor `docker-compose` is installed "
            "(Debian package docker-compose; scripts/test.sh installs it)"
        )
    env_path = tmp_path / "compose.env"
    env_path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        [
            *COMPOSE_CMD,
            "--project-directory",
            str(COMPOSE),
            "-f",
            str(COMPOSE / "docker-compose.yml"),
            "--env-file",
            str(env_path),
            "config",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(tmp_path)},
    )


def test_docker_compose_config_validates_the_stack(tmp_path: Path) -> None:
    run = compose_config(tmp_path, env_file(COMPOSE / "example.env"))
    assert run.returncode == 0, run.stderr
    config = yaml_to_json(run.stdout)
    services = config["services"]
    assert set(services) == {"node", "worker", "rabbitmq", "orthanc", "flower"}
    node, worker = services["node"], services["worker"]
    for service in (node, worker):
        assert service["build"]["dockerfile"] == "deploy/compose/Dockerfile"
        assert Path(service["build"]["context"]).resolve() == REPO
        assert any(str(v).startswith("bodycomp-data:/srv/bodycomp") or _volume(v) for v in service["volumes"])
        assert service["depends_on"]["rabbitmq"]["condition"] == "service_healthy"
    assert node["command"] == ["serve"] and worker["command"] == ["worker"]
    assert str(worker["deploy"]["replicas"]) == "2"
    # ``disable: true``; compose v1 prints it normalised as ``test: [NONE]``.
    assert worker["healthcheck"].get("disable") is True or worker["healthcheck"].get("test") == ["NONE"]
    # The node's environment is a valid bodycomp configuration, with the external broker.
    settings = load_settings(environ={k: str(v) for k, v in node["environment"].items()}).node
    assert settings.broker_url == "amqp://bodycomp:change-me@rabbitmq:5672//"
    assert settings.workers_to_start == 0 and settings.metrics_port == 9464
    assert [str(d) for d in settings.destination_list()] == ["ORTHANC@orthanc:4242"]
    load_settings(environ={k: str(v) for k, v in worker["environment"].items()})
    # Orthanc gets the repository's routing script and a config that routes to the node.
    mounts = [
        str(v) if isinstance(v, str) else f"{v['source']}:{v['target']}"
        for v in services["orthanc"]["volumes"]
    ]
    lua = next(
        m for m in mounts if m.endswith("/etc/orthanc/route-to-bodycomp.lua") or "route-to-bodycomp.lua:" in m
    )
    assert Path(lua.split(":")[0]).resolve() == REPO / "deploy" / "orthanc" / "route-to-bodycomp.lua"
    orthanc_config = (COMPOSE / "orthanc" / "orthanc.json").read_text()
    assert '"bodycomp": [ "BODYCOMP", "node", 11112 ]' in orthanc_config
    assert "/etc/orthanc/route-to-bodycomp.lua" in orthanc_config


def _volume(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("source") == "bodycomp-data"
        and value["target"] == "/srv/bodycomp"
    )


def test_compose_refuses_to_start_without_passwords(tmp_path: Path) -> None:
    env = env_file(COMPOSE / "example.env")
    del env["RABBITMQ_PASSWORD"]
    run = compose_config(tmp_path, env)
    assert run.returncode != 0 and "RABBITMQ_PASSWORD" in run.stderr, run.stderr


# -- Dockerfile --------------------------------------------------------------------------------------


def dockerfile() -> str:
    return (COMPOSE / "Dockerfile").read_text()


def healthcheck_command() -> list[str]:
    match = re.search(r"HEALTHCHECK [^\n]*\\\n\s*CMD (\[.*\])", dockerfile())
    assert match, "HEALTHCHECK ... CMD [exec form] expected"
    return list(json.loads(match.group(1)))


def test_dockerfile_slim_non_root_and_copies_only_existing_paths() -> None:
    text = dockerfile()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and not users[-1].startswith(("root", "0"))
    last_user = text.rindex("\nUSER ")
    assert text.index("ENTRYPOINT") > last_user and text.index("HEALTHCHECK") > last_user
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO / source).exists(), source
    assert "/healthz" in " ".join(healthcheck_command())
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text()
    assert "!node/" in ignore and "!workers/" in ignore


@pytest.mark.network
@pytest.mark.slow
def test_dockerfile_healthcheck_command_against_a_real_node(tmp_path: Path) -> None:
    command = healthcheck_command()
    assert command[0] == "python"
    command[0] = sys.executable
    for min_free_mb, expected in (("512", 0), (str(1 << 40), 1)):
        port = free_port()
        node = start_node(
            tmp_path / f"data-{expected}",
            "--metrics-port",
            str(port),
            env={"BODYCOMP_MIN_FREE_MB": min_free_mb},
            log_name=f"serve-{expected}.log",
        )
        try:
            run = subprocess.run(
                command, capture_output=True, text=True, timeout=30, env={"BODYCOMP_METRICS_PORT": str(port)}
            )
            assert run.returncode == expected, run.stderr
            if expected:
                assert "503" in run.stderr
        finally:
            assert node.stop() == 0, node.text()[-2000:]
