"""Run configs from YAML files, with `--set dotted.key=value` overrides applied first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from models.config.run import ConfigError, LoraflowConfig, config_from_dict


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `dotted.key=value`; the value is YAML so lists and numbers work."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e.problem})") from None
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with every `--set` override applied."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {k!r} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> LoraflowConfig:
    """Load a YAML config file, apply `--set` overrides, and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{line}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(path))


def run_config(
    config: LoraflowConfig | None, config_file: str | None, overrides: list[str] | None = None
) -> LoraflowConfig:
    """A flow's run config from its parameters: `config` when given (a whole config, e.g. a
    custom run's; config_file and overrides, a deployment's defaults, then do not apply), else
    `config_file` (a config in the repository, e.g. configs/demo.yaml, read where the run runs)
    with `overrides` (`dotted.key=value`, as `--set`)."""
    if config is not None:
        return config
    if not config_file:
        raise ConfigError("no config: give config, or config_file (e.g. configs/demo.yaml)")
    path = Path(config_file)
    if path.is_absolute() or ".." in path.parts:
        raise ConfigError(
            f"config_file: must be a path in the repository, e.g. configs/demo.yaml "
            f"(got {config_file!r})"
        )
    return load_config(path, overrides)
