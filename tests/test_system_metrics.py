"""System metrics: every run logs what it used of the machine per epoch (MLflow's readers, through the run's own
logging), its GPUs and whether Keras' cuDNN kernel trains it; the NVML reader runs wherever a GPU is."""

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import EXPERIMENTS_DIR
from rnnlib import tracking
from rnnlib.core import config as cfg
from rnnlib.run import sweep
from rnnlib.tracking import system
from rnnlib.worker import backends

TINY = ["training.epochs=2", "training.steps_per_epoch=3", "task.length=8", "model.units=4",
        "training.num_validation_sequences=16", "training.batch_size=8", "grid={}"]


def test_every_epoch_logs_cpu_memory_and_the_processes_peak_memory_and_the_run_names_its_gpus(sqlite_uri):
    config = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", TINY)
    (result,) = sweep.run_experiment(config, tracking.Store(sqlite_uri))
    client = MlflowClient(sqlite_uri)
    run = client.get_run(result.run_id)
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/process_peak_memory_megabytes", "system/process_cpu_utilization_percentage"):
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == [1, 2], key
        assert all(m.value >= 0 for m in history)
    peak = [m.value for m in client.get_metric_history(result.run_id, "system/process_peak_memory_megabytes")]
    assert peak[0] <= peak[1] and peak[0] > 100  # a process that has imported TensorFlow holds > 100 MB
    assert run.data.tags["rnnlib.gpu_count"] == str(len(system.gpu_names()))
    assert run.data.tags["rnnlib.cudnn"] == "false"  # on the CPU
    assert "system/cpu_utilization_percentage" not in result.history[0]  # the history is training's own


def test_samples_are_taken_at_most_every_second_and_an_epoch_without_any_still_reports():
    now = [0.0]
    sampler = system.SystemSampler(clock=lambda: now[0])
    for step in range(5):  # 5 batches within 0.4 s: one sample
        now[0] = step * 0.1
        sampler.maybe_sample()
    assert len(sampler.monitors[0].metrics["cpu_utilization_percentage"]) == 1
    first = sampler.flush()
    assert first["system/process_peak_memory_megabytes"] > 0 and "system/cpu_utilization_percentage" in first
    assert "system/cpu_utilization_percentage" in sampler.flush()  # sampled at the flush itself


def test_the_cpu_reader_reads_what_mlflows_cpu_monitor_reads_under_its_names():
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

    ours, mlflows = system.CPUReader(), CPUMonitor()
    for _ in range(2):
        ours.collect_metrics()
        mlflows.collect_metrics()
    assert {key: len(values) for key, values in ours.metrics.items()} == {
        key: len(values) for key, values in mlflows.metrics.items()}
    mine, theirs = ours.aggregate_metrics(), mlflows.aggregate_metrics()
    assert abs(mine["system_memory_usage_megabytes"] - theirs["system_memory_usage_megabytes"]) < 200
    assert abs(mine["system_memory_usage_percentage"] - theirs["system_memory_usage_percentage"]) < 1
    assert 0 <= mine["cpu_utilization_percentage"] <= 100
    assert all(round(value, 1) == value for value in mine.values())  # MLflow's rounding
    ours.clear_metrics()
    assert not ours.metrics


def test_the_process_reader_counts_this_processs_own_cpu_a_busy_core_as_100_and_a_sleep_as_0():
    reader = system.ProcessReader()
    reader.collect_metrics()  # starts the clock
    reader.clear_metrics()
    time.sleep(0.5)
    reader.collect_metrics()
    end = time.process_time() + 0.5
    while time.process_time() < end:  # one core busy for 0.5 s of CPU time
        pass
    reader.collect_metrics()
    idle, busy = reader.metrics["process_cpu_utilization_percentage"]
    assert idle < 20 and 70 < busy < 130, (idle, busy)
    assert reader.aggregate_metrics() == {"process_cpu_utilization_percentage": round((idle + busy) / 2, 1)}


def test_the_real_nvml_reader_reads_every_gpu_where_there_is_one():
    names = system.gpu_names()
    if not names:
        pytest.skip("no NVIDIA GPU on this machine (the reader returned none; it runs on a GPU machine)")
    metrics = system.SystemSampler().flush()
    for index in range(len(names)):
        assert f"system/gpu_{index}_utilization_percentage" in metrics
        assert metrics[f"system/gpu_{index}_memory_usage_megabytes"] > 0


@pytest.mark.parametrize("backend, device, cell_type, stateful, scale, expected", [
    ("tensorflow", "cpu", "lstm", True, 1.0, False),
    ("tensorflow", "NVIDIA H100", "lstm", True, 1.0, True),
    ("tensorflow", "NVIDIA H100", "rnn", True, 1.0, False),  # SimpleRNN has no cuDNN kernel in Keras
    ("tensorflow", "NVIDIA H100", "gru", True, 4 / 3, False),  # the unbiased mode's generic loop
    ("torch", "NVIDIA H100", "gru", True, 1.0, False),  # the stateful-layer workaround
    ("torch", "NVIDIA H100", "gru", False, 1.0, True),
])
def test_the_cudnn_tag_follows_the_layers_keras_builds(backend, device, cell_type, stateful, scale, expected):
    assert backends.uses_cudnn(backend, device, cell_type, stateful, scale) is expected


def test_the_worker_trains_on_keras_backend_when_set_else_the_best_installed_for_the_machine():
    from rnnlib.core import machine

    assert machine.pick_backend({"KERAS_BACKEND": "jax"}, {"tensorflow"}, True) == ("jax", "KERAS_BACKEND")
    # the lent GPU machines: JAX and PyTorch with CUDA, no TensorFlow -> PyTorch, for Keras's fused cuDNN kernels
    assert machine.pick_backend({}, {"jax", "torch"}, has_gpu=True)[0] == "torch"
    assert machine.pick_backend({}, {"jax", "torch"}, has_gpu=False)[0] == "jax"
    assert machine.pick_backend({}, {"tensorflow", "jax", "torch"}, has_gpu=True)[0] == "tensorflow"
    assert machine.pick_backend({}, {"torch"}, has_gpu=False) == (
        "torch", "picked: the first installed of tensorflow, jax, torch")


def test_a_run_records_its_backend_and_why_it_was_picked(fixture_store):
    import keras
    from mlflow.tracking import MlflowClient

    from rnnlib import worker

    runs = MlflowClient(fixture_store).search_runs(
        [MlflowClient(fixture_store).get_experiment_by_name("smoke").experiment_id], "tags.`rnnlib.run_kind` = 'trial'")
    assert {r.data.tags["rnnlib.backend"] for r in runs} == {keras.backend.backend()}
    assert {r.data.tags["rnnlib.backend_reason"] for r in runs} == {worker.BACKEND_REASON}
    assert worker.BACKEND == keras.backend.backend()


def test_a_processs_peak_memory_is_its_own_not_that_of_the_process_that_started_it():
    """A worker spawned by a big process (the pytest run, a dashboard, a sweep that trained before) must not
    report the parent's peak, which `ru_maxrss` carries over `fork` and `exec`."""
    code = ("import subprocess, sys, numpy as np\n"
            "block = np.ones(100_000_000); del block\n"  # 800 MB touched, then freed: the parent's peak
            "child = 'from rnnlib.tracking import system; print(system.peak_memory_megabytes())'\n"
            "print(subprocess.run([sys.executable, '-c', child], capture_output=True, text=True, check=True).stdout)\n"
            "from rnnlib.tracking import system; print(system.peak_memory_megabytes())\n")
    child, parent = (float(line) for line in subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert parent > 800 and 0 < child < 200, (parent, child)
