"""Training throughput on the CPU: rnnlib on each Keras backend vs a plain PyTorch model, and the probes' cost.

    .venv/bin/python benchmarks/throughput.py [--cells rnn lstm gru] [--lengths 100 200]
        [--backends tensorflow jax torch] [--repeats 3] [--smoke]

Every figure is steady-state sequences/s (the first, tracing epoch left out) of the adding problem, 1 layer of 64
units, batch 64, Adam with global-norm clipping at 1, one update per batch (full BPTT), sampling each batch on the
fly. Measured side by side, the median of `--repeats` interleaved repeats (each in a fresh process, so that drift
in the machine's load hits every column alike):
  - rnnlib on each Keras backend (`rnnlib.worker.training.train`, probes off), and a plain Keras `model.fit` of the
    same model on the same batches (what rnnlib's own loop costs on top of Keras);
  - PyTorch: `nn.RNN` / `nn.LSTM` / `nn.GRU` + `nn.Linear`, the same loss, optimizer and clipping;
  - the gradient probes' cost: a steady probe's seconds over those of the updates between two probes, as a share
    of training time, at one probe per epoch of 50 updates (`probe_every: epoch` with the default
    `steps_per_epoch`) and at the default schedule (`probe_every: auto`, one probe per `AUTO_PROBE_SPACING` = 500
    updates).
Targets: rnnlib on its default CPU backend >= 0.8x PyTorch for every cell at T = 100 and 200; probes <= 10% at the
default schedule.
--smoke: T = 20, 8 units, batch 8, a few updates, one repeat, the current backend (seconds; figures mean nothing).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STEPS, EPOCHS, PROBE_STEPS = 40, 4, 50
TORCH_CLASSES = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}


def config_text(cell, length, units, batch_size, steps=STEPS, epochs=EPOCHS, probe_every=0):
    return (f"task: {{name: adding, length: {length}}}\nmodel: {{cell_type: {cell}, units: {units}}}\n"
            f"training: {{epochs: {epochs}, steps_per_epoch: {steps}, batch_size: {batch_size}, "
            f"num_validation_sequences: {batch_size}, learning_rate: 0.001, clipnorm: 1.0, "
            f"probe_every: {probe_every}}}\nseed: 0\n")


def measure_rnnlib(cell, length, units, batch_size, steps, epochs):
    """rnnlib's steady sequences/s, plain `model.fit`'s on the same batches, and the probes' share of training
    time at the default schedule, on this process's Keras backend."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from rnnlib import tasks
    from rnnlib.core import config as cfg
    from rnnlib.worker import gradients, models, training

    config = cfg.parse_config(config_text(cell, length, units, batch_size, steps, epochs))
    result = training.train(config)
    steady = result.history[1:]
    rate = float(np.median([logs["sequences_per_second"] for logs in steady]))
    seconds_per_update = float(np.median([logs["epoch_seconds"] / logs["updates"] for logs in steady]))

    recorder = gradients.FlowRecorder(result.model, result.task, config)
    probe_seconds = []
    for index in range(4):  # the first traces
        start = time.perf_counter()
        recorder.record(index, 0.0)
        probe_seconds.append(time.perf_counter() - start)
    probe_share = float(np.median(probe_seconds[1:])) / (PROBE_STEPS * seconds_per_update)
    auto_share = probe_share * PROBE_STEPS / cfg.AUTO_PROBE_SPACING

    task = tasks.build(config.task)
    rng = np.random.default_rng(config.seed)
    batches = [task.sample_batch(rng, batch_size) for _ in range(steps)]
    x, y = (np.concatenate([np.asarray(b[i], np.float32) for b in batches]) for i in (0, 1))
    keras.utils.set_random_seed(config.seed)
    model = models.build_model(config.model, task)
    model.compile(optimizer=keras.optimizers.Adam(0.001, global_clipnorm=1.0), loss=task.loss)
    timer = EpochTimer()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0, callbacks=[timer.callback()])
    fit_rate = len(x) / float(np.median(timer.seconds[1:]))
    return {"rnnlib": rate, "keras_fit": fit_rate, "probe_share": probe_share, "auto_share": auto_share}


