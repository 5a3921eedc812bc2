"""`shallownet <command> --help` (every config key, from the schemas), --version, --print-config and the
argument errors: through main() in-process and through the real command as a subprocess."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from typing import Optional

import pytest
import yaml
from omegaconf import OmegaConf

from shallownet import __version__, registry
from shallownet.cli import COMMANDS, main
from shallownet.config import ConfigError, RunConfig, load_config
from shallownet.describe import describe, field_comments, reference_markdown
from tests.conftest import REPO


def schema(command: str) -> type:
    return importlib.import_module(f"shallownet.cli.{command}").SCHEMA


def variants(command: str) -> list[list[str]]:
    """Overrides choosing every registered kind where the command has a kind section."""
    if command == "train":
        return [[]] + [[f"{section}.{key}={name}"] for section, key, table in
                       (("model", "kind", "model"), ("data", "kind", "data"), ("optim", "method", "process"))
                       for name in registry.known(table)]
    if command == "compare":
        return [[], ["processes=[" + ", ".join(f"{{method: {m}}}" for m in registry.known("process")) + "]"],
                *([f"model.kind={name}"] for name in registry.known("model"))]
    return [[]]


def leaves(node, prefix=""):
    """The dotted keys of the config's values (a list of sections is one value)."""
    if isinstance(node, dict):
        return [key for k, v in node.items() for key in leaves(v, f"{prefix}{k}.")]
    return [prefix[:-1]]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_key_is_listed_with_its_default_and_a_meaning(command):
    for overrides in variants(command):
        cfg = load_config(schema(command), None, overrides)
        rows = describe(schema(command), cfg)
        names = [r.name for r in rows]
        assert len(names) == len(set(names))
        missing = set(leaves(OmegaConf.to_container(cfg))) - set(names)
        assert not missing, (command, overrides, missing)
        assert all(r.meaning for r in rows), [r.name for r in rows if not r.meaning]
        shown = {r.name: r.default for r in rows}
        for key in leaves(OmegaConf.to_container(cfg)):
            value = OmegaConf.select(cfg, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert float(shown[key]) == value, key  # the default as written parses back to the value


def test_help_of_the_chosen_kinds(capsys):
    assert main(["train", "--help", "model.kind=mlp", "optim.method=adam"]) == 0
    out = capsys.readouterr().out
    assert "model.widths=[200, 200]" in out and "model.activation=relu" in out
    assert "model.width=" not in out  # the shallow net's key: not a key of mlp
    assert "data.kind=digits" in out and "data.n_test=297" in out  # mlp's default data
    assert "optim.betas=[0.9, 0.999]" in out and "optim.lr=0.001" in out
    assert "one of tanh, relu, leaky_relu" in out  # allowed values
    assert "one of " + ", ".join(registry.known("model")) in out
    assert main(["train", "--help", "data.kind=matrix_regression", "model.kind=deep_linear"]) == 0
    assert "data.d_in=6" in capsys.readouterr().out


def test_help_shows_the_commands_own_defaults(capsys):
    main(["eos", "--help"])
    out = capsys.readouterr().out
    assert "monitor.sharpness.every_n_steps=20" in out and "train.max_steps=800" in out  # eos's, not train's
    main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "model.init.scheme=imbalanced" in out and "model.init.imbalance=0.8" in out  # compare's kind_defaults
    assert "processes[method=flow].rtol=1e-10" in out


def test_help_refuses_bad_arguments(capsys):
    assert main(["train", "--help", "model.kind=mpl"]) == 2
    assert "did you mean 'mlp'" in capsys.readouterr().err


def test_field_comments_from_the_source():
    @dataclasses.dataclass
    class Example:
        plain: int = 1  # one line
        marked: Optional[int] = None  # noqa: UP045 (omegaconf reads typing.Optional only); after the marker
        continued: float = 2.0  # first part,
        # second part
        bare: int = 0

        below = 3  # not a field

    assert field_comments(Example) == {"plain": "one line", "marked": "after the marker",
                                       "continued": "first part, second part", "bare": ""}


def test_choices_are_listed_and_refused_with_a_close_match():
    rows = {r.name: r for r in describe(RunConfig, load_config(RunConfig, None, []))}
    assert rows["model.init.scheme"].allowed == "gaussian, explicit, imbalanced"
    assert rows["train.dtype"].allowed == "float64, float32"
    with pytest.raises(ConfigError, match=r"model.init.scheme' must be one of .*did you mean 'imbalanced'"):
        load_config(RunConfig, None, ["model.init.scheme=imbalnced"])
    with pytest.raises(ConfigError, match="train.dtype' must be one of float64, float32"):
        load_config(RunConfig, None, ["train.dtype=float16"])


def run_cli(*args, check_imports=False):
    """The real command, as a new process: (returncode, stdout, stderr)."""
    prefix = ["-X", "importtime"] if check_imports else []
    done = subprocess.run([sys.executable, *prefix, "-m", "shallownet", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize("args", [("train", "--help", "model.kind=mlp"), ("sweep", "--help"),
                                  ("train", "--print-config", "model.kind=cnn"), ("--version",),
                                  ("train", "model.kind=nope")])
def test_the_command_does_not_import_torch(args):
    code, out, err = run_cli(*args, check_imports=True)
    assert code == (2 if "model.kind=nope" in args else 0), err[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "shallownet" in imported  # the import log is there
    assert not {"torch", "lightning", "numba"} & imported


def test_version():
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith(f"shallownet {__version__}")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    if head:
        assert f"git commit {head}" in out


def test_print_config_writes_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    (root / "train" / "version_3").mkdir(parents=True)
    assert main(["train", "--print-config", f"output.root={root}", "optim.lr=0.2", "model.width=3"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    expected = load_config(RunConfig, None, [f"output.root={root}", "optim.lr=0.2", "model.width=3"])
    assert printed == OmegaConf.to_container(expected, resolve=True)
    assert out.rstrip().endswith(f"# would write the run folder {root / 'train' / 'version_4'}")
    assert sorted(p.name for p in root.rglob("*")) == ["train", "version_3"]  # nothing new
    assert main(["sweep", "--print-config", f"output.root={root}", "grid.lr.num=0"]) == 2  # validated
    assert "grid.lr.num" in capsys.readouterr().err


def test_print_config_as_a_config_file(tmp_path, capsys):
    """What --print-config prints is a config: given back as CONFIG it gives the same config."""
    main(["compare", "--print-config", "processes=[{method: adam, lr: 0.01}]", "model.width=2"])
    saved = tmp_path / "saved.yaml"
    saved.write_text(capsys.readouterr().out)
    main(["compare", "--print-config", str(saved)])
    assert yaml.safe_load(capsys.readouterr().out)["processes"] == [{"method": "adam", "lr": 0.01,
                                                                     "betas": [0.9, 0.999], "eps": 1e-8}]


def test_a_space_instead_of_equals_says_what_was_meant(capsys):
    assert main(["train", "optim.lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean optim.lr=0.1?" in err and "no such file" not in err
    assert main(["train", "model.width=3", "optim.lr", "0.1"]) == 2
    assert "did you mean optim.lr=0.1?" in capsys.readouterr().err
    assert main(["train", "optim.lr", "-0.1"]) == 2  # a negative value is no option
    assert "did you mean optim.lr=-0.1?" in capsys.readouterr().err
    assert main(["sweep", "grid.lr.num"]) == 2
    assert "did you mean grid.lr.num=VALUE?" in capsys.readouterr().err
    assert main(["train", "missing.yaml"]) == 2  # a file name stays a file name
    assert "config file missing.yaml: no such file" in capsys.readouterr().err


def test_a_key_of_another_kind_names_its_kinds(capsys):
    assert main(["train", "model.widths=[3]"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.widths'" in err and "belongs to the model kinds mlp" in err


def test_unknown_commands_and_options(capsys):
    assert main(["trian"]) == 2
    assert "did you mean 'train'?" in capsys.readouterr().err
    assert main(["train", "--print-cfg"]) == 2
    assert "unknown option '--print-cfg'" in capsys.readouterr().err
    code, _, err = run_cli("sweeps")
    assert code == 2 and "did you mean 'sweep'?" in err


def test_the_config_reference_is_current():
    """docs/reference/config.md is generated from the schemas; regenerate: python -m shallownet.describe"""
    written = (REPO / "docs" / "reference" / "config.md").read_text()
    assert written == reference_markdown(), "docs/reference/config.md is stale: run python -m shallownet.describe"
    for name in COMMANDS:
        assert f"## {name}\n" in written
    for kind in registry.known("model"):
        assert f"### model.kind={kind}\n" in written


def test_the_documentation_site_builds(tmp_path):
    """mkdocs build --strict: broken links and anchors, pages missing from nav and failed API pages fail it."""
    pytest.importorskip("mkdocstrings")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    page = (tmp_path / "site" / "api" / "callbacks" / "index.html").read_text()
    assert "SharpnessMonitor" in page and "every_n_steps" in page  # the monitors' constructor arguments
