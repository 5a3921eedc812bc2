#!/usr/bin/env bash
# The GPU check, run on a CUDA machine from the repository root (a few minutes):
#   bash benchmarks/gpu_check.sh
# It runs the CUDA-marked tests, one CUDA training run, the GPU edge-of-stability run and the GPU benchmarks. Wheels in .whl/ supply packages
# the machine lacks (omegaconf on the lent GPU machines, which have no network): make them here first with
# `bash benchmarks/gpu_wheels.sh` and carry .whl.
set -uo pipefail
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
export SHALLOWNET_PLUGINS="extensions.deep_kinds,extensions.real_kinds,extensions.arch_kinds,extensions.sgd_kinds"  # not pip-installed
status=0
step() { echo; echo "=== $*"; "$@" || status=1; }

step nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
step python3 -m pytest -m cuda -q -p no:cacheprovider -o addopts="" tests   # CUDA = CPU runs, LayerNorm third derivatives
step python3 -m pytest -m cuda -q -s -p no:cacheprovider -o addopts="" tests/test_transformer.py   # prints torch's own
step python3 -m shallownet train configs/train.yaml train.device=cuda output.root=/tmp/gpu_runs
step python3 benchmarks/bench_sweep.py --device cuda --skip-end-to-end
step python3 benchmarks/bench_curvature_gpu.py
step python3 benchmarks/eos_gpu.py
# chain sweeps: the fused numba.cuda kernels (shallownet/sweep/cuda_kernels.py) against the CPU kernels
step python3 -m pytest -m cuda -q -p no:cacheprovider -o addopts="" tests/test_chain_sweep.py
step python3 benchmarks/bench_chain_sweep.py --skip-grid
# phase maps of real nets: the vectorised engine against loops of single runs, and the largest R tried
step python3 benchmarks/bench_phase_map.py --device cuda --runs 16 64 256 1024 4096
# the ResNet / Transformer edge-of-stability study on CUDA, shortened (its probe and spectra run on the CPU copy)
step python3 examples/architectures_eos.py --device cuda --steps 300 --root /tmp/gpu_runs --figures /tmp/gpu_figures
exit $status
