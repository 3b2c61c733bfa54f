"""The `processes` executor: the same runs, numbers and metric points as one process, one writer on sqlite, a
killed worker's trial FAILED while the sweep goes on, and a stop that ends every open run KILLED."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
from collections import deque

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import EXPERIMENTS_DIR, run_cli
from rnnlib import tracking
from rnnlib.core import callbacks
from rnnlib.core import config as cfg
from rnnlib.run import executors, sweep, trial_worker

TINY = ["training.epochs=2", "training.steps_per_epoch=3", "task.length=8", "model.units=4",
        "training.num_validation_sequences=16", "training.batch_size=8"]


def tiny(*overrides):
    return cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", [*TINY, *overrides])


def trial_runs(uri, name="smoke"):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return client, {r.info.run_name: r for r in runs if r.data.tags.get("rnnlib.run_kind") != "sweep"}, runs


def metric_points(client, run):
    """Every stored point of every metric of `run`: {key: [(step, value), ...]}."""
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
            for key in run.data.metrics}


PARALLEL = ["processes", "ray"]


@pytest.fixture(scope="module")
def sequential_uri(tmp_path_factory):
    """The reference: the same sweep, one trial after another in this process."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('sequential') / 'one.db'}"
    sweep.run_experiment(tiny(), tracking.Store(uri))
    return uri


@pytest.mark.parametrize("executor", PARALLEL)
def test_parallel_workers_log_the_same_runs_numbers_and_every_metric_point_as_one_process(tmp_path, executor,
                                                                                           sequential_uri):
    parallel_uri = f"sqlite:///{tmp_path / 'two.db'}"
    results = sweep.run_experiment(tiny(f"execution.executor={executor}", "execution.workers=2"),
                                   tracking.Store(parallel_uri))
    assert [r.status for r in results] == ["FINISHED"] * 6
    client_one, one, _ = trial_runs(sequential_uri)
    client, two, every = trial_runs(parallel_uri)
    assert sorted(two) == sorted(one) and len(two) == 6
    assert {r.info.status for r in every} == {"FINISHED"}  # the sweep too
    expected_epoch_keys = set(results[0].history[0])
    counted = 0
    for name, run in two.items():
        points = metric_points(client, run)
        for key in expected_epoch_keys:  # one point per epoch of every key an epoch logs
            assert [step for step, _ in points[key]] == [1, 2], (name, key)
        assert len(points["baseline"]) == len(points["best_val_loss"]) == 1
        reference = metric_points(client_one, one[name])
        assert points.keys() == reference.keys()
        for key in ("train_loss", "val_loss", "grad_norm", "trunc_cosine", "best_val_loss"):
            np.testing.assert_allclose([v for _, v in points[key]], [v for _, v in reference[key]], rtol=1e-5)
        counted += sum(len(p) for p in points.values())
        assert run.data.params == one[name].data.params
        assert run.data.tags[executors.EXECUTOR_TAG] == executor
        slot, pid = run.data.tags[executors.EXECUTOR_WORKER_TAG].split("/")  # worker slot (Ray: host) / pid
        assert int(pid) != os.getpid() and (executor == "ray" or slot in {"0", "1"})
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", tracking.GRADIENT_FLOW_ARTIFACT, "model"} <= artifacts
    assert counted == sum(len(p) for r in one.values() for p in metric_points(client_one, r).values())
    print(f"{executor}: {counted} metric points stored, as many as the sequential sweep's")
    workers = {run.data.tags[executors.EXECUTOR_WORKER_TAG] for run in two.values()}
    assert len(workers) == 2  # both workers trained


class KillsItsWorker(callbacks.Callback):
    """In the parent: at the first batch of its trial, `kill -9` the worker training it (read from the run's tag)."""

    def __init__(self, uri):
        self.uri, self.done = uri, False

    def on_batch_end(self, epoch, batch):
        if self.done:
            return
        self.done = True
        _, runs, _ = trial_runs(self.uri)
        running = [r for r in runs.values() if r.info.run_name == "rnn-full-s0"]
        os.kill(int(running[0].data.tags[executors.EXECUTOR_WORKER_TAG].split("/")[1]), signal.SIGKILL)


@pytest.mark.parametrize(("executor", "reason"), [("processes", "was killed by signal 9"),
                                                  ("ray", "its Ray worker died")])
def test_a_worker_killed_mid_trial_fails_that_trial_and_the_sweep_goes_on(sqlite_uri, executor, reason):
    # long enough that the trial still trains when the parent sees its first batch (Ray reuses a worker
    # process for the next task, so a late kill would hit another trial)
    config = tiny(f"execution.executor={executor}", "execution.workers=2", "grid.training.truncation=[full]",
                  "training.epochs=60")

    def make_callbacks(index, total, trial_config):
        return [KillsItsWorker(sqlite_uri)] if index == 0 else []

    with pytest.raises(sweep.SweepError, match="1 of 3 runs failed"):
        sweep.run_experiment(config, tracking.Store(sqlite_uri), make_callbacks)
    _, runs, every = trial_runs(sqlite_uri)
    status = {name: run.info.status for name, run in runs.items()}
    assert status == {"rnn-full-s0": "FAILED", "lstm-full-s0": "FINISHED", "gru-full-s0": "FINISHED"}
    assert reason in runs["rnn-full-s0"].data.tags["rnnlib.error"]
    assert "RUNNING" not in {r.info.status for r in every}


