"""Cost of the truncation-bias meter (`rnnlib.worker.gradients.FlowRecorder.meter`) as a share of training time.

    .venv/bin/python benchmarks/truncation_meter.py [--cells rnn lstm gru] [--truncations full 20 10/20 rand20
        unbiased20] [--length 100] [--units 32] [--epochs 4] [--smoke]

Each cell × truncation trains for real (`rnnlib.worker.training.train`) with a probe at initialisation and one
at the end of every epoch (`probe_every: epoch`), on 4 probe sequences, with the default `bias_samples` (8) for
random modes. Every call of the meter is timed. Printed per run: the steady epoch time (median after the first,
which traces), the meter's first call (tracing its two passes) and its time per probe after that (median), its
share of an epoch, its share at the default schedule (`probe_every: auto`: one probe per `AUTO_PROBE_SPACING` =
500 batches), the whole probe's time (gradient flow, Jacobians, connectivity and meter), and the meter's share of
the run's wall time (per-epoch probes), first call included.
Target: meter ≤ 10% of training time at one probe per epoch.
--smoke: T = 20, 8 units, one cell, two truncations, 2 epochs of 2 batches (seconds; the figures mean nothing).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from rnnlib.core import config as cfg  # noqa: E402
from rnnlib.worker import gradients, training  # noqa: E402


class Timed:
    """Wraps a method of a class, keeping how long each call took."""

    def __init__(self, owner, name):
        self.owner, self.name, self.original = owner, name, getattr(owner, name)
        self.seconds = []
        timed = self

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return timed.original(*args, **kwargs)
            finally:
                timed.seconds.append(time.perf_counter() - start)

        setattr(owner, name, wrapper)

    def steady(self) -> float:
        """The median call after the first (which traces), or the only one."""
        return statistics.median(self.seconds[1:] or self.seconds)


def run(cell, truncation, args):
    config = cfg.validate({
        "task": {"name": "adding", "length": args.length},
        "model": {"cell_type": cell, "units": args.units},
        "training": {"epochs": args.epochs, "steps_per_epoch": args.steps, "probe_every": "epoch",
                     "truncation": cfg.truncation_from_label(truncation)},
        "seed": 0,
    })
    meter, record = Timed(gradients.FlowRecorder, "meter"), Timed(gradients.FlowRecorder, "record")
    try:
        start = time.perf_counter()
        result = training.train(config)
        wall = time.perf_counter() - start
    finally:
        gradients.FlowRecorder.meter, gradients.FlowRecorder.record = meter.original, record.original
    epoch = statistics.median([logs["epoch_seconds"] for logs in result.history[1:]]
                              or [result.history[0]["epoch_seconds"]])
    return epoch, meter.seconds[0], meter.steady(), record.steady(), sum(meter.seconds) / wall


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"])
    parser.add_argument("--truncations", nargs="+", default=["full", "20", "10/20", "rand20", "unbiased20"])
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50, help="batches per epoch (the default config's 50)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.cells, args.truncations, args.length, args.units, args.epochs, args.steps = \
            ["gru"], ["5", "rand5"], 20, 8, 2, 2
    print(f"backend {keras.backend.backend()}, adding T = {args.length}, {args.units} units, batch 32, "
          f"{args.steps} batches per epoch, a probe per epoch")
    print(f"{'cell':>5} {'truncation':>10} {'epoch s':>8} {'1st meter s':>11} {'meter s':>8} {'meter/epoch':>11} "
          f"{'auto':>6} {'probe s':>8} {'meter/run':>9}")
    epochs_per_auto_probe = max(1.0, cfg.AUTO_PROBE_SPACING / args.steps)
    shares = []
    for cell in args.cells:
        for truncation in args.truncations:
            epoch, first, meter, probe, of_run = run(cell, truncation, args)
            shares.append(meter / epoch)
            print(f"{cell:>5} {truncation:>10} {epoch:>8.3f} {first:>11.2f} {meter:>8.3f} {meter / epoch:>10.1%} "
                  f"{meter / epoch / epochs_per_auto_probe:>6.1%} {probe:>8.3f} {of_run:>8.1%}", flush=True)
    print(f"meter per epoch: median {statistics.median(shares):.1%}, worst {max(shares):.1%} (target ≤ 10%)")


if __name__ == "__main__":
    main()
