"""Peak memory of truncated BPTT as the sequence grows: T = 1,000 / 10,000 / 100,000.

    .venv/bin/python benchmarks/tbptt_memory.py [--k 50] [--task copy_memory] [--smoke]

Each length trains in a fresh process (one batch of sequences, then a full-length validation pass) and
reports its peak resident memory. With the state carried across updates, only one update of k steps is ever
unrolled with gradient, so memory should not grow with T. Target: peak(100,000) <= 1.2 x peak(1,000).
For contrast, full BPTT is measured at the two shorter lengths.
--smoke: T = 100 / 400 (full BPTT at 100 only), k = 10, 8 units, batch 4: three short children, to check it
runs (each child still pays the TensorFlow start-up); the ratio means little.
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, resource, sys, time
from rnnlib.core import config as cfg
from rnnlib.worker import training
config = cfg.parse_config(sys.argv[1])
start = time.perf_counter()
result = training.train(config)
print(json.dumps({"seconds": time.perf_counter() - start, "updates": result.history[0]["updates"],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(task, length, truncation, units, batch_size):
    length_key = {"adding": "length", "copy_memory": "delay"}[task]
    length_value = length if task == "adding" else length - 20
    text = (f"task: {{name: {task}, {length_key}: {length_value}}}\nmodel: {{cell_type: lstm, units: {units}}}\n"
            f"training: {{epochs: 1, steps_per_epoch: 1, batch_size: {batch_size}, "
            f"num_validation_sequences: {batch_size}, truncation: {truncation}}}\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", CHILD, text], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child failed (T={length}, truncation={truncation}), exit {out.returncode}:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--task", default="copy_memory", choices=["copy_memory", "adding"])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs, in seconds")
    args = parser.parse_args()
    lengths = (1_000, 10_000, 100_000)
    if args.smoke:
        lengths, args.k, args.units, args.batch_size = (100, 400), 10, 8, 4
    print(f"task={args.task} LSTM units={args.units} batch={args.batch_size} TBPTT k1=k2={args.k}")
    peaks = {}
    for length in lengths:
        m = measure(args.task, length, args.k, args.units, args.batch_size)
        peaks[length] = m["peak_rss_mb"]
        print(f"TBPTT({args.k:>3}) T={length:>7,}: peak RSS {m['peak_rss_mb']:7.0f} MB, {m['updates']:6.0f} updates, "
              f"{m['seconds']:6.1f} s")
    for length in lengths[:1] if args.smoke else lengths[:2]:
        m = measure(args.task, length, "full", args.units, args.batch_size)
        print(f"full BPTT  T={length:>7,}: peak RSS {m['peak_rss_mb']:7.0f} MB, {m['seconds']:6.1f} s")
    print(f"ratio peak(T={lengths[-1]:,}) / peak(T={lengths[0]:,}) = {peaks[lengths[-1]] / peaks[lengths[0]]:.3f}"
          "  (target <= 1.2)")


if __name__ == "__main__":
    main()
