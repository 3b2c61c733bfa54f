"""Shared fixtures: tiny configs and throwaway MLflow stores. Everything runs on the CPU with fixed seeds."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnlib.core.cells import CELLS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

PROJECT_DIR = Path(__file__).resolve().parent.parent
EXPERIMENTS_DIR = PROJECT_DIR / "experiments"
CELL_LIST = ", ".join(CELLS)  # how error messages list the registered cells


@pytest.fixture
def sqlite_uri(tmp_path):
    """A fresh, empty sqlite tracking store in a temporary folder."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def cli_env(tmp_path):
    """Environment for running `python -m rnnlib` as a subprocess from the project folder."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env


def run_cli(args, env, timeout=300):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "rnnlib", *args], cwd=PROJECT_DIR, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory):
    """A real store with a finished sweep: the smoke experiment (3 cells x full/TBPTT(5) x 2 seeds), tiny."""
    folder = tmp_path_factory.mktemp("fixture-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", uri, "--quiet",
                      "--set", "grid.seed=[0, 1]", "--set", "training.epochs=3", "--set", "training.steps_per_epoch=2",
                      "--set", "model.units=4", "--set", "training.num_validation_sequences=16"], env)
    assert result.returncode == 0, result.stderr
    return uri


@pytest.fixture(scope="session")
def predictions_store(tmp_path_factory):
    """A real store with tiny finished runs of five output kinds: a forecast (AR(3) and GRU on the bundled
    stocks, horizon 2), a character model, digit classifiers, waveform generators and date translators."""
    folder = tmp_path_factory.mktemp("predictions-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    experiments = {
        "tiny_forecast": "task: {name: forecast, dataset: stocks, window: 12, horizon: 2}\n"
                         "model: {cell_type: gru, units: 4, ar_order: 3}\ngrid: {model.kind: [ar, recurrent]}\n",
        "tiny_text": "task: {name: text, length: 20}\nmodel: {cell_type: gru, units: 8}\n",
        "tiny_digits": "task: {name: digits, read: rows}\nmodel: {units: 8}\ngrid: {model.cell_type: [rnn, gru]}\n",
        "tiny_waveform": "task: {name: waveform, length: 12}\nmodel: {units: 4}\ngrid: {model.cell_type: [rnn, gru]}\n",
        "tiny_dates": "task: {name: dates, formats: [compact, us_numeric]}\nmodel: {units: 8}\n"
                      "grid: {model.cell_type: [rnn, lstm]}\n",
    }
    for name, text in experiments.items():
        path = folder / f"{name}.yaml"
        path.write_text(text + "training: {epochs: 1, steps_per_epoch: 3, batch_size: 8, "
                               "num_validation_sequences: 16, probe_every: 0}\n")
        result = run_cli(["run", str(path), "--tracking-uri", uri, "--quiet"], env)
        assert result.returncode == 0, result.stderr
    return uri


@contextlib.contextmanager
def start_mlflow_server(backend_uri: str, artifacts: Path, app_name: str | None = None):
    """A real `mlflow server` on a free loopback port over `backend_uri` (`--app-name app_name`: e.g. `rnnlab`, the
    lab's server); yields its URL, stops it after."""
    from rnnlib import tracking

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts), "--workers", "1",
         *(["--app-name", app_name] if app_name else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                tracking.check_store(uri, timeout=1)
                break
            except Exception:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("mlflow server did not start") from None
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
