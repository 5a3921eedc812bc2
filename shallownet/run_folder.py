"""Run folders: runs/<name>/version_<n>/, never reusing an existing one, plus their metadata files.

A folder is created only after the config is validated and the heavy imports are done, and it holds a
summary.json from the start (status `starting`, then the outcome), so no folder is left without a status.

A process that writes a run folder holds an exclusive flock on its `.lock` file (`lock`) for as long as it
lives: the kernel drops it with the process, however that ends, so no lock is ever stale. Once it starts
writing it puts its name in the file (`claim`: pid, host, start time), which a refused second writer quotes;
a new run's summary.json names it too while the status is `starting`. A folder whose lock nobody holds has
no live writer (`held`): `starting` there means the writer crashed (`shallownet status`).
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import shallownet

SUMMARY = "summary.json"
STARTING = "starting"
LOCK = ".lock"
_locks: dict[Path, int] = {}  # run folder -> the open lock file descriptor, kept for the process's life
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+-]*")
_SYSTEM = ("/proc", "/sys", "/dev")
NAME_MAX = 255


def real_root(root: str | Path) -> Path:
    """output.root as it is on disk (~ expanded, symlinks resolved), found once: the run folder printed is
    where its files are, also when `runs` or `runs/<name>` is a symlink."""
    return Path(root).expanduser().resolve()


def next_run_dir(root: str | Path, name: str) -> Path:
    """runs/<name>/version_<n> after the highest one there (created by new_run_dir; --print-config names it)."""
    parent = (real_root(root) / name).resolve()
    taken = [int(p.name.split("_", 1)[1]) for p in parent.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return parent / f"version_{max(taken, default=-1) + 1}"


def new_run_dir(root: str | Path, name: str) -> Path:
    """Create and return the next free runs/<name>/version_<n> (mkdir is atomic, so never shared)."""
    first = next_run_dir(root, name)
    parent = first.parent
    parent.mkdir(parents=True, exist_ok=True)
    version = int(first.name.split("_", 1)[1])
    while True:
        path = parent / f"version_{version}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            version += 1


def start_run(cfg: DictConfig) -> Path:
    """Create the run folder, locked and claimed by this process, with config.yaml and summary.json (status
    `starting`)."""
    run_dir = new_run_dir(cfg.output.root, cfg.output.name)
    lock(run_dir)
    who = claim(run_dir)
    write_config(run_dir, cfg)
    write_json(run_dir / SUMMARY, {"status": STARTING, "owner": who, "provenance": provenance()})
    return run_dir


def owner() -> dict[str, Any]:
    """Who writes a run: this process's pid, host and start time (seconds since the epoch)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


def lock(run_dir: Path) -> None:
    """Hold the run folder's lock until this process ends; ConfigError naming the holder when another
    process holds it. Creates nothing but an empty .lock where none was (claim writes into it)."""
    from shallownet.config import ConfigError

    run_dir = Path(run_dir)
    if run_dir in _locks:
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise ConfigError(f"{run_dir} is in use by {holder}: one process writes a run folder at a time") from None
    _locks[run_dir] = fd


def claim(run_dir: Path) -> dict[str, Any]:
    """Put this process's name (owner(), returned) in the lock it holds on run_dir (done once it starts
    writing there, so that a refused resume changes no byte); the lock file is left alone without the lock."""
    who = owner()
    fd = _locks.get(Path(run_dir))
    if fd is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(who).encode(), 0)
    return who