class EpochTimer:
    def __init__(self):
        self.seconds = []

    def callback(self):
        import keras

        timer = self

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timer.seconds.append(time.perf_counter() - self.start)

        return Timer()


def measure_torch(cell, length, units, batch_size, steps, epochs):
    """A plain PyTorch model's steady sequences/s on the same task, sizes, loss, optimizer and clipping."""
    import numpy as np
    import torch

    from rnnlib import tasks
    from rnnlib.core import config as cfg

    torch.set_num_threads(os.cpu_count() or 1)
    config = cfg.parse_config(config_text(cell, length, units, batch_size, steps, epochs))
    task = tasks.build(config.task)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    recurrent = getattr(torch.nn, TORCH_CLASSES[cell])(task.num_features, units, batch_first=True)
    head = torch.nn.Linear(units, task.num_outputs)
    parameters = [*recurrent.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=0.001)
    rates = []
    for _ in range(epochs):
        start = time.perf_counter()
        for _ in range(steps):
            x, y = (torch.from_numpy(np.asarray(a, np.float32)) for a in task.sample_batch(rng, batch_size))
            outputs, _ = recurrent(x)
            loss = torch.nn.functional.mse_loss(head(outputs[:, -1]), y)
            optimizer.zero_grad()
            loss.backward()
            float(torch.nn.utils.clip_grad_norm_(parameters, 1.0).detach())  # rnnlib logs it every update too
            float(loss.detach())
            optimizer.step()
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return {"torch": float(np.median(rates[1:]))}


def run_worker(kind, cell, length, args):
    """One measurement in a fresh process (its own backend, nothing cached from another column)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if kind != "torch":
        env["KERAS_BACKEND"] = kind
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--cells", cell, "--lengths",
               str(length), "--units", str(args.units), "--batch-size", str(args.batch_size), "--steps",
               str(args.steps), "--epochs", str(args.epochs)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{kind} {cell} T={length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def torch_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("torch") is not None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["rnn", "lstm", "gru"], choices=list(TORCH_CLASSES))
    parser.add_argument("--lengths", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--backends", nargs="+", default=["tensorflow", "jax", "torch"])
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs, in seconds")
    args = parser.parse_args()
    if args.worker:
        measure = measure_torch if args.worker == "torch" else measure_rnnlib
        print(json.dumps(measure(args.cells[0], args.lengths[0], args.units, args.batch_size, args.steps,
                                 args.epochs)))
        return
    if args.smoke:
        args.cells, args.lengths, args.units, args.batch_size = ["lstm"], [20], 8, 8
        args.steps, args.epochs, args.repeats = 3, 2, 1
        args.backends = [os.environ.get("KERAS_BACKEND", "tensorflow")]
    reference = torch_installed()
    print(f"adding problem, 1 layer x {args.units} units, batch {args.batch_size}, {args.steps} updates/epoch, "
          f"median of {args.repeats} interleaved repeats; sequences/s")
    if not reference:
        print("PyTorch is not installed: no reference column (pip install torch==2.13.0)")
    header = f"{'cell':<5} {'T':>5} {'backend':<11} {'rnnlib':>8} {'keras fit':>10} {'PyTorch':>8} " \
             f"{'vs PyTorch':>10} {'probe/50':>8} {'probes auto':>11}"
    print(header)
    for cell in args.cells:
        for length in args.lengths:
            figures: dict[str, list[dict]] = {kind: [] for kind in [*args.backends, *(["torch"] if reference else [])]}
            for _ in range(args.repeats):
                for kind in figures:
                    figures[kind].append(run_worker(kind, cell, length, args))
            torch_rate = statistics.median(f["torch"] for f in figures["torch"]) if reference else float("nan")
            for backend in args.backends:
                ours = {key: statistics.median(f[key] for f in figures[backend]) for key in figures[backend][0]}
                print(f"{cell:<5} {length:>5} {backend:<11} {ours['rnnlib']:>8.0f} {ours['keras_fit']:>10.0f} "
                      f"{torch_rate:>8.0f} {ours['rnnlib'] / torch_rate:>9.2f}x {ours['probe_share']:>8.0%} "
                      f"{ours['auto_share']:>11.1%}",
                      flush=True)


if __name__ == "__main__":
    main()
