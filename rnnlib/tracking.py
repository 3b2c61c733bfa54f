"""The only module that imports mlflow: where runs go, how a run is logged, and queries that read them back.

Run schema (what the dashboard and outside tools may rely on):

- experiment: one MLflow experiment per YAML experiment (its `name`). A sweep is a parent run (tag
  `rnnlib.run_kind=sweep`) with one child run per grid point (`mlflow.parentRunId`, `rnnlib.run_kind=trial`);
  a YAML without a grid gives one run of kind `single`.
- params: the flattened config with dotted keys (`rnnlib.config.flatten_params`): `task.name`, `task.length`,
  `model.cell_type`, `model.units`, `training.truncation` (full, 20, 10/20, rand20),
  `training.truncation.mode/k1/k2/mean`, `training.clipnorm`, `seed`, ...
- metrics, with step = epoch (1-based): `epoch`, `train_loss`, `val_loss`, `val_<m>` for each of the task's
  metrics (`Task.metrics`: `val_mae` and `val_rmse` for forecasts), `grad_norm` (mean
  pre-clip global norm over the epoch's updates), `grad_norm_max`, `sequences_per_second`, `epoch_seconds`,
  `updates`; at step 0: `baseline` (the task's trivial-predictor loss); at the end: `best_val_loss`.
- tags: `rnnlib.backend`, `rnnlib.device`, `mlflow.source.git.commit`, `rnnlib.task`, `rnnlib.metric`,
  `rnnlib.baseline_name`, `rnnlib.metric_baselines` (JSON `{predictor: {metric: value}}`, e.g. persistence and
  seasonal-naive MAE), `rnnlib.num_parameters`, `rnnlib.grid_point` (JSON), `rnnlib.error` on failure.
- artifacts: `config.yaml` (the resolved single-run config), `model/model.keras`, `model/weights.npz`,
  `model/predictions.npz` (the task's `prediction_arrays`: validation predictions next to the truth, forecasts
  and k-step rollouts), `data/<file>` (a user's CSV the run trained on, so it can be reproduced), and
  `gradient_flow.npz` (`rnnlib.probes.GradientFlow`: per probe, layer and timestep the norms of ∂L_T/∂h_t,
  ∂L_T/∂c_t and ∂h_T/∂h_t; rewritten at every epoch end while training, absent when `probe_every` is 0).

A run that raises ends FAILED, one interrupted (Ctrl-C, SIGTERM) ends KILLED; neither stays RUNNING.
"""

import contextlib
import io
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rnnlib.config import ExperimentConfig, flatten_params
from rnnlib.errors import TrackingError
from rnnlib.training import Callback

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
GRADIENT_FLOW_ARTIFACT = "gradient_flow.npz"
PREDICTIONS_ARTIFACT = "predictions.npz"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri` if given, else $MLFLOW_TRACKING_URI, else the embedded store `sqlite:///<project>/mlflow.db`."""
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
        self.gradient_flow = None  # the latest probes, written at the next epoch end

    def on_train_begin(self, info):
        tags = {
            "rnnlib.backend": info["backend"],
            "rnnlib.device": info["device"],
            "rnnlib.task": self.config.task.name,
            "rnnlib.metric": info["metric"],
            "rnnlib.baseline_name": info["baseline_name"],
            "rnnlib.metric_baselines": json.dumps(info.get("metric_baselines", {})),
            "rnnlib.num_parameters": info["num_parameters"],
            "rnnlib.grid_point": json.dumps(self.grid_point, default=str),
        }
        self.store.log_config(self.run_id, self.config, tags)
        for path in info.get("data_files", ()):
            self.store.client.log_artifact(self.run_id, str(path), artifact_path="data")
        self.store.log_metrics(self.run_id, {"baseline": info["baseline"]}, step=0)

    def on_epoch_end(self, epoch, logs):
        self.best_val_loss = min(self.best_val_loss, logs["val_loss"])
        self.store.log_metrics(self.run_id, logs, step=epoch)
        self._log_gradient_flow()

    def on_gradient_flow(self, flow):
        self.gradient_flow = flow

    def on_train_end(self, result):
        self.store.log_metrics(self.run_id, {"best_val_loss": self.best_val_loss}, step=len(result.history))
        self._log_gradient_flow()
        with tempfile.TemporaryDirectory() as directory:
            result.save(directory)
            self.store.client.log_artifacts(self.run_id, directory, artifact_path="model")

    def _log_gradient_flow(self):
        """Rewrite `gradient_flow.npz` with every probe so far (a few KB), so a stopped run keeps its history."""
        if self.gradient_flow is None:
            return
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / GRADIENT_FLOW_ARTIFACT
            path.write_bytes(self.gradient_flow.to_bytes())
            self.store.client.log_artifact(self.run_id, str(path))
        self.gradient_flow = None


