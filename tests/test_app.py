"""Every page with Streamlit's AppTest: the real scripts, against real MLflow stores."""

import base64
import hashlib
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import yaml
from mlflow.tracking import MlflowClient
from streamlit.testing.v1 import AppTest

from conftest import CELL_LIST, PROJECT_DIR
from rnnlib import tracking
from rnnlib.core import config
from rnnlib.run import jobs

pytestmark = pytest.mark.slow
APP = str(PROJECT_DIR / "app.py")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNLAB_JOBS_DIR", str(tmp_path / "jobs"))
    st.cache_data.clear()
    yield
    for job in jobs.list_jobs():
        jobs.cancel(job)


def open_page(uri, monkeypatch, page=None, query=None):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    if page:
        if query:
            at.query_params.update(query)
        at.switch_page(page)
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def query(at):
    return {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}


def figure(at, index=0):
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def decoded(values):
    """A trace's x / y: plotly writes numeric arrays as base64 typed arrays in the chart's JSON."""
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return values


def trace_names(at, index=0):
    return {trace.get("name") for trace in figure(at, index)["data"]}


def test_home_on_an_empty_store_offers_the_demo_and_launches_it(tmp_path, monkeypatch):
    at = open_page(f"sqlite:///{tmp_path / 'empty.db'}", monkeypatch)
    assert "no runs yet" in at.info[0].value
    assert "Run the demo sweep" in [b.label for b in at.button]
    next(b for b in at.button if b.label == "Run the demo sweep").click().run()
    (job,) = jobs.list_jobs()
    assert job.experiment == "demo" and job.num_runs == 12 and job.running
    assert jobs.cancel(job)


def test_home_lists_experiments_with_links_to_compare(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch)
    assert any("[smoke](compare?experiment=smoke)" in m.value for m in at.markdown)
    assert "embedded" not in at.sidebar.success[0].value and fixture_store in at.sidebar.success[0].value


