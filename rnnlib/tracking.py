"""The only module that imports mlflow: where runs go, how a run is logged, and queries that read them back.

Run schema (what the dashboard and outside tools may rely on):

- experiment: one MLflow experiment per YAML experiment (its `name`). A sweep is a parent run (tag
  `rnnlib.run_kind=sweep`) with one child run per grid point (`mlflow.parentRunId`, `rnnlib.run_kind=trial`);
  a YAML without a grid gives one run of kind `single`.
- params: the flattened config with dotted keys (`rnnlib.config.flatten_params`): `task.name`, `task.length`,
  `model.cell_type`, `model.units`, `training.truncation` (full, 20, 10/20, rand20),
  `training.truncation.mode/k1/k2/mean`, `training.clipnorm`, `seed`, ...
- metrics, with step = epoch (1-based): `train_loss`, `val_loss`, `val_<task metric>`, `grad_norm` (mean
  pre-clip global norm over the epoch's updates), `grad_norm_max`, `sequences_per_second`, `epoch_seconds`,
  `updates`; at step 0: `baseline` (the task's trivial-predictor loss); at the end: `best_val_loss`.
- tags: `rnnlib.backend`, `rnnlib.device`, `mlflow.source.git.commit`, `rnnlib.task`, `rnnlib.metric`,
  `rnnlib.baseline_name`, `rnnlib.num_parameters`, `rnnlib.grid_point` (JSON), `rnnlib.error` on failure.
- artifacts: `config.yaml` (the resolved single-run config), `model/model.keras`, `model/weights.npz`.

A run that raises ends FAILED, one interrupted (Ctrl-C, SIGTERM) ends KILLED; neither stays RUNNING.
"""

import contextlib
import json
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rnnlib.config import ExperimentConfig, flatten_params
from rnnlib.errors import TrackingError
from rnnlib.training import Callback

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri` if given, else $MLFLOW_TRACKING_URI, else the embedded store `sqlite:///<project>/mlflow.db`."""
    import os

    return uri or os.environ.get(ENV_TRACKING_URI) or DEFAULT_TRACKING_URI


def artifact_root(uri: str) -> Path | None:
    """Where runs of a sqlite store keep their artifacts: `mlartifacts/` beside the database file."""
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///").split("?")[0])
        return database.parent / "mlartifacts"
    return None


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Raise `TrackingError` with what to do when the store at `uri` cannot be used."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"answered HTTP {response.status}"
        except (urllib.error.URLError, OSError) as error:
            problem = str(getattr(error, "reason", error))
        raise TrackingError(
            f"The MLflow tracking server at {uri} is not reachable ({problem}). Start it "
            f"(`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`), or unset "
            f"{ENV_TRACKING_URI} / drop --tracking-uri to use the embedded store."
        )
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///").split("?")[0]).parent
        if not folder.is_dir():
            raise TrackingError(f"The folder of the sqlite store {uri} does not exist: create {folder} first.")


class Store:
    """A tracking store: experiments, runs and their logging, over one `MlflowClient`."""

    def __init__(self, uri: str | None = None):
        self.uri = resolve_tracking_uri(uri)
        check_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts beside a sqlite store) when missing."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        root = artifact_root(self.uri)
        location = (root / _slug(name)).as_uri() if root else None
        return self.client.create_experiment(name, artifact_location=location)

    @contextlib.contextmanager
    def run(self, experiment_id: str, run_name: str, tags: dict | None = None, parent_run_id: str | None = None):
        """Open a run; it ends FINISHED, FAILED (an exception) or KILLED (KeyboardInterrupt / SIGTERM)."""
        all_tags = {"mlflow.source.git.commit": git_commit(), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        run_id = run.info.run_id
        try:
            yield run_id
        except KeyboardInterrupt:
            self._end(run_id, "KILLED", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except BaseException as error:
            self._end(run_id, "FAILED", f"{type(error).__name__}: {error}")
            raise
        else:
            self.client.set_terminated(run_id, "FINISHED")

    def _end(self, run_id: str, status: str, reason: str) -> None:
        try:
            self.client.set_tag(run_id, "rnnlib.error", reason[:5000])
        finally:
            self.client.set_terminated(run_id, status)

    def log_config(self, run_id: str, config: ExperimentConfig, tags: dict | None = None) -> None:
        """Params (flattened config) and tags in one batch, and the resolved YAML as `config.yaml`."""
        params = [Param(k, v) for k, v in flatten_params(config).items()]
        run_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        self.client.log_batch(run_id, params=params, tags=run_tags)
        self.client.log_text(run_id, config.to_yaml(), "config.yaml")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        self.client.log_batch(run_id, metrics=batch)


class RunLogger(Callback):
    """Training callback that writes one run per the schema above."""

    def __init__(self, store: Store, run_id: str, config: ExperimentConfig, grid_point: dict | None = None):
        self.store, self.run_id, self.config = store, run_id, config
        self.grid_point = grid_point or {}
        self.best_val_loss = float("inf")

    def on_train_begin(self, info):
        tags = {
            "rnnlib.backend": info["backend"],
            "rnnlib.device": info["device"],
            "rnnlib.task": self.config.task.name,
            "rnnlib.metric": info["metric"],
            "rnnlib.baseline_name": info["baseline_name"],
            "rnnlib.num_parameters": info["num_parameters"],
            "rnnlib.grid_point": json.dumps(self.grid_point, default=str),
        }
        self.store.log_config(self.run_id, self.config, tags)
        self.store.log_metrics(self.run_id, {"baseline": info["baseline"]}, step=0)

    def on_epoch_end(self, epoch, logs):
        self.best_val_loss = min(self.best_val_loss, logs["val_loss"])
        self.store.log_metrics(self.run_id, logs, step=epoch)

    def on_train_end(self, result):
        self.store.log_metrics(self.run_id, {"best_val_loss": self.best_val_loss}, step=len(result.history))
        with tempfile.TemporaryDirectory() as directory:
            result.save(directory)
            self.store.client.log_artifacts(self.run_id, directory, artifact_path="model")


def run_name(config: ExperimentConfig) -> str:
    """`lstm-full-s0`, `gru-10/20-s2`: cell, truncation and seed, the axes runs are usually told apart by."""
    return f"{config.model.cell_type}-{config.training.truncation.label}-s{config.seed}"


def runs_frame(uri: str | None, experiment_name: str) -> pd.DataFrame:
    """All runs of an experiment: one row per run with `run_id`, `status`, `params.*`, `metrics.*` (the
    last value of each), `tags.*`."""
    client_uri = resolve_tracking_uri(uri)
    experiment = MlflowClient(client_uri).get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame()
    mlflow.set_tracking_uri(client_uri)
    return mlflow.search_runs([experiment.experiment_id], max_results=50_000)


def metric_history(uri: str | None, run_id: str, key: str) -> pd.DataFrame:
    """`step`, `value` of one metric of one run."""
    history = MlflowClient(resolve_tracking_uri(uri)).get_metric_history(run_id, key)
    return pd.DataFrame({"step": [m.step for m in history], "value": [m.value for m in history]})


def git_commit() -> str:
    """The project's git commit (with `-dirty` when it has uncommitted changes), or `unknown`."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"
