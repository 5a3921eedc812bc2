"""The `shallownet` command: `shallownet COMMAND [CONFIG] [key=value ...]`.

Each command lives in its own module exposing `SUMMARY` (one line of help) and
`run(config_path, overrides) -> int`; modules are imported only when chosen and import nothing heavy at
the top, so `shallownet --help` and bad-input errors stay fast. With no CONFIG the command's built-in
defaults are used, wherever it is run (configs/<command>.yaml are examples equal to them).
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import importlib
import re
import sys
from pathlib import Path

import shallownet

COMMANDS = ("train", "compare", "eos", "sweep", "figure1")
TOOLS = ("status",)  # commands that read run folders: no config, arguments of their own (`main(args)`)

USAGE = "usage: shallownet {" + ",".join(COMMANDS) + "} [CONFIG.yaml] [key=value ...]"


OPTIONS = {"-h": "", "--help": "list the command's config keys (of the kinds the other arguments choose)",
           "--print-config": "print the resolved, validated config and the run folder it would write; run nothing"}
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+|[A-Za-z_]\w*")


def split_arguments(args: list[str]) -> tuple[str | None, list[str]]:
    """The first argument without '=' is the config file; the rest are key=value overrides."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def check_arguments(args: list[str], schema: type) -> None:
    """A key written with a space instead of '=' (`optim.lr 0.1`) is named as such, not read as a file."""
    from shallownet.config import ConfigError

    fields = {f.name for f in dataclasses.fields(schema)}
    for i, arg in enumerate(args):
        if "=" in arg:
            continue
        if i == 0 and (Path(arg).exists() or not (_KEY.fullmatch(arg) and arg.split(".")[0] in fields)):
            continue  # the config file (read_yaml says so when it is missing)
        value = args[i + 1] if i + 1 < len(args) and "=" not in args[i + 1] else "VALUE"
        raise ConfigError(f"argument {arg!r} is not of the form key=value (did you mean {arg}={value}?)")


def version() -> str:
    from shallownet.run_folder import provenance

    commit = provenance()["git_commit"]
    return f"shallownet {shallownet.__version__}" + (f" (git commit {commit})" if commit else "")


def main(argv: list[str] | None = None) -> int:
    from shallownet import interrupt  # light: the signal module only

    if argv is None:  # the console script, not an in-process call: signals are this process's own
        interrupt.defer()
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt as stop:  # before the run folder exists (afterwards the run ends itself cleanly)
        print("shallownet: interrupted before the run started; nothing was written", file=sys.stderr)
        return 128 + getattr(stop, "signum", 2)


def _main(argv: list[str]) -> int:
    from shallownet.config import ConfigError  # imported here: Ctrl-C during any import is handled above

    if argv and argv[0] == "--version":
        print(version())
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        for name in (*COMMANDS, *TOOLS):
            print(f"  {name:10s} {importlib.import_module(f'shallownet.cli.{name}').SUMMARY}")
        print("options: --version; per command: --help (its config keys), --print-config\n"
              "with no CONFIG, the built-in defaults (configs/<command>.yaml shows them)")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name in TOOLS:
        return importlib.import_module(f"shallownet.cli.{name}").main(rest)
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, (*COMMANDS, *TOOLS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"shallownet: error: unknown command {name!r}{hint}; allowed: {', '.join((*COMMANDS, *TOOLS))}",
              file=sys.stderr)
        return 2
    command = importlib.import_module(f"shallownet.cli.{name}")
    options = [arg for arg in rest if (arg.startswith("--") or arg == "-h") and "=" not in arg]  # not -0.1
    rest = [arg for arg in rest if arg not in options]
    try:
        unknown = [arg for arg in options if arg not in OPTIONS]
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}; allowed: {', '.join(OPTIONS)}")
        check_arguments(rest, command.SCHEMA)
        config_path, overrides = split_arguments(rest)
        if "-h" in options or "--help" in options:
            print(command_help(name, command, config_path, overrides))
            return 0
        if "--print-config" in options:
            print(print_config(command, config_path, overrides))
            return 0
        return command.run(config_path, overrides)
    except ConfigError as err:
        print(f"shallownet {name}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a file-size limit, ...: the run folder says `failed`, and why
        from shallownet.run_folder import mark_failed

        unmarked = mark_failed(err)
        code = errno.errorcode.get(err.errno, err.errno)
        where = err.filename or "a file of the run (the system named none)"
        state = "the run folder, where there is one, says failed" if not unmarked else \
            f"{unmarked[0] / 'summary.json'} could not be updated either; shallownet status shows the run as crashed"
        print(f"shallownet {name}: error: {where}: {err.strerror or err} (errno {code}); {state}", file=sys.stderr)
        return 1


def command_help(name: str, command, config_path: str | None, overrides: list[str]) -> str:
    """Usage, the options and every config key, for the kinds the config file and overrides choose."""
    from shallownet.config import load_config
    from shallownet.describe import describe, format_keys

    schema = command.schema_for(config_path, overrides) if hasattr(command, "schema_for") else command.SCHEMA
    cfg = load_config(schema, config_path, overrides)
    chosen = [f"{f.name}.{f.metadata['key']}={cfg[f.name][f.metadata['key']]}"
              for f in dataclasses.fields(schema) if "kinds" in f.metadata]
    lines = [f"usage: shallownet {name} [CONFIG.yaml] [key=value ...] [--help] [--print-config]",
             f"  {command.SUMMARY}", "", "options:"]
    lines += [f"  {'-h, ' if option == '--help' else ''}{option:{12 if option == '--help' else 16}s} {meaning}"
              for option, meaning in OPTIONS.items() if meaning]
    lines += ["", "config keys, key=default (type) meaning"
              + (f", for {', '.join(chosen)} (name another kind for its keys: shallownet {name} --help "
                 f"{chosen[0].split('=')[0]}=...)" if chosen else "") + ":",
              format_keys(describe(schema, cfg))]
    return "\n".join(lines)


def print_config(command, config_path: str | None, overrides: list[str]) -> str:
    """The config as the run would write it to config.yaml (so it can be saved and used as CONFIG), and the
    run folder as a YAML comment."""
    from omegaconf import OmegaConf

    from shallownet.run_folder import next_run_dir

    cfg, existing = command.configure(config_path, overrides)
    folder = (f"# would continue the run in {existing}" if existing is not None
              else f"# would write the run folder {next_run_dir(cfg.output.root, cfg.output.name)}")
    return OmegaConf.to_yaml(cfg, resolve=True) + folder


def exit_status(status: str) -> int:
    """0 for every outcome of a run that went its way; 128 + signal for an interrupted one."""
    from shallownet import interrupt

    signum = interrupt.requested()
    return 128 + signum if status == "interrupted" and signum else 0


if __name__ == "__main__":
    sys.exit(main())
