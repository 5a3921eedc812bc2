"""Run folders: runs/<name>/version_<n>/, never reusing an existing one, plus their metadata files."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import shallownet


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create and return the next free runs/<name>/version_<n> (mkdir is atomic, so never shared)."""
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("_", 1)[1]) for p in parent.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        path = parent / f"version_{version}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            version += 1


def open_run(schema: type, validate, config_path: str | None, overrides: list[str]) -> tuple[DictConfig, Path]:
    """Load and validate a command's config, then create its run folder and write config.yaml into it.

    Every check (names, types, ranges, output root) happens before the folder exists, so bad input
    leaves nothing on disk.
    """
    from shallownet.config import load_config

    cfg = load_config(schema, config_path, overrides)
    validate(cfg)
    check_output(cfg.output)
    run_dir = new_run_dir(cfg.output.root, cfg.output.name)
    write_config(run_dir, cfg)
    return cfg, run_dir


def check_output(output: DictConfig) -> None:
    """Fail early (ConfigError) on a bad output.name or when runs cannot be written under output.root."""
    from shallownet.config import ConfigError, require

    require(bool(output.name) and "/" not in output.name, "output.name", "a non-empty folder name without '/'",
            output.name)
    path = Path(output.root)
    while not path.exists():
        path = path.parent
    if not path.is_dir():
        raise ConfigError(f"config key 'output.root': {path} is not a folder")
    if not os.access(path, os.W_OK):
        raise ConfigError(f"config key 'output.root': {path} is not writable")


def provenance() -> dict[str, Any]:
    """What reproduces a run: package version, git commit (if any), command line."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(shallownet.__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    return {"shallownet_version": shallownet.__version__, "git_commit": commit, "command": sys.argv}


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON with non-finite floats written as null (strict JSON has no inf/nan)."""
    path.write_text(json.dumps(_finite_or_none(data), indent=2) + "\n")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
