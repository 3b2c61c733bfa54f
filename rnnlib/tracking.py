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
  `updates`; at step 0: `baseline` (the task's trivial-predictor loss); at the end: `best_val_loss`. Every
  validation metric and baseline is computed on the task's whole validation set, each sequence once
  (`Task.validation_size`). NaN and +-inf are logged as they are and read back as they are (MLflow stores
  them as `is_nan` / +-1.797e308); a run whose loss became one is diverged (`rnnlib.divergence`): training
  stopped there, it carries the tag `rnnlib.diverged_epoch`, and its `best_val_loss` is NaN.
- tags: `rnnlib.backend`, `rnnlib.device`, `mlflow.source.git.commit`, `rnnlib.task`, `rnnlib.metric`,
  `rnnlib.baseline_name`, `rnnlib.metric_baselines` (JSON `{predictor: {metric: value}}`, e.g. persistence and
  seasonal-naive MAE), `rnnlib.num_parameters`, `rnnlib.grid_point` (JSON), `rnnlib.schema_version` (of its
  config), `rnnlib.error` on failure, `rnnlib.diverged_epoch`, `rnnlib.job_id` (the dashboard job that
  started it), `rnnlib.worker` (JSON host, pid and start time of the process training it) and
  `rnnlib.heartbeat` (unix seconds, refreshed every 30 s while it trains; see `reconcile`).
- artifacts: `config.yaml` (the resolved single-run config, with its `schema_version`; read back leniently by
  `rnnlib.config.read_logged_config`, so runs logged by older and newer versions stay readable),
  `model/model.keras`, `model/weights.npz`,
  `model/predictions.npz` (the task's `prediction_arrays`: validation predictions next to the truth, forecasts
  and k-step rollouts), `data/<file>` (a user's CSV the run trained on, so it can be reproduced), and
  `gradient_flow.npz` (`rnnlib.probes.GradientFlow`: per probe, layer and timestep the norms of ∂L_T/∂h_t,
  ∂L_T/∂c_t and ∂h_T/∂h_t; rewritten at every epoch end while training, absent when `probe_every` is 0).

A run that raises ends FAILED, one interrupted (Ctrl-C, SIGTERM) ends KILLED; one whose worker died without
ending it (kill -9, out of memory, a store that stopped taking writes) is ended FAILED by `reconcile`, which the
dashboard runs as it opens. None stays RUNNING.
"""

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rnnlib import divergence, workers
from rnnlib.config import SCHEMA_VERSION, ExperimentConfig, LoggedConfig, flatten_params, read_logged_config
from rnnlib.errors import ConfigError, RunDataError, TrackingError
from rnnlib.training import Callback

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
GRADIENT_FLOW_ARTIFACT = "gradient_flow.npz"
PREDICTIONS_ARTIFACT = "predictions.npz"


# How long MLflow waits for a tracking server. Training (the CLI and the dashboard's jobs alike) rides out a
# server restart of about half a minute (4 retries, 2-16 s apart), then stops with a message; the dashboard's own
# page reads fail within seconds. Variables a user set explicitly win.
HTTP_POLICIES = {
    "training": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"},
    "dashboard": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
}
_POLICY_SET: set[str] = set()  # the variables this process set itself, which its workers must not inherit


def apply_http_policy(kind: str) -> None:
    """Set the `HTTP_POLICIES[kind]` MLflow variables that the environment does not set already."""
    for key, value in HTTP_POLICIES[kind].items():
        if key not in os.environ:
            os.environ[key] = value
            _POLICY_SET.add(key)


def worker_environment() -> dict[str, str]:
    """This process's environment without the HTTP policy it applied to itself, for a worker it starts."""
    return {k: v for k, v in os.environ.items() if k not in _POLICY_SET}


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri` if given, else $MLFLOW_TRACKING_URI, else the embedded store `sqlite:///<project>/mlflow.db`."""
    return uri or os.environ.get(ENV_TRACKING_URI) or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite store URI, plain (`sqlite:///path/mlflow.db`) or in SQLite's URI form
    (`sqlite:///file:/abs/mlflow.db?mode=ro&uri=true`, e.g. read-only); None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path.removeprefix("file:") if path.startswith("file:") else path)


def artifact_root(uri: str) -> Path | None:
    """Where runs of a sqlite store keep their artifacts: `mlartifacts/` beside the database file."""
    database = sqlite_path(uri)
    return database.parent / "mlartifacts" if database else None


STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")
SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Raise `TrackingError` with what to do when the store at `uri` cannot be used. Answers within `timeout`
    seconds, before MLflow would spend minutes retrying."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in STORE_SCHEMES:
        raise TrackingError(
            f"{uri!r} is not a tracking store this lab can use: give a sqlite file (sqlite:///path/mlflow.db), a "
            f"tracking server (http://host:port) or a database ({', '.join(STORE_SCHEMES[3:])}), or unset "
            f"{ENV_TRACKING_URI} / drop --tracking-uri to use the embedded store.")
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"answered HTTP {response.status}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            problem = str(getattr(error, "reason", error))
        raise TrackingError(
            f"The MLflow tracking server at {uri} is not reachable ({problem}). Start it "
            f"(`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`), or unset "
            f"{ENV_TRACKING_URI} / drop --tracking-uri to use the embedded store."
        )
    if scheme == "sqlite":
        _check_sqlite(uri)


def _check_sqlite(uri: str) -> None:
    database = sqlite_path(uri)
    if database is None or not database.name:
        raise TrackingError(f"{uri!r} names no database file; use sqlite:///path/to/mlflow.db.")
    read_only = "mode=ro" in uri
    folder = database.parent
    if not folder.is_dir():
        raise TrackingError(f"The folder of the sqlite store {uri} does not exist: create {folder} first.")
    if database.is_dir():
        raise TrackingError(f"The sqlite store {uri} is a folder, not a database file: point at a file inside "
                            "it, e.g. sqlite:///" + str(database / "mlflow.db"))
    if not database.exists():
        if read_only:
            raise TrackingError(f"The read-only sqlite store {uri} does not exist: check the path.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingError(f"Cannot create the sqlite store {database}: the folder {folder} is not writable. "
                                "Choose another folder or fix its permissions.")
        return
    try:
        with open(database, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        raise TrackingError(f"Cannot open the sqlite store {database} ({error.strerror}); fix its permissions "
                            "or point at another file.") from None
    if header and header != SQLITE_HEADER:
        raise TrackingError(f"{database} is not an SQLite database (its first bytes are not SQLite's header): "
                            "point at an MLflow store, or at a new file to start one.")
    if not read_only and not os.access(database, os.W_OK):
        raise TrackingError(f"The sqlite store {database} is read-only for this user: training needs to write "
                            "to it. Fix its permissions, or open it read-only with "
                            f"sqlite:///file:{database}?mode=ro&uri=true to browse.")


@contextlib.contextmanager
def _schema_lock(uri: str):
    """Hold an exclusive lock on a sqlite store's folder while MLflow creates or upgrades its tables, so that two
    processes opening a fresh store at once do not both create them ("table ... already exists"). A lock on the
    folder itself leaves no file behind."""
    database = sqlite_path(uri)
    if database is None or not database.parent.is_dir():
        yield
        return
    import fcntl

    descriptor = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


_OPENED: set[str] = set()


def open_client(uri: str | None) -> MlflowClient:
    """An `MlflowClient` for the store at `uri` (resolved), whose tables were created safely (`_schema_lock`)
    the first time this process opened it."""
    resolved = resolve_tracking_uri(uri)
    if resolved not in _OPENED:
        from mlflow.tracking._tracking_service.utils import _get_store

        with _schema_lock(resolved):
            _get_store(resolved)  # MLflow caches the store per URI: tables are created here, once
        _OPENED.add(resolved)
    return MlflowClient(resolved)


# Written on every run so that a run whose worker vanished (kill -9, out of memory, a lost machine) can be told
# from one that is still training, and ended instead of staying RUNNING forever (`reconcile`).
WORKER_TAG = "rnnlib.worker"
HEARTBEAT_TAG = "rnnlib.heartbeat"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 15 * 60.0  # a worker on another host is gone after this long without a heartbeat


class Store:
    """A tracking store: experiments, runs and their logging, over one `MlflowClient`.

    Args:
        run_tags: tags every run opened through this store carries (e.g. the dashboard job's id).
    """

    def __init__(self, uri: str | None = None, run_tags: dict[str, str] | None = None):
        self.uri = resolve_tracking_uri(uri)
        check_store(self.uri)
        try:
            self.client = open_client(self.uri)
        except Exception as error:  # a broken database file, a server that answers garbage
            raise TrackingError(f"Cannot open the tracking store {self.uri}: {_short(error)}") from None
        self.run_tags = dict(run_tags or {})
        self.worker = workers.Worker.current()
        self._open: list[str] = []  # runs this process has open, the innermost last
        self._last_heartbeat = 0.0

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts beside a sqlite store) when missing."""
        with writes(self.uri):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(experiment.experiment_id)
                return experiment.experiment_id
            root = artifact_root(self.uri)
            location = (root / artifact_folder(name)).as_uri() if root else None
            return self.client.create_experiment(name, artifact_location=location)

    @contextlib.contextmanager
    def run(self, experiment_id: str, run_name: str, tags: dict | None = None, parent_run_id: str | None = None):
        """Open a run; it ends FINISHED, FAILED (an exception) or KILLED (KeyboardInterrupt / SIGTERM).

        When the store itself fails (a full disk, a stopped server) and the run cannot even be ended, a
        `TrackingError` says so; the run is then ended FAILED by the next `reconcile`, as its worker is gone."""
        all_tags = {"mlflow.source.git.commit": git_commit(), WORKER_TAG: self.worker.to_json(),
                    HEARTBEAT_TAG: f"{time.time():.0f}", **self.run_tags, **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        with writes(self.uri):
            run_id = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        self._open.append(run_id)
        try:
            yield run_id
        except KeyboardInterrupt:
            self._end(run_id, "KILLED", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except BaseException as error:
            self._end(run_id, "FAILED", f"{type(error).__name__}: {error}")
            raise
        else:
            self._end(run_id, "FINISHED")
        finally:
            self._open.remove(run_id)

    def _end(self, run_id: str, status: str, reason: str | None = None) -> None:
        with writes(self.uri):
            if reason:
                self.client.set_tag(run_id, "rnnlib.error", reason[:5000])
            self.client.set_terminated(run_id, status)

    def heartbeat(self, force: bool = False) -> None:
        """Mark this process's open runs alive (at most every `HEARTBEAT_SECONDS`)."""
        now = time.time()
        if not self._open or (not force and now - self._last_heartbeat < HEARTBEAT_SECONDS):
            return
        self._last_heartbeat = now
        with writes(self.uri):
            for run_id in self._open:
                self.client.set_tag(run_id, HEARTBEAT_TAG, f"{now:.0f}")

    def log_config(self, run_id: str, config: ExperimentConfig, tags: dict | None = None) -> None:
        """Params (flattened config) and tags in one batch, and the resolved YAML as `config.yaml`."""
        params = [Param(k, v) for k, v in flatten_params(config).items()]
        run_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        with writes(self.uri):
            self.client.log_batch(run_id, params=params, tags=run_tags)
            self.client.log_text(run_id, config.to_yaml(), "config.yaml")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
        with writes(self.uri):
            self.client.log_batch(run_id, metrics=batch)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        with writes(self.uri):
            self.client.set_tag(run_id, key, value)

    def log_artifacts(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or every file in a folder, as artifacts of the run (under `artifact_path`)."""
        with writes(self.uri):
            if Path(path).is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=artifact_path)
            else:
                self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)


@contextlib.contextmanager
def writes(uri: str):
    """Store calls inside raise `TrackingError`, with what to do, when the store fails (a full disk, a stopped
    server, a locked or broken database) instead of MLflow's own exception and traceback."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        raise TrackingError(
            f"The tracking store {uri} failed while writing ({_short(error)}). Nothing more was written. Check "
            "that the disk has room and the server runs, then start the experiment again; a run it left open "
            "is ended FAILED when the dashboard next opens (its worker is gone)."
        ) from error


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RunLogger(Callback):
    """Training callback that writes one run per the schema above."""

    def __init__(self, store: Store, run_id: str, config: ExperimentConfig, grid_point: dict | None = None):
        self.store, self.run_id, self.config = store, run_id, config
        self.grid_point = grid_point or {}
        self.history = []
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
            "rnnlib.schema_version": SCHEMA_VERSION,
        }
        self.store.log_config(self.run_id, self.config, tags)
        for path in info.get("data_files", ()):
            self.store.log_artifacts(self.run_id, path, artifact_path="data")
        self.store.log_metrics(self.run_id, {"baseline": info["baseline"]}, step=0)

    def on_epoch_end(self, epoch, logs):
        self.history.append(logs)
        self.store.log_metrics(self.run_id, logs, step=epoch)
        if divergence.diverged(logs):
            self.store.set_tag(self.run_id, divergence.TAG, str(epoch))
        self._log_gradient_flow()

    def on_batch_end(self, epoch, batch):
        self.store.heartbeat()

    def on_gradient_flow(self, flow):
        self.gradient_flow = flow

    def on_train_end(self, result):
        self.store.log_metrics(self.run_id, {"best_val_loss": divergence.best_val_loss(self.history)},
                               step=len(result.history))
        self._log_gradient_flow()
        with tempfile.TemporaryDirectory() as directory:
            result.save(directory)
            self.store.log_artifacts(self.run_id, directory, artifact_path="model")

    def _log_gradient_flow(self):
        """Rewrite `gradient_flow.npz` with every probe so far (a few KB), so a stopped run keeps its history."""
        if self.gradient_flow is None:
            return
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / GRADIENT_FLOW_ARTIFACT
            path.write_bytes(self.gradient_flow.to_bytes())
            self.store.log_artifacts(self.run_id, path)
        self.gradient_flow = None


