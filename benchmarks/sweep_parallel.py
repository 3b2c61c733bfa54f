"""A sweep of tiny runs one after another vs on worker processes vs as Ray tasks (`execution.executor`).

    .venv/bin/python benchmarks/sweep_parallel.py [--workers 2] [--epochs 5] [--smoke]

12 runs (RNN, LSTM, GRU x full and TBPTT(10) x 2 seeds; adding T = 50, 16 units, batch 32, 20 batches per
epoch) into a fresh sqlite store, first with `sequential`, then with `processes` and N workers, then with `ray`
(a local Ray of N CPUs started for the sweep, its start-up counted). Printed: each
executor's wall time and its ratio to sequential, and where a run's time goes (medians over its runs): the whole
run as the store saw it, the first epoch (tracing), the later epochs, and the rest (model building, validation,
probes, logging), and how busy the machine was: the training process's own CPU in its last epoch (`run CPU %`,
100 = one core) and the whole machine's (`machine CPU %`, every core). Target: processes and ray >= 1.5x
sequential with 2 workers on 2 cores.
--smoke: 2 runs of 1 epoch, 2 workers (seconds; the figures mean nothing).
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from rnnlib import tracking  # noqa: E402
from rnnlib.core import config as cfg  # noqa: E402
from rnnlib.run import sweep  # noqa: E402
from rnnlib.tracking import system  # noqa: E402


def experiment(args, executor):
    cells = "[rnn]" if args.smoke else "[rnn, lstm, gru]"
    truncations = "[full]" if args.smoke else "[full, 10]"
    seeds = "[0, 1]"
    return cfg.parse_config(
        "task: {name: adding, length: 50}\nmodel: {cell_type: lstm, units: 16}\n"
        f"training: {{epochs: {args.epochs}, steps_per_epoch: {args.steps}, batch_size: 32, "
        "num_validation_sequences: 64, learning_rate: 0.003}\n"
        f"grid: {{model.cell_type: {cells}, training.truncation: {truncations}, seed: {seeds}}}\n"
        f"execution: {{executor: {executor}, workers: {args.workers}}}\n",
        default_name=f"parallel_{executor}",
    )


def measure(args, executor, uri):
    store = tracking.Store(uri)
    start = time.perf_counter()
    results = sweep.run_experiment(experiment(args, executor), store)
    wall = time.perf_counter() - start
    runs, firsts, laters, own, machine = [], [], [], [], []
    for result in results:
        run = store.client.get_run(result.run_id)
        info = run.info
        runs.append((info.end_time - info.start_time) / 1000)
        own.append(run.data.metrics[system.PROCESS_CPU])
        machine.append(run.data.metrics[system.PREFIX + "cpu_utilization_percentage"])
        seconds = [logs["epoch_seconds"] for logs in result.history]
        firsts.append(seconds[0])
        laters.append(sum(seconds[1:]))
    return (wall, len(results), statistics.median(runs), statistics.median(firsts), statistics.median(laters),
            statistics.median(own), statistics.median(machine))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="batches per epoch")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks it runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.steps, args.workers = 1, 2, 2
    print(f"{os.cpu_count()} CPU cores, {args.workers} workers, {args.epochs} epochs x {args.steps} batches per run")
    print(f"{'executor':>10} {'runs':>5} {'wall s':>8} {'speed-up':>8} {'run s':>7} {'1st epoch s':>11} "
          f"{'later epochs s':>14} {'rest s':>7} {'run CPU %':>9} {'machine CPU %':>13}")
    baseline = None
    with tempfile.TemporaryDirectory() as folder:
        for executor in ("sequential", "processes", "ray"):
            wall, count, run, first, later, own, machine = measure(args, executor, f"sqlite:///{folder}/{executor}.db")
            baseline = baseline or wall
            print(f"{executor:>10} {count:>5} {wall:>8.1f} {baseline / wall:>7.2f}x {run:>7.2f} {first:>11.2f} "
                  f"{later:>14.2f} {run - first - later:>7.2f} {own:>9.0f} {machine:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
