"""Bad input, for every command: one line on stderr naming the key or file, exit status 2, before any
work starts, nothing written (no run folder, no empty runs/). And valid-but-extreme input does not crash.

The command's work is replaced by a sentinel in the refusal tests (`no_work`): input that is not refused
fails the test at the moment the command would start its work, so a size that cannot be allocated is
never allocated on the test machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import read_summary

COMMANDS = ("train", "compare", "sweep", "figure1")
BIG = "99999999999999999999999"  # beyond int64
HUGE = "10000000000000"  # within int64, far beyond any machine's memory as a size
DEEP = 5000  # nesting depth of the deep-nesting cases


class WorkStarted(Exception):
    """Raised where a command would start its work (create its run folder, start the sweep)."""


@pytest.fixture
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise WorkStarted("the input was not refused: the command went on to start its work")

    for module in ("shallownet.cli.train", "shallownet.cli.compare", "shallownet.cli.figure1"):
        monkeypatch.setattr(f"{module}.start_run", refuse)
    monkeypatch.setattr("shallownet.sweep.runner.run_sweep", refuse)


def _tree(path: Path) -> set[Path]:
    return set(path.rglob("*")) if path.exists() else set()


@pytest.fixture
def refused(cli, tmp_path, no_work):
    """Run a command that must be refused; assert the whole promise, return the error line."""

    def check(command: str, *args: str, named: str, config: Path | None = None) -> str:
        before = _tree(tmp_path)
        try:
            code, out, err, dirs = cli(command, *args, config=config)
        except WorkStarted:
            pytest.fail(f"shallownet {command} {' '.join(args)}: not refused, the command started its work")
        lines = err.strip().splitlines()
        assert code == 2, f"exit status {code}, stderr {err!r}"
        assert "Traceback" not in err, err
        assert len(lines) == 1, f"stderr is not one line: {err!r}"
        assert lines[0].startswith(f"shallownet {command}: error: "), lines[0]
        assert named in lines[0], f"{named!r} not named in {lines[0]!r}"
        assert out == "", out
        assert dirs == []
        assert not (tmp_path / "runs").exists(), "an empty runs/ was left behind"
        assert _tree(tmp_path) == before, f"written: {sorted(_tree(tmp_path) - before)}"
        return lines[0]

    return check


# --- overrides ---------------------------------------------------------------------------------------

def _for(commands, args, named, label):
    return [pytest.param(c, args, named, id=f"{c}-{label}") for c in commands]


SINGLE = ("train", "compare")  # the commands of RunConfig's keys (model.*, data.*, train.*, ...)

OVERRIDES = [
    # a scalar given as a mapping
    *_for(SINGLE, ("model.init.a0.x=1",), "model.init.a0", "scalar.as.section"),
    *_for(SINGLE, ("model.init.a0={x:1}",), "model.init.a0", "scalar.as.mapping"),
    *_for(SINGLE, ("model.width.x=1",), "model.width", "int.as.section"),
    *_for(SINGLE, ("model.width={x:1}",), "model.width", "int.as.mapping"),
    *_for(("sweep",), ("init.width.x=1",), "init.width", "int.as.section"),
    *_for(("sweep",), ("init.width={x:1}",), "init.width", "int.as.mapping"),
    *_for(("sweep",), ("output.progress={x:1}",), "output.progress", "bool.as.mapping"),
    *_for(("figure1",), ("train.max_steps.x=1",), "train.max_steps", "int.as.section"),
    *_for(("figure1",), ("output.name={x:1}",), "output.name", "str.as.mapping"),
    *_for(("figure1",), ("processes={x:1}",), "processes", "list.as.mapping"),
    # a section given as a value
    *_for(SINGLE, ("model.init=3",), "model.init", "section.as.value"),
    *_for(SINGLE, ("train=[1]",), "train", "section.as.list"),
    *_for(("sweep",), ("grid.eta=1",), "grid.eta", "section.as.value"),
    *_for(("figure1",), ("output=x",), "output", "section.as.value"),
    # nested lists where a flat list (or a value) is expected
    *_for(SINGLE, ("model.init.a0=[[1]]",), "model.init.a0", "nested.list"),
    *_for(("compare",), ("processes=[{method: gd, lr: [0.1]}]",), "processes[0].lr", "nested.list"),
    *_for(("compare",), ("processes=[{method: gd, lr: 0.1}, [0.2]]",), "processes[1]", "partly.nested.list"),
    *_for(("figure1",), ("processes=[{method: gd, lr: [0.1]}]",), "processes[0].lr", "nested.list"),
    *_for(("figure1",), ("inits=[[[1.0,2.0]]]",), "inits", "too.nested.list"),
    *_for(("figure1",), ("inits=[1.0,2.0]",), "inits", "flat.list.for.pairs"),
    *_for(SINGLE, ("model.width=[3]",), "model.width", "list.as.int"),
    *_for(("sweep",), ("grid.lr.num=[[3]]",), "grid.lr.num", "nested.list.as.int"),
    *_for(("figure1",), ("train.max_steps=[[1]]",), "train.max_steps", "nested.list.as.int"),
    # integers beyond int64
    *_for(SINGLE, (f"model.width={BIG}",), "model.width", "width.int64"),
    *_for(SINGLE, (f"model.init.seed={BIG}",), "model.init.seed", "seed.int64"),
    *_for(SINGLE, (f"model.init.seed=-{BIG}",), "model.init.seed", "negative.seed.int64"),
    *_for(SINGLE, (f"data.seed={BIG}",), "data.seed", "data.seed.int64"),
    *_for(SINGLE, (f"train.max_steps={BIG}",), "train.max_steps", "max_steps.int64"),
    *_for(SINGLE, (f"data.n_points={BIG}",), "data.n_points", "n_points.int64"),
    *_for(SINGLE, ("train.max_steps=9223372036854775808",), "train.max_steps", "max_steps.2**63"),
    *_for(SINGLE, (f"model.init.a0=[{BIG}]",), "model.init.a0", "float.list.int64"),
    *_for(("train",), (f"optim.lr={BIG}",), "optim.lr", "float.int64"),
    *_for(("compare",), (f"processes=[{{method: gd, lr: {BIG}}}]",), "processes[0].lr", "float.int64"),
    *_for(("sweep",), (f"grid.lr.num={BIG}",), "grid.lr.num", "num.int64"),
    *_for(("sweep",), (f"init.width={BIG}",), "init.width", "width.int64"),
    *_for(("sweep",), (f"init.seed={BIG}",), "init.seed", "seed.int64"),
    *_for(("sweep",), (f"train.max_steps={BIG}",), "train.max_steps", "max_steps.int64"),
    *_for(("sweep",), (f"engine.chunk_size={BIG}",), "engine.chunk_size", "chunk_size.int64"),
    *_for(("figure1",), (f"train.max_steps={BIG}",), "train.max_steps", "max_steps.int64"),
    # sizes that cannot be allocated (refused before allocating)
    *_for(SINGLE, (f"model.width={HUGE}",), "model.width", "width.unallocatable"),
    *_for(SINGLE, (f"data.n_points={HUGE}",), "data.n_points", "n_points.unallocatable"),
    *_for(("sweep",), ("grid.lr.num=1000000", "grid.scale.num=1000000"), "grid.lr.num", "grid.unallocatable"),
    *_for(("sweep",), (f"init.width={HUGE}",), "init.width", "width.unallocatable"),
    *_for(("sweep",), (f"init.width={HUGE}", "engine.backend=batched"), "init.width", "batched.width.unallocatable"),
    # from (1.0, 0.9) GD with eta = 1.05 neither converges nor diverges: every one of the steps is kept
    *_for(("figure1",), (f"train.max_steps={HUGE}", "inits=[[1.0,0.9]]", "processes=[{method: gd, lr: 1.05}]"),
          "train.max_steps",
          "max_steps.unallocatable"),
    *_for(("figure1",), ("processes=[{method: flow, max_step: 1e-9}]",), "processes[0].max_step",
          "flow.points.unallocatable"),
    # dotlist syntax errors
    *_for(SINGLE, ("model.width=[1,2",), "model.width", "unclosed.list"),
    *_for(SINGLE, ("model.width={a:",), "model.width", "unclosed.mapping"),
    *_for(("sweep",), ("init.width=[1,2",), "init.width", "unclosed.list"),
    *_for(("figure1",), ("inits=[[0.1,",), "inits", "unclosed.list"),
    *_for(COMMANDS, ("output.name='abc",), "output.name", "unterminated.quote"),
    *_for(COMMANDS, ('output.name="abc',), "output.name", "unterminated.double.quote"),
    *_for(COMMANDS, ("output.name=a]b",), "output.name", "stray.bracket"),
    *_for(SINGLE, ("model.init.a0=" + "[" * DEEP + "1" + "]" * DEEP,), "model.init.a0", "deeply.nested.list"),
    *_for(("figure1",), ("inits=" + "[" * DEEP + "]" * DEEP,), "inits", "deeply.nested.list"),
    *_for(COMMANDS, ("output..name=x",), "output..name", "empty.key.part"),
    *_for(COMMANDS, ("=x",), "=x", "no.key"),
    *_for(COMMANDS, ("output.name",), "output.name", "no.equals"),
    # interpolations that fail, or are not plain references to other keys
    *_for(COMMANDS, ("output.name=${foo}",), "output.name", "unknown.reference"),
    *_for(COMMANDS, ("output.name=${output.name}",), "output.name", "self.reference"),
    *_for(COMMANDS, ("output.name=${output.root}", "output.root=${output.name}"), "output.", "mutual.reference"),
    *_for(COMMANDS, ("output.name=${oc.env:HOME}",), "output.name", "env.resolver"),
    *_for(COMMANDS, ("output.name=${oc.env:UNSET_VAR_XYZ}",), "output.name", "unset.env.resolver"),
    *_for(COMMANDS, ("output.name=${oc.env:UNSET_VAR_XYZ,dflt}",), "output.name", "env.resolver.default"),
    *_for(COMMANDS, ("output.name=x${oc.decode:'1'}",), "output.name", "decode.resolver"),
    *_for(COMMANDS, ("output.name=${${foo}}",), "output.name", "nested.interpolation"),
    *_for(COMMANDS, ("output.name=${.name}",), "output.name", "relative.reference"),
    *_for(COMMANDS, ("output.name=${output}",), "output.name", "reference.to.section"),
    *_for(SINGLE, ("model.width=${output.name}",), "model.width", "reference.of.wrong.type"),
    *_for(SINGLE, ("output.name=${model.init.a0}",), "output.name", "reference.to.null"),
    *_for(("sweep",), ("init.width=${output.name}",), "init.width", "reference.of.wrong.type"),
    *_for(("figure1",), ("train.max_steps=${output.name}",), "train.max_steps", "reference.of.wrong.type"),
    # output paths
    *_for(COMMANDS, ("output.name=.",), "output.name", "name.dot"),
    *_for(COMMANDS, ("output.name=..",), "output.name", "name.dotdot"),
    *_for(COMMANDS, ("output.name=a/b",), "output.name", "name.slash"),
    *_for(COMMANDS, ("output.name=" + "n" * 300,), "output.name", "name.too.long"),
    *_for(COMMANDS, ("output.name=" + "n" * 250,), "output.name", "name.too.long.with.version"),
    *_for(COMMANDS, ("output.name=",), "output.name", "name.empty"),
    *_for(COMMANDS, ("output.name=''",), "output.name", "name.empty.string"),
    *_for(COMMANDS, ("output.name=-rf",), "output.name", "name.dash"),
    *_for(COMMANDS, ("output.name=\u00e9t\u00e9",), "output.name", "name.non.ascii"),
    *_for(COMMANDS, ("output.name=true",), "output.name", "name.bool"),
    *_for(COMMANDS, ("output.root=/proc/shallownet_test_runs",), "output.root", "root.proc"),
    *_for(COMMANDS, ("output.root=/sys/shallownet_test_runs",), "output.root", "root.sys"),
    *_for(COMMANDS, ("output.root=/dev/shm/../null/runs",), "output.root", "root.dev"),
    *_for(COMMANDS, ("output.root=",), "output.root", "root.null"),
    *_for(COMMANDS, ("output.root=" + "/r" * 3000,), "output.root", "root.path.too.long"),
    # booleans given as numbers or words
    *_for(SINGLE, ("output.progress=2",), "output.progress", "bool.2"),
    *_for(SINGLE, ("output.progress=0",), "output.progress", "bool.0"),
    *_for(SINGLE, ("trainer.detect_anomaly=1",), "trainer.detect_anomaly", "bool.1"),
    *_for(("sweep",), ("output.progress=2",), "output.progress", "bool.2"),
    *_for(("sweep",), ("output.tensorboard=1",), "output.tensorboard", "bool.1"),
    *_for(("sweep",), ("output.progress='true'",), "output.progress", "bool.quoted"),
    # unknown keys
    *_for(SINGLE, ("model.widthh=3",), "model.widthh", "unknown.key"),
    *_for(SINGLE, ("trainer.max_epochs=3",), "trainer.max_epochs", "owned.trainer.key"),
    *_for(("sweep",), ("grid.lr.step=1",), "grid.lr.step", "unknown.key"),
    *_for(("figure1",), ("output.progress=true",), "output.progress", "unknown.key"),
    *_for(("figure1",), ("model.width=3",), "model", "unknown.section"),
    *_for(COMMANDS, ("__class__=1",), "__class__", "dunder.key"),
    *_for(SINGLE, ("model.kind=nope",), "model.kind", "unknown.kind"),
    *_for(SINGLE, ("model.kind=[1]",), "model.kind", "kind.list"),
    # wrong types
    *_for(SINGLE, ("model.width=ten",), "model.width", "int.word"),
    *_for(SINGLE, ("model.width=2.5",), "model.width", "int.float"),
    *_for(SINGLE, ("model.width=",), "model.width", "int.null"),
    *_for(("train",), ("optim.lr=fast",), "optim.lr", "float.word"),
    *_for(("compare",), ("processes=[{method: flow, rtol: fast}]",), "processes[0].rtol", "float.word"),
    *_for(("train",), ("optim.lr=true",), "optim.lr", "float.bool"),
    *_for(("compare",), ("processes=[{method: flow, rtol: true}]",), "processes[0].rtol", "float.bool"),
    *_for(SINGLE, ("model.init.a0=[1,x]",), "model.init.a0", "list.item.word"),
    *_for(("compare",), ("processes=0.1",), "processes", "list.as.scalar"),
    *_for(("sweep",), ("grid.lr.num=3.0",), "grid.lr.num", "int.float"),
    *_for(("sweep",), ("grid.lr.spacing=[log]",), "grid.lr.spacing", "str.list"),
    *_for(("figure1",), ("train.max_steps=1.5",), "train.max_steps", "int.float"),
    *_for(("figure1",), ("inits=[[0.1,x]]",), "inits", "list.item.word"),
    # nan / inf
    *_for(SINGLE, ("model.phi=nan",), "model.phi", "nan"),
    *_for(("train",), ("optim.lr=inf",), "optim.lr", "inf"),
    *_for(("compare",), ("train.max_time=inf",), "train.max_time", "inf"),
    *_for(SINGLE, ("model.init.a0=[1.0,-inf]",), "model.init.a0", "list.inf"),
    *_for(("compare",), ("processes=[{method: gd, lr: 0.1}, {method: gd, lr: nan}]",), "processes[1].lr", "list.nan"),
    *_for(("sweep",), ("phi=inf",), "phi", "inf"),
    *_for(("sweep",), ("grid.lr.stop=nan",), "grid.lr.stop", "nan"),
    *_for(("figure1",), ("train.tol=nan",), "train.tol", "nan"),
    *_for(("figure1",), ("extent=-inf",), "extent", "negative.inf"),
    *_for(("figure1",), ("inits=[[1.0,nan]]",), "inits", "pair.nan"),
    # out of range
    *_for(("train",), ("optim.lr=-0.1",), "optim.lr", "negative.lr"),
    *_for(SINGLE, ("model.width=0",), "model.width", "zero.width"),
    *_for(SINGLE, ("model.width=-1",), "model.width", "negative.width"),
    *_for(SINGLE, ("train.max_steps=0",), "train.max_steps", "zero.steps"),
    *_for(SINGLE, ("model.init.imbalance=1",), "model.init.imbalance", "imbalance.1"),
    *_for(SINGLE, ("data.n_points=0",), "data.n_points", "zero.points"),
    *_for(SINGLE, ("train.dtype=float16",), "train.dtype", "dtype"),
    *_for(SINGLE, ("train.device=tpu",), "train.device", "device"),
    *_for(SINGLE, ("train.device=cuda:99",), "train.device", "absent.gpu"),
    *_for(("compare",), ("processes=[]",), "processes", "empty.processes"),
    *_for(("compare",), ("processes=[{method: gd, lr: 0.1}, {method: gd, lr: -0.1}]",), "processes[1].lr",
          "negative.lr"),
    *_for(("compare",), ("processes=[{method: gd, lr: 0.1}, {method: gd, lr: 0.1}]",), "processes",
          "duplicate.processes"),
    *_for(("compare",), ("train.max_time=0",), "train.max_time", "zero.time"),
    *_for(("sweep",), ("init.imbalance=1",), "init.imbalance", "imbalance.1"),
    *_for(("sweep",), ("grid.lr.num=0",), "grid.lr.num", "empty.axis"),
    *_for(("sweep",), ("grid.scale.stop=0.01",), "grid.scale.stop", "inverted.axis"),
    *_for(("sweep",), ("engine.backend=gpu",), "engine.backend", "backend"),
    *_for(("sweep",), ("engine.memory_mb=0",), "engine.memory_mb", "zero.memory"),
    *_for(("sweep",), ("engine.memory_mb=1e30",), "engine.memory_mb", "memory.beyond.machine"),
    *_for(("sweep",), ("init.width=0",), "init.width", "zero.width"),
    *_for(("sweep",), ("train.max_steps=-1",), "train.max_steps", "negative.steps"),
    *_for(("figure1",), ("processes=[{method: gd, lr: 0}]",), "processes[0].lr", "zero.lr"),
    *_for(("figure1",), ("processes=[]",), "processes", "empty.processes"),
    *_for(("figure1",), ("inits=[]",), "inits", "empty.inits"),
    *_for(("figure1",), ("inits=[[1.0,-1.0]]",), "inits[0]", "saddle.init"),
    *_for(("figure1",), ("inits=[[1.0]]",), "inits[0]", "short.pair"),
    *_for(("figure1",), ("train.max_steps=0",), "train.max_steps", "zero.steps"),
    *_for(("figure1",), ("phi=-1",), "phi", "negative.phi"),
]


@pytest.mark.parametrize("command, args, named", OVERRIDES)
def test_bad_override_is_refused(refused, command, args, named):
    refused(command, *args, named=named)


@pytest.mark.parametrize("command", COMMANDS)
def test_root_that_is_a_file_is_refused(refused, tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    refused(command, f"output.root={blocker}", named="output.root")
    refused(command, f"output.root={blocker}/runs", named="output.root")


@pytest.mark.parametrize("command", COMMANDS)
def test_name_that_is_a_file_is_refused(refused, tmp_path, command):
    root = tmp_path / "other_root"
    root.mkdir()
    (root / "taken").write_text("not a folder")
    refused(command, f"output.root={root}", "output.name=taken", named="output.name")
    assert [p.name for p in root.iterdir()] == ["taken"]


# --- config files ------------------------------------------------------------------------------------

def _key_yaml(command: str, value: str) -> str:
    """YAML setting an integer key of `command` (the one `_key_name` names) to `value`."""
    return {"train": "model:\n  init:\n    seed: {}\n", "compare": "model:\n  init:\n    seed: {}\n",
            "sweep": "init:\n  seed: {}\n", "figure1": "max_steps: {}\n"}[command].format(value)


def _key_name(command: str) -> str:
    return {"train": "model.init.seed", "compare": "model.init.seed", "sweep": "init.seed",
            "figure1": "max_steps"}[command]


def _alias_bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _deep_list(command: str) -> str:
    return _key_yaml(command, "[" * DEEP + "]" * DEEP)


def _deep_mapping(command: str) -> str:
    return "output: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n"


FILE_CASES = {  # name: (content for a command, what the error names: "file" or "key")
    "deep.list": (_deep_list, "file"),
    "deep.mapping": (_deep_mapping, "file"),
    "alias.bomb": (lambda c: _alias_bomb(), "file"),
    "anchor.and.alias": (lambda c: "output: &o {name: x}\nother: *o\n", "file"),
    "merge.key": (lambda c: "base: &b {name: x}\noutput:\n  <<: *b\n", "file"),
    "duplicate.key": (lambda c: _key_yaml(c, "1") + _key_yaml(c, "2"), "file"),
    "duplicate.top.key": (lambda c: "output:\n  name: a\noutput:\n  name: b\n", "file"),
    "list.top.level": (lambda c: "- a\n- b\n", "file"),
    "scalar.top.level": (lambda c: "42\n", "file"),
    "string.top.level": (lambda c: "just some words\n", "file"),
    "python.tag": (lambda c: 'output: !!python/object/apply:os.system ["true"]\n', "file"),
    "binary.tag": (lambda c: "output:\n  name: !!binary aGVsbG8=\n", "file"),
    "set.tag": (lambda c: "output:\n  name: !!set {a, b}\n", "file"),
    "non.string.key": (lambda c: "1: 2\n", "file"),
    "null.key": (lambda c: "output:\n  ~: 2\n", "file"),
    "tab.indent": (lambda c: "output:\n\tname: x\n", "file"),
    "date": (lambda c: _key_yaml(c, "2024-01-01"), "key"),
    "datetime": (lambda c: _key_yaml(c, "2024-01-01 10:00:00"), "key"),
    "int64": (lambda c: _key_yaml(c, BIG), "key"),
    "inf": (lambda c: _key_yaml(c, ".inf"), "key"),
    "bool.for.int": (lambda c: _key_yaml(c, "yes"), "key"),
    "mapping.for.int": (lambda c: _key_yaml(c, "{x: 1}"), "key"),
    "nested.list.for.int": (lambda c: _key_yaml(c, "[[1]]"), "key"),
    "env.resolver": (lambda c: "output:\n  name: ${oc.env:HOME}\n", "output.name"),
    "unknown.top.key": (lambda c: "nope: 1\n", "nope"),
}


SLOW_FILE_CASES = {"deep.list"}  # a few seconds each (PyYAML's scanner): every command but train under -m slow


@pytest.mark.parametrize("command, case", [
    pytest.param(command, case, id=f"{command}-{case}",
                 marks=[pytest.mark.slow] if case in SLOW_FILE_CASES and command != "train" else [])
    for command in COMMANDS for case in FILE_CASES])
def test_bad_config_file_is_refused(refused, tmp_path, command, case):
    make, named = FILE_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(make(command))
    named = str(path) if named == "file" else _key_name(command) if named == "key" else named
    started = time.perf_counter()
    refused(command, named=named, config=path)
    assert time.perf_counter() - started < 30, "refusing took too long"


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_unreadable_and_oversized_config_files_are_refused(refused, tmp_path, command):
    missing = tmp_path / "missing.yaml"
    refused(command, named=str(missing), config=missing)
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    refused(command, named=str(folder), config=folder)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    refused(command, named=str(binary), config=binary)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    refused(command, named=str(big), config=big)


def test_alias_bomb_is_refused_fast(refused, tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    refused("train", "output.name=.", named="output.name")  # imports done before timing
    started = time.perf_counter()
    refused("train", named=str(path), config=path)
    assert time.perf_counter() - started < 5


def test_flow_points_beyond_the_cap_are_refused_quickly(refused):
    refused("figure1", "output.name=.", named="output.name")  # imports done before timing
    started = time.perf_counter()
    line = refused("figure1", "processes=[{method: flow, max_step: 1e-9}]", named="processes[0].max_step")
    assert time.perf_counter() - started < 5
    assert "1e-09" in line or "1e-9" in line


# --- the installed console script --------------------------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (("train", f"model.width={BIG}"), "model.width"),
    (("sweep", "output.name=${oc.env:HOME}"), "output.name"),
    (("figure1", "lrs=[[0.1]]"), "lrs"),
])
def test_console_script_refuses_with_one_line(tmp_path, args, named):
    exe = Path(sys.executable).with_name("shallownet")
    assert exe.is_file(), "the console script `shallownet` is not installed beside the interpreter"
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([str(exe), *args, f"output.root={tmp_path / 'runs'}"], capture_output=True, text=True,
                          cwd=work, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == [work] and list(work.iterdir()) == []


# --- valid references are resolved -------------------------------------------------------------------

def test_valid_reference_is_accepted_and_resolved(cli, tmp_path):
    code, _, err, dirs = cli("train", "output.name=${model.kind}", "train.max_steps=2",
                             "monitor.sharpness.every_n_steps=0", "output.progress=false")
    assert code == 0, err
    (run_dir,) = dirs
    assert run_dir == tmp_path / "runs" / "scalar_linear" / "version_0"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["output"]["name"] == "scalar_linear"
    assert "${" not in (run_dir / "config.yaml").read_text()


# --- valid but extreme input does not crash ----------------------------------------------------------

@pytest.mark.parametrize("args", [("train.max_steps=1",), ("grid.lr.start=5", "grid.lr.stop=6")],
                         ids=["budget.of.one.step", "every.run.diverges"])
def test_sweep_where_no_run_converges_writes_its_figures(cli, args):
    code, out, err, dirs = cli("sweep", "grid.lr.num=3", "grid.scale.num=3", *args, "output.progress=false")
    assert code == 0, err
    (run_dir,) = dirs
    for name in ("grid.npz", "figure3.png", "sharpness.png", "summary.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    assert list(run_dir.glob("events.out.tfevents.*"))
    summary = read_summary(run_dir)
    assert summary["outcomes"].get("converged", 0) == 0
    assert sum(summary["outcomes"].values()) == 9
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN / Infinity from the empty statistics


def test_sweep_of_a_single_run_writes_its_figures(cli):
    code, _, err, (run_dir,) = cli("sweep", "grid.lr.num=1", "grid.scale.num=1", "grid.lr.start=0.5",
                                   "grid.lr.stop=0.5", "grid.scale.start=1", "grid.scale.stop=1",
                                   "output.progress=false", "output.tensorboard=false")
    assert code == 0, err
    assert read_summary(run_dir)["outcomes"]["converged"] == 1
    for name in ("grid.npz", "figure3.png", "sharpness.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert sum(read_summary(run_dir)["outcomes"].values()) == 1


def test_extreme_but_valid_seeds_and_budget_run(cli):
    code, _, err, (run_dir,) = cli(
        "train", "model.init.seed=-9223372036854775808", "data.seed=9223372036854775807", "data.n_points=3",
        "data.noise=0.1", "train.max_steps=9223372036854775807", "train.tol=1e-6",
        "monitor.sharpness.every_n_steps=0", "output.progress=false")
    assert code == 0, err
    summary = read_summary(run_dir)
    assert summary["status"] == "converged"
    assert summary["seed"] == -9223372036854775808