class StopsTheSweep(callbacks.Callback):
    def on_batch_end(self, epoch, batch):
        raise KeyboardInterrupt  # what Ctrl-C or the dashboard's Stop turns into


@pytest.mark.parametrize("executor", PARALLEL)
def test_a_stop_kills_every_worker_and_ends_every_open_run_killed(sqlite_uri, executor):
    import multiprocessing

    import ray

    config = tiny(f"execution.executor={executor}", "execution.workers=2")

    def make_callbacks(index, total, trial_config):
        return [StopsTheSweep()] if index == 1 else []

    with pytest.raises(KeyboardInterrupt):
        sweep.run_experiment(config, tracking.Store(sqlite_uri), make_callbacks)
    _, runs, every = trial_runs(sqlite_uri)
    assert {r.info.status for r in every} <= {"FINISHED", "KILLED"}
    assert [r.info.status for r in every if r.data.tags.get("rnnlib.run_kind") == "sweep"] == ["KILLED"]
    assert sum(r.info.status == "KILLED" for r in runs.values()) >= 1
    assert len(runs) < 6  # no new trial started after the stop
    assert multiprocessing.active_children() == [] and not ray.is_initialized()


def test_an_idle_worker_gets_trials_of_an_architecture_it_has_traced_else_one_no_other_worker_has():
    points = cfg.expand_grid(tiny("grid.training.truncation=[full, 5]"))  # rnn, rnn, lstm, lstm, gru, gru
    assert [config.model.cell_type for _, config in points] == ["rnn", "rnn", "lstm", "lstm", "gru", "gru"]
    pending = deque(range(len(points)))
    first, second = executors._Slot(0, None, None), executors._Slot(1, None, None)  # type: ignore[arg-type]
    slots, keys = [first, second], [config.architecture_key for _, config in points]
    order = [(first, 0), (second, 2), (first, 1), (first, 4), (second, 3), (second, 5)]
    for slot, expected in order:  # the first rnn, then an lstm (not the second rnn), the rnn again, then gru
        assert executors._take(pending, keys, slot, slots) == expected
    assert not pending
    assert first.traced == {keys[0], keys[4]}


class CountsLiveWorkers(callbacks.Callback):
    """In the parent, at the last epoch of its (long) trial: how many worker processes are alive."""

    def __init__(self, epochs):
        self.epochs, self.alive = epochs, None

    def on_epoch_end(self, epoch, logs):
        if epoch == self.epochs:
            self.alive = len(multiprocessing.active_children())


def test_a_worker_left_without_trials_exits_while_the_others_still_train(sqlite_uri):
    # trials of 2, 3 and 40 epochs on 2 workers: whoever ends first takes the long one; the other has nothing left
    config = tiny("execution.executor=processes", "execution.workers=2", "grid.model.cell_type=[rnn]",
                  "grid.training.truncation=[full]", "grid.training.epochs=[2, 3, 40]")
    counter = CountsLiveWorkers(40)

    def make_callbacks(index, total, trial_config):
        return [counter] if index == 2 else []

    results = sweep.run_experiment(config, tracking.Store(sqlite_uri), make_callbacks)
    assert [r.status for r in results] == ["FINISHED"] * 3
    assert counter.alive == 1
    assert multiprocessing.active_children() == []


WORKER_WITHOUT_MLFLOW = """
import json, os, sys
from rnnlib.core import config as cfg
from rnnlib.run import trial_worker

class Parent:  # one trial, then stop; the worker's messages kept
    def __init__(self):
        self.inbox = [("trial", 0, cfg.load_config(sys.argv[1], sys.argv[2:]), {}, "run-0")]
        self.sent = []
    def send(self, message):
        self.sent.append(message)
    def recv(self):
        if self.inbox:
            return self.inbox.pop()
        metrics = sorted({key for kind, method, *rest in self.sent if kind == "call" and method == "log_metrics"
                          for key in rest[0][1]})
        done = [message[2] for message in self.sent if message[0] == "done"]
        from rnnlib.worker import backends
        threads = {name: os.environ.get(name) for name in trial_worker.THREAD_VARIABLES}
        print(json.dumps({"mlflow": "mlflow" in sys.modules, "metrics": metrics, "done": done, "threads": threads,
                          "lstm_parts": backends.fused_lstm_parts(64)}), flush=True)
        return ("stop",)
    def close(self):
        pass

trial_worker.serve(Parent(), threads=1)
"""


