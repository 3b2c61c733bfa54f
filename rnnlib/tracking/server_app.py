"""The lab's tracking server: MLflow's own server with two read-only bulk endpoints for Compare.

`mlflow server --app-name rnnlab` (what `rnnlab store up` starts) serves everything `mlflow server` serves, plus:
- `RUNS_ROUTE` (GET, `experiment_id`): an experiment's runs with their params, latest metrics and tags, as JSON;
- `HISTORIES_ROUTE` (POST, JSON `{"run_ids": [...], "keys": [...]}`): every logged point of those metrics of
  those runs, as one Arrow IPC stream (zstd) of `queries.READ_COLUMNS`.
Both read the server's database with the SQL queries the dashboard makes on a database store it reaches itself
(`queries._read_runs_tables`, `queries._read_metrics_table`), so that a Compare of 1,000 runs through the server
costs what it costs on the database (MLflow's REST API builds one object per metric point: 20x slower). They
answer what MLflow's own endpoints answer, to anyone its endpoints answer. A plain `mlflow server` lacks them:
the dashboard then uses MLflow's endpoints (`queries.runs_frame`, `queries.metric_histories`).
"""

import io
import json

import pandas as pd
import pyarrow as pa
from flask import Response, request
from mlflow.server import _add_static_prefix
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import create_fastapi_app
from mlflow.server.handlers import _get_tracking_store

from rnnlib.tracking import queries

RUNS_ROUTE = queries.SERVER_RUNS_ROUTE
HISTORIES_ROUTE = queries.SERVER_HISTORIES_ROUTE
MAX_RUN_IDS = 5_000  # per histories request (the dashboard sends `queries.SERVER_SQL_RUNS`)
MAX_KEYS = 200


def _refusal(status: int, message: str) -> Response:
    return Response(json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": message}), status=status,
                    mimetype="application/json")


def _engine():
    """The server's SQLAlchemy engine; None where its store is not a database (a file store)."""
    return getattr(_get_tracking_store(), "engine", None)


@flask_app.route(_add_static_prefix(RUNS_ROUTE), methods=["GET"])
def serve_runs() -> Response:
    experiment_id = request.args.get("experiment_id", "")
    if not experiment_id.isdigit():
        return _refusal(400, "experiment_id must be an experiment's numeric id")
    engine = _engine()
    if engine is None:
        return _refusal(501, "this server's store is not a database")
    records = queries._read_runs_tables(engine, experiment_id)
    return Response(json.dumps(records, allow_nan=True), mimetype="application/json")  # NaN as MLflow logs it


@flask_app.route(_add_static_prefix(HISTORIES_ROUTE), methods=["POST"])
def serve_histories() -> Response:
    body = request.get_json(silent=True)
    run_ids, keys = (body.get("run_ids"), body.get("keys")) if isinstance(body, dict) else (None, None)
    if not (isinstance(run_ids, list) and isinstance(keys, list)
            and all(isinstance(item, str) for item in [*run_ids, *keys])):
        return _refusal(400, 'send JSON {"run_ids": [...], "keys": [...]}, both lists of strings')
    if len(run_ids) > MAX_RUN_IDS or len(keys) > MAX_KEYS:
        return _refusal(400, f"at most {MAX_RUN_IDS} run ids and {MAX_KEYS} keys per request")
    engine = _engine()
    if engine is None:
        return _refusal(501, "this server's store is not a database")
    run_ids, keys = list(dict.fromkeys(run_ids)), list(dict.fromkeys(keys))
    frame = queries._read_metrics_table(engine, run_ids, keys) if run_ids and keys else (
        pd.DataFrame(columns=queries.READ_COLUMNS))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        writer.write_table(table)
    return Response(sink.getvalue(), mimetype="application/vnd.apache.arrow.stream")


app = create_fastapi_app(flask_app)  # what uvicorn serves: MLflow's ASGI app around the Flask app above
