"""examples/flows_over_eta.py end to end: one real `shallownet compare` at two step sizes, against the exact
limits it draws beside them (docs/theory.md section 11; the paper's lam_GD)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

LAM_GF = math.sqrt(20.0)  # |a|^2 + |b|^2 at the GF minimum from (2, 0), Phi = 1: sqrt(4 Phi^2 + Q0^2)


@pytest.mark.slow
def test_flows_over_eta_ends_where_theory_says(tmp_path):
    done = subprocess.run([sys.executable, "examples/flows_over_eta.py", tmp_path, "--etas", "0.2", "0.5"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "flows_over_eta.json").read_text())
    assert result["lam_gf"] == pytest.approx(LAM_GF, rel=1e-12)
    assert result["gradient_flow"] == pytest.approx(LAM_GF, rel=1e-6)
    low, high = result["rows"]
    for row in (low, high):
        assert row["gd"] == pytest.approx(row["exact_gd"], abs=1e-6)  # the Lightning run and the recursion
        assert row["central_flow"] == pytest.approx(row["central_limit"], abs=1e-5)
        assert row["gd"] < row["modified_flow"] < LAM_GF  # the modified flow keeps only GD's first order
    assert low["central_limit"] == pytest.approx(LAM_GF) and high["central_limit"] == pytest.approx(2 / 0.5)
    assert low["modified_distance"] < low["central_distance"]  # below the threshold the modified flow is closer
    assert high["central_distance"] < high["modified_distance"]  # at the edge the central flow is
    assert (tmp_path / "flows_over_eta.png").stat().st_size > 20_000


def test_flows_over_eta_refuses_step_sizes_without_a_stable_minimum(tmp_path):
    done = subprocess.run([sys.executable, "examples/flows_over_eta.py", tmp_path, "--etas", "0.5", "1.2"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2 and "--etas must lie in (0, 1)" in done.stderr
    assert not any(tmp_path.iterdir())