def test_a_worker_trains_and_logs_a_trial_without_importing_mlflow_on_its_share_of_the_threads():
    """Its parent writes, so a worker starts without mlflow's import (0.9 s of each worker's start on 2 cores);
    the run's system metrics are read all the same. Its framework runs the threads its parent gave it."""
    environment = {k: v for k, v in os.environ.items() if k not in trial_worker.THREAD_VARIABLES}
    completed = subprocess.run([sys.executable, "-c", WORKER_WITHOUT_MLFLOW, str(EXPERIMENTS_DIR / "smoke.yaml"),
                                *TINY, "grid={}"], capture_output=True, text=True, timeout=300, env=environment)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["done"] == ["FINISHED"] and report["mlflow"] is False
    assert {"val_loss", "system/cpu_utilization_percentage", "system/process_peak_memory_megabytes"} <= set(
        report["metrics"])
    assert report["threads"] == dict.fromkeys(trial_worker.THREAD_VARIABLES, "1")
    assert report["lstm_parts"] == 1  # the fused LSTM kernel is not cut for cores the worker does not have


class Started(Exception):
    """Raised in place of starting a worker process."""


def test_each_worker_gets_its_share_of_the_cores_for_its_threads(monkeypatch):
    started = []

    def start(context, number, threads):
        started.append(threads)
        raise Started

    monkeypatch.setattr(executors, "_start", start)
    monkeypatch.setattr(executors, "default_workers", lambda: 8)  # cores
    points = cfg.expand_grid(tiny())  # 6 trials
    for workers, share in ((2, 4), (3, 2), (16, 1)):  # 16 asked for: 6 started, 1 thread each
        started.clear()
        with pytest.raises(Started):
            executors.processes(None, "0", points, None, workers=workers)
        assert started == [share]


def test_a_stop_met_while_draining_the_ray_queue_still_writes_the_logging_behind_it(sqlite_uri):
    import ray
    from ray.util.queue import Queue

    store = tracking.Store(sqlite_uri)
    run_id = store.open_run(store.experiment_id("smoke"), "rnn-full-s0", {})
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        queue = Queue()
        queue.put_nowait_batch([("event", 1, "on_batch_end", (1, 1)), ("call", "set_tag", (run_id, "after", "1")),
                                ("event", 1, "on_batch_end", (1, 2))])
        with pytest.raises(KeyboardInterrupt):
            executors._drain(store, queue, {1: [StopsTheSweep()]})
        queue.put_nowait_batch([("event", 1, "on_batch_end", (1, 3)), ("call", "set_tag", (run_id, "later", "2"))])
        executors._drain(store, queue, {})  # the executor's cleanup: no hook runs, so no second stop
        assert queue.qsize() == 0
    finally:
        ray.shutdown()
    tags = MlflowClient(sqlite_uri).get_run(run_id).data.tags
    assert (tags["after"], tags["later"]) == ("1", "2")


def test_the_cli_runs_a_sweep_on_worker_processes(sqlite_uri, cli_env):
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", sqlite_uri, "--quiet",
                      "--executor", "processes", "--workers", "2", *[a for o in TINY for a in ("--set", o)],
                      "--set", "grid.training.truncation=[5]"], cli_env)
    assert result.returncode == 0, result.stderr
    assert "database is locked" not in result.stderr
    _, runs, _ = trial_runs(sqlite_uri)
    assert {r.data.tags[executors.EXECUTOR_TAG] for r in runs.values()} == {"processes"}
    assert all(r.info.status == "FINISHED" for r in runs.values()) and len(runs) == 3


def test_only_failed_retrains_the_grid_points_without_a_finished_run_and_nothing_else(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep.run_experiment(tiny(), tracking.Store(uri))
    client, runs, _ = trial_runs(uri)
    client.set_terminated(runs["gru-5-s0"].info.run_id, "FAILED")  # as a crash or a dead server leaves them
    client.set_terminated(runs["rnn-full-s0"].info.run_id, "KILLED")
    resumed = sweep.run_experiment(tiny("execution.executor=processes", "execution.workers=2"),
                                   tracking.Store(uri), only_failed=True)
    assert sorted(tracking.run_name(r.config, r.point) for r in resumed) == ["gru-5-s0", "rnn-full-s0"]
    assert [r.status for r in resumed] == ["FINISHED"] * 2
    assert sweep.run_experiment(tiny(), tracking.Store(uri), only_failed=True) == []  # every point has one now
    # a changed config is a different grid point: all six again
    assert len(sweep.pending(cfg.expand_grid(tiny("model.units=5")), tracking.Store(uri).finished_params(
        client.get_experiment_by_name("smoke").experiment_id))) == 6


def test_only_failed_on_the_command_line_says_when_nothing_is_left(tmp_path, cli_env):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    arguments = ["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", uri, "--quiet",
                 *[a for item in TINY for a in ("--set", item)], "--set", "grid.model.cell_type=[rnn]"]
    assert run_cli(arguments, cli_env).returncode == 0
    again = run_cli([*arguments, "--only-failed"], cli_env)
    assert again.returncode == 0, again.stderr
    assert "nothing to re-run" in again.stdout
    assert len(trial_runs(uri)[1]) == 2  # no new run
