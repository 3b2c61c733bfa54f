"""Training throughput: rnnlib's loop vs a plain `keras` `model.fit` of the same model on the same data.

    .venv/bin/python benchmarks/throughput.py [--cell lstm] [--length 100] [--epochs 4] [--smoke]

Both train the same architecture (same seed, loss, optimizer and global-norm clipping) on the same batches of
the adding problem for the same number of updates; the first epoch (tracing) is excluded. rnnlib's figure
includes drawing the batches on the fly and recording the pre-clip gradient norm. Target: ratio >= 0.95.
--smoke: T = 20, 8 units, batch 8, 2 updates x 2 epochs, one repeat (seconds; the figures mean nothing).
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from rnnlib import tasks  # noqa: E402
from rnnlib.core import cells  # noqa: E402
from rnnlib.core import config as cfg  # noqa: E402
from rnnlib.worker import models, training  # noqa: E402


def experiment(args, truncation="full"):
    return cfg.parse_config(
        f"task: {{name: adding, length: {args.length}}}\n"
        f"model: {{cell_type: {args.cell}, units: {args.units}}}\n"
        f"training: {{epochs: {args.epochs}, steps_per_epoch: {args.steps}, batch_size: {args.batch_size}, "
        f"num_validation_sequences: {args.batch_size}, learning_rate: 0.001, clipnorm: 1.0, "
        f"truncation: {truncation}}}\nseed: 0\n"
    )


def rnnlib_throughput(config):
    result = training.train(config)
    return float(np.mean([logs["sequences_per_second"] for logs in result.history[1:]]))


class EpochTimer(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def keras_fit_throughput(config):
    task = tasks.build(config.task)
    training_config = config.training
    rng = np.random.default_rng(config.seed)
    batches = [task.sample_batch(rng, training_config.batch_size) for _ in range(training_config.steps_per_epoch)]
    x, y = np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])
    keras.utils.set_random_seed(config.seed)
    model = models.build_model(config.model, task)
    optimizer = keras.optimizers.Adam(training_config.learning_rate, global_clipnorm=training_config.clipnorm)
    model.compile(optimizer=optimizer, loss=task.loss)
    timer = EpochTimer()
    model.fit(x, y, batch_size=training_config.batch_size, epochs=training_config.epochs, shuffle=False,
              verbose=0, callbacks=[timer])
    return len(x) / float(np.mean(timer.seconds[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="lstm", choices=list(cells.CELLS))
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.length, args.units, args.batch_size, args.steps, args.epochs, args.repeats = 20, 8, 8, 2, 2, 1
    print(f"backend={keras.backend.backend()} cell={args.cell} T={args.length} units={args.units} "
          f"batch={args.batch_size} updates/epoch={args.steps}")
    config = experiment(args)
    plain, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        plain.append(keras_fit_throughput(config))
        ours.append(rnnlib_throughput(config))
    plain_rate, our_rate = max(plain), max(ours)
    print(f"keras model.fit : {plain_rate:9.1f} sequences/s  (runs: {', '.join(f'{v:.1f}' for v in plain)})")
    print(f"rnnlib full BPTT: {our_rate:9.1f} sequences/s  (runs: {', '.join(f'{v:.1f}' for v in ours)})")
    print(f"ratio rnnlib / keras = {our_rate / plain_rate:.3f}  (target >= 0.95)")
    for truncation in ("10", "{k1: 10, k2: 20}", "{mode: random_length, mean: 10}"):
        rate = rnnlib_throughput(experiment(args, truncation))
        print(f"rnnlib truncation {truncation:<28}: {rate:9.1f} sequences/s")


if __name__ == "__main__":
    main()