JOB_TAG = "rnnlib.job_id"  # the dashboard job that started a run (`rnnlib.jobs`)


def reconcile(uri: str | None, cancelled_jobs: frozenset[str] = frozenset(), now: float | None = None) -> list[dict]:
    """End the runs left RUNNING by a worker that is gone, so that no run stays RUNNING forever.

    A worker on this host is gone when its process (pid and start time, `WORKER_TAG`) no longer runs: killed
    with `kill -9`, out of memory, or it failed while the store could not be written. A worker on another host
    is gone after `STALE_SECONDS` without a heartbeat. Such a run ends KILLED when its job had been cancelled
    (`cancelled_jobs`), FAILED otherwise, at the time of its last heartbeat, with the reason in `rnnlib.error`.
    Runs logged before workers were recorded are left as they are.

    Returns one `{run_id, run_name, status, reason}` per run ended.
    """
    store = open_client(uri)
    now = time.time() if now is None else now
    experiment_ids = [e.experiment_id for e in store.search_experiments()]
    if not experiment_ids:
        return []
    ended = []
    for run in store.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=10_000):
        tags = run.data.tags
        worker = workers.Worker.from_json(tags.get(WORKER_TAG, ""))
        if worker is None:
            continue
        try:
            heartbeat = float(tags.get(HEARTBEAT_TAG, "0"))
        except ValueError:
            heartbeat = 0.0
        if worker.local and worker.alive or not worker.local and now - heartbeat < STALE_SECONDS:
            continue
        status = "KILLED" if tags.get(JOB_TAG) in cancelled_jobs else "FAILED"
        reason = (f"its worker (pid {worker.pid} on {worker.host}) ended without closing the run: it was killed "
                  "(kill -9, out of memory) or could not write to the store" if worker.local else
                  f"no heartbeat from its worker on {worker.host} for {(now - heartbeat) / 60:.0f} minutes")
        with writes(store.tracking_uri):
            store.set_tag(run.info.run_id, "rnnlib.error", reason)
            store.set_terminated(run.info.run_id, status, end_time=int(1000 * (heartbeat or now)))
        ended.append({"run_id": run.info.run_id, "run_name": run.info.run_name, "status": status, "reason": reason})
    return ended


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
    client = open_client(uri)
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
    client = open_client(uri)
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
    row.update({f"metrics.{k}": float(restore_infinities(v)) for k, v in run.data.metrics.items()})
    row.update({f"tags.{k}": v for k, v in tags.items()})
    return row


