"""The `shallownet` command: `shallownet COMMAND [CONFIG] [key=value ...]`.

Each command lives in its own module exposing `SUMMARY` (one line of help), `DEFAULT_CONFIG` (a file
name in configs/) and `run(config_path, overrides) -> int`; modules are imported only when chosen, so
`shallownet --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from shallownet.config import ConfigError

COMMANDS = ("train", "sweep", "compare", "figure1")

USAGE = "usage: shallownet {" + ",".join(COMMANDS) + "} [CONFIG.yaml] [key=value ...]"


def split_arguments(args: list[str], default_config: str) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are key=value overrides.

    With no config file named, configs/<default_config> in the working directory is used if present,
    else the built-in defaults (which equal that shipped file).
    """
    if args and "=" not in args[0]:
        return args[0], args[1:]
    fallback = Path("configs") / default_config
    return (str(fallback) if fallback.is_file() else None), args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        for name in COMMANDS:
            print(f"  {name:10s} {importlib.import_module(f'shallownet.cli.{name}').SUMMARY}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"shallownet: error: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command = importlib.import_module(f"shallownet.cli.{name}")
    if rest and rest[0] in ("-h", "--help"):
        print(f"usage: shallownet {name} [CONFIG.yaml] [key=value ...]\n  {command.SUMMARY}")
        return 0
    config_path, overrides = split_arguments(rest, command.DEFAULT_CONFIG)
    try:
        return command.run(config_path, overrides)
    except ConfigError as err:
        print(f"shallownet {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
