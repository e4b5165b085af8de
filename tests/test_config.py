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
        "BODYCOMP_NODE__CALLING_AE_WHITELIST": "PACS, ORTHANC",
        "BODYCOMP_NODE__SPOOL_DIR": str(tmp_path / "spool"),
        "BODYCOMP_NODE__PORT": "11113",
    }
    node = load_settings(environ=env).node
    assert node.calling_ae_whitelist == ("PACS", "ORTHANC")
    assert node.spool_dir == tmp_path / "spool"
    assert node.port == 11113
