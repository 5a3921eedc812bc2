"""`shallownet status [ROOT]`: the run folders under ROOT (default: runs) and the state of each.

The state is summary.json's status (converged, diverged, max_steps, max_time, interrupted, failed, done),
except where the folder's lock says otherwise: `running` while a live process holds the lock (a new run or
a resume; its pid, host and start time are in the lock file), `crashed` where summary.json still says
`starting` but nobody holds the lock (the writer died without a word: SIGKILL, power loss, ...). A folder
from before the lock (no .lock) is judged by its owner's pid when the owner ran on this host.
Imports nothing heavy: it answers at once, also while runs are training.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

SUMMARY = "the run folders under a root (default: runs) and the state of each: running, converged, ..., crashed"
USAGE = "usage: shallownet status [ROOT]"
LIVE = ("starting", "running")  # what summary.json says while its writer works


def main(args: list[str]) -> int:
    if any(arg in ("-h", "--help") for arg in args):
        print(f"{USAGE}\n  {SUMMARY}\n  running: a live process holds the folder's lock; crashed: summary.json "
              "says starting and nobody holds the lock")
        return 0
    if len(args) > 1 or any(arg.startswith("-") for arg in args):
        print(f"shallownet status: error: {' '.join(args)!r}: give one ROOT folder at most ({USAGE})", file=sys.stderr)
        return 2
    given = Path(args[0] if args else "runs").expanduser()
    root = given.resolve()  # printed as it is on disk: a symlinked root names its target
    if not root.is_dir():
        print(f"shallownet status: error: {given} is no folder of runs ({'a file' if root.exists() else 'missing'})",
              file=sys.stderr)
        return 2
    folders = run_folders(root)
    print(f"{len(folders)} run folder{'s' * (len(folders) != 1)} under {root}")
    for folder in folders:
        state, detail = run_state(folder)
        print(f"  {state:11s} {folder.relative_to(root)}" + (f"  ({detail})" if detail else ""))
    return 0


def run_folders(root: Path) -> list[Path]:
    """Every folder under root holding a summary.json, symlinks not followed, versions in number order."""
    found = [Path(top) for top, _, files in os.walk(root) if "summary.json" in files]
    return sorted(found, key=lambda p: [(0, int(part[8:]), "") if part[8:].isdigit() and part.startswith("version_")
                                        else (1, 0, part) for part in p.relative_to(root).parts])


def run_state(folder: Path) -> tuple[str, str]:
    """(state, detail) of one run folder."""
    from shallownet.config import ConfigError
    from shallownet.run_folder import held, pid_alive, read_summary, recorded_owner

    try:
        summary = read_summary(folder)
    except ConfigError as err:
        return "unreadable", str(err)
    status = str(summary.get("status"))
    lock = held(folder)
    who = recorded_owner(folder) or summary.get("owner")
    if lock:
        return "running", _name(who) if who else "its owner has not named itself yet"
    if status in LIVE:
        if lock is None and isinstance(who, dict) and who.get("host") == socket.gethostname() \
                and isinstance(who.get("pid"), int) and pid_alive(who["pid"]):
            return "running", _name(who) + "; a folder without a lock file: judged by its pid"
        return "crashed", (f"{_name(who)} is gone" if isinstance(who, dict) else "no owner recorded") + \
            f"; summary.json still says {status}"
    detail = summary.get("reason") if status == "failed" else None
    if detail is None and isinstance(summary.get("steps"), int):
        detail = f"{summary['steps']} steps"
    return status, detail or ""


def _name(who: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who.get("started", 0)))
    return f"pid {who.get('pid')} on host {who.get('host')}, since {started}"
