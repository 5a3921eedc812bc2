"""Run folders: runs/<name>/version_<n>/, never reusing an existing one, plus their metadata files.

A folder is created only after the config is validated and the heavy imports are done, and it holds a
summary.json from the start (status `starting`, then the outcome), so no folder is left without a status.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import shallownet

SUMMARY = "summary.json"
STARTING = "starting"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]*")
_SYSTEM = ("/proc", "/sys", "/dev")
NAME_MAX = 255


def next_run_dir(root: str | Path, name: str) -> Path:
    """runs/<name>/version_<n> after the highest one there (created by new_run_dir; --print-config names it)."""
    parent = Path(root) / name
    taken = [int(p.name.split("_", 1)[1]) for p in parent.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return parent / f"version_{max(taken, default=-1) + 1}"


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create and return the next free runs/<name>/version_<n> (mkdir is atomic, so never shared)."""
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    version = int(next_run_dir(root, name).name.split("_", 1)[1])
    while True:
        path = parent / f"version_{version}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            version += 1


def start_run(cfg: DictConfig) -> Path:
    """Create the run folder with config.yaml and summary.json (status `starting`)."""
    run_dir = new_run_dir(cfg.output.root, cfg.output.name)
    write_config(run_dir, cfg)
    write_json(run_dir / SUMMARY, {"status": STARTING, "provenance": provenance()})
    return run_dir


def check_output(output: DictConfig) -> None:
    """Fail early (ConfigError) on a bad output.name or when runs cannot be written under output.root."""
    from shallownet.config import ConfigError, require

    name = output.name
    require(bool(_NAME.fullmatch(name)) and name not in (".", ".."), "output.name",
            "a folder name of letters, digits and . _ = + - (not '.' or '..', no '/')", name)
    require(len(name.encode()) + len("version_") + 20 <= NAME_MAX, "output.name",
            f"at most {NAME_MAX - 28} bytes long", f"{name[:20]}... ({len(name.encode())} bytes)")
    root = Path(output.root).expanduser()
    absolute = Path(os.path.abspath(root))
    if any(absolute == Path(s) or Path(s) in absolute.parents for s in _SYSTEM):
        raise ConfigError(f"config key 'output.root': {absolute} is a system folder, not a place for runs")
    if len(str(absolute / name).encode()) + 40 > os.pathconf("/", "PC_PATH_MAX"):
        raise ConfigError("config key 'output.root': the run folder's path would be longer than the system allows")
    for part in (absolute, *absolute.parents):
        if part.exists():
            if not part.is_dir():
                raise ConfigError(f"config key 'output.root': {part} is a file, not a folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise ConfigError(f"config key 'output.root': {part} is not writable")
            break
    existing = absolute / name
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"config key 'output.name': {existing} is a file, not a folder")


def provenance() -> dict[str, Any]:
    """What reproduces a run: package version, git commit (if any), command line."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=Path(shallownet.__file__).parent).stdout.strip() or None
    except OSError:
        commit = None
    return {"shallownet_version": shallownet.__version__, "git_commit": commit, "command": sys.argv}


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    replace_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON with non-finite floats written as null (strict JSON has no inf/nan), replaced atomically."""
    replace_bytes(path, (json.dumps(_finite_or_none(data), indent=2) + "\n").encode())


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def read_summary(run_dir: Path) -> dict[str, Any]:
    """summary.json of a run folder as a dict; ConfigError (naming the file) when it is missing, unreadable,
    truncated or not a JSON object."""
    from shallownet.config import ConfigError

    path = Path(run_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} cannot be read as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"{path} holds a JSON {type(summary).__name__}, not an object with a status")
    return summary


def plan_truncation(run_dir: Path, step: int) -> list[tuple[Path, bytes]]:
    """The new contents of the logs of a stopped run cut back to `step` (the checkpoint it resumes from),
    without its hparams entry (the resumed run writes its own): after the resume every step is logged
    exactly once. Only reads (a resume checks everything before it writes a byte); apply_truncation writes.
    ConfigError when a log cannot be read."""
    from shallownet.config import ConfigError

    plan = []
    metrics = run_dir / "metrics.csv"
    try:
        if metrics.exists():
            with metrics.open(newline="") as file:
                reader = csv.DictReader(file)
                fields, rows = reader.fieldnames, [row for row in reader if int(row["step"]) <= step]
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            plan.append((metrics, text.getvalue().encode()))
        for events in sorted(run_dir.glob("events.out.tfevents.*")):
            plan.append((events, _truncated_events(events, step)))
    except Exception as err:  # a damaged log: csv, int() or protobuf errors of every kind
        name = events.name if "events" in locals() else metrics.name
        raise ConfigError(f"config key 'train.resume': {run_dir / name} cannot be read "
                          f"({type(err).__name__}: {err}); the run folder is left as it is") from None
    return plan


def apply_truncation(plan: list[tuple[Path, bytes]]) -> None:
    for path, content in plan:
        # no "tfevents" in the temporary name: TensorBoard must not read it
        replace_bytes(path, content, partial=path.with_name("truncating.tmp"))


def replace_bytes(path: Path, content: bytes, partial: Path | None = None) -> None:
    """Write content aside, then rename over path: a reader (or a crash) sees the old file or the new one."""
    partial = partial or path.with_name(path.name + ".partial")
    partial.write_bytes(content)
    os.replace(partial, path)


def replace_text(path: Path, text: str) -> None:
    """replace_bytes for text; an unchanged file is left alone."""
    content = text.encode()
    if not (path.is_file() and path.read_bytes() == content):
        replace_bytes(path, content)


def _truncated_events(path: Path, step: int) -> bytes:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    out = io.BytesIO()
    writer = RecordWriter(out)
    for record in RawEventFileLoader(str(path)).Load():
        event = Event.FromString(record)
        hparams = any(v.metadata.plugin_data.plugin_name == "hparams" or v.tag.startswith("hparams/")
                      for v in event.summary.value)
        if event.step <= step and not hparams:
            writer.write(record)
    return out.getvalue()
