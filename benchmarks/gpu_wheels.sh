#!/usr/bin/env bash
# Run here (with network) before a GPU check: puts into .whl/ the pure-Python wheels that shallownet needs
# and the lent GPU machines lack (they have torch, lightning, numba(-cuda), tensorboard, scikit-learn, but
# not omegaconf; no network there). Then carry .whl with the run; gpu_check.sh installs it to /tmp/site.
#   bash benchmarks/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl omegaconf==2.3.0
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3  # omegaconf's parser; sdist only on PyPI
ls .whl