def test_compare_groups_by_cell_and_truncation_by_default(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py")
    names = trace_names(at)
    assert {"gru · full (n=2)", "lstm · 5 (n=2)", "rnn · full (n=2)"} <= names
    assert figure(at)["layout"]["shapes"][0]["y0"] == pytest.approx(1 / 6)  # baseline drawn
    assert len(at.get("plotly_chart")) == 3  # curves, metric vs hyperparameter, parallel coordinates


def test_grouping_changes_the_figures(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py")
    at.multiselect(key="compare_group_by").set_value(["model.cell_type"]).run()
    assert {"gru (n=4)", "lstm (n=4)", "rnn (n=4)"} <= trace_names(at)
    assert query(at)["group_by"] == "model.cell_type"
    at.toggle(key="compare_show_runs").set_value(True).run()
    assert {"gru runs", "lstm runs", "rnn runs"} <= trace_names(at)


def test_statistic_and_metric_vs_hyperparameter(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py")
    vs = figure(at, 1)
    assert vs["layout"]["xaxis"]["categoryarray"] == ["5", "full"]
    assert {t["name"] for t in vs["data"]} == {"gru", "lstm", "rnn"}
    best = at.dataframe[0].value["mean"].tolist()
    at.radio(key="compare_statistic").set_value("at_step").run()
    at.number_input(key="compare_step").set_value(2).run()
    assert at.dataframe[0].value["mean"].tolist() != best
    assert query(at)["statistic"] == "at_step" and query(at)["step"] == "2"


def test_permalink_reopens_the_same_view(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py")
    at.multiselect(key="compare_group_by").set_value(["training.truncation", "seed"]).run()
    at.slider(key="compare_smoothing").set_value(0.5).run()
    at.toggle(key="compare_log_y").set_value(True).run()
    at.multiselect(key="compare_f.model.label").set_value(["lstm", "gru"]).run()
    link = dict(at.query_params.items())
    assert link["group_by"] == ["training.truncation", "seed"]  # one key per value
    assert sorted(link["f.model.label"]) == ["gru", "lstm"] and link["log_y"] == "1"
    reopened = open_page(fixture_store, monkeypatch, "app_pages/compare.py", query=link)
    assert reopened.multiselect(key="compare_group_by").value == ["training.truncation", "seed"]
    assert reopened.slider(key="compare_smoothing").value == 0.5
    assert figure(reopened)["layout"]["yaxis"]["type"] == "log"
    assert trace_names(reopened) == trace_names(at)
    assert not reopened.warning


def test_a_compare_link_of_the_older_comma_form_still_opens_the_same_view(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py",
                   query={"group_by": "training.truncation,seed", "f.model.cell_type": "lstm,gru", "log_y": "1"})
    assert at.multiselect(key="compare_group_by").value == ["training.truncation", "seed"]
    assert sorted(at.multiselect(key="compare_f.model.label").value) == ["gru", "lstm"]  # cell_type is label now
    assert not {name for name in trace_names(at) if name and name.startswith("rnn")}
    assert figure(at)["layout"]["yaxis"]["type"] == "log" and not at.warning


def test_stale_link_gets_a_notice_not_a_crash(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py",
                   query={"experiment": "gone", "selected": "deadbeef", "group_by": "model.colour",
                          "statistic": "median"})
    warnings = " ".join(w.value for w in at.warning)
    assert "Experiment 'gone' from the link is not available here" in warnings
    assert "'deadbeef' from the link: not among the choices" in warnings and "model.colour" in warnings
    assert "'median' from the link is not available here" in warnings
    assert at.selectbox(key="compare_experiment").value == "smoke"
    assert len(at.get("plotly_chart")) == 3


def test_train_page_rejects_invalid_settings_and_launches_nothing(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    at.text_input(key="train_builder_seeds").set_value("")
    at.button[0].click()  # the form's submit button
    at.run()
    assert "grid.seed: empty list" in at.error[0].value and "Nothing was launched" in at.error[0].value
    assert jobs.list_jobs() == []


def test_train_builder_says_what_start_launches_as_settings_change_and_launches_nothing_until_then(
        fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    line = next(c.value for c in at.caption if c.value.startswith("Start launches"))
    assert line.startswith("Start launches 12 runs, 240 epochs, 12,000 batches of sequences"), line
    at.text_input(key="train_builder_seeds").set_value("0, 1, 2").run()
    at.multiselect(key="train_builder_cells").set_value(["gru"]).run()
    line = next(c.value for c in at.caption if c.value.startswith("Start launches"))
    assert line.startswith("Start launches 6 runs, 120 epochs, 6,000 batches"), line
    at.text_input(key="train_builder_seeds").set_value("").run()
    line = next(c.value for c in at.caption if c.value.startswith("Start launches"))
    assert line.startswith("Start launches nothing with these settings: grid.seed: empty list"), line
    assert jobs.list_jobs() == []


def test_train_page_yaml_errors_name_the_key(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    at.selectbox(key="train_yaml_file").set_value(PROJECT_DIR / "experiments" / "smoke.yaml").run()
    area = at.text_area(key="train_yaml_smoke")
    area.set_value(area.value.replace("cell_type: lstm", "cell_type: elman"))
    next(b for b in at.button if b.proto.form_id == "train_yaml").click()
    at.run()
    assert f"model.cell_type: unknown cell; expected one of: {CELL_LIST} (got 'elman')" in at.error[0].value
    assert jobs.list_jobs() == []


def test_train_page_job_shows_progress_and_cancel_ends_its_run_killed(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'train.db'}"
    at = open_page(uri, monkeypatch, "app_pages/train.py")
    at.selectbox(key="train_yaml_file").set_value(PROJECT_DIR / "experiments" / "smoke.yaml").run()
    area = at.text_area(key="train_yaml_smoke")
    area.set_value(area.value.replace("epochs: 2", "epochs: 500") + "\n")
    next(b for b in at.button if b.proto.form_id == "train_yaml").click()
    at.run()
    assert "Started: **smoke**, 6 runs: 3 model.cell\\_type × 2 training.truncation" in at.success[0].value
    (job,) = jobs.list_jobs(uri)
    client = MlflowClient(uri)
    deadline = time.time() + 120
    while time.time() < deadline:
        experiment = client.get_experiment_by_name("smoke") if (tmp_path / "train.db").exists() else None
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if any("epoch" in r.data.metrics and r.data.tags.get("rnnlib.run_kind") == "trial" for r in runs):
            break
        time.sleep(1)
    second_tab = open_page(uri, monkeypatch, "app_pages/train.py")  # a reload or another tab sees the same job
    assert any(f"job `{job.job_id}`" in m.value for m in second_tab.markdown)
    assert "% of 3000 epochs done, about" in second_tab.get("progress")[0].proto.text  # 6 runs x 500 epochs
    cancel = next(b for b in second_tab.button if b.label == "Cancel")
    cancel.click().run()
    deadline = time.time() + 60
    while job.running and time.time() < deadline:
        time.sleep(0.5)
    assert not job.running
    statuses = {r.data.tags["rnnlib.run_kind"]: r.info.status for r in client.search_runs([experiment.experiment_id])}
    assert statuses == {"sweep": "KILLED", "trial": "KILLED"}


def test_unreachable_store_shows_one_clear_message(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    for page in (None, "app_pages/compare.py"):
        at = open_page(uri, monkeypatch, page)
        assert "is not reachable" in at.sidebar.error[0].value
        assert any(f"Cannot read the tracking store {uri}" in e.value for e in at.error)


def test_compare_view_survives_a_visit_to_another_page(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py")
    at.multiselect(key="compare_group_by").set_value(["seed"]).run()
    at.switch_page("app_pages/home.py").run()
    at.switch_page("app_pages/compare.py").run()
    assert at.multiselect(key="compare_group_by").value == ["seed"]
    assert query(at)["group_by"] == "seed"


def test_gradient_flow_page_shows_lag_curves_truncation_and_where_gradients_vanish(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/gradients.py")
    assert trace_names(at) >= {"rnn · full (n=2)", "lstm · 5 (n=2)", "gru · full (n=2)"}
    assert figure(at)["layout"]["yaxis"]["type"] == "log"
    (truncated,) = [t for t in figure(at)["data"] if t["name"] == "lstm · 5 (n=2)"]
    summary = at.dataframe[0].value.set_index("group")
    # TBPTT(5): the loss at T reaches steps T-1 .. T-5, so at lag 5 the gradient is exactly zero
    assert summary.loc["gru · 5", "at_init"] == "5" and summary.loc["rnn · 5", "trained"] == "5"
    assert max(decoded(truncated["x"])) == 4  # its curve ends at lag k - 1: nothing flows further back
    bias = figure(at, 1)  # the truncation-bias meter: cosine vs truncation, one line per cell
    assert "cosine with the full gradient vs truncation" in bias["layout"]["title"]["text"]
    lines = {t["name"]: dict(zip(t["x"], decoded(t["y"]))) for t in bias["data"]}
    assert {"rnn", "lstm", "gru"} <= set(lines)
    assert all(line["full"] == 1.0 for name, line in lines.items() if "=" in name)  # full BPTT is itself
    assert lines["rnn"]["5"] < 1.0  # TBPTT(5) turns a tanh RNN's gradient away from the full one
    assert "rnn at initialisation" in lines
    heatmap = figure(at, 2)
    assert heatmap["data"][0]["type"] == "heatmap"
    at.radio(key="gradients_bias_statistic").set_value("error").run()
    assert figure(at, 1)["layout"]["yaxis"]["title"]["text"].startswith("relative error")
    assert query(at)["bias_statistic"] == "error"
    assert query(at)["experiment"] == "smoke"
    at.radio(key="gradients_quantity").set_value("jacobian").run()
    assert not at.exception
    assert "‖∂h_T/∂h_t‖₂" in figure(at)["layout"]["title"]["text"]
    assert query(at)["quantity"] == "jacobian"
    norms = figure(at, 3)
    assert norms["layout"]["yaxis"]["type"] == "log" and "clipnorm" in json.dumps(norms["layout"])


def test_gradient_flow_heatmap_draws_the_truncation_reach_of_a_tbptt_run(fixture_store, monkeypatch):
    client = MlflowClient(fixture_store)
    experiment = client.get_experiment_by_name("smoke")
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'gru-5-s1'")
    at = open_page(fixture_store, monkeypatch, "app_pages/gradients.py")
    at.selectbox(key="gradients_run").set_value(run.info.run_id).run()
    window = [t for t in figure(at, 2)["data"] if t["name"].startswith("truncation reach")]
    assert window and set(decoded(window[0]["x"])) == {14.5}  # T = 20, k = 5: no gradient left of t = 15


def test_gradient_flow_permalink_reopens_the_same_view(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/gradients.py",
                   query={"experiment": "smoke", "quantity": "loss_cell", "group_by": ["training.truncation"]})
    assert at.radio(key="gradients_quantity").value == "loss_cell"
    assert at.multiselect(key="gradients_group_by").value == ["training.truncation"]
    assert trace_names(at) >= {"5 (n=2)", "full (n=2)"}  # ∂L/∂c: LSTM runs only, grouped by truncation
    older = open_page(fixture_store, monkeypatch, "app_pages/gradients.py",
                      query={"experiment": "smoke", "group_by": "model.label,training.truncation"})
    assert older.multiselect(key="gradients_group_by").value == ["model.label", "training.truncation"]
    assert "lstm · 5 (n=2)" in trace_names(older) and not older.warning


def test_gates_page_traces_a_run_and_points_to_memory_units(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/gates.py", query={"experiment": "smoke", "seed": "3"})
    run_id = at.selectbox(key="gates_run").value
    client = MlflowClient(fixture_store)
    cell_type = client.get_run(run_id).data.params["model.cell_type"]
    heatmaps = figure(at)
    titles = {a["text"] for a in heatmaps["layout"]["annotations"]}
    expected = {"lstm": {"input gate", "forget gate", "output gate", "c", "h"}, "gru": {"update gate", "reset gate"},
                "rnn": {"pre activation", "h"}}[cell_type]
    assert expected <= titles and "input" in titles
    assert sum(t["type"] == "heatmap" for t in heatmaps["data"]) == len(titles) - 1
    assert "What to look for (adding problem)" in at.info[0].value
    assert "target is" in " ".join(m.value for m in at.markdown)
    assert len(at.multiselect(key="gates_units").value) == 3
    assert query(at)["seed"] == "3"


def test_gates_page_shows_lstm_gate_saturation_for_an_lstm_run(fixture_store, monkeypatch):
    client = MlflowClient(fixture_store)
    experiment = client.get_experiment_by_name("smoke")
    lstm = next(r for r in client.search_runs([experiment.experiment_id])
                if r.data.params.get("model.cell_type") == "lstm")
    at = open_page(fixture_store, monkeypatch, "app_pages/gates.py",
                   query={"experiment": "smoke", "run": lstm.info.run_id})
    path = figure(at, 2)  # the state's path, stars where the adding problem's memory changes
    assert [t.get("name") for t in path["data"]][:2] == ["state c_t", "marked steps"]  # an LSTM remembers in c
    assert "PC 1 (" in path["layout"]["xaxis"]["title"]["text"]
    saturation = figure(at, 3)
    assert {t["name"] for t in saturation["data"]} == {"closed (< 0.1)", "open (> 0.9)"}
    assert any("forget gate" in str(x) for x in saturation["data"][0]["x"])


def test_train_form_offers_switches_and_choices_of_a_task_and_launches_them(fixture_store, monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    at.selectbox(key="train_task").set_value("digits").run()
    at.selectbox(key="train_digits_read").set_value("pixels")
    at.checkbox(key="train_digits_permuted").check()
    at.text_input(key="train_builder_seeds").set_value("0")
    at.button[0].click()
    at.run()
    assert not at.error, [e.value for e in at.error]
    (job,) = jobs.list_jobs()
    task = yaml.safe_load(Path(job.config_path).read_text())["task"]
    assert task == {"name": "digits", "read": "pixels", "permuted": True, "validation_fraction": 0.2}


def upload(at, name, content):
    at.file_uploader(key="train_csv_file").upload(name, content, "text/csv").run()
    assert not at.exception, [e.value for e in at.exception]
    return hashlib.sha256(content).hexdigest()


def daily_csv(rows, sep=";"):
    days = [f"2020-01-{d:02d}" if d <= 31 else f"2020-02-{d - 31:02d}" for d in range(1, rows + 1)]
    return ("date" + sep + "load" + sep + "temp\n" + "".join(
        f"{day}{sep}{np.sin(i / 3):.3f}{sep}{np.cos(i / 5):.3f}\n" for i, day in enumerate(days))).encode()


def test_csv_upload_reads_the_format_previews_it_and_launches_a_forecast_on_the_kept_file(fixture_store, tmp_path,
                                                                                         monkeypatch):
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(tmp_path / "data"))
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    content = daily_csv(50)
    digest = upload(at, "shop load.csv", content)
    key = digest[:16]
    assert at.selectbox(key=f"train_csv_delimiter_{key}").value == ";"
    assert at.selectbox(key=f"train_csv_time_{key}").value == "date"
    assert any("**shop load.csv**: 50 steps × 2 columns, from 2020-01-01 to 2020-02-19" in m.value for m in at.markdown)
    preview = figure(at, 0)
    assert [t["name"] for t in preview["data"]] == ["load", "temp"]
    assert not (tmp_path / "data").exists()  # nothing kept before the user launches
    at.multiselect(key=f"train_csv_features_{key}").set_value(["temp"])
    at.number_input(key=f"train_csv_window_{key}").set_value(8)
    at.number_input(key=f"train_csv_horizon_{key}").set_value(2)
    at.selectbox(key=f"train_csv_transform_{key}").set_value("difference")
    at.multiselect(key="train_csv_cells").set_value(["gru"])
    at.text_input(key="train_csv_truncations").set_value("full, 4")
    at.text_input(key="train_csv_seeds").set_value("0")
    next(b for b in at.button if b.proto.form_id.startswith("train_csv")).click().run()
    assert not at.error, [e.value for e in at.error]
    (job,) = jobs.list_jobs()
    run = yaml.safe_load(Path(job.config_path).read_text())
    assert run["name"] == "shop_load_forecast"
    assert run["task"] == {"name": "forecast", "dataset": "csv", "targets": ["load"], "features": ["temp"],
                           "window": 8, "horizon": 2, "train_fraction": 0.7, "missing": "interpolate",
                           "transform": "difference",
                           "path": f"uploads/{digest}.csv", "time_column": "date", "delimiter": ";",
                           "sha256": digest}
    assert (tmp_path / "data" / "uploads" / f"{digest}.csv").read_bytes() == content


BAD_UPLOADS = [
    ("dupes.csv", b"date,y\n2020-01-01,1\n2020-01-02,2\n2020-01-02,3\n", "appears more than once"),
    ("words.csv", b"date,y\n2020-01-01,1\n2020-01-02,n/a\n", "not numbers: 'n/a' on line 3"),
    ("unsorted.csv", b"date,y\n2020-01-01,1\n2020-01-03,2\n2020-01-02,3\n", "go backwards at line 4"),
    ("photo.csv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8 text"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_a_bad_upload_gets_one_message_and_nothing_is_kept_or_launched(fixture_store, tmp_path, monkeypatch, name,
                                                                       content, message):
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(tmp_path / "data"))
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    upload(at, name, content)
    (error,) = at.error
    assert f"{name} cannot be used." in error.value and message in error.value
    assert not any(b.proto.form_id.startswith("train_csv") for b in at.button)  # nothing to launch
    assert not (tmp_path / "data").exists() and jobs.list_jobs() == []


def test_an_upload_too_short_for_the_frame_is_refused_on_launch_and_taken_back(fixture_store, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(tmp_path / "data"))
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    key = upload(at, "short.csv", daily_csv(20, sep=","))[:16]
    at.number_input(key=f"train_csv_window_{key}").set_value(10)
    next(b for b in at.button if b.proto.form_id.startswith("train_csv")).click().run()
    assert "Nothing was launched" in at.error[0].value and "fewer than window + horizon = 11" in at.error[0].value
    assert list((tmp_path / "data" / "uploads").iterdir()) == [] and jobs.list_jobs() == []


def predictions_page(store, monkeypatch, experiment, **query):
    return open_page(store, monkeypatch, "app_pages/predictions.py", query={"experiment": experiment, **query})


def test_predictions_page_shows_forecasts_horizon_errors_and_rollouts_of_ar_and_rnn_runs(predictions_store,
                                                                                       monkeypatch):
    runs = MlflowClient(predictions_store).search_runs(
        [MlflowClient(predictions_store).get_experiment_by_name("tiny_forecast").experiment_id],
        filter_string="tags.rnnlib.run_kind = 'trial'")
    at = open_page(predictions_store, monkeypatch, "app_pages/predictions.py", query={"experiment": "tiny_forecast"})
    at.multiselect(key="predictions_runs").set_value([r.info.run_id for r in runs]).run()
    assert not at.exception, [e.value for e in at.exception]
    fan = figure(at, 0)
    names = {trace["name"] for trace in fan["data"]}
    assert {"truth", "persistence", "seasonal naive (m = 12)"} <= names
    assert sum(name.startswith(("ar-", "gru-")) for name in names) == 2
    model_trace = next(t for t in fan["data"] if t["name"].startswith("gru-"))
    assert len(model_trace["x"]) == 3  # the origin, then horizon 2
    assert at.selectbox(key="predictions_target").options == ["AAPL", "AMZN", "IBM", "MSFT"]
    horizon = figure(at, 1)
    assert [decoded(t["x"]) for t in horizon["data"]][0] == [1, 2]
    rollout = figure(at, 2)
    groups = {t["name"] for t in rollout["data"]}
    assert {"ar (n=1)", "gru (n=1)", "persistence"} <= groups
    assert "64" not in str(rollout["layout"]["xaxis"].get("ticktext"))  # stocks: half of 37 months, 18 steps
    kstep = figure(at, 3)
    assert [t["name"] for t in kstep["data"]] == ["truth", "1-step", "4-step", "16-step"]
    table = at.dataframe[0].value
    persistence = table[table["predictor"] == "persistence"]["MAE over all horizon steps"].iloc[0]
    logged = json.loads(runs[0].data.tags["rnnlib.metric_baselines"])["persistence"]["mae"]
    assert persistence == pytest.approx(logged)


def test_predictions_page_moves_the_forecast_origin_and_keeps_it_in_the_link(predictions_store, monkeypatch):
    at = predictions_page(predictions_store, monkeypatch, "tiny_forecast", origin="0", target="IBM")
    first = figure(at, 0)
    assert "IBM" in first["layout"]["title"]["text"]
    assert query(at)["origin"] == "0" and query(at)["target"] == "IBM"
    at.select_slider(key="predictions_origin").set_value(5).run()
    assert figure(at, 0)["layout"]["title"]["text"] != first["layout"]["title"]["text"]
    assert query(at)["origin"] == "5"


def test_predictions_page_opens_on_the_best_run(predictions_store, monkeypatch):
    runs = tracking.runs_frame(predictions_store, "tiny_digits")
    trials = runs[runs["kind"] == "trial"]
    best = trials.loc[trials["metrics.best_val_loss"].idxmin(), "run_id"]
    at = predictions_page(predictions_store, monkeypatch, "tiny_digits")
    assert at.multiselect(key="predictions_runs").value == [best]


def test_predictions_page_draws_a_confusion_matrix_per_classifier(predictions_store, monkeypatch):
    runs = tracking.runs_frame(predictions_store, "tiny_digits")
    at = predictions_page(predictions_store, monkeypatch, "tiny_digits")
    at.multiselect(key="predictions_runs").set_value(runs[runs["kind"] == "trial"]["run_id"].tolist()).run()
    assert len(at.get("plotly_chart")) == 2
    matrix = figure(at, 0)["data"][0]["z"]
    assert np.asarray(decoded(matrix) if isinstance(matrix, dict) else matrix).sum() == 359  # every held-out digit


def test_predictions_page_samples_text_at_each_temperature_and_refuses_unknown_characters(predictions_store,
                                                                                         monkeypatch):
    at = predictions_page(predictions_store, monkeypatch, "tiny_text")
    samples = [block.value for block in at.code]
    assert len(samples) == 3 and all(s.startswith("The ") and len(s) == 304 for s in samples)
    at.text_input(key="predictions_prompt").set_value("naïve ☃").run()
    assert any("not in it:" in e.value and "☃" in e.value for e in at.error), [e.value for e in at.error]


def test_predictions_page_draws_each_generated_wave_against_its_target(predictions_store, monkeypatch):
    runs = tracking.runs_frame(predictions_store, "tiny_waveform")
    at = predictions_page(predictions_store, monkeypatch, "tiny_waveform")
    at.multiselect(key="predictions_runs").set_value(runs[runs["kind"] == "trial"]["run_id"].tolist()).run()
    panels = figure(at, 0)
    assert len(panels["layout"]["annotations"]) == 6  # one titled panel per vector
    assert panels["layout"]["annotations"][0]["text"].startswith("frequency ")
    names = sorted({t["name"] for t in panels["data"]})
    assert len(names) == 3 and names[0].startswith("gru-full") and names[1].startswith("rnn-full")
    assert names[2] == "target"
    assert len(panels["data"]) == 6 * 3
    target = decoded(panels["data"][0]["y"])
    assert len(target) == 12 and max(abs(v) for v in target) <= 1.5  # the wave, amplitude at most 1.5
    errors = at.dataframe[0].value
    assert sorted(errors.index) == names[:2] and (errors["RMSE mean"] > 0).all()


def test_predictions_page_lists_greedy_decodings_and_the_decoders_beliefs(predictions_store, monkeypatch):
    at = predictions_page(predictions_store, monkeypatch, "tiny_dates")
    table = at.dataframe[0].value
    assert len(table) == 16 and list(table.columns[:2]) == ["source", "target"]
    assert all(len(t) == 10 and t[4] == "-" for t in table["target"])  # ISO dates
    decodings = table[table.columns[2]]
    assert all(d[0] in "✓✗" for d in decodings)
    beliefs = figure(at, 0)
    assert len(beliefs["data"][0]["x"]) == 11  # 10 characters and the end mark, one column per decoding step
    assert beliefs["layout"]["title"]["text"].startswith(table["source"][0] + " → ")
    at.number_input(key="predictions_sequence").set_value(3).run()
    assert figure(at, 0)["layout"]["title"]["text"].startswith(table["source"][3] + " → ")
    assert query(at)["sequence"] == "3"


def test_a_typed_vector_is_unrolled_by_each_run_from_its_weights_next_to_its_wave(predictions_store, monkeypatch):
    at = predictions_page(predictions_store, monkeypatch, "tiny_waveform")
    logged = next(t for t in figure(at, 0)["data"] if t["name"] != "target")  # Keras' output, first vector
    default = next(t for t in figure(at, 1)["data"] if t["name"] == logged["name"])  # numpy's, same vector
    np.testing.assert_allclose(decoded(default["y"]), decoded(logged["y"]), atol=1e-4)
    at.number_input(key="predictions_vector_frequency").set_value(2.0)
    at.number_input(key="predictions_vector_phase").set_value(0.25)
    at.number_input(key="predictions_vector_amplitude").set_value(1.0).run()
    own = figure(at, 1)
    assert own["layout"]["annotations"][0]["text"] == "frequency 2, phase 0.25, amplitude 1"
    target = next(t for t in own["data"] if t["name"] == "target")
    np.testing.assert_allclose(decoded(target["y"]), np.cos(2 * np.pi * 2 * np.arange(12) / 12), atol=1e-5)
    generated = [decoded(t["y"]) for t in own["data"] if t["name"] != "target"]
    assert len(generated) == 1 and len(generated[0]) == 12 and np.all(np.isfinite(generated[0]))


PAGE_RENDER_SCRIPT = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({app!r}, default_timeout=120)
at.run()
for page in {pages!r}:
    at.switch_page(page)
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
print(",".join(m for m in ("keras", "tensorflow", "jax", "torch") if m in sys.modules) or "none")
"""


def test_rendering_every_page_imports_no_framework(fixture_store):
    """In a fresh interpreter (this one has keras from other tests): open every page, then look at sys.modules."""
    import subprocess
    import sys

    pages = sorted(f"app_pages/{p.name}" for p in (PROJECT_DIR / "app_pages").glob("*.py"))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = fixture_store
    result = subprocess.run([sys.executable, "-c", PAGE_RENDER_SCRIPT.format(app=APP, pages=pages)],
                            cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "none"
    assert len(pages) >= 9


def test_refresh_forgets_the_run_listing_for_everyone_but_keeps_per_run_caches(tmp_path, monkeypatch):
    from ui import data

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("listing")
    client.set_terminated(client.create_run(experiment_id).info.run_id)
    reads = []
    monkeypatch.setattr(tracking, "load_config", lambda uri, run_id: reads.append(run_id) or run_id)
    assert len(data._runs(uri, "listing")) == 1
    data._configs(uri, ("abc",))
    client.set_terminated(client.create_run(experiment_id).info.run_id)
    assert len(data._runs(uri, "listing")) == 1  # cached
    data.refresh()
    assert len(data._runs(uri, "listing")) == 2  # the new run shows after a refresh
    data._configs(uri, ("abc",))
    assert reads == ["abc"]  # read once: a refresh leaves per-run caches alone


def folder_hashes(folder):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_read_only_mode_trains_uploads_and_writes_nothing_while_every_page_is_clicked(fixture_store, monkeypatch,
                                                                                       tmp_path):
    store_folder = Path(fixture_store.removeprefix("sqlite:///")).parent
    before = folder_hashes(store_folder)
    monkeypatch.setenv("RNNLAB_READ_ONLY", "1")
    at = open_page(fixture_store, monkeypatch)
    assert "Read-only" in at.sidebar.info[0].value
    assert not [b for b in at.button if "demo" in b.label.lower()] and "Training jobs" not in [s.value for s in
                                                                                             at.subheader]
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    assert at.title[0].value == "Reproduce a run" and not at.button and not at.get("file_uploader")
    assert not at.get("form") and not at.text_area
    (yaml_code, command) = [c.value for c in at.code]
    reproduced = config.parse_config(yaml_code)
    assert reproduced.task.name == "adding" and not reproduced.grid and command.startswith("rnnlab run ")
    other = tracking.runs_frame(fixture_store, "smoke").query("kind == 'trial'")["run_id"].iloc[-1]
    at.selectbox(key="reproduce_run").set_value(other).run()
    assert config.parse_config(at.code[0].value) == tracking.load_config(fixture_store, other).config  # that run's
    for page in ("compare", "predictions", "gradients", "gates", "unrolled", "products", "forms"):
        at = open_page(fixture_store, monkeypatch, f"app_pages/{page}.py")
        assert not at.exception and not at.error, page
        for toggle in at.toggle:
            toggle.set_value(not toggle.value).run()
        assert not at.exception, page
    assert jobs.list_jobs() == []
    assert folder_hashes(store_folder) == before  # not one byte of the store changed


FIELDS = ("experiment", "run", "runs", "sweep", "selected", "seed", "layer", "units", "group_by", "quantity",
          "epoch", "target", "origin", "sequence", "sample_seed", "kstep_run", "decoder_run", "metric", "statistic",
          "step", "smoothing", "band", "log_y", "show_runs", "x_param", "line_param", "source", "f.seed",
          "f.model.label")
HOSTILE_VALUES = {
    "unknown ids": ["deadbeef"],
    "huge numbers": ["1e308", "-99999999999999999999", "nan", "inf"],
    "unicode and markup": ["ü🙂\u202e", "<script>alert(1)</script>", "![x](http://example.invalid/x.png)"],
    "10 kB and repeated": ["x" * 10_000, "a,b,,c", "", "0"],
}


@pytest.mark.parametrize("kind", list(HOSTILE_VALUES))
@pytest.mark.parametrize("page", ["compare", "predictions", "gradients", "gates", "unrolled", "products", "forms",
                                  "train"])
def test_hostile_query_parameters_give_notices_never_tracebacks(fixture_store, monkeypatch, page, kind):
    values = HOSTILE_VALUES[kind]
    query = {field: values if len(values) > 1 else values[0] for field in FIELDS}
    query["experiment"] = "smoke" if kind == "huge numbers" else query["experiment"]  # past the picker, too
    at = open_page(fixture_store, monkeypatch, f"app_pages/{page}.py", query=query)  # asserts no exception
    shown = " ".join(e.value for e in [*at.markdown, *at.warning, *at.info, *at.error])
    assert "<script>" not in shown and "Traceback" not in shown


def test_a_wide_csv_previews_a_sample_and_is_parsed_once_per_choice(fixture_store, tmp_path, monkeypatch):
    monkeypatch.setenv("RNNLAB_DATA_DIR", str(tmp_path / "data"))
    from rnnlib.tasks import sources

    calls = []
    parse = sources.parse_csv
    monkeypatch.setattr(sources, "parse_csv", lambda *args: calls.append(args[1:]) or parse(*args))
    at = open_page(fixture_store, monkeypatch, "app_pages/train.py")
    rng = np.random.default_rng(0)
    wide = pd.DataFrame(rng.normal(size=(3_000, 600)), columns=[f"c{i}" for i in range(600)])
    key = upload(at, "wide.csv", wide.to_csv(index=False).encode())[:16]
    assert any("3,000 steps × 600 columns" in m.value for m in at.markdown)
    assert any("shows 12 of 600 columns, one step in 2" in c.value for c in at.caption)
    preview = figure(at, 0)
    y = preview["data"][0]["y"]
    points = len(base64.b64decode(y["bdata"])) // np.dtype(y["dtype"]).itemsize if isinstance(y, dict) else len(y)
    assert len(preview["data"]) == 12 and points == 1_500
    at.number_input(key=f"train_csv_window_{key}").set_value(8).run()  # reruns read the parsed file
    at.multiselect(key=f"train_csv_targets_{key}").set_value(["c3"]).run()
    assert calls == [(None, ",")]


def test_the_server_refuses_uploads_over_the_csv_limit_not_only_the_widget():
    import tomllib

    from rnnlib.tasks import sources

    settings = tomllib.loads((PROJECT_DIR / ".streamlit" / "config.toml").read_text())
    assert settings["server"]["maxUploadSize"] * 2**20 == sources.MAX_CSV_BYTES


def test_compare_gives_a_verdict_for_every_pair_of_groups_and_keeps_its_interval_in_the_link(fixture_store,
                                                                                            monkeypatch):
    at = open_page(fixture_store, monkeypatch, "app_pages/compare.py", query={"group_by": "model.label"})
    sentences = [m.value for m in at.markdown if "(n = 4 vs 4)" in m.value]
    assert len(sentences) == 1 and sentences[0].count("\n") == 2  # 3 cells: 3 pairs, one line each
    table = next(d.value for d in at.dataframe if "p_holm" in d.value)
    assert len(table) == 3 and (table["p_holm"] >= table["p"]).all()
    at.radio(key="compare_interval").set_value("bootstrap").run()
    assert not at.exception and query(at)["interval"] == "bootstrap"