def held(run_dir: Path) -> bool | None:
    """Whether a live process holds run_dir's lock (None: the folder has no .lock). Only reads: a shared
    lock taken for an instant, never the file created."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return False


def recorded_owner(run_dir: Path) -> dict[str, Any] | None:
    """The last writer's name in run_dir's lock file (owner()), None when there is none."""
    try:
        who = json.loads((Path(run_dir) / LOCK).read_bytes())
    except (OSError, ValueError):
        return None
    return who if isinstance(who, dict) and isinstance(who.get("pid"), int) else None


def _holder(fd: int) -> str:
    """The lock holder's name from its lock file; the name there is an earlier, dead holder's while the
    new one has not claimed the folder yet."""
    try:
        who = json.loads(os.pread(fd, 4096, 0))
    except ValueError:
        who = None
    if not (isinstance(who, dict) and isinstance(who.get("pid"), int)) or (
            who.get("host") == socket.gethostname() and not pid_alive(who["pid"])):
        return "another process (starting up: it has not written its name yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who.get("started", 0)))
    return f"pid {who['pid']} on host {who.get('host')} (since {started})"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def first_rank() -> bool:
    """Whether this process is (or will be) global rank 0 as far as its launcher's environment says; the
    only one that locks and writes a run folder. Read before torch.distributed exists."""
    env = os.environ
    if "SHALLOWNET_DDP_RUN_DIR" in env and env.get("LOCAL_RANK", "0") != "0":  # Lightning's launcher's child
        return False
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if name in env:
            return env[name] == "0"
    return True


def check_output(output: DictConfig) -> None:
    """Fail early (ConfigError) on a bad output.name or when runs cannot be written under output.root."""
    from shallownet.config import ConfigError, require

    name = output.name
    require(bool(_NAME.fullmatch(name)) and name not in (".", ".."), "output.name",
            "a folder name of letters, digits and . _ = + - (not '.' or '..', no '/')", name)
    require(len(name.encode()) + len("version_") + 20 <= NAME_MAX, "output.name",
            f"at most {NAME_MAX - 28} bytes long", f"{name[:20]}... ({len(name.encode())} bytes)")
    absolute = Path(os.path.abspath(Path(output.root).expanduser()))
    existing = next((part for part in (absolute / name, absolute, *absolute.parents) if _exists(part)), Path("/"))
    limit = os.pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX")
    for part in absolute.parts:
        if len(part.encode()) > limit:
            raise ConfigError(f"config key 'output.root': the folder name {part[:20]}... is {len(part.encode())} "
                              f"bytes long, the file system allows {limit}")
    absolute = real_root(absolute)  # symlinks resolved: a link into /proc is /proc
    if any(absolute == Path(s) or Path(s) in absolute.parents for s in _SYSTEM):
        raise ConfigError(f"config key 'output.root': {absolute} is a system folder, not a place for runs")
    if len(str(absolute / name).encode()) + 40 > os.pathconf("/", "PC_PATH_MAX"):
        raise ConfigError("config key 'output.root': the run folder's path would be longer than the system allows")
    folder = (absolute / name).resolve()
    if _exists(folder) and not folder.is_dir():
        raise ConfigError(f"config key 'output.name': {folder} is a file, not a folder")
    for part in (folder, absolute, *absolute.parents):  # the first that exists must take a new folder
        if _exists(part):
            key = "output.name" if part == folder else "output.root"
            if not part.is_dir():
                raise ConfigError(f"config key '{key}': {part} is a file, not a folder")
            if not os.access(part, os.W_OK | os.X_OK):
                raise ConfigError(f"config key '{key}': {part} is {_unwritable(part)}, so no run folder can be "
                                  "made in it")
            break


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a folder that cannot be searched, ...
        return False


def _unwritable(path: Path) -> str:
    """Why os.access says no: a read-only file system or the folder's permissions."""
    return "on a read-only file system" if os.statvfs(path).f_flag & os.ST_RDONLY else "not writable"


def check_run_folder(run_dir: Path) -> None:
    """A run folder a resume may write in, checked before it takes the lock: every file in it is written in
    place (Lightning's metrics.csv, the lock, checkpoints), so no symlink inside (it would overwrite the
    file it points to) and everything writable. ConfigError naming the first that is not."""
    from shallownet.config import ConfigError

    key = "config key 'train.resume'"
    for top, folders, files in os.walk(run_dir):  # symlinks are listed, never followed
        for entry in sorted(folders + files):
            path = Path(top) / entry
            if path.is_symlink():
                raise ConfigError(f"{key}: {path} is a symlink (to {os.readlink(path)}); a resume writes the files "
                                  "of a run folder in place and never through a link: replace it by a copy")
            if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
                raise ConfigError(f"{key}: {path} is {_unwritable(path)}; the run cannot be continued there")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {run_dir} is {_unwritable(run_dir)}; the run cannot be continued there")


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


