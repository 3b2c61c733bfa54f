"""GPU training: rnnlib vs a plain PyTorch `nn.LSTM/GRU/RNN` (cuDNN), and many small runs packed onto one GPU.

    .venv/bin/python benchmarks/gpu.py [--cells lstm gru rnn] [--smoke]

Part 1, throughput: the adding problem, 1 layer, 128 units, B = 128 and 1,024, T = 200 and 1,000, full BPTT, Adam
with global-norm clipping; rnnlib's steady-state `sequences_per_second` (epochs after the first, probes excluded
as the metric excludes them) against the same model in plain PyTorch on the same device (`torch.backends.cudnn`,
batches drawn once), medians of `--repeats` interleaved repeats. Targets: >= 0.9x PyTorch at B = 1,024, >= 0.8x at
B = 128.

Part 2, packing: 27 small runs (rnn, lstm, gru x full, 50, 20 x 3 seeds, B = 128, T = 200) one after another vs
as Ray tasks with `num_gpus: 1/9` each (nine at once on one GPU). Target: packing >= 3x.

rnnlib trains on the backend `KERAS_BACKEND` names, else the best one installed (`rnnlib.core.machine`: on the
lent GPU machines PyTorch, which has Keras's fused cuDNN kernels; they have no TensorFlow). Without a CUDA GPU
the script says so and measures nothing, unless --smoke: tiny sizes on the CPU (seconds; checks that it runs).
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from rnnlib import worker  # noqa: E402, F401 - picks the Keras backend before anything imports keras
from rnnlib.core import config as cfg  # noqa: E402


def experiment(cell, length, batch, epochs, steps, truncation="full", seed=0, extra="", name="gpu_benchmark"):
    return cfg.parse_config(
        f"task: {{name: adding, length: {length}}}\nmodel: {{cell_type: {cell}, units: 128}}\n"
        f"training: {{epochs: {epochs}, steps_per_epoch: {steps}, batch_size: {batch}, "
        f"num_validation_sequences: {batch}, learning_rate: 0.001, clipnorm: 1.0, truncation: {truncation}}}\n"
        f"seed: {seed}\n{extra}", default_name=name)


def rnnlib_rate(config) -> float:
    from rnnlib.worker import training

    result = training.train(config)
    return statistics.median(logs["sequences_per_second"] for logs in result.history[1:])


def torch_rate(config, device) -> float:
    """The same model in plain PyTorch: `nn.LSTM/GRU/RNN` (cuDNN on a GPU), a linear head on the last step."""
    import numpy as np
    import torch

    from rnnlib import tasks

    torch.manual_seed(config.seed)
    task = tasks.build(config.task)
    rng = np.random.default_rng(config.seed)
    t = config.training
    batches = [task.sample_batch(rng, t.batch_size) for _ in range(t.steps_per_epoch)]
    batches = [(torch.as_tensor(x, device=device), torch.as_tensor(y, device=device)) for x, y in batches]
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[config.model.cell_type]
    recurrent = layer(batches[0][0].shape[-1], config.model.units, batch_first=True).to(device)
    head = torch.nn.Linear(config.model.units, batches[0][1].shape[-1]).to(device)
    parameters = [*recurrent.parameters(), *head.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=t.learning_rate)
    seconds = []
    for _ in range(t.epochs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            outputs, _ = recurrent(x)
            loss = torch.nn.functional.mse_loss(head(outputs[:, -1]), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, t.clipnorm)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return t.steps_per_epoch * t.batch_size / statistics.median(seconds[1:])


def packing(args, folder) -> tuple[float, float]:
    from rnnlib import tracking
    from rnnlib.run import sweep

    cells = "[lstm]" if args.smoke else "[rnn, lstm, gru]"
    truncations = "[full]" if args.smoke else "[full, 50, 20]"
    seeds = "[0, 1]" if args.smoke else "[0, 1, 2]"
    walls = []
    for name, execution in (("sequential", "execution: {executor: sequential}"),
                            ("packed", f"execution: {{executor: ray, num_cpus: {args.pack_cpus}, "
                                       f"num_gpus: {0 if args.smoke else round(1 / args.pack, 4)}, "
                                       f"workers: {args.pack}}}")):
        grid = f"grid: {{model.cell_type: {cells}, training.truncation: {truncations}, seed: {seeds}}}\n"
        config = experiment("lstm", args.pack_length, 128, args.pack_epochs, args.pack_steps,
                            extra=grid + execution, name=f"gpu_packing_{name}")
        start = time.perf_counter()
        results = sweep.run_experiment(config, tracking.Store(f"sqlite:///{folder}/{name}.db"))
        walls.append(time.perf_counter() - start)
        print(f"{name:>10}: {len(results)} runs in {walls[-1]:.1f} s", flush=True)
    return walls[0], walls[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["lstm", "gru", "rnn"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="batches per epoch")
    parser.add_argument("--pack", type=int, default=9, help="runs sharing the GPU at once")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks it runs, in seconds")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed: the reference needs it (`pip install torch`; CI installs a CPU wheel).")
        return
    import keras

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("No CUDA GPU on this machine: these figures need one (run it on a GPU machine; --smoke checks the "
              "script on the CPU).")
        return
    device = torch.device("cuda" if cuda and not args.smoke else "cpu")
    sizes = [(128, 200), (1024, 200), (128, 1000), (1024, 1000)]
    args.pack_length, args.pack_epochs, args.pack_steps, args.pack_cpus = 200, 5, 20, 1
    if args.smoke:
        sizes, args.cells, args.repeats, args.epochs, args.steps = [(4, 10)], ["lstm"], 1, 2, 2
        args.pack_length, args.pack_epochs, args.pack_steps, args.pack = 10, 1, 2, 2
    print(f"backend={keras.backend.backend()} ({worker.BACKEND_REASON}), device={device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    print(f"{'cell':>5} {'B':>5} {'T':>5} {'rnnlib seq/s':>13} {'PyTorch seq/s':>14} {'ratio':>6} {'target':>6}")
    for cell in args.cells:
        for batch, length in sizes:
            config = experiment(cell, length, batch, args.epochs, args.steps)
            ours, theirs = [], []
            for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
                theirs.append(torch_rate(config, device))
                ours.append(rnnlib_rate(config))
            ratio = statistics.median(ours) / statistics.median(theirs)
            target = 0.9 if batch >= 1024 else 0.8
            print(f"{cell:>5} {batch:>5} {length:>5} {statistics.median(ours):>13.0f} "
                  f"{statistics.median(theirs):>14.0f} {ratio:>5.2f}x {target:>5.1f}x", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        one_by_one, packed = packing(args, folder)
    print(f"packing: {one_by_one / packed:.2f}x faster than one run after another (target >= 3x)")


if __name__ == "__main__":
    main()
