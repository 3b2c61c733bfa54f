"""What the dashboard reads: experiments, runs and metric histories as plain pandas (NaN and inf as logged), and
the artifacts the pages need. Callers cache them."""


import contextlib
import io
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from rnnlib.core.config import LoggedConfig, read_logged_config, upgrade_params
from rnnlib.core.errors import ConfigError, RunDataError, TrackingError
from rnnlib.tracking.store import (
    GRADIENT_FLOW_ARTIFACT,
    PREDICTIONS_ARTIFACT,
    _short,
    check_store,
    open_client,
    resolve_tracking_uri,
)

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


PACE_KEYS = ("task.name", "model.label", "model.units", "model.num_layers", "training.batch_size")


def recent_pace(uri: str | None, limit: int = 500) -> pd.DataFrame:
    """The latest `limit` finished trial or single runs of every experiment: their `PACE_KEYS` params (dotted
    column names) and `seconds_per_update` (wall time, building and tracing included, over the updates they
    trained), to estimate what a new job costs on this store's machines (`rnnlib.run.jobs.estimate`)."""
    client = open_client(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return pd.DataFrame(columns=[*PACE_KEYS, "seconds_per_update"])
    runs = client.search_runs(experiments, "attributes.status = 'FINISHED' and tags.`rnnlib.run_kind` != 'sweep'",
                              max_results=limit, order_by=["attributes.start_time DESC"])
    rows = []
    for run in runs:
        params = run.data.params
        updates = run.data.metrics.get("updates", 0) * float(params.get("training.epochs", 0) or 0)
        if updates > 0 and run.info.end_time and "rnnlib.diverged_epoch" not in run.data.tags:
            seconds = (run.info.end_time - run.info.start_time) / 1000
            rows.append({**{key: params.get(key, "") for key in PACE_KEYS}, "seconds_per_update": seconds / updates})
    return pd.DataFrame(rows, columns=[*PACE_KEYS, "seconds_per_update"])


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
    row.update({f"params.{k}": v for k, v in upgrade_params(run.data.params).items()})
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
    """A run's `gradient_flow.npz` as a `rnnlib.core.records.GradientFlow`, or None when the run logged none."""
    from rnnlib.core.records import GradientFlow

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