def plan_truncation(run_dir: Path, step: int, unlogged: set[str] = frozenset()) -> list[tuple[Path, bytes]]:
    """The new contents of the logs of a stopped run cut back to `step` (the checkpoint it resumes from),
    without its hparams entry (the resumed run writes its own) and without the last value of each tag in
    `unlogged` (logged off its monitor's cadence at `step`, which an uninterrupted run never logs): after
    the resume every step is logged exactly once, as in an uninterrupted run. Only reads (a resume checks
    everything before it writes a byte); apply_truncation writes. ConfigError when a log cannot be read."""
    from shallownet.config import ConfigError

    plan = []
    metrics = run_dir / "metrics.csv"
    try:
        if metrics.exists():
            with metrics.open(newline="") as file:
                reader = csv.DictReader(file)
                fields, rows = reader.fieldnames, [row for row in reader if int(row["step"]) <= step]
            rows = _without_last(rows, step, unlogged)
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            plan.append((metrics, text.getvalue().encode()))
        for events in sorted(run_dir.glob("events.out.tfevents.*")):
            plan.append((events, _truncated_events(events, step, unlogged)))
    except Exception as err:  # a damaged log: csv, int() or protobuf errors of every kind
        name = events.name if "events" in locals() else metrics.name
        raise ConfigError(f"config key 'train.resume': {run_dir / name} cannot be read "
                          f"({type(err).__name__}: {err}); the run folder is left as it is") from None
    return plan


def apply_truncation(plan: list[tuple[Path, bytes]]) -> None:
    for path, content in plan:
        # no "tfevents" in the temporary name: TensorBoard must not read it
        replace_bytes(path, content, partial=path.with_name("truncating.tmp"))


class WriteError(OSError):
    """Writing a run's file failed (full disk, file-size limit, ...): errno and reason of the OSError, with
    the final name of the file as its filename."""


@contextmanager
def writing(path: Path, partial: Path | None = None) -> Iterator[Path]:
    """A temporary name next to path to write to; renamed to path when the block ends well, so no file is
    ever half-written under its final name. On OSError the temporary file is removed and a WriteError
    naming path is raised."""
    path = Path(path)
    partial = partial or path.with_name(path.name + ".partial")
    try:
        yield partial
        os.replace(partial, path)
    except OSError as err:
        with suppress(OSError):
            partial.unlink(missing_ok=True)
        raise WriteError(err.errno, err.strerror or str(err), str(path)) from None


def replace_bytes(path: Path, content: bytes, partial: Path | None = None) -> None:
    """Write content aside, then rename over path: a reader (or a crash) sees the old file or the new one."""
    with writing(path, partial) as temporary:
        temporary.write_bytes(content)


def mark_failed(error: OSError) -> list[Path]:
    """After a write failed: status `failed` with the reason in the summary.json of every run folder this
    process writes, where that can still be written; the run folders where it could not (a full disk)."""
    unmarked = []
    for run_dir in _locks:
        try:
            summary = read_summary(run_dir)
            summary.update(status="failed", reason=f"{error.filename}: {error.strerror} "
                           f"(errno {errno.errorcode.get(error.errno, error.errno)})")
            write_json(run_dir / SUMMARY, summary)
        except (OSError, ValueError):
            unmarked.append(run_dir)
    return unmarked


def replace_text(path: Path, text: str) -> None:
    """replace_bytes for text; an unchanged file is left alone."""
    content = text.encode()
    if not (path.is_file() and path.read_bytes() == content):
        replace_bytes(path, content)


def _without_last(rows: list[dict], step: int, tags: set[str]) -> list[dict]:
    """metrics.csv rows with the last value of each tag blanked where it is at `step`; rows left empty go."""
    touched = set()
    for tag in tags:
        found = [i for i, row in enumerate(rows) if row.get(tag) not in (None, "")]
        if found and int(rows[found[-1]]["step"]) == step:
            rows[found[-1]][tag] = ""
            touched.add(found[-1])
    return [row for i, row in enumerate(rows)
            if i not in touched or any(v not in (None, "") for k, v in row.items() if k != "step")]


def _truncated_events(path: Path, step: int, unlogged: set[str] = frozenset()) -> bytes:
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    kept = []
    for record in RawEventFileLoader(str(path)).Load():
        event = Event.FromString(record)
        hparams = any(v.metadata.plugin_data.plugin_name == "hparams" or v.tag.startswith("hparams/")
                      for v in event.summary.value)
        if event.step <= step and not hparams:
            kept.append((record, event))
    last = {}  # unlogged tag -> index of the event holding its last value
    for i, (_, event) in enumerate(kept):
        for value in event.summary.value:
            if value.tag in unlogged:
                last[value.tag] = i
    drop = {i: {tag for tag, j in last.items() if j == i} for i in set(last.values()) if kept[i][1].step == step}
    out = io.BytesIO()
    writer = RecordWriter(out)
    for i, (record, event) in enumerate(kept):
        if i in drop:
            values = [v for v in event.summary.value if v.tag not in drop[i]]
            if not values:
                continue
            del event.summary.value[:]
            event.summary.value.extend(values)
            record = event.SerializeToString()
        writer.write(record)
    return out.getvalue()
