"""The `shallownet` command: `shallownet COMMAND [CONFIG] [key=value ...]`.

Each command lives in its own module exposing `SUMMARY` (one line of help) and
`run(config_path, overrides) -> int`; modules are imported only when chosen and import nothing heavy at
the top, so `shallownet --help` and bad-input errors stay fast. With no CONFIG the command's built-in
defaults are used, wherever it is run (configs/<command>.yaml are examples equal to them).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = ("train", "compare", "eos", "sweep", "figure1")

USAGE = "usage: shallownet {" + ",".join(COMMANDS) + "} [CONFIG.yaml] [key=value ...]"


def split_arguments(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are key=value overrides."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:  # before the run folder exists (afterwards the run ends itself cleanly)
        print("shallownet: interrupted before the run started; nothing was written", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    from shallownet.config import ConfigError  # imported here: Ctrl-C during any import is handled above

    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        for name in COMMANDS:
            print(f"  {name:10s} {importlib.import_module(f'shallownet.cli.{name}').SUMMARY}")
        print("with no CONFIG, the built-in defaults (configs/<command>.yaml shows them); "
              "see README.md for the keys")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"shallownet: error: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    command = importlib.import_module(f"shallownet.cli.{name}")
    if rest and rest[0] in ("-h", "--help"):
        print(f"usage: shallownet {name} [CONFIG.yaml] [key=value ...]\n  {command.SUMMARY}")
        return 0
    config_path, overrides = split_arguments(rest)
    try:
        return command.run(config_path, overrides)
    except ConfigError as err:
        print(f"shallownet {name}: error: {err}", file=sys.stderr)
        return 2


def exit_status(status: str) -> int:
    """0 for every outcome of a run that went its way; 128 + signal for an interrupted one."""
    from shallownet import interrupt

    signum = interrupt.requested()
    return 128 + signum if status == "interrupted" and signum else 0


if __name__ == "__main__":
    sys.exit(main())
