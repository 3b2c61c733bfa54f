"""What the dashboard reads: experiments, runs and metric histories as plain pandas (NaN and inf as logged), and
the artifacts the pages need. Callers cache them."""


import concurrent.futures
import contextlib
import gc
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
    of each metric) and `tags.*`, newest first. Empty (with `RUN_COLUMNS`) when the experiment does not exist.

    A database store is read with one SQL query per table and 500 runs, the ones MLflow's `search_runs` makes,
    without building its entities (10x faster). The lab's tracking server (`server_app`) runs those queries on
    its database and sends the result; another tracking server answers `search_runs` in pages of `SEARCH_PAGE`
    runs. The frame's `attrs["reader"]` names the path that answered (`sql`, `server-sql` or `client`); a fast
    read that fails falls back to `search_runs` and logs why (a warning on the `rnnlib.tracking` logger).
    """
    client = open_client(uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return pd.DataFrame(columns=RUN_COLUMNS)
    reader, rows = _run_rows(resolve_tracking_uri(uri), experiment.experiment_id)
    runs = pd.DataFrame(rows) if rows else pd.DataFrame(columns=RUN_COLUMNS)
    if rows:
        for column in ("start_time", "end_time"):
            runs[column] = pd.to_datetime(runs[column], unit="ms")
    runs.attrs["reader"] = reader
    return runs


SEARCH_PAGE = 1_000  # runs per search_runs request: about a second on a server, inside the dashboard's HTTP timeout
SQL_RUNS_CHUNK = 500  # run ids per query of their params, metrics and tags, as MLflow's own eager loading does


def _run_rows(uri: str, experiment_id: str) -> tuple[str, list[dict]]:
    """(reader, one `_run_row` per run of the experiment, newest first)."""
    if uri.startswith(("http://", "https://")):
        served = _server_sql_runs(uri, experiment_id)
        if served is not None:
            return "server-sql", [_run_row(*record) for record in served]
    engine = _sql_engine(uri)
    if engine is not None:
        try:
            return "sql", [_run_row(*record) for record in _read_runs_tables(engine, experiment_id)]
        except Exception as error:  # an unexpected schema: MLflow's own search still works, slowly
            logger.warning("Reading runs with SQL failed (%s: %s); using MLflow's search_runs, about 10x slower.",
                           type(error).__name__, error)
    client, rows, seen, token = open_client(uri), [], set(), None
    while True:
        page = client.search_runs([experiment_id], max_results=SEARCH_PAGE, page_token=token)
        for run in page:
            if run.info.run_id not in seen:  # a run started while paging shifts the pages: it may come twice
                seen.add(run.info.run_id)
                rows.append(_run_row(run.info.run_id, run.info.status, run.info.start_time, run.info.end_time,
                                     run.data.params, run.data.metrics, run.data.tags))
        token = page.token
        if not token:
            return "client", rows


def _run_row(run_id: str, status: str, start_time, end_time, params: dict, metrics: dict, tags: dict) -> dict:
    """One run as a `runs_frame` row: `RUN_COLUMNS`, then its params (upgraded to the current schema), latest
    metrics (NaN and +-inf as logged) and tags, each prefixed."""
    row = {
        "run_id": run_id,
        "run_name": tags.get("mlflow.runName", run_id[:8]),
        "status": status,
        "kind": tags.get("rnnlib.run_kind", "single"),
        "parent_run_id": tags.get("mlflow.parentRunId", ""),
        "start_time": start_time,
        "end_time": end_time,
    }
    row.update({f"params.{k}": v for k, v in upgrade_params(params).items()})
    row.update({f"metrics.{k}": float(restore_infinities(v)) for k, v in metrics.items()})
    row.update({f"tags.{k}": v for k, v in tags.items()})
    return row


def _sql_engine(uri: str):
    """The SQLAlchemy engine of a database store (sqlite, PostgreSQL, ... reached directly), None for a server."""
    from mlflow.tracking._tracking_service.utils import _get_store

    return getattr(_get_store(uri), "engine", None)


def _read_runs_tables(engine, experiment_id: str) -> list[tuple]:
    """The active runs of an experiment straight from MLflow's `runs`, `params`, `latest_metrics` and `tags`
    tables: `(run_id, status, start_time, end_time, params, metrics, tags)` per run, in `search_runs`' order
    (newest first). The queries are the ones MLflow's `search_runs` makes, so a run's params, metrics and tags
    come in the order it gives them (and so do the frame's columns)."""
    connection = engine.raw_connection()  # the DBAPI connection: no per-row SQLAlchemy processing
    try:
        cursor = connection.cursor()
        cursor.execute(_placeholders(engine, "SELECT run_uuid, status, start_time, end_time FROM runs WHERE "
                                             "experiment_id = ? AND lifecycle_stage = ? ORDER BY start_time DESC, "
                                             "run_uuid"), [int(experiment_id), "active"])
        runs = cursor.fetchall()
        details: dict[str, tuple[dict, dict, dict]] = {run[0]: ({}, {}, {}) for run in runs}
        ids = list(details)
        for start in range(0, len(ids), SQL_RUNS_CHUNK):
            chunk = ids[start : start + SQL_RUNS_CHUNK]
            for position, table in enumerate(("params", "latest_metrics", "tags")):
                values = f"{table}.value, {table}.is_nan" if table == "latest_metrics" else f"{table}.value"
                cursor.execute(_placeholders(engine, f'SELECT {table}.run_uuid, {table}."key", {values} FROM {table} '
                                                     f"WHERE {table}.run_uuid IN ({', '.join('?' * len(chunk))})"),
                               chunk)
                for run_id, key, value, *is_nan in cursor.fetchall():
                    details[run_id][position][key] = np.nan if is_nan and is_nan[0] else value
    finally:
        connection.close()
    return [(run_id, status, start, end, *details[run_id]) for run_id, status, start, end in runs]


def _placeholders(engine, query: str) -> str:
    """`query` written with `?` placeholders, in the DBAPI driver's own style (`%s` for psycopg2)."""
    return query if engine.dialect.paramstyle == "qmark" else query.replace("?", "%s")


# MLflow stores a NaN metric as value 0 with `is_nan` set, and +-inf as +-the largest float; every reader below
# gives NaN and +-inf back, so that a diverged run never reads as a number.
FLOAT_MAX = sys.float_info.max
HISTORY_COLUMNS = ["run_id", "key", "step", "value"]
READ_COLUMNS = [*HISTORY_COLUMNS, "timestamp"]  # what each reader returns: a step logged twice keeps its latest
SQL_HISTORY_RUNS = 2_000  # run ids per SQL query of the metrics table
SQL_FETCH_ROWS = 100_000  # rows converted to columns at a time, so that a big read never holds them all as tuples
SERVER_BULK_LIMIT = 25_000  # rows the tracking server's bulk endpoint returns at most, silently cutting the rest
SERVER_BULK_RUNS = 100  # run ids it takes per request
SERVER_REQUESTS = 4  # bulk requests in flight at once: a server answers them in parallel, one per worker
# The lab's own server (`rnnlab store up`: `mlflow server --app-name rnnlab`, `rnnlib.tracking.server_app`) reads
# its database with the SQL below and sends columns; a plain `mlflow server` answers 404 there.
SERVER_RUNS_ROUTE = "/ajax-api/rnnlab/1/runs"
SERVER_HISTORIES_ROUTE = "/ajax-api/rnnlab/1/histories"
SERVER_SQL_RUNS = 500  # run ids per request of the lab server's histories

logger = logging.getLogger(__name__)


def restore_infinities(values) -> np.ndarray:
    """Metric values as MLflow stored them -> as logged: +-`FLOAT_MAX` (its encoding of +-inf) back to +-inf."""
    values = np.asarray(values, dtype=np.float64).copy()
    values[values >= FLOAT_MAX] = np.inf
    values[values <= -FLOAT_MAX] = -np.inf
    return values


def metric_histories(uri: str | None, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """Every logged value of metrics `keys` for `run_ids`, fetched in bulk: long format with columns
    `run_id`, `key` (categorical), `step`, `value` (NaN and +-inf as logged), sorted by run, key and step; a step
    logged twice keeps its latest value (`_latest_points`).

    A database store answers one SQL query per `SQL_HISTORY_RUNS` runs, read straight off MLflow's `metrics`
    table; the lab's tracking server (`server_app`) runs that query on its database, one request per
    `SERVER_SQL_RUNS` runs; another tracking server one request per metric and up to 100 runs (its bulk endpoint);
    `SERVER_REQUESTS` requests at a time. Each fast path that fails falls back to MLflow's own calls and logs why
    (a warning on the `rnnlib.tracking` logger); the frame's `attrs["reader"]` names the path that answered
    (`sql`, `server-sql`, `server-bulk`, `mlflow-bulk`, `client`).
    """
    client_uri = resolve_tracking_uri(uri)
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    served = client_uri.startswith(("http://", "https://"))
    if served and run_ids and keys and _server_sql_histories(client_uri, run_ids[:1], keys[:1]) is not None:
        chunks = [run_ids[i : i + SERVER_SQL_RUNS] for i in range(0, len(run_ids), SERVER_SQL_RUNS)]
        with concurrent.futures.ThreadPoolExecutor(SERVER_REQUESTS) as pool:  # answers come back in order
            parts = list(pool.map(lambda chunk: _server_sql_part(client_uri, chunk, keys), chunks))
    elif served:
        batches = [(run_ids[i : i + SERVER_BULK_RUNS], key) for key in keys
                   for i in range(0, len(run_ids), SERVER_BULK_RUNS)]
        with concurrent.futures.ThreadPoolExecutor(SERVER_REQUESTS) as pool:
            parts = list(pool.map(lambda batch: _server_history_bulk(client_uri, *batch), batches))
    else:
        parts = [_database_history_bulk(client_uri, run_ids[i : i + SQL_HISTORY_RUNS], keys)
                 for i in range(0, len(run_ids), SQL_HISTORY_RUNS)]
    history = _latest_points([frame for _, frame in parts])
    history.attrs["reader"] = "+".join(sorted({reader for reader, _ in parts}) or ["none"])
    return history


def _latest_points(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """The readers' `READ_COLUMNS` frames as one history: sorted by run, key and step, each step's latest value
    (by timestamp, the larger value on a tie), +-inf restored."""
    parts = [part for part in parts if not part.empty]
    if not parts:
        return pd.DataFrame({"run_id": pd.Series(dtype=str), "key": pd.Series(dtype=str),
                             "step": pd.Series(dtype="int64"), "value": pd.Series(dtype="float64")})
    runs, run_names = _codes([part["run_id"] for part in parts])
    keys, key_names = _codes([part["key"] for part in parts])
    steps = np.concatenate([part["step"].to_numpy(dtype=np.int64) for part in parts])
    values = np.concatenate([part["value"].to_numpy(dtype=np.float64) for part in parts])
    times = np.concatenate([part["timestamp"].to_numpy(dtype=np.float64) for part in parts])
    order = _point_order(runs * len(key_names) + keys, steps, times, values)
    run, key, step = runs[order], keys[order], steps[order]
    latest = np.ones(len(order), dtype=bool)  # the last row of each (run, key, step) in that order
    latest[:-1] = (run[1:] != run[:-1]) | (key[1:] != key[:-1]) | (step[1:] != step[:-1])
    chosen = order[latest]
    return pd.DataFrame({
        "run_id": pd.array(run_names, dtype="str").take(runs[chosen]),
        "key": pd.Categorical.from_codes(keys[chosen], categories=pd.Index(key_names, dtype="str")),
        "step": steps[chosen],
        "value": restore_infinities(values[chosen]),
    })


def _codes(columns: list[pd.Series]) -> tuple[np.ndarray, np.ndarray]:
    """The values of `columns` (categorical or text), one after the other, as codes into their sorted distinct
    values: (codes, names), so that the codes sort as the names do."""
    parts = [column.array if isinstance(column.dtype, pd.CategoricalDtype) else pd.Categorical(column.astype(str))
             for column in columns]
    names = np.unique(np.concatenate([np.asarray(part.categories, dtype=object) for part in parts]))
    codes = [np.searchsorted(names, np.asarray(part.categories, dtype=object))[part.codes] for part in parts]
    return np.concatenate(codes).astype(np.int64), names


def _point_order(groups: np.ndarray, steps: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The indices that sort points by group (run and key), step, then time and value. One stable sort of a
    combined group-and-step number does it when no step is there twice (20x faster than sorting by four
    columns); otherwise, or when the number would not fit in 64 bits, all four are sorted on."""
    low, span = (int(steps.min()), int(steps.max()) - int(steps.min()) + 1) if len(steps) else (0, 1)
    if (int(groups.max()) + 1) * span < 2**62:
        combined = groups * span + (steps - low)
        order = np.argsort(combined, kind="stable")
        ordered = combined[order]
        if not (ordered[1:] == ordered[:-1]).any():
            return order
    return np.lexsort((values, times, steps, groups))


def _database_history_bulk(uri, run_ids, keys) -> tuple[str, pd.DataFrame]:
    from mlflow.tracking._tracking_service.utils import _get_store

    store = _get_store(uri)
    engine = getattr(store, "engine", None)
    if engine is not None:
        try:  # one SQL query straight into columns: ~20x faster than building MLflow entities
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
    """Read MLflow's `metrics` table directly: `READ_COLUMNS` (`run_id` and `key` categorical), value NaN where
    `is_nan`."""
    marks = lambda values: ", ".join("?" * len(values))  # noqa: E731
    # SQLite would pick the primary key's index, which starts with the key: it then scans the points of these
    # metrics in every run of every experiment (3 s for 100 runs in a store of 10,000). `+key` keeps it off that
    # index, so that it reads these runs' points by the run index (0.08 s).
    key_column = "+key" if engine.dialect.name == "sqlite" else "key"
    query = _placeholders(engine, f"SELECT run_uuid, key, step, value, is_nan, timestamp FROM metrics "
                                  f"WHERE {key_column} IN ({marks(keys)}) AND run_uuid IN ({marks(run_ids)})")
    connection = engine.raw_connection()  # the DBAPI connection: no per-row SQLAlchemy processing
    try:
        cursor = connection.cursor()
        cursor.execute(query, [*keys, *run_ids])
        codes = ({run_id: code for code, run_id in enumerate(run_ids)}, {name: code for code, name in enumerate(keys)})
        with _collector_paused():
            chunks = [_metric_columns(rows, *codes) for rows in _fetched(cursor, SQL_FETCH_ROWS)]
    finally:
        connection.close()
    if not chunks:
        return pd.DataFrame(columns=READ_COLUMNS)
    run, key, step, value, timestamp = (np.concatenate(column) for column in zip(*chunks))
    return pd.DataFrame({"run_id": pd.Categorical.from_codes(run, categories=run_ids),
                         "key": pd.Categorical.from_codes(key, categories=keys),
                         "step": step, "value": value, "timestamp": timestamp})


def _fetched(cursor, size: int):
    """A cursor's rows, `size` at a time."""
    while rows := cursor.fetchmany(size):
        yield rows


def _metric_columns(rows: list[tuple], run_codes: dict[str, int], key_codes: dict[str, int]) -> tuple[np.ndarray, ...]:
    """Rows of the metrics table as columns: run and key as `run_codes` and `key_codes` give them, step, value
    (NaN where `is_nan`) and timestamp."""
    run, key, step, value, is_nan, timestamp = zip(*rows)
    values = np.array(value, dtype=np.float64)
    values[np.array(is_nan, dtype=bool)] = np.nan
    return (np.fromiter(map(run_codes.__getitem__, run), dtype=np.int64, count=len(rows)),
            np.fromiter(map(key_codes.__getitem__, key), dtype=np.int64, count=len(rows)),
            np.array(step, dtype=np.int64), values, np.array(timestamp, dtype=np.float64))


@contextlib.contextmanager
def _collector_paused():
    """Pause Python's cycle collector while a big result is turned into columns: its row tuples hold no cycles,
    but allocating hundreds of thousands of them sets the collector off again and again (800,000 rows: 2.8 s
    with it, 1.1 s without). It runs again after, if it ran before."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _server_sql_runs(uri: str, experiment_id: str) -> list[tuple] | None:
    """The lab server's runs endpoint (`server_app.RUNS_ROUTE`): `_read_runs_tables`' records, None where the
    server lacks it (a plain `mlflow server`) or it failed (said on the logger)."""
    answer = _lab_endpoint(uri, "GET", SERVER_RUNS_ROUTE, params={"experiment_id": experiment_id})
    return None if answer is None else [tuple(record) for record in answer.json()]


def _server_sql_histories(uri: str, run_ids: list[str], keys: list[str]) -> pd.DataFrame | None:
    """The lab server's histories endpoint (`server_app.HISTORIES_ROUTE`): a `READ_COLUMNS` frame, None where the
    server lacks it or it failed."""
    import pyarrow as pa

    answer = _lab_endpoint(uri, "POST", SERVER_HISTORIES_ROUTE, json={"run_ids": run_ids, "keys": keys})
    if answer is None:
        return None
    with pa.ipc.open_stream(answer.content) as reader:
        return reader.read_pandas()


def _server_sql_part(uri: str, run_ids: list[str], keys: list[str]) -> tuple[str, pd.DataFrame]:
    """One chunk of runs from the lab server's histories endpoint; MLflow's bulk endpoint if that fails."""
    frame = _server_sql_histories(uri, run_ids, keys)
    if frame is not None:
        return "server-sql", frame
    parts = [_server_history_bulk(uri, run_ids[i : i + SERVER_BULK_RUNS], key) for key in keys
             for i in range(0, len(run_ids), SERVER_BULK_RUNS)]
    return "+".join(sorted({reader for reader, _ in parts})), pd.concat([f for _, f in parts], ignore_index=True)


def _lab_endpoint(uri: str, method: str, route: str, **request):
    """A response of the lab server's `route`, None where the server has no such route (404: a plain
    `mlflow server`, said nowhere: that is normal) or answered an error (a warning on the logger)."""
    import requests

    try:
        response = requests.request(method, f"{uri.rstrip('/')}{route}", timeout=60, **request)
    except requests.RequestException as error:
        logger.warning("The lab server's %s failed (%s: %s); using MLflow's endpoints.", route,
                       type(error).__name__, error)
        return None
    if response.status_code in (404, 405):
        return None
    if not response.ok:
        logger.warning("The lab server's %s answered %s (%s); using MLflow's endpoints.", route,
                       response.status_code, response.text[:200])
        return None
    return response


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
    frame = pd.DataFrame({"run_id": [m["run_id"] for m in metrics], "key": key,
                          "step": [m["step"] for m in metrics], "value": [m["value"] for m in metrics],
                          "timestamp": [m["timestamp"] for m in metrics]}, columns=READ_COLUMNS)
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