# MLflow stores a NaN metric as value 0 with `is_nan` set, and +-inf as +-the largest float; every reader below
# gives NaN and +-inf back, so that a diverged run never reads as a number.
FLOAT_MAX = sys.float_info.max
HISTORY_COLUMNS = ["run_id", "key", "step", "value"]
READ_COLUMNS = [*HISTORY_COLUMNS, "timestamp"]  # what each reader returns: a step logged twice keeps its latest
SERVER_BULK_LIMIT = 25_000  # rows the tracking server's bulk endpoint returns at most, silently cutting the rest
SERVER_BULK_RUNS = 100  # run ids it takes per request

logger = logging.getLogger(__name__)


def restore_infinities(values) -> np.ndarray:
    """Metric values as MLflow stored them -> as logged: +-`FLOAT_MAX` (its encoding of +-inf) back to +-inf."""
    values = np.asarray(values, dtype=np.float64).copy()
    values[values >= FLOAT_MAX] = np.inf
    values[values <= -FLOAT_MAX] = -np.inf
    return values


def metric_histories(uri: str | None, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Every logged value of metrics `keys` for `run_ids`, fetched in bulk: long format with columns
    `run_id`, `key`, `step`, `value` (NaN and +-inf as logged), sorted by run, key and step.

    A database store answers one SQL query per 2,000 runs, read straight off MLflow's `metrics` table; a
    tracking server one request per metric and up to 100 runs (its bulk endpoint). Either fast path that
    fails falls back to MLflow's own calls and logs why (a warning on the `rnnlib.tracking` logger); the
    frame's `attrs["reader"]` names the path that answered (`sql`, `server-bulk`, `mlflow-bulk`, `client`).
    """
    client_uri = resolve_tracking_uri(uri)
    run_ids, keys = list(run_ids), list(keys)
    if client_uri.startswith(("http://", "https://")):
        parts = [_server_history_bulk(client_uri, run_ids[i : i + SERVER_BULK_RUNS], key)
                 for key in keys for i in range(0, len(run_ids), SERVER_BULK_RUNS)]
    else:
        parts = [_database_history_bulk(client_uri, run_ids[i : i + 2000], keys)
                 for i in range(0, len(run_ids), 2000)]
    readers = sorted({reader for reader, _ in parts}) or ["none"]
    frames = [frame for _, frame in parts if not frame.empty]
    if not frames:
        history = pd.DataFrame({"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str),
                                "step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64")})
    else:
        history = pd.concat(frames, ignore_index=True)
        # a step logged twice keeps its latest value (the one MLflow shows as the run's latest)
        history = history.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
        history = history.drop_duplicates(["run_id", "key", "step"], keep="last")[HISTORY_COLUMNS]
        history["key"] = history["key"].astype("category")  # fast equality filters on a few distinct names
        history["step"] = history["step"].astype("int64")
        history["value"] = restore_infinities(history["value"])
        history = history.reset_index(drop=True)
    history.attrs["reader"] = "+".join(readers)
    return history


def _database_history_bulk(uri, run_ids, keys) -> tuple[str, pd.DataFrame]:
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store(uri)
    engine = getattr(store, "engine", None)
    if engine is not None:
        try:  # one SQL query straight into a DataFrame: ~20x faster than building MLflow entities
            return "sql", _read_metrics_table(engine, run_ids, keys)
        except Exception as error:  # an unexpected schema: MLflow's own bulk call still works, slowly
            logger.warning("Reading metric histories with SQL failed (%s: %s); using MLflow's API, about 20x "
                           "slower.", type(error).__name__, error)
    if hasattr(store, "get_metric_history_bulk"):
        records = [(m.run_id, key, m.step, m.value, m.timestamp) for key in keys
                   for m in store.get_metric_history_bulk(run_ids, key, max_results=10_000_000)]
        return "mlflow-bulk", pd.DataFrame(records, columns=READ_COLUMNS)
    logger.warning("The store at %s has no bulk metric history; reading one run at a time.", uri)
    return "client", _client_histories(uri, run_ids, keys)


def _client_histories(uri, run_ids, keys) -> pd.DataFrame:
    """MLflow's client API, one call per run and metric: the slowest reader, and the reference of the others."""
    client = open_client(uri)
    records = [(run_id, key, m.step, m.value, m.timestamp) for run_id in run_ids for key in keys
               for m in client.get_metric_history(run_id, key)]
    return pd.DataFrame(records, columns=READ_COLUMNS)


def _read_metrics_table(engine, run_ids, keys) -> pd.DataFrame:
    """Read MLflow's `metrics` table directly: `READ_COLUMNS`, value NaN where `is_nan`."""
    marks = lambda values: ", ".join("?" * len(values))  # noqa: E731
    query = (f"SELECT run_uuid, key, step, value, is_nan, timestamp FROM metrics "
             f"WHERE key IN ({marks(keys)}) AND run_uuid IN ({marks(run_ids)})")
    if engine.dialect.paramstyle != "qmark":
        query = query.replace("?", "%s")
    connection = engine.raw_connection()  # the DBAPI connection: no per-row SQLAlchemy processing
    try:
        cursor = connection.cursor()
        cursor.execute(query, [*keys, *run_ids])
        frame = pd.DataFrame(cursor.fetchall(), columns=["run_id", "key", "step", "value", "is_nan", "timestamp"])
    finally:
        connection.close()
    frame["value"] = frame["value"].astype(np.float64).where(~frame["is_nan"].astype(bool), np.nan)
    return frame[READ_COLUMNS]


def _server_history_bulk(uri, run_ids, key) -> tuple[str, pd.DataFrame]:
    """One metric of up to 100 runs from the server's bulk endpoint. It returns at most `SERVER_BULK_LIMIT`
    rows and drops the rest without saying so: a full answer is asked again in halves."""
    import requests

    try:
        response = requests.get(
            f"{uri.rstrip('/')}/ajax-api/2.0/mlflow/metrics/get-history-bulk",
            params={"run_id": run_ids, "metric_key": key, "max_results": SERVER_BULK_LIMIT}, timeout=30,
        )
        response.raise_for_status()
        metrics = response.json().get("metrics", [])
    except (requests.RequestException, ValueError) as error:
        logger.warning("The tracking server's bulk metric history failed (%s: %s); reading one run at a time.",
                       type(error).__name__, error)
        return "client", _client_histories(uri, run_ids, [key])
    if len(metrics) >= SERVER_BULK_LIMIT:
        if len(run_ids) == 1:
            return "client", _client_histories(uri, run_ids, [key])
        half = len(run_ids) // 2
        parts = [_server_history_bulk(uri, run_ids[:half], key), _server_history_bulk(uri, run_ids[half:], key)]
        return "+".join(sorted({reader for reader, _ in parts})), pd.concat([f for _, f in parts],
                                                                            ignore_index=True)
    frame = pd.DataFrame([(m["run_id"], key, m["step"], m["value"], m["timestamp"]) for m in metrics],
                         columns=READ_COLUMNS)
    return "server-bulk", frame


@contextlib.contextmanager
def run_artifact(uri: str | None, run_id: str, what: str):
    """Reading one run's artifact `what`: a store that cannot be reached raises `TrackingError`; anything else
    (a missing, truncated or foreign file) raises `RunDataError` naming the run, so that a page can show the
    other runs and a notice for this one."""
    try:
        yield
    except (TrackingError, RunDataError):
        raise
    except Exception as error:
        check_store(resolve_tracking_uri(uri), timeout=2.0)  # raises TrackingError when the store is the cause
        raise RunDataError(run_id, f"its {what} cannot be read ({_short(error, 200)})") from error


def load_weights(uri: str | None, run_id: str) -> dict:
    """A run's trained weights (`model/weights.npz`) as {Keras weight path: numpy array}, without Keras."""
    with run_artifact(uri, run_id, "weights (model/weights.npz)"), tempfile.TemporaryDirectory() as directory:
        local = open_client(uri).download_artifacts(run_id, "model/weights.npz", directory)
        with np.load(local, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}


def load_gradient_flow(uri: str | None, run_id: str):
    """A run's `gradient_flow.npz` as a `rnnlib.probes.GradientFlow`, or None when the run logged none."""
    from rnnlib.probes import GradientFlow

    with run_artifact(uri, run_id, f"gradient-flow record ({GRADIENT_FLOW_ARTIFACT})"):
        content = _optional_artifact(uri, run_id, GRADIENT_FLOW_ARTIFACT)
        return None if content is None else GradientFlow.from_bytes(content)


def load_predictions(uri: str | None, run_id: str) -> dict | None:
    """A run's `model/predictions.npz` as {name: numpy array}, or None when the run has none (still training,
    failed, or logged before predictions were kept)."""
    with run_artifact(uri, run_id, f"predictions (model/{PREDICTIONS_ARTIFACT})"):
        content = _optional_artifact(uri, run_id, f"model/{PREDICTIONS_ARTIFACT}")
        if content is None:
            return None
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}


