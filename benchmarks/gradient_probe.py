"""Cost of one gradient-flow probe (`rnnlib.worker.gradients`), the first (tracing) one and the ones after it.

    .venv/bin/python benchmarks/gradient_probe.py [--units 32] [--lengths 100 1000] [--smoke]

A probe runs on `num_probe_sequences` (4) fixed sequences: ∂L_T/∂h_t for every layer and step, plus the
Jacobian norms ‖∂h_T/∂h_t‖₂ (one replica of each sequence per unit). Training pays it once per epoch by
default; compare with the epoch time of the same model (benchmarks/throughput.py).
--smoke: 8 units, T = 20, one repeat (a few seconds, to check it still runs).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from rnnlib import tasks  # noqa: E402
from rnnlib.core import config as cfg  # noqa: E402
from rnnlib.worker import gradients, models  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.units, args.lengths, args.repeats = 8, [20], 1
    print(f"backend {keras.backend.backend()}, units {args.units}, 4 probe sequences")
    print(f"{'cell':>5} {'T':>6} {'first probe s':>14} {'next probes s':>14}")
    for length in args.lengths:
        for cell_type in ("rnn", "lstm", "gru"):
            config = cfg.validate({"task": {"name": "adding", "length": length},
                                   "model": {"cell_type": cell_type, "units": args.units}})
            task = tasks.build(config.task)
            model = models.build_model(config.model, task, batch_size=config.training.batch_size, stateful=True)
            start = time.perf_counter()
            recorder = gradients.FlowRecorder(model, task, config)
            recorder.record(0, 0.0)
            first = time.perf_counter() - start
            start = time.perf_counter()
            for step in range(args.repeats):
                recorder.record(step + 1, 0.0)
            print(f"{cell_type:>5} {length:>6} {first:>14.2f} {(time.perf_counter() - start) / args.repeats:>14.3f}")


if __name__ == "__main__":
    main()
