"""One settings object for the whole product: defaults < TOML file < environment < command line.

* TOML file: ``--config PATH`` or ``BODYCOMP_CONFIG``; sections are the attribute names of
  :class:`Settings` (``[node]``, ``[selection]``, ``[stack]``, ``[analysis]``), keys their fields.
* Environment: ``BODYCOMP_<SECTION>__<KEY>`` (double underscore), e.g.
  ``BODYCOMP_STACK__MAX_GAP_MM=20``.
* Command-line flags override both (each subcommand maps its flags onto the same fields).

Unknown sections or keys are errors, not silently ignored: a typo in a hospital's config must not
fall back to a default without anyone noticing.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.scp import ScpSettings
from workers.series_selection import SelectionPolicy
from workers.stack import StackPolicy

ENV_PREFIX = "BODYCOMP_"
ENV_CONFIG = "BODYCOMP_CONFIG"


class ConfigError(ValueError):
    """A configuration value or key that cannot be used."""


@dataclass(frozen=True)
class AnalysisSettings:
    """Which engines, presets and rule sets an analysis uses."""

    localiser: str = "classical"
    segmenter: str = "classical"
    preset: str = "tomovision-l3@1"
    rule_set: str = "martin2013@1"
    slices: int = 1


@dataclass(frozen=True)
class Settings:
    node: ScpSettings = field(default_factory=ScpSettings)
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
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in items)
        if len(items) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(items, args, strict=True))
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
        if annotation is Path:
            return Path(str(value)).expanduser()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}"
        ) from exc
    raise ConfigError(f"{where}: unsupported setting type {annotation}")


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
            if key not in hints:
                raise ConfigError(f"{source}: unknown key {section_name}.{key} (known: {', '.join(hints)})")
            kwargs[key] = _coerce(raw, hints[key], f"{source}: {section_name}.{key}")
        changed[section_name] = dataclasses.replace(current, **kwargs)
    return dataclasses.replace(settings, **changed)


def _env_updates(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    updates: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG or "__" not in name:
            continue
        section, key = name[len(ENV_PREFIX) :].lower().split("__", 1)
        updates.setdefault(section, {})[key] = value
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
    if path:
        try:
            with Path(path).open("rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        settings = _apply(settings, data, str(path))
    settings = _apply(settings, _env_updates(environ), "environment")
    if overrides:
        cleaned = {s: {k: v for k, v in vals.items() if v is not None} for s, vals in overrides.items()}
        settings = _apply(settings, {s: v for s, v in cleaned.items() if v}, "command line")
    return settings