def load_config(uri: str | None, run_id: str) -> LoggedConfig:
    """A run's logged `config.yaml`, read leniently across schema versions (`config.read_logged_config`)."""
    with run_artifact(uri, run_id, "config (config.yaml)"):
        text = load_artifact_text(uri, run_id, "config.yaml")
    try:
        return read_logged_config(text, source=f"the config.yaml of run {run_id[:8]}")
    except ConfigError as error:
        raise RunDataError(run_id, "its config cannot be read by this version: " + "; ".join(error.problems)) \
            from None


def _optional_artifact(uri: str | None, run_id: str, path: str) -> bytes | None:
    """The bytes of a run's artifact at `path`, or None when the run has no such artifact."""
    client = open_client(uri)
    folder = path.rpartition("/")[0] or None
    if not any(a.path == path for a in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as directory:
        return Path(client.download_artifacts(run_id, path, directory)).read_bytes()


def load_artifact_text(uri: str | None, run_id: str, path: str) -> str:
    """The text of a run's artifact, e.g. `config.yaml`."""
    with tempfile.TemporaryDirectory() as directory:
        local = open_client(uri).download_artifacts(run_id, path, directory)
        return Path(local).read_text(encoding="utf-8")


# ---- Whole runs, as plain data: what `rnnlib.bundles` writes to and reads from a portable folder.

def run_records(uri: str | None, experiment: str) -> list[dict]:
    """Every run of `experiment` as plain data: `run_id`, `run_name`, `status`, `start_time`, `end_time` (ms),
    `params`, `tags` and `metrics` (every logged point: `key`, `step`, `timestamp`, `value`, NaN and inf as
    logged). Parents come before their children. Empty when the experiment does not exist."""
    client = open_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    records = []
    for run in client.search_runs([found.experiment_id], max_results=50_000):
        points = [{"key": key, "step": m.step, "timestamp": m.timestamp, "value": float(restore_infinities(m.value))}
                  for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
        records.append({"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
                        "start_time": run.info.start_time, "end_time": run.info.end_time,
                        "params": dict(run.data.params), "tags": dict(run.data.tags), "metrics": points})
    return sorted(records, key=lambda r: ("mlflow.parentRunId" in r["tags"], r["start_time"] or 0))


def download_run_artifacts(uri: str | None, run_id: str, destination: Path) -> Path:
    """Every artifact of a run, copied into `destination` (created)."""
    destination.mkdir(parents=True, exist_ok=True)
    client = open_client(uri)
    for item in client.list_artifacts(run_id):
        client.download_artifacts(run_id, item.path, str(destination))
    return destination


def write_run(store: Store, experiment: str, record: dict, artifacts: Path | None,
              parent_run_id: str | None = None) -> str:
    """Create a finished run in `store` from a `run_records` record (its start and end times, params, tags,
    every metric point, and the files under `artifacts`); returns its new id. Its original id is kept as the
    tag `rnnlib.imported_from`."""
    experiment_id = store.experiment_id(experiment)
    tags = {k: v for k, v in record["tags"].items() if k != "mlflow.parentRunId"}
    tags["rnnlib.imported_from"] = record["run_id"]
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with writes(store.uri):
        run_id = store.client.create_run(experiment_id, start_time=record["start_time"], tags=tags,
                                         run_name=record["run_name"]).info.run_id
        params = [Param(k, v) for k, v in record["params"].items()]
        metrics = [Metric(m["key"], float(m["value"]), int(m["timestamp"]), int(m["step"])) for m in record["metrics"]]
        for first in range(0, len(params), 100):
            store.client.log_batch(run_id, params=params[first : first + 100])
        for first in range(0, len(metrics), 1000):
            store.client.log_batch(run_id, metrics=metrics[first : first + 1000])
        if artifacts is not None and artifacts.is_dir() and any(artifacts.iterdir()):
            store.client.log_artifacts(run_id, str(artifacts))
        store.client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    return run_id


def imported_runs(uri: str | None, experiment: str) -> dict[str, str]:
    """{original id: id here} of the runs of `experiment` that were imported (`write_run`)."""
    runs = runs_frame(uri, experiment)
    column = "tags.rnnlib.imported_from"
    if column not in runs:
        return {}
    known = runs.dropna(subset=[column])
    return dict(zip(known[column], known["run_id"]))


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


def artifact_folder(name: str) -> str:
    """A safe folder name for an experiment's artifacts: one path part of letters, digits, `_`, `-` and inner
    dots, so no name (`..`, `a/../../b`, `/etc`) reaches outside the store's artifact root."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    slug = re.sub(r"\.{2,}", "_", slug).strip("._")
    return slug or "experiment"
