"""Every config key of a command (name, type, default, allowed values, meaning), read from the schemas.

The meaning of a key is the trailing `# comment` of its dataclass field (continued on comment-only lines
right below it; `noqa` markers dropped), its allowed values are the schema's `choices` (which the loader
enforces) or the registry's names for a key that picks a kind. `shallownet <command> --help` and
docs/reference/config.md are both made here, so neither can drift from the code. Imports nothing heavy.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import json
import re
import textwrap
import tokenize
import typing
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

_NOQA = re.compile(r"^noqa:\s*[A-Z]+\d+(?:,\s*[A-Z]+\d+)*\s*(?:\([^)]*\))?[\s;,]*")


@dataclass(frozen=True)
class Key:
    name: str  # dotted, e.g. model.init.scale; entries of a list of sections: processes[method=gd].lr
    type: str
    default: str  # as it would be written on the command line
    allowed: str  # empty: any value of the type (range checks are in the meaning)
    meaning: str


@functools.cache
def field_comments(schema: type) -> dict[str, str]:
    """{field name: its comment} for a dataclass defined in a source file."""
    source = textwrap.dedent(inspect.getsource(schema))
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    found = {}
    for node in ast.parse(source).body[0].body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        parts = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
        n = node.end_lineno + 1
        while n <= len(lines) and lines[n - 1].strip().startswith("#"):  # a comment continued below
            parts.append(comments[n])
            n += 1
        found[node.target.id] = " ".join(p for p in (_NOQA.sub("", part) for part in parts) if p)
    return found


def describe(schema: type, cfg: DictConfig) -> list[Key]:
    """The keys of `schema` with the values of `cfg` (a config load_config made from it) as defaults: the
    kind sections as the kinds chosen in cfg."""
    rows: list[Key] = []
    _walk(schema, cfg, "", rows)
    return rows


def _walk(schema: type, values: Any, prefix: str, rows: list[Key]) -> None:
    from shallownet import registry
    from shallownet.config import KIND_WORDS

    hints = typing.get_type_hints(schema)
    meanings = {}
    for cls in reversed(schema.__mro__):  # a subclass's comment replaces its base's (eos's model)
        if dataclasses.is_dataclass(cls):
            meanings.update(field_comments(cls))
    choices = getattr(schema, "choices", {})
    for f in dataclasses.fields(schema):
        key, meaning = prefix + f.name, meanings.get(f.name, "")
        table = f.metadata.get("kinds")
        if table is not None:  # a section whose schema is the chosen kind's
            chooser, name = f.metadata["key"], values[f.name][f.metadata["key"]]
            rows.append(Key(f"{key}.{chooser}", "str", name, ", ".join(registry.known(table)), meaning))
            _walk(registry.lookup(table, name).schema, values[f.name], f"{key}.", rows)
        elif f.metadata.get("monitors"):
            for name in registry.known("monitor"):
                _walk(registry.lookup("monitor", name).schema, values[f.name][name], f"{key}.{name}.", rows)
        elif "kind_list" in f.metadata:  # a list of sections, each of its own kind
            table, chooser = f.metadata["kind_list"], f.metadata["key"]
            rows.append(Key(key, "list of sections", _show(values[f.name]), "", meaning))
            rows.append(Key(f"{key}[].{chooser}", "str", "", ", ".join(registry.known(table)),
                            f"the entry's {KIND_WORDS[table][:-1]}"))
            for name in dict.fromkeys(entry[chooser] for entry in values[f.name]):
                kind = registry.lookup(table, name)
                _walk(kind.schema, OmegaConf.structured(kind.schema), f"{key}[{chooser}={name}].", rows)
        elif dataclasses.is_dataclass(hints[f.name]):
            _walk(hints[f.name], values[f.name], f"{key}.", rows)
        else:
            rows.append(Key(key, _type_name(hints[f.name]), _show(values[f.name]),
                            ", ".join(choices.get(f.name, ())), meaning))


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union:
        return f"{_type_name(args[0])} or null"
    if typing.get_origin(hint) is list:
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", "any") if hint is not Any else "any"


def _show(value: Any) -> str:
    """A value as written on the command line (1e-10, not 1e-10 as 1.0000000000000001e-10; null, true)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        text = f"{value:.12g}"
        return text if any(c in text for c in ".en") else text + ".0"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def format_keys(rows: list[Key]) -> str:
    """For a terminal: `key=default` (as it is written on the command line), type and allowed values, meaning."""
    setting = [f"{r.name}={r.default}" if r.default else r.name for r in rows]
    width = min(max(len(s) for s in setting), 44)
    kinds = [r.type + (f", one of {r.allowed}" if r.allowed else "") for r in rows]
    lines = zip(setting, kinds, rows, strict=True)
    return "\n".join(f"  {s:{width}s}  ({k}) {r.meaning}".rstrip() for s, k, r in lines)


def _cell(text: str) -> str:
    """Markdown-safe: | splits cells, * makes emphasis, <name> reads as an HTML tag."""
    for char, escaped in (("|", "\\|"), ("*", "\\*"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(char, escaped)
    return text


def markdown_table(rows: list[Key]) -> str:
    lines = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for r in rows:
        cells = [f"`{r.name}`", r.type, f"`{r.default}`" if r.default else "", r.allowed, r.meaning]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


KIND_SECTIONS = (("model", "kind", "model", "Model kinds"), ("data", "kind", "data", "Data kinds"),
                 ("optim", "method", "process", "Processes (optim.method; compare's and eos's processes[])"))


def reference_markdown() -> str:
    """docs/reference/config.md: every command's keys with its default kinds, then every kind's own keys
    (python -m shallownet.describe writes it; a test keeps it current)."""
    import importlib

    from shallownet import registry
    from shallownet.cli import COMMANDS, OPTIONS
    from shallownet.config import RunConfig, load_config

    parts = ["# Config reference", "",
             "Generated from the config schemas by `python -m shallownet.describe` (the same source as "
             "`shallownet <command> --help`); do not edit by hand. Set a key as `key=value` on the command line "
             "or in a YAML file given as CONFIG; `--print-config` shows the resolved config of a command line.",
             "", "Options of every command: " + ", ".join(f"`{o}`" for o in OPTIONS) + ".", ""]
    for name in COMMANDS:
        command = importlib.import_module(f"shallownet.cli.{name}")
        parts += [f"## {name}", "", command.SUMMARY + ".", "", markdown_table(
            describe(command.SCHEMA, load_config(command.SCHEMA, None, []))), ""]
        for chooser, schema in getattr(command, "VARIANTS", {}).items():  # schemas the arguments choose
            parts += [f"## {name} {chooser}", "", f"`shallownet {name} {chooser}` (or any model kind) reads these "
                      "keys instead.", "", markdown_table(describe(schema, load_config(schema, None, [chooser]))), ""]
    for section, key, table, title in KIND_SECTIONS:
        parts += [f"## {title}", ""]
        for kind in registry.known(table):
            rows = describe(RunConfig, load_config(RunConfig, None, [f"{section}.{key}={kind}"]))
            own = [r for r in rows if r.name.startswith(f"{section}.") and r.name != f"{section}.{key}"]
            parts += [f"### {section}.{key}={kind}", "",
                      markdown_table(own) if own else "No keys of its own.", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/reference/config.md")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(reference_markdown())
    print(f"wrote {target}")
