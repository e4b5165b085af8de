"""Settings: defaults < TOML file < BODYCOMP_* environment < command line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.config import ConfigError, load_settings


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.stack.max_missing_slices == 2
    assert settings.selection.preferred_spacing_mm == (1.0, 5.0)
    assert settings.analysis.rule_set == "martin2013@1"


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "bodycomp.toml"
    config.write_text(
        "[stack]\nmax_gap_mm = 20.0\nmax_tilt_deg = 10\n[selection]\npreferred_spacing_mm = [0.5, 3.0]\n"
    )
    env = {"BODYCOMP_STACK__MAX_TILT_DEG": "5", "BODYCOMP_SELECTION__ALLOW_DERIVED": "no"}
    settings = load_settings(config, environ=env)
    assert settings.stack.max_gap_mm == 20.0
    assert settings.stack.max_tilt_deg == 5.0
    assert settings.selection.allow_derived is False
    assert settings.selection.preferred_spacing_mm == (0.5, 3.0)
    settings = load_settings(config, {"stack": {"max_tilt_deg": 2.5}}, environ=env)
    assert settings.stack.max_tilt_deg == 2.5


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[analysis]\nrule_set = 'fujiwara2015@1'\n")
    assert load_settings(environ={"BODYCOMP_CONFIG": str(config)}).analysis.rule_set == "fujiwara2015@1"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[nodes]\nport = 1\n", {}, "unknown section [nodes]"),
        ("[stack]\nmax_gap = 1\n", {}, "unknown key stack.max_gap"),
        ("[stack]\nmax_gap_mm = 'wide'\n", {}, "is not a valid float"),
        ("", {"BODYCOMP_STACK__MAX_MISSING_SLICES": "two"}, "is not a valid int"),
        ("", {"BODYCOMP_SELECTION__ALLOW_DERIVED": "maybe"}, "is not a valid bool"),
        ("[stack\n", {}, "c.toml"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_settings(config, environ=env)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_node_settings_from_environment(tmp_path: Path) -> None:
    env = {
        "BODYCOMP_NODE__ALLOW_AE": "PACS, ORTHANC",
        "BODYCOMP_NODE__DATA_DIR": str(tmp_path / "data"),
        "BODYCOMP_NODE__PORT": "11113",
    }
    node = load_settings(environ=env).node
    assert node.allow_ae == ("PACS", "ORTHANC")
    assert node.spool_dir == tmp_path / "data" / "spool"
    assert node.index_path == tmp_path / "data" / "index.sqlite"
    assert node.port == 11113


def test_flat_environment_names_of_the_command_line_contract(tmp_path: Path) -> None:
    """``BODYCOMP_<FLAG>`` for every ``serve`` flag; the sectioned form wins when both are set."""
    env = {
        "BODYCOMP_DATA_DIR": str(tmp_path),
        "BODYCOMP_PORT": "4242",
        "BODYCOMP_AE_TITLE": "BC1",
        "BODYCOMP_STABLE_SECONDS": "7.5",
        "BODYCOMP_DESTINATION": "PACS@10.0.0.5:104, ARCHIVE@[::1]:11112",
        "BODYCOMP_ALLOW_AE": "PACS",
        "BODYCOMP_BROKER_URL": "redis://127.0.0.1:6379/0",
    }
    node = load_settings(environ=env).node
    assert node.data_dir == tmp_path and node.port == 4242 and node.ae_title == "BC1"
    assert node.stable_seconds == 7.5
    assert [str(d) for d in node.destination_list()] == ["PACS@10.0.0.5:104", "ARCHIVE@::1:11112"]
    assert node.allow_ae == ("PACS",)
    assert node.broker_url == "redis://127.0.0.1:6379/0" and not node.broker_is_embedded
    assert node.workers_to_start == 0
    both = load_settings(environ={"BODYCOMP_PORT": "1", "BODYCOMP_NODE__PORT": "2"}).node
    assert both.port == 2


def test_node_defaults_need_no_server() -> None:
    node = load_settings(environ={}).node
    assert node.stable_seconds == 30.0 and node.destinations == ()
    assert node.broker_is_embedded and node.workers_to_start == 1
    assert node.effective_broker_url.startswith("sqla+sqlite:////")


def test_precedence_file_environment_flags(tmp_path: Path) -> None:
    config = tmp_path / "bodycomp.toml"
    config.write_text('[node]\nstable_seconds = 60\nport = 104\ndestinations = ["PACS@pacs:104"]\n')
    env = {"BODYCOMP_STABLE_SECONDS": "20"}
    node = load_settings(config, environ=env).node
    assert (node.stable_seconds, node.port, node.destinations) == (20.0, 104, ("PACS@pacs:104",))
    node = load_settings(config, {"node": {"stable_seconds": 5}}, environ=env).node
    assert node.stable_seconds == 5.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BODYCOMP_STABLE_SECOND": "5"}, "unknown key node.stable_second"),
        ({"BODYCOMP_DESTINATION": "PACS@pacs"}, "is not AE@HOST:PORT"),
        ({"BODYCOMP_DESTINATION": "AN_AE_TITLE_TOO_LONG@pacs:104"}, "at most 16 printable ASCII characters"),
        ({"BODYCOMP_STABLE_SECONDS": "-1"}, r"node\.stable_seconds = -1\.0 is out of range"),
    ],
)
def test_bad_node_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


#: Values that once passed and broke the node quietly (#18): nan refused every association, inf
#: never analysed, negative retries and reserves passed, a bad AE title or port crashed at start.
BROKEN_VALUES = [
    ("BODYCOMP_NETWORK_TIMEOUT", "nan", "not a finite number"),
    ("BODYCOMP_STABLE_SECONDS", "nan", "not a finite number"),
    ("BODYCOMP_STABLE_SECONDS", "inf", "not a finite number"),
    ("BODYCOMP_SEND_GIVE_UP_HOURS", "-inf", "not a finite number"),
    ("BODYCOMP_NETWORK_TIMEOUT", "0", "node.network_timeout = 0.0 is out of range"),
    ("BODYCOMP_MAX_RETRIES", "-1", "node.max_retries = -1 is out of range"),
    ("BODYCOMP_SEND_RETRY_SECONDS", "-5", "node.send_retry_seconds = -5.0 is out of range"),
    ("BODYCOMP_SEND_GIVE_UP_HOURS", "0", "node.send_give_up_hours = 0.0 is out of range"),
    ("BODYCOMP_MIN_FREE_MB", "-100", "node.min_free_mb = -100 is out of range"),
    ("BODYCOMP_PORT", "-1", "node.port = -1 is out of range"),
    ("BODYCOMP_PORT", "70000", "node.port = 70000 is out of range"),
    ("BODYCOMP_METRICS_PORT", "70000", "node.metrics_port = 70000 is out of range"),
    ("BODYCOMP_TASK_TIME_LIMIT", "1", "node.task_time_limit = 1 is out of range"),
    ("BODYCOMP_CONCURRENCY", "0", "node.concurrency = 0 is out of range"),
    ("BODYCOMP_AE_TITLE", "A_TITLE_LONGER_THAN_16", "is not an AE title"),
    ("BODYCOMP_AE_TITLE", "   ", "is not an AE title"),
    ("BODYCOMP_AE_TITLE", "BAD\\AE", "is not an AE title"),
    ("BODYCOMP_AE_TITLE", "BAD\x1b[31m", "is not an AE title"),
    ("BODYCOMP_ALLOW_AE", "PACS,EVIL\nAE", "is not an AE title"),
    ("BODYCOMP_STACK__MAX_GAP_MM", "-1", "stack.max_gap_mm = -1.0 is out of range"),
    ("BODYCOMP_SELECTION__MIN_SLICES", "0", "selection.min_slices = 0 is out of range"),
]


@pytest.mark.parametrize(("name", "value", "message"), BROKEN_VALUES)
def test_values_that_break_the_node_are_refused_at_load(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(environ={name: value})


@pytest.mark.parametrize(("name", "value", "message"), BROKEN_VALUES[:6])
def test_the_command_line_says_so_in_one_line_and_exits_2(
    name: str, value: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.operate.cli import main

    monkeypatch.setenv(name, value)
    assert main(["status"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_an_unusable_data_directory_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.operate.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["worker", "--data-dir", str(blocker / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "node.data_dir" in err and "cannot use it" in err


def test_an_address_this_machine_does_not_have_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.operate.cli import main

    # TEST-NET-1 (RFC 5737) is never assigned to a local interface
    code = main(["serve", "--data-dir", str(tmp_path / "d"), "--host", "192.0.2.1", "--port", "11119"])
    assert code == 2
    assert "cannot listen on 192.0.2.1:11119" in capsys.readouterr().err
