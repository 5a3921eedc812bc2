"""Every registered model through the same run machinery: the paper's model at depth 2 is the shallow net
number for number, chunked gradients are the full-batch gradient, measuring does not change the run, and a
CUDA run equals the CPU run."""

from __future__ import annotations

import pytest
import torch

from shallownet import events
from shallownet.config import RunConfig, load_config, validate_run
from shallownet.training import build, run

SMALL = {  # a few-second run of each registered kind
    "scalar_linear": [],
    "deep_scalar_linear": ["model.depth=3", "model.width=4"],
    "scalar_chain": ["model.depth=4", "model.init.scale=0.9"],
    "deep_linear": ["model.hidden=[5,3]", "data.n_samples=40", "optim.lr=0.02"],
    "mlp": ["model.widths=[16]", "data.n_train=200", "data.n_test=50", "optim.lr=0.5"],
    "cnn": ["model.channels=[4,4]", "data.n_train=100", "data.n_test=50", "optim.lr=0.5"],
    "vgg": ["model.channels=[2,4]", "model.hidden=8", "model.batch_norm=true", "data.n_train=60",
            "data.n_test=50", "optim.lr=0.2"],
    "resnet": ["model.depth=1", "model.width=4", "model.stages=2", "model.batch_norm=true", "data.n_train=60",
               "data.n_test=50", "optim.lr=0.1"],
    "transformer": ["model.layers=1", "model.d_model=8", "model.heads=2", "model.mlp_width=16", "data.modulus=5",
                    "optim.lr=0.1"],
    "vit": ["model.patch=4", "model.layers=1", "model.d_model=8", "model.heads=2", "model.mlp_width=16",
            "data.n_train=60", "data.n_test=50", "optim.lr=0.1"],
}


def config(kind: str, *overrides: str):
    cfg = load_config(RunConfig, None, [f"model.kind={kind}", *SMALL[kind], "train.max_steps=6", "train.tol=1e-300",
                                        "output.progress=false", *overrides])
    validate_run(cfg)
    return cfg


def final_state(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_the_papers_model_at_depth_two_is_the_shallow_net_number_for_number(tmp_path):
    common = ["train.max_steps=40", "optim.lr=0.3", "model.init.scheme=imbalanced", "model.init.scale=1.3",
              "monitor.sharpness.every_n_steps=5"]
    shallow = load_config(RunConfig, None, [*common, "model.init.imbalance=0.6"])
    deep = load_config(RunConfig, None, ["model.kind=deep_scalar_linear", "model.depth=2", *common,
                                         "model.init.imbalance=[0.6]"])
    summaries = [run(cfg, tmp_path / name) for name, cfg in (("shallow", shallow), ("deep", deep))]
    logged = [events.read_metrics(tmp_path / name) for name in ("shallow", "deep")]
    for tag in ("dynamics/loss", "dynamics/residual", "dynamics/norm", "dynamics/imbalance",
                "dynamics/imbalance_norm", "dynamics/imbalance_ratio"):
        assert logged[0][tag][0].tolist() == logged[1][tag][0].tolist(), tag
        torch.testing.assert_close(torch.tensor(logged[1][tag][1]), torch.tensor(logged[0][tag][1]),
                                   rtol=1e-13, atol=1e-15, msg=tag)
    torch.testing.assert_close(torch.tensor(logged[1]["curvature/sharpness"][1]),
                               torch.tensor(logged[0]["curvature/sharpness"][1]), rtol=1e-9, atol=0)
    assert summaries[0]["status"] == summaries[1]["status"] and summaries[0]["steps"] == summaries[1]["steps"]
    for key in ("residual", "norm", "imbalance", "imbalance_norm"):
        assert summaries[1]["final"][key] == pytest.approx(summaries[0]["final"][key], rel=1e-13, abs=1e-15), key


FAST = ("scalar_chain", "deep_linear", "mlp")  # the rest run with -m slow


@pytest.mark.parametrize("kind", [k if k in FAST else pytest.param(k, marks=pytest.mark.slow) for k in SMALL])
def test_every_registered_kind_trains_with_its_monitors(tmp_path, kind):
    summary = run(config(kind, "monitor.sharpness.every_n_steps=3"), tmp_path)
    assert summary["status"] == "max_steps" and summary["steps"] == 6 and summary["model"] == kind
    assert summary["final"]["loss"] < summary["init"]["loss"]
    assert summary["final"]["sharpness"] > 0
    assert events.read_metrics(tmp_path)["curvature/sharpness"][0].tolist() == [0, 3, 6]


def test_chunked_gradient_is_the_full_batch_gradient(tmp_path):
    """One GD step from the same init: the step is -lr times the gradient, so the parameters agree exactly
    as far as the gradients do."""
    states = []
    for chunk in ("null", "64"):
        cfg = config("mlp", f"train.chunk_size={chunk}", "train.max_steps=1", "optim.lr=1.0",
                     "monitor.sharpness.every_n_steps=0")
        run(cfg, tmp_path / chunk)
        states.append(final_state(tmp_path / chunk))
    assert 200 % 64 != 0  # data.n_train=200: a smaller last chunk, weighted by its size
    for name in states[0]:
        torch.testing.assert_close(states[1][name], states[0][name], rtol=1e-12, atol=1e-15, msg=name)


def test_batchnorm_nets_refuse_chunked_statistics():
    from shallownet.config import ConfigError

    with pytest.raises(ConfigError, match="train.chunk_size"):
        build(config("vgg", "train.chunk_size=32"))


@pytest.mark.parametrize("kind", ["vgg", "mlp"])
def test_a_monitored_run_ends_bit_identical_to_an_unmonitored_one(tmp_path, kind):
    """BatchNorm running statistics and parameters are untouched by the sharpness solves and the
    monitors' measuring forwards."""
    monitored = run(config(kind, "monitor.sharpness.every_n_steps=2", "monitor.balance.every_n_steps=2"),
                    tmp_path / "on")
    plain = run(config(kind, "monitor.sharpness.every_n_steps=0", "monitor.dynamics.every_n_steps=1000"),
                tmp_path / "off")
    assert monitored["steps"] == plain["steps"]
    on, off = final_state(tmp_path / "on"), final_state(tmp_path / "off")
    assert on.keys() == off.keys()
    for name in on:
        assert torch.equal(on[name], off[name]), name


@pytest.mark.cuda
@pytest.mark.parametrize("kind", list(SMALL))
def test_cuda_run_equals_the_cpu_run(tmp_path, kind):
    for device in ("cpu", "cuda"):
        run(config(kind, f"train.device={device}", "monitor.sharpness.every_n_steps=3"), tmp_path / device)
    cpu, gpu = final_state(tmp_path / "cpu"), final_state(tmp_path / "cuda")
    for name in cpu:
        torch.testing.assert_close(gpu[name], cpu[name], rtol=1e-10, atol=1e-12, msg=name)
    sharp = [events.read_metrics(tmp_path / d)["curvature/sharpness"][1] for d in ("cpu", "cuda")]
    torch.testing.assert_close(torch.tensor(sharp[1]), torch.tensor(sharp[0]), rtol=1e-8, atol=0)