# Grid axes every run name carries; other axes of a sweep are appended as `name=value`.
NAMED_AXES = ("model.cell_type", "training.truncation", "seed")


def run_name(config: ExperimentConfig, grid_point: dict | None = None) -> str:
    """`lstm-full-s0`, `gru-10/20-s2`: cell, truncation and seed, the axes runs are usually told apart by, then
    the sweep's other axes: `rnn-full-s0-clipnorm=None-recurrent_gain=1.5`."""
    extra = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in (grid_point or {}).items() if key not in NAMED_AXES]
    return "-".join([config.model.cell_type, config.training.truncation.label, f"s{config.seed}", *extra])


# ---- Queries: what the dashboard reads. Each returns plain pandas; callers cache them.

RUN_COLUMNS = ["run_id", "run_name", "status", "kind", "parent_run_id", "start_time", "end_time"]


def list_experiments(uri: str | None) -> pd.DataFrame:
    """`experiment_id`, `name`, `last_update` of every active experiment that has runs, newest first."""
    client = MlflowClient(resolve_tracking_uri(uri))
    rows = []
    for experiment in client.search_experiments(order_by=["last_update_time DESC"]):
        if experiment.name == "Default" and not client.search_runs([experiment.experiment_id], max_results=1):
            continue
        rows.append({"experiment_id": experiment.experiment_id, "name": experiment.name,
                     "last_update": pd.to_datetime(experiment.last_update_time, unit="ms")})
    return pd.DataFrame(rows, columns=["experiment_id", "name", "last_update"])


def runs_frame(uri: str | None, experiment_name: str) -> pd.DataFrame:
    """All runs of an experiment, one row each: `RUN_COLUMNS`, then `params.*`, `metrics.*` (the latest value
    of each metric) and `tags.*`. Empty (with `RUN_COLUMNS`) when the experiment does not exist."""
    client = MlflowClient(resolve_tracking_uri(uri))
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    rows, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=50_000, page_token=token)
        rows += [_run_row(run) for run in page]
        token = page.token
        if not token:
            break
    if not rows:
        return pd.DataFrame(columns=RUN_COLUMNS)
    runs = pd.DataFrame(rows)
    for column in ("start_time", "end_time"):
        runs[column] = pd.to_datetime(runs[column], unit="ms")
    return runs


def _run_row(run) -> dict:
    tags = run.data.tags
    row = {
        "run_id": run.info.run_id,
        "run_name": tags.get("mlflow.runName", run.info.run_id[:8]),
        "status": run.info.status,
        "kind": tags.get("rnnlib.run_kind", "single"),
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
    }
    row.update({f"params.{k}": v for k, v in run.data.params.items()})
    row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
    row.update({f"tags.{k}": v for k, v in tags.items()})
    return row


