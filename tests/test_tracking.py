"""The CLI and sweeps against real MLflow stores: a temporary sqlite file and a real `mlflow server` on loopback."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import CELL_LIST, EXPERIMENTS_DIR, PROJECT_DIR, run_cli, start_mlflow_server
from rnnlib import tracking
from rnnlib.core import callbacks
from rnnlib.core import config as cfg
from rnnlib.core.errors import TrackingError
from rnnlib.run import sweep

pytestmark = pytest.mark.slow

TINY = ["--set", "training.epochs=2", "--set", "training.steps_per_epoch=2", "--set", "training.batch_size=8",
        "--set", "training.num_validation_sequences=8", "--set", "model.units=4", "--quiet"]


def runs_of(uri, name):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def test_cli_sweep_logs_finished_runs_with_the_documented_schema(sqlite_uri, cli_env):
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", sqlite_uri, *TINY,
                      "--set", "grid.seed=[0, 1]"], cli_env)
    assert result.returncode == 0, result.stderr
    assert "Best validation loss" in result.stdout and "vs_baseline" in result.stdout
    client, runs = runs_of(sqlite_uri, "smoke")
    parents = [r for r in runs if r.data.tags["rnnlib.run_kind"] == "sweep"]
    trials = [r for r in runs if r.data.tags["rnnlib.run_kind"] == "trial"]
    assert len(parents) == 1 and len(trials) == 12  # 3 cells x 2 truncations x 2 seeds
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in trials)
    assert json.loads(parents[0].data.tags["rnnlib.grid"])["seed"] == [0, 1]

    trial = next(r for r in trials if r.data.params["model.cell_type"] == "gru"
                 and r.data.params["training.truncation"] == "5" and r.data.params["seed"] == "1")
    params = trial.data.params
    assert params["task.name"] == "adding" and params["task.length"] == "20"
    assert params["training.truncation.mode"] == "tbptt" and params["training.truncation.k2"] == "5"
    assert params["model.units"] == "4"
    metrics = trial.data.metrics
    for key in ("train_loss", "val_loss", "val_mae", "grad_norm", "grad_norm_max", "sequences_per_second",
                "baseline", "best_val_loss"):
        assert key in metrics, key
    assert metrics["baseline"] == pytest.approx(1 / 6)
    history = client.get_metric_history(trial.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    assert metrics["best_val_loss"] == pytest.approx(min(m.value for m in history))
    tags = trial.data.tags
    assert tags["rnnlib.backend"] == "tensorflow" and tags["rnnlib.device"] == "cpu"
    assert tags["mlflow.source.git.commit"] and tags["rnnlib.task"] == "adding"
    assert json.loads(tags["rnnlib.grid_point"]) == {"model.cell_type": "gru", "training.truncation": 5, "seed": 1}
    artifacts = {a.path for a in client.list_artifacts(trial.info.run_id)}
    assert artifacts == {"config.yaml", "model", "gradient_flow.npz"}
    assert {a.path for a in client.list_artifacts(trial.info.run_id, "model")} == {
        "model/model.keras", "model/weights.npz", "model/predictions.npz"}
    resolved = mlflow.artifacts.load_text(f"{trial.info.artifact_uri}/config.yaml")
    assert cfg.parse_config(resolved).training.truncation.label == "5"

    flow = tracking.load_gradient_flow(sqlite_uri, trial.info.run_id)  # `auto`: at init and after the last epoch
    assert (flow.cell_type, flow.truncation, flow.sequence_length) == ("gru", "5", 20)
    assert params["training.probe_every"] == "auto"
    steps_per_epoch = int(params["training.steps_per_epoch"])
    np.testing.assert_array_equal(flow.steps, [0, 2 * steps_per_epoch])
    np.testing.assert_array_equal(flow.reaches, [15, 15])
    hidden = flow.norms["loss_hidden"]
    assert hidden.shape == (2, 1, 20) and np.all(hidden[..., :15] == 0) and np.all(hidden[..., 15:] > 0)
    assert [m.step for m in client.get_metric_history(trial.info.run_id, "trunc_cosine")] == [2]  # probed epochs


def test_artifacts_of_a_sqlite_store_sit_beside_the_database(sqlite_uri, cli_env, tmp_path):
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", sqlite_uri, *TINY,
                      "--set", "grid={}"], cli_env)
    assert result.returncode == 0, result.stderr
    _, runs = runs_of(sqlite_uri, "smoke")
    assert len(runs) == 1 and runs[0].data.tags["rnnlib.run_kind"] == "single"
    assert runs[0].info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


def test_invalid_config_exits_2_with_the_message_and_writes_nothing(sqlite_uri, cli_env, tmp_path):
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", sqlite_uri,
                      "--set", "model.cell_type=elman"], cli_env)
    assert result.returncode == 2
    assert f"model.cell_type: unknown cell; expected one of: {CELL_LIST} (got 'elman')" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_validate_counts_the_runs_without_training(cli_env):
    result = run_cli(["validate", str(EXPERIMENTS_DIR / "adding_cells.yaml")], cli_env)
    assert result.returncode == 0 and "9 run(s)" in result.stdout


def test_unreachable_server_gets_a_clear_message(cli_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket closes
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", f"http://127.0.0.1:{port}"],
                     cli_env)
    assert result.returncode == 3
    assert f"The MLflow tracking server at http://127.0.0.1:{port} is not reachable" in result.stderr
    assert "Traceback" not in result.stderr


def test_sigterm_ends_the_open_run_killed(sqlite_uri, cli_env):
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnlib", "run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", sqlite_uri,
         "--set", "grid={}", "--set", "training.epochs=1000", "--quiet"],
        cwd=PROJECT_DIR, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.time() + 120
        artifacts = Path(sqlite_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        while time.time() < deadline:  # wait until training has logged an epoch
            # config.yaml is written once the store is set up: polling earlier would race its schema migration
            if list(artifacts.glob("*/*/artifacts/config.yaml")):
                _, runs = runs_of(sqlite_uri, "smoke")
                if runs and "val_loss" in runs[0].data.metrics:
                    break
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    _, runs = runs_of(sqlite_uri, "smoke")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert "interrupted" in runs[0].data.tags["rnnlib.error"]


class Explodes(callbacks.Callback):
    def on_epoch_end(self, epoch, logs):
        raise RuntimeError("disk full")


def test_a_crashing_trial_ends_failed_and_the_sweep_goes_on(sqlite_uri):
    config = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", ["grid={model.cell_type: [rnn, gru]}",
                                                               "training.epochs=1", "training.steps_per_epoch=1"])
    store = tracking.Store(sqlite_uri)
    calls = []

    def callbacks(index, total, trial_config):
        calls.append(index)
        return [Explodes()] if index == 0 else []

    with pytest.raises(sweep.SweepError, match="1 of 2 runs failed"):
        sweep.run_experiment(config, store, callbacks)
    assert calls == [0, 1]
    _, runs = runs_of(sqlite_uri, "smoke")
    status = {r.data.tags.get("mlflow.runName"): r.info.status for r in runs}
    assert status["rnn-full-s0"] == "FAILED" and status["gru-full-s0"] == "FINISHED"
    assert [s for n, s in status.items() if n.startswith("sweep-")] == ["FAILED"]
    failed = next(r for r in runs if r.info.status == "FAILED" and r.data.tags["rnnlib.run_kind"] == "trial")
    assert failed.data.tags["rnnlib.error"] == "RuntimeError: disk full"


@pytest.fixture
def mlflow_server(tmp_path):
    with start_mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts") as uri:
        yield uri


def test_cli_logs_to_a_real_mlflow_server(mlflow_server, cli_env, tmp_path):
    env = dict(cli_env, MLFLOW_TRACKING_URI=mlflow_server)
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), *TINY, "--set", "grid={model.cell_type: [lstm]}"],
                     env)
    assert result.returncode == 0, result.stderr
    client, runs = runs_of(mlflow_server, "smoke")
    trial = next(r for r in runs if r.data.tags["rnnlib.run_kind"] == "trial")
    assert trial.info.status == "FINISHED" and "val_loss" in trial.data.metrics
    assert {a.path for a in client.list_artifacts(trial.info.run_id, "model")} == {
        "model/model.keras", "model/weights.npz", "model/predictions.npz"}
    assert (tmp_path / "server-artifacts").is_dir()
    flow = tracking.load_gradient_flow(mlflow_server, trial.info.run_id)
    assert flow.cell_type == "lstm" and set(flow.norms) == {"loss_hidden", "loss_cell", "jacobian", "input"}
    np.testing.assert_allclose(flow.norms["jacobian"][:, 0, -1], 1.0, rtol=1e-5)  # ∂h_T/∂h_T = I


def breaks_its_answer_once(write, calls):
    """`write`, whose first call is written and then answered with a broken response, the way MLflow's client
    reports a server killed while it answered."""
    import requests
    from mlflow.exceptions import MlflowException

    def call(*args, **kwargs):
        result = write(*args, **kwargs)
        calls.append(args)
        if len(calls) == 1:
            try:
                raise requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(0 bytes read)")
            except requests.exceptions.ChunkedEncodingError as error:
                raise MlflowException(f"API request to http://127.0.0.1/ failed with exception {error}")  # noqa: B904
        return result

    return call


def test_a_write_whose_answer_broke_off_is_sent_once_more_and_stored_once(sqlite_uri, monkeypatch):
    from rnnlib.tracking import store as store_module

    monkeypatch.setattr(store_module, "RESEND_SECONDS", 0.0)
    store = tracking.Store(sqlite_uri)
    run_id = store.open_run(store.experiment_id("resend"), "r")
    calls = []
    monkeypatch.setattr(store.client, "log_batch", breaks_its_answer_once(store.client.log_batch, calls))
    store.log_metrics(run_id, {"val_loss": 0.5}, step=1)
    assert len(calls) == 2  # sent again
    history = MlflowClient(sqlite_uri).get_metric_history(run_id, "val_loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5)]  # the point the server had already is not doubled


def test_a_write_that_failed_otherwise_is_not_sent_again(sqlite_uri, monkeypatch):
    from mlflow.exceptions import MlflowException

    store = tracking.Store(sqlite_uri)
    run_id = store.open_run(store.experiment_id("no-resend"), "r")
    calls = []

    def refused(*args, **kwargs):
        calls.append(args)
        raise MlflowException("API request to http://127.0.0.1/ failed with exception Max retries exceeded")

    monkeypatch.setattr(store.client, "set_tag", refused)
    with pytest.raises(TrackingError, match="failed while writing"):
        store.set_tag(run_id, "k", "v")
    assert len(calls) == 1
