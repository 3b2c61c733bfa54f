"""How fast the Compare page gets its data and figures, at 100 and 1,000 runs of 200 logged epochs.

    .venv/bin/python benchmarks/compare_page.py [--runs 100 1000] [--steps 200] [--smoke]

For each size it builds a fresh sqlite store with MLflow's own client (runs that look like a sweep: 3 cells x
truncations x seeds, 4 metrics per epoch), then times:
  - query (cold): tracking.runs_frame + metric_histories, what the page's cache holds;
  - figures (warm): grouping, smoothing, confidence bands, summaries and the three figures built from the cached
    frames, i.e. what a warm rerun recomputes;
  - the whole Compare page under AppTest, first (cold) and second (warm) run.
--smoke: 15 runs x 10 epochs, one timing repeat, without the page (a few seconds, to check it still runs).
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rnnlib import tracking
from rnnlib.analysis import compare
from rnnlib.core.paths import PROJECT_DIR
from rnnlib.viz import views

METRICS = ("train_loss", "val_loss", "val_mae", "grad_norm")


def build_store(uri: str, num_runs: int, steps: int) -> None:
    client = MlflowClient(uri)
    root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    experiment = client.create_experiment("bench", artifact_location=root.as_uri())
    rng = np.random.default_rng(0)
    truncations = ["5", "10", "25", "50", "full"]
    for index in range(num_runs):
        cell, trunc, seed = ("rnn", "lstm", "gru")[index % 3], truncations[(index // 3) % 5], index // 15
        run = client.create_run(experiment, run_name=f"{cell}-{trunc}-s{seed}",
                                tags={"rnnlib.run_kind": "trial"})
        params = [Param("model.cell_type", cell), Param("training.truncation", trunc), Param("seed", str(seed)),
                  Param("task.name", "adding"), Param("training.epochs", str(steps))]
        decay = rng.uniform(0.005, 0.05)
        curve = 1 / 6 * np.exp(-decay * np.arange(1, steps + 1)) + rng.normal(0, 0.003, steps)
        metrics = [Metric(key, float(curve[s] * (1 + k * 0.1)), 0, s + 1) for k, key in enumerate(METRICS)
                   for s in range(steps)]
        metrics.append(Metric("baseline", 1 / 6, 0, 0))
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            client.log_batch(run.info.run_id, metrics=metrics[start : start + 1000],
                             params=params if start == 0 else [], tags=[RunTag("seed", str(seed))] if start == 0
                             else [])
        client.set_terminated(run.info.run_id, "FINISHED")


def time_it(function, repeats=3):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def figures(runs, histories):
    """Everything the page draws (`rnnlib.viz.views.compare_view`, the page's own path), smoothed and with the
    model's lines."""
    settings = views.CompareSettings(metric="val_loss", group_by=tuple(compare.DEFAULT_GROUP_BY), band="ci95",
                                     smoothing=0.6, x_param="training.truncation", line_param="model.cell_type")
    views.compare_view(runs, histories, settings)


def page_times(uri):
    from streamlit.testing.v1 import AppTest

    os.environ["MLFLOW_TRACKING_URI"] = uri
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=300)
    at.run()
    at.query_params["experiment"] = "bench"
    at.switch_page("app_pages/compare.py")
    start = time.perf_counter()
    at.run()
    cold = time.perf_counter() - start
    assert not at.exception, at.exception
    start = time.perf_counter()
    at.run()
    return cold, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no page: checks it runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.steps = [15], 10
    for num_runs in args.runs:
        with tempfile.TemporaryDirectory() as folder:
            measure(f"sqlite:///{folder}/mlflow.db", num_runs, args.steps, smoke=args.smoke)


def measure(uri: str, num_runs: int, steps: int, smoke: bool = False) -> None:
    start = time.perf_counter()
    build_store(uri, num_runs, steps)
    built = time.perf_counter() - start

    def query():
        runs = tracking.runs_frame(uri, "bench")
        return runs, tracking.metric_histories(uri, runs["run_id"].tolist(), list(METRICS))

    query_seconds, (runs, histories) = time_it(query, repeats=1)
    compute_seconds, _ = time_it(lambda: figures(runs, histories), repeats=1 if smoke else 3)
    page = "page skipped (--smoke)"
    if not smoke:
        cold, warm = page_times(uri)
        page = f"page cold {cold:.2f} s, warm {warm:.2f} s"
    print(f"{num_runs:>5} runs x {steps} epochs ({len(histories):,} points; store built in {built:.1f} s): "
          f"query {query_seconds:.2f} s | stats+figures {compute_seconds:.2f} s | {page}")


if __name__ == "__main__":
    main()