def metric_histories(uri: str | None, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Every logged value of metrics `keys` for `run_ids`, fetched in bulk: long format with columns
    `run_id`, `key`, `step`, `value`, sorted by run, key and step.

    A sqlite (or other database) store answers one query per 2,000 runs; a tracking server one request per
    metric and 100 runs (its bulk endpoint's limit).
    """
    client_uri = resolve_tracking_uri(uri)
    run_ids, keys = list(run_ids), list(keys)
    if client_uri.startswith(("http://", "https://")):
        frames = [_server_history_bulk(client_uri, run_ids[i : i + 100], key)
                  for key in keys for i in range(0, len(run_ids), 100)]
    else:
        frames = [_database_history_bulk(client_uri, run_ids[i : i + 2000], keys)
                  for i in range(0, len(run_ids), 2000)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame({"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str),
                             "step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64")})
    history = pd.concat(frames, ignore_index=True)
    history["key"] = history["key"].astype("category")  # fast equality filters on a few distinct names
    return history.sort_values(["run_id", "key", "step"], ignore_index=True)


def _database_history_bulk(uri, run_ids, keys):
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store(uri)
    engine = getattr(store, "engine", None)
    if engine is not None:
        try:  # one SQL query straight into a DataFrame: ~20x faster than building MLflow entities
            return _read_metrics_table(engine, run_ids, keys)
        except Exception:  # an unexpected schema: fall back to MLflow's own bulk call
            pass
    frames = []
    for key in keys:
        if hasattr(store, "get_metric_history_bulk"):
            records = [(m.run_id, m.step, m.value)
                       for m in store.get_metric_history_bulk(run_ids, key, max_results=10_000_000)]
        else:  # not a database store: one call per run
            client = MlflowClient(uri)
            records = [(run_id, m.step, m.value) for run_id in run_ids
                       for m in client.get_metric_history(run_id, key)]
        frames.append(pd.DataFrame(records, columns=["run_id", "step", "value"]).assign(key=key))
    return pd.concat(frames, ignore_index=True)[["run_id", "key", "step", "value"]]


def _read_metrics_table(engine, run_ids, keys) -> pd.DataFrame:
    """Read MLflow's `metrics` table directly: columns run_id, key, step, value."""
    marks = lambda values: ", ".join("?" * len(values))  # noqa: E731
    query = (f"SELECT run_uuid, key, step, value, timestamp FROM metrics "
             f"WHERE key IN ({marks(keys)}) AND run_uuid IN ({marks(run_ids)})")
    if engine.dialect.paramstyle != "qmark":
        query = query.replace("?", "%s")
    connection = engine.raw_connection()  # the DBAPI connection: no per-row SQLAlchemy processing
    try:
        cursor = connection.cursor()
        cursor.execute(query, [*keys, *run_ids])
        frame = pd.DataFrame(cursor.fetchall(), columns=["run_id", "key", "step", "value", "timestamp"])
    finally:
        connection.close()
    # a step logged twice keeps its latest value, as MLflow's own history does
    frame = frame.sort_values(["run_id", "key", "step", "timestamp"]).drop_duplicates(["run_id", "key", "step"],
                                                                                       keep="last")
    return frame[["run_id", "key", "step", "value"]]


def _server_history_bulk(uri, run_ids, key):
    import requests

    response = requests.get(
        f"{uri.rstrip('/')}/ajax-api/2.0/mlflow/metrics/get-history-bulk",
        params={"run_id": run_ids, "metric_key": key, "max_results": 25_000}, timeout=30,
    )
    response.raise_for_status()
    metrics = response.json().get("metrics", [])
    frame = pd.DataFrame([(m["run_id"], m["step"], m["value"]) for m in metrics], columns=["run_id", "step", "value"])
    return frame.assign(key=key)[["run_id", "key", "step", "value"]]


def load_weights(uri: str | None, run_id: str) -> dict:
    """A run's trained weights (`model/weights.npz`) as {Keras weight path: numpy array}, without Keras."""
    import numpy as np

    with tempfile.TemporaryDirectory() as directory:
        local = MlflowClient(resolve_tracking_uri(uri)).download_artifacts(run_id, "model/weights.npz", directory)
        with np.load(local) as archive:
            return {name: archive[name] for name in archive.files}


def load_gradient_flow(uri: str | None, run_id: str):
    """A run's `gradient_flow.npz` as a `rnnlib.probes.GradientFlow`, or None when the run logged none."""
    from rnnlib.probes import GradientFlow

    content = _optional_artifact(uri, run_id, GRADIENT_FLOW_ARTIFACT)
    return None if content is None else GradientFlow.from_bytes(content)


def load_predictions(uri: str | None, run_id: str) -> dict | None:
    """A run's `model/predictions.npz` as {name: numpy array}, or None when the run has none (still training,
    failed, or logged before predictions were kept)."""
    import numpy as np

    content = _optional_artifact(uri, run_id, f"model/{PREDICTIONS_ARTIFACT}")
    if content is None:
        return None
    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _optional_artifact(uri: str | None, run_id: str, path: str) -> bytes | None:
    """The bytes of a run's artifact at `path`, or None when the run has no such artifact."""
    client = MlflowClient(resolve_tracking_uri(uri))
    folder = path.rpartition("/")[0] or None
    if not any(a.path == path for a in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as directory:
        return Path(client.download_artifacts(run_id, path, directory)).read_bytes()


def load_artifact_text(uri: str | None, run_id: str, path: str) -> str:
    """The text of a run's artifact, e.g. `config.yaml`."""
    with tempfile.TemporaryDirectory() as directory:
        local = MlflowClient(resolve_tracking_uri(uri)).download_artifacts(run_id, path, directory)
        return Path(local).read_text(encoding="utf-8")


def store_status(uri: str | None) -> tuple[bool, str]:
    """(reachable, a one-line description) of the tracking store, for the dashboard's sidebar."""
    resolved = resolve_tracking_uri(uri)
    try:
        check_store(resolved, timeout=2.0)
    except TrackingError as error:
        return False, str(error)
    if resolved == DEFAULT_TRACKING_URI:
        return True, "embedded sqlite store (mlflow.db in the project)"
    return True, resolved


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
