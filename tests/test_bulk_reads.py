"""The bulk readers of the Compare page (`tracking.runs_frame`, `tracking.metric_histories`) give back exactly what
MLflow's own calls give, one run at a time: the same rows, columns in the same order, NaN and inf as logged, runs
without metrics, steps logged twice, and more runs than one query, one page or one fetch holds."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.entities import Metric, Param, RunTag

from conftest import start_mlflow_server
from rnnlib import tracking
from rnnlib.tracking import queries

KEYS = ["val_loss", "train_loss", "grad_norm"]


@pytest.fixture
def store(tmp_path):
    """A sqlite store whose experiment `bulk` holds 7 runs that differ in every way a reader could trip on (params
    logged in a non-alphabetical order, an old-schema run, NaN and inf latest values, steps logged twice, a run
    with no metrics at all, a child run), one deleted run, and one run of another experiment. Returns (URI,
    database file, the ids of `bulk`'s live runs)."""
    uri = f"sqlite:///{tmp_path / 'bulk.db'}"
    client = tracking.open_client(uri)
    experiment = client.create_experiment("bulk", artifact_location=(tmp_path / "artifacts").as_uri())
    other = client.create_experiment("other", artifact_location=(tmp_path / "other").as_uri())
    ids = []
    for index in range(6):
        run_id = client.create_run(experiment, run_name=f"run-{index}", start_time=1000 * (index % 3),
                                   tags={"rnnlib.run_kind": "trial"}).info.run_id
        params = [Param("training.truncation", str(5 * index)), Param("model.cell_type", ["rnn", "gru"][index % 2]),
                  Param("seed", str(index))]
        if index == 3:  # logged before `model.kind` existed: the reader upgrades it
            params = params[1:]
        metrics = [Metric(key, 1.0 / (step + index + 1), 1000 + step, step) for key in KEYS for step in range(1, 9)]
        if index == 1:
            metrics += [Metric("val_loss", math.nan, 2000, 8), Metric("grad_norm", math.inf, 2000, 8)]
        if index == 2:
            metrics.append(Metric("val_loss", 0.125, 999, 4))  # step 4 again, with an earlier timestamp: not the latest
            metrics.append(Metric("train_loss", 0.75, 1005, 5))  # step 5 again, at the same time: the larger counts
        client.log_batch(run_id, metrics=metrics, params=params,
                         tags=[RunTag("seed", str(index)), RunTag("note", "x" * index)])
        client.set_terminated(run_id, "FINISHED" if index != 4 else "FAILED")
        ids.append(run_id)
    empty = client.create_run(experiment, run_name="no-metrics", tags={"mlflow.parentRunId": ids[0]}).info.run_id
    ids.append(empty)
    gone = client.create_run(experiment, run_name="deleted").info.run_id
    client.log_metric(gone, "val_loss", 1.0, step=1)
    client.delete_run(gone)
    client.log_metric(client.create_run(other).info.run_id, "val_loss", 2.0, step=1)
    return uri, tmp_path / "bulk.db", ids


def client_runs_frame(uri, experiment, monkeypatch):
    """`runs_frame` through MLflow's `search_runs` (the SQL reader switched off), two runs a page."""
    with monkeypatch.context() as patched:
        patched.setattr(queries, "_sql_engine", lambda uri: None)
        patched.setattr(queries, "SEARCH_PAGE", 2)
        frame = tracking.runs_frame(uri, experiment)
    assert frame.attrs["reader"] == "client"
    return frame


def client_histories(uri, run_ids, keys, monkeypatch):
    """`metric_histories` through MLflow's client, one call per run and key: the reference."""
    with monkeypatch.context() as patched:
        patched.setattr(queries, "_database_history_bulk",
                        lambda uri, runs, keys: ("client", queries._client_histories(uri, runs, keys)))
        frame = tracking.metric_histories(uri, run_ids, keys)
    assert frame.attrs["reader"] == "client"
    return frame


def same_frame(got, expected):
    got, expected = got.copy(), expected.copy()
    got.attrs, expected.attrs = {}, {}
    assert list(got.columns) == list(expected.columns)  # the order too: it sets the page's default groupings
    pd.testing.assert_frame_equal(got, expected)


def test_the_sql_runs_table_is_what_search_runs_gives(store, monkeypatch, caplog):
    uri, _, ids = store
    caplog.set_level(logging.WARNING, logger="rnnlib.tracking")
    monkeypatch.setattr(queries, "SQL_RUNS_CHUNK", 3)  # 7 runs: three queries per table
    fast = tracking.runs_frame(uri, "bulk")
    assert fast.attrs["reader"] == "sql" and not caplog.records
    same_frame(fast, client_runs_frame(uri, "bulk", monkeypatch))
    assert sorted(fast["run_id"]) == sorted(ids)  # neither the deleted run nor the other experiment's
    runs = fast.set_index("run_name")
    assert math.isnan(runs.loc["run-1", "metrics.val_loss"]) and runs.loc["run-1", "metrics.grad_norm"] == math.inf
    assert runs.loc["no-metrics"][[c for c in fast.columns if c.startswith("metrics.")]].isna().all()
    assert runs.loc["no-metrics", "parent_run_id"] == ids[0] and runs.loc["run-3", "params.model.kind"] == "recurrent"
    assert runs.loc["run-4", "status"] == "FAILED"
    assert list(fast["start_time"]) == sorted(fast["start_time"], reverse=True)  # newest first


def test_a_failing_sql_runs_read_falls_back_to_search_runs_and_says_why(store, monkeypatch, caplog):
    uri, _, _ = store
    caplog.set_level(logging.WARNING, logger="rnnlib.tracking")

    def broken(*args):
        raise RuntimeError("no such table: latest_metrics")
    monkeypatch.setattr(queries, "_read_runs_tables", broken)
    fallback = tracking.runs_frame(uri, "bulk")
    assert fallback.attrs["reader"] == "client"
    assert any("no such table" in r.getMessage() and "10x slower" in r.getMessage() for r in caplog.records)
    same_frame(fallback, client_runs_frame(uri, "bulk", monkeypatch))


def test_the_sql_histories_are_what_the_per_run_reader_gives(store, monkeypatch):
    uri, _, ids = store
    monkeypatch.setattr(queries, "SQL_HISTORY_RUNS", 2)  # 7 runs: four queries
    monkeypatch.setattr(queries, "SQL_FETCH_ROWS", 5)  # each fetched in many chunks
    asked = [*ids, ids[0]]  # a run asked for twice is read once
    fast = tracking.metric_histories(uri, asked, KEYS)
    assert fast.attrs["reader"] == "sql"
    same_frame(fast, client_histories(uri, asked, KEYS, monkeypatch))
    assert len(fast) == 6 * 3 * 8 and ids[-1] not in set(fast["run_id"])  # the run without metrics has no rows
    one = fast[fast["run_id"] == ids[1]].set_index(["key", "step"])["value"]
    assert math.isnan(one[("val_loss", 8)]) and one[("grad_norm", 8)] == math.inf  # the latest of step 8
    assert fast[(fast["run_id"] == ids[2]) & (fast["key"] == "val_loss")]["step"].tolist() == list(range(1, 9))
    assert fast.loc[(fast["run_id"] == ids[2]) & (fast["key"] == "val_loss") & (fast["step"] == 4), "value"].item() \
        == pytest.approx(1 / 7)  # of the two step-4 values, the one with the later timestamp
    assert fast.loc[(fast["run_id"] == ids[2]) & (fast["key"] == "train_loss") & (fast["step"] == 5), "value"].item() \
        == 0.75  # of two values logged at one time, the larger, as MLflow's latest value
    assert fast.equals(fast.sort_values(["run_id", "key", "step"], ignore_index=True))


def test_histories_of_no_runs_or_no_points_are_empty_frames_of_the_right_types(store):
    uri, _, ids = store
    for run_ids in ([], [ids[-1]]):
        empty = tracking.metric_histories(uri, run_ids, KEYS)
        assert empty.empty and list(empty.columns) == queries.HISTORY_COLUMNS
        assert empty["step"].dtype == "int64" and empty["value"].dtype == "float64"


def test_a_tracking_server_gives_the_same_runs_table_and_histories_in_many_requests(store, tmp_path, monkeypatch,
                                                                                    caplog):
    """A plain `mlflow server` (no lab endpoints: 404, which is no fault) through MLflow's own endpoints."""
    uri, database, ids = store
    local_runs, local_histories = tracking.runs_frame(uri, "bulk"), tracking.metric_histories(uri, ids, KEYS)
    monkeypatch.setattr(queries, "SEARCH_PAGE", 2)  # 4 pages of runs
    monkeypatch.setattr(queries, "SERVER_BULK_RUNS", 1)  # 21 requests, 4 in flight at a time
    with start_mlflow_server(f"sqlite:///{database}", tmp_path / "server-artifacts") as server:
        served_runs = tracking.runs_frame(server, "bulk")
        served_histories = tracking.metric_histories(server, ids, KEYS)
    assert served_runs.attrs["reader"] == "client" and served_histories.attrs["reader"] == "server-bulk"
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
    same_frame(served_runs, local_runs)
    same_frame(served_histories, local_histories)


def test_the_lab_server_gives_the_same_runs_table_and_histories_from_its_database(store, tmp_path, monkeypatch):
    """`mlflow server --app-name rnnlab` (what `rnnlab store up` starts) answers with the SQL readers' results."""
    uri, database, ids = store
    local_runs, local_histories = tracking.runs_frame(uri, "bulk"), tracking.metric_histories(uri, ids, KEYS)
    monkeypatch.setattr(queries, "SERVER_SQL_RUNS", 2)  # 4 requests of histories, run ids in no particular order
    with start_mlflow_server(f"sqlite:///{database}", tmp_path / "server-artifacts", app_name="rnnlab") as server:
        served_runs = tracking.runs_frame(server, "bulk")
        served_histories = tracking.metric_histories(server, ids[::-1], KEYS)
        refusals = [
            requests.get(f"{server}{queries.SERVER_RUNS_ROUTE}", params={"experiment_id": "1 OR 1=1"}, timeout=10),
            requests.post(f"{server}{queries.SERVER_HISTORIES_ROUTE}", data="not json", timeout=10),
            requests.post(f"{server}{queries.SERVER_HISTORIES_ROUTE}", json={"run_ids": [1], "keys": KEYS}, timeout=10),
            requests.post(f"{server}{queries.SERVER_HISTORIES_ROUTE}",
                          json={"run_ids": ["x"] * 5_001, "keys": KEYS}, timeout=10),
        ]
        nothing = queries._server_sql_histories(server, ["no-such-run"], KEYS)
    assert served_runs.attrs["reader"] == "server-sql" and served_histories.attrs["reader"] == "server-sql"
    same_frame(served_runs, local_runs)
    same_frame(served_histories, local_histories)
    assert served_runs["metrics.grad_norm"].isin([math.inf]).any() and served_runs["metrics.val_loss"].isna().any()
    assert [answer.status_code for answer in refusals] == [400] * 4
    assert all("message" in answer.json() for answer in refusals)  # what was wrong, not a traceback
    assert nothing is not None and nothing.empty


def test_the_benchmark_store_builder_writes_runs_that_read_back_like_mlflow_s_own(tmp_path):
    """benchmarks/compare_page.py writes most runs straight into MLflow's tables; they must read back like the
    ones it logs with MLflow's client (it checks that itself, and raises when they do not)."""
    import importlib.util

    from rnnlib.core.paths import PROJECT_DIR

    spec = importlib.util.spec_from_file_location("compare_page", PROJECT_DIR / "benchmarks" / "compare_page.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    uri = f"sqlite:///{tmp_path / 'bench.db'}"
    store = bench.BenchStore("sqlite", uri, uri)
    points = bench.build_experiment(store, "bench", 60, 5)  # 3 through the client, 57 written in bulk
    bench.check_experiment(store, "bench", 60, points)
    runs = tracking.runs_frame(uri, "bench")
    diverged = runs[runs["tags.rnnlib.diverged_epoch"].notna()]
    assert len(diverged) == 60 // bench.DIVERGE_EVERY and diverged["metrics.val_loss"].isna().all()
    history = tracking.metric_histories(uri, runs["run_id"].tolist(), list(bench.METRICS))
    assert np.isnan(history["value"]).sum() == 4 * len(diverged)  # each diverged run's last epoch, every metric


def test_a_sql_read_leaves_the_cycle_collector_as_it_found_it(store):
    import gc

    uri, _, ids = store
    assert gc.isenabled()
    tracking.metric_histories(uri, ids, KEYS)
    assert gc.isenabled()  # paused while the rows became columns, running again after
    gc.disable()
    try:
        tracking.metric_histories(uri, ids, KEYS)
        assert not gc.isenabled()  # a caller that had paused it keeps it paused
    finally:
        gc.enable()
