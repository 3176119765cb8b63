#!/usr/bin/env bash
# The device check, in one call (a few minutes on one GPU): the CUDA tests, then the throughput benchmark of
# the CIFAR-10 configs with every speed option against the official-style path, and the MFU.
#   bash benchmarks/gpu_check.sh [OUT]        (OUT: folder for the logs and JSON; default ./gpu_check)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check}}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/device.txt" 2>&1
python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))' >> "$out/device.txt" 2>&1
timeout 240 python3 -m pytest -q -x tests/test_speed.py tests/test_cuda_graphs.py tests/test_sampling.py \
  tests/test_likelihood.py tests/test_models_ncsnpp_ddpm.py tests/test_distributed.py > "$out/tests.log" 2>&1
echo "tests exit $?" >> "$out/tests.log"
timeout 300 python3 benchmarks/throughput.py --device cuda --configs ddpm,ddpmpp,ncsnpp --steps 20 --repeats 2 \
  --json "$out/throughput.json" > "$out/throughput.log" 2>&1
echo "benchmark exit $?" >> "$out/throughput.log"
tail -n 40 "$out/throughput.log"; tail -n 3 "$out/tests.log"
