"""Settings: defaults < TOML file < BODYCOMP_* environment < command line."""

from __future__ import annotations

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
        ({"BODYCOMP_DESTINATION": "AN_AE_TITLE_TOO_LONG@pacs:104"}, "at most 16 characters"),
        ({"BODYCOMP_STABLE_SECONDS": "-1"}, "must not be negative"),
    ],
)
def test_bad_node_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)
