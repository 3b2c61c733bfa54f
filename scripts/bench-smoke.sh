#!/usr/bin/env bash
# Every benchmark at tiny sizes (--smoke), on the CPU: checks they still run, in seconds each. Stops at the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CUDA_VISIBLE_DEVICES=""
export TF_CPP_MIN_LOG_LEVEL=2

for bench in compare_page gradient_probe truncation_meter sweep_parallel tbptt_memory throughput report demo_server gpu; do
    echo "== benchmarks/${bench}.py --smoke"
    start=$SECONDS
    .venv/bin/python "benchmarks/${bench}.py" --smoke
    echo "-- ${bench}: $((SECONDS - start)) s"
done
echo "all benchmarks passed their smoke run"
