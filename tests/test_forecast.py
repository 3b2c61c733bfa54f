"""Forecasting real series: framing, baselines, user CSVs and their validator, AR(τ) models and k-step rollouts."""

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from rnnlib import tasks, tracking
from rnnlib.analysis import predictions
from rnnlib.core import config as cfg
from rnnlib.core import rollouts
from rnnlib.core.errors import ConfigError
from rnnlib.tasks import sources


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv(sources.ENV_DATA_DIR, str(folder))
    return folder


def forecast(**params) -> tasks.Task:
    return tasks.build(cfg.validate({"task": {"name": "forecast", **params}}).task)


def write_series(folder, name, values: dict, start="2020-01-01", freq="D"):
    frame = pd.DataFrame(values, index=pd.date_range(start, periods=len(next(iter(values.values()))), freq=freq))
    frame.rename_axis("date").to_csv(folder / name)
    return name


def test_each_step_targets_the_next_horizon_values_of_the_targets_only():
    task = forecast(dataset="seattle_weather", targets=["temp_max", "temp_min"], features=["wind"], window=10,
                    horizon=3)
    x, y = task.sample_batch(np.random.default_rng(0), 5)
    assert x.shape == (5, 10, 3) and y.shape == (5, 10, 6) and task.num_outputs == 6
    values = task.data.values
    start = int(np.flatnonzero((values[:, 0] == x[0, 0, 0]) & (values[:, 2] == x[0, 0, 2]))[0])
    for t, k, j in [(0, 0, 0), (4, 2, 1), (9, 1, 0)]:
        assert y[0, t, k * 2 + j] == values[start + t + 1 + k, j]
    np.testing.assert_allclose(task.to_original(y[0, 9])[0], task.data.frame.iloc[start + 10, :2], rtol=1e-5)


def test_validation_windows_and_their_targets_lie_after_the_training_part():
    task = forecast(dataset="stocks", window=12, horizon=3)
    assert task.data.num_train == int(123 * 0.7)
    assert task.validation_starts.min() == task.data.num_train
    assert task.validation_origins.max() + 3 == len(task.data.values) - 1
    assert task.train_starts.max() + 12 + 3 - 1 == task.data.num_train - 1


def test_metrics_are_scored_at_the_forecast_origin_in_the_series_units():
    task = forecast(dataset="co2", window=20, horizon=2)
    x, y = task.validation_data(4)
    shifted = y.copy()
    shifted[:, -1] += 1.0  # one standardised unit off at the origin only
    assert task.metric_value(y, shifted) == pytest.approx(task.data.std[0], rel=1e-5)
    assert task.metrics["rmse"].value(np.mean(task.metrics["rmse"].per_step(y, shifted)[:, -1])) == \
        pytest.approx(task.data.std[0], rel=1e-5)


def test_persistence_and_seasonal_naive_are_the_textbook_forecasts(data_dir):
    t = np.arange(200)
    values = 10 + 0.5 * t + 3 * np.sin(2 * np.pi * t / 7)
    name = write_series(data_dir, "weekly.csv", {"y": values})
    task = forecast(dataset="csv", path=name, time_column="date", window=14, horizon=3, train_fraction=0.5)
    origins = task.validation_origins
    truth = np.stack([values[origins + k] for k in (1, 2, 3)], axis=1)
    persistence = np.abs(values[origins][:, None] - truth).mean()
    assert task.metric_baselines["persistence"]["mae"] == pytest.approx(persistence)
    x, y = task.validation_data(len(origins))
    persistence_loss = np.mean((np.tile(x[:, :, :1], (1, 1, 3)) - y) ** 2)
    assert task.baseline == pytest.approx(persistence_loss, rel=1e-5)


def test_seasonal_naive_reads_one_season_back_for_every_horizon_step():
    task = forecast(dataset="co2", window=60, horizon=60)
    raw = task.data.frame.to_numpy()[:, 0]
    forecast_ = task.baseline_forecasts()["seasonal naive (m = 52)"]
    origin = task.validation_origins[0]
    assert forecast_[0, 0, 0] == raw[origin + 1 - 52]
    assert forecast_[0, 51, 0] == raw[origin + 52 - 52]
    assert forecast_[0, 52, 0] == raw[origin + 53 - 104]


def test_co2_gaps_are_interpolated_or_refused_with_where_they_are():
    task = forecast(dataset="co2", window=52, horizon=4)
    assert task.data.filled == {"co2": 59} and not task.data.frame.isna().any().any()
    raw = sources.bundled("co2").frame["co2"]
    gap = int(np.flatnonzero(raw.isna().to_numpy())[0])
    assert raw.iloc[gap - 1] <= task.data.frame["co2"].iloc[gap] <= raw.iloc[gap + 1] or \
        raw.iloc[gap - 1] >= task.data.frame["co2"].iloc[gap] >= raw.iloc[gap + 1]
    with pytest.raises(ConfigError, match="59 empty values .*1958-05-10.*missing: interpolate"):
        cfg.validate({"task": {"name": "forecast", "dataset": "co2", "missing": "error"}})


def test_stocks_start_where_every_chosen_ticker_has_prices():
    all_five = forecast(dataset="stocks", targets=["AAPL", "GOOG"], window=6, horizon=1)
    assert all_five.data.trimmed == 55 and str(all_five.data.frame.index[0].date()) == "2004-08-01"
    assert forecast(dataset="stocks", window=6).data.trimmed == 0


BAD_FILES = [
    ("semicolons.csv", b"date;y\n2020-01-01;1\n2020-01-02;2\n", "date", ",", "semicolon-separated"),
    ("words.csv", b"date,y\n2020-01-01,1\n2020-01-02,abc\n2020-01-03,3\n", "date", ",",
     "not numbers: 'abc' on line 3"),
    ("comma_decimal.csv", b"date;y\n2020-01-01;1,5\n2020-01-02;2,5\n", "date", ";", "dot as decimal point"),
    ("dupes.csv", b"date,y\n2020-01-01,1\n2020-01-02,2\n2020-01-02,3\n", "date", ",",
     "2020-01-02 00:00:00 appears more than once \\(line 3 and line 4\\)"),
    ("unsorted.csv", b"date,y\n2020-01-01,1\n2020-01-03,2\n2020-01-02,3\n", "date", ",",
     "go backwards at line 4.*sort the rows"),
    ("gap.csv", b"date,y\n2020-01-01,1\n2020-01-02,2\n2020-01-05,3\n2020-01-06,4\n", "date", ",",
     "steps by 1 day but jumps by 3 days between line 3 .* and line 4"),
    ("baddate.csv", b"date,y\n2020-01-01,1\nyesterday,2\n", "date", ",", "not dates or numbers: 'yesterday' on line 3"),
    ("notime.csv", b"day,y\n2020-01-01,1\n", "date", ",", "no column 'date'; the columns are: day, y"),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", None, ",", "not UTF-8 text"),
    ("empty.csv", b"", None, ",", "The file is empty"),
    ("ragged.csv", b"a,b\n1,2\n3,4,5,6\n", None, ",", "as many fields as the header"),
]


@pytest.mark.parametrize(("name", "content", "time_column", "delimiter", "message"), BAD_FILES,
                         ids=[b[0] for b in BAD_FILES])
def test_bad_csv_files_get_a_specific_message(data_dir, name, content, time_column, delimiter, message):
    (data_dir / name).write_bytes(content)
    with pytest.raises(sources.SeriesError, match=message):
        sources.read_csv(name, time_column, delimiter)


@pytest.mark.parametrize(("content", "delimiter", "time_column"), [
    (b"date;load;temp\n2020-01-01;1;2\n2020-01-02;3;4\n", ";", "date"),
    (b"when\tload\n2020-01-01\t1\n2020-01-02\t2\n", "\t", "when"),  # not named like time: its values are dates
    (b"Month,sales\n1,5\n2,6\n", ",", "Month"),  # named like time, numbers
    (b"a|b\n1|2\n3|4\n", "|", None),  # only numbers: row order is time
    (b"x\n1\n2\n", ",", None),
])
def test_uploads_are_sniffed_for_their_delimiter_and_time_column(content, delimiter, time_column):
    assert sources.guess_delimiter(content) == delimiter
    columns, guessed = sources.sniff(content, delimiter)
    assert guessed == time_column and columns[0] == content.decode().split("\n")[0].split(delimiter)[0]


def test_sniffing_with_the_wrong_delimiter_says_which_one_fits():
    with pytest.raises(sources.SeriesError, match="look semicolon-separated"):
        sources.sniff(b"date;y\n2020-01-01;1\n", ",")


def test_an_upload_is_kept_once_under_its_content_hash(data_dir):
    content = b"t,y\n0,1\n1,2\n"
    kept = sources.save_upload(content)
    assert kept.new and kept.path == f"uploads/{kept.sha256}.csv" and (data_dir / kept.path).read_bytes() == content
    again = sources.save_upload(content)
    assert (again.path, again.new) == (kept.path, False) and sources.file_sha256(data_dir / kept.path) == kept.sha256
    assert sorted(p.name for p in (data_dir / "uploads").iterdir()) == [f"{kept.sha256}.csv"]  # no partial file
    assert sources.resolve_csv_path(kept.path) == data_dir / kept.path
    again.discard()  # the file was there before this upload: kept
    assert (data_dir / kept.path).is_file()
    kept.discard()
    assert not (data_dir / kept.path).exists()


def test_csv_paths_outside_the_data_folder_missing_files_and_huge_files_are_refused(data_dir, tmp_path):
    (tmp_path / "outside.csv").write_text("y\n1\n")
    with pytest.raises(sources.SeriesError, match="outside the data folder"):
        sources.read_csv("../outside.csv", None)
    with pytest.raises(sources.SeriesError, match="outside the data folder"):
        sources.read_csv(str(tmp_path / "outside.csv"), None)
    with pytest.raises(sources.SeriesError, match="No file nope.csv"):
        sources.read_csv("nope.csv", None)
    with open(data_dir / "huge.csv", "wb") as handle:  # sparse: 2 GB on paper, nothing on disk
        handle.truncate(2 * 2**30)
    with pytest.raises(sources.SeriesError, match="2,048 MB; the limit is 50 MB"):
        sources.read_csv("huge.csv", None)


def test_a_series_too_short_for_the_window_says_which_part_and_what_to_change(data_dir):
    name = write_series(data_dir, "short.csv", {"y": np.arange(40.0)})
    with pytest.raises(ConfigError, match="validation part has 12 steps.*window \\+ horizon = 21.*shorter window"):
        cfg.validate({"task": {"name": "forecast", "dataset": "csv", "path": name, "time_column": "date",
                               "window": 20}})


def test_monthly_and_numeric_time_columns_are_even_steps(data_dir):
    name = write_series(data_dir, "monthly.csv", {"y": np.arange(30.0)}, freq="MS")
    assert len(sources.read_csv(name, "date").frame) == 30
    (data_dir / "numeric.csv").write_text("t,y\n" + "".join(f"{0.5 * i},{i}\n" for i in range(10)))
    assert sources.read_csv("numeric.csv", "t").frame.index[-1] == 4.5


def test_a_changed_csv_is_refused_when_the_config_pins_its_hash(data_dir):
    name = write_series(data_dir, "pinned.csv", {"y": np.arange(100.0)})
    digest = sources.file_sha256(data_dir / name)
    params = {"name": "forecast", "dataset": "csv", "path": name, "time_column": "date", "window": 5,
              "sha256": digest}
    cfg.validate({"task": params})
    write_series(data_dir, name, {"y": np.arange(100.0) * 2})
    with pytest.raises(ConfigError, match="has changed since this configuration was made"):
        cfg.validate({"task": params})


def test_a_rejected_csv_writes_nothing_to_the_store(data_dir, cli_env, sqlite_uri, tmp_path):
    (data_dir / "bad.csv").write_text("date,y\n2020-01-01,1\n2020-01-01,2\n")
    experiment = tmp_path / "bad.yaml"
    experiment.write_text("task: {name: forecast, dataset: csv, path: bad.csv, time_column: date, window: 2}\n")
    env = dict(cli_env, RNNLAB_DATA_DIR=str(data_dir))
    result = run_cli(["run", str(experiment), "--tracking-uri", sqlite_uri], env)
    assert result.returncode != 0 and "appears more than once" in result.stderr
    assert "Traceback" not in result.stderr
    assert MlflowClient(sqlite_uri).search_experiments(filter_string="name = 'bad'") == []


def test_autoregressive_models_must_use_full_bptt_and_fit_the_window():
    base = {"task": {"name": "forecast", "dataset": "co2", "window": 20}, "model": {"kind": "ar"}}
    with pytest.raises(ConfigError, match="nothing to truncate; use training.truncation: full"):
        cfg.validate({**base, "training": {"truncation": 5}})
    with pytest.raises(ConfigError, match="ar_order \\(30\\) is longer than the task's sequence \\(20 steps\\)"):
        cfg.validate({**base, "model": {"kind": "ar_mlp", "ar_order": 30}})
    with pytest.raises(ConfigError, match="answers once per sequence"):
        cfg.validate({"task": {"name": "digits"}, "model": {"kind": "ar", "ar_order": 2}})


def test_linear_ar_trained_on_a_noiseless_ar2_process_recovers_its_coefficients(data_dir):
    from rnnlib.worker import training

    omega, level = 1.0, 5.0  # x_t = 2 cos(ω) x_{t-1} - x_{t-2} + c: a sinusoid is an exact AR(2) process
    t = np.arange(600)
    name = write_series(data_dir, "ar2.csv", {"x": level + np.sin(omega * t + 0.4)})
    config = cfg.validate({
        "task": {"name": "forecast", "dataset": "csv", "path": name, "time_column": "date", "window": 16},
        "model": {"kind": "ar", "ar_order": 2},
        "training": {"epochs": 6, "steps_per_epoch": 100, "batch_size": 32, "learning_rate": 0.02,
                     "clipnorm": None},
    })
    result = training.train(config)
    kernel = np.asarray(result.model.get_layer("head").kernel.numpy())[:, 0, 0]  # [τ]: row τ-1 weighs x_t
    np.testing.assert_allclose(kernel, [-1.0, 2 * np.cos(omega)], atol=0.02)
    assert result.history[-1]["val_mae"] < 0.01 < result.task.metric_baselines["persistence"]["mae"]


def test_a_rollout_of_the_true_dynamics_reproduces_the_series_and_errors_grow_for_a_wrong_model():
    a1, a2 = 1.6, -0.8
    series = np.zeros((120, 1))
    series[:2, 0] = [1.0, 0.5]
    for i in range(2, 120):
        series[i] = a1 * series[i - 1] + a2 * series[i - 2]

    def true_model(x):  # one-step AR(2) prediction at every step of the window
        out = np.zeros_like(x)
        out[:, 1:, 0] = a1 * x[:, 1:, 0] + a2 * x[:, :-1, 0]
        return out

    origins = np.arange(10, 50)
    predicted = rollouts.rollout(true_model, series, origins, window=5, steps=16)
    truth = series[origins[:, None] + np.arange(1, 17)[None, :]]
    np.testing.assert_allclose(predicted, truth, rtol=1e-4, atol=1e-6)
    times, values = rollouts.kstep_series(predicted, origins, 4)
    np.testing.assert_allclose(values[:, 0], series[times, 0], rtol=1e-4, atol=1e-6)
    wrong = rollouts.rollout(lambda x: true_model(x) * 1.05, series, origins, window=5, steps=16)
    error = rollouts.error_by_step(wrong, truth)  # compounds, then oscillates with the series
    assert 0 < error[0] < error[1] < error[2] < error[3] and error.max() > 4 * error[0]
    assert rollouts.steps_shown(20) == (1, 4, 16)


@pytest.mark.slow
def test_forecast_runs_log_metrics_baselines_and_predictions_with_rollouts(cli_env, sqlite_uri, tmp_path):
    experiment = tmp_path / "tiny_forecast.yaml"
    experiment.write_text(
        "task: {name: forecast, dataset: stocks, window: 12, horizon: 2}\n"
        "model: {units: 4, ar_order: 3}\n"
        "training: {epochs: 1, steps_per_epoch: 2, batch_size: 8, num_validation_sequences: 16}\n"
        "grid: {model.kind: [ar, recurrent], model.cell_type: [gru, lstm]}\n")
    result = run_cli(["run", str(experiment), "--tracking-uri", sqlite_uri, "--quiet"], cli_env)
    assert result.returncode == 0, result.stderr
    runs = tracking.runs_frame(sqlite_uri, "tiny_forecast")
    runs = runs[runs["kind"] != "sweep"]
    assert sorted(runs["params.model.label"]) == ["ar", "gru", "lstm"]  # the AR point ran once, not once per cell
    assert sorted(runs["run_name"]) == ["ar-full-s0", "gru-full-s0", "lstm-full-s0"]
    assert runs[["metrics.val_mae", "metrics.val_rmse"]].notna().all().all()
    assert (runs["metrics.val_rmse"] >= runs["metrics.val_mae"]).all()
    baselines = json.loads(runs["tags.rnnlib.metric_baselines"].iloc[0])
    assert set(baselines) == {"persistence", "seasonal naive (m = 12)"}
    for run_id in runs["run_id"]:
        arrays = tracking.load_predictions(sqlite_uri, run_id)
        task = forecast(dataset="stocks", window=12, horizon=2)
        assert arrays["forecast"].shape == arrays["truth"].shape == (len(task.validation_origins), 2, 4)
        assert arrays["rollout"].shape == (len(task.rollout_origins), task.rollout_steps, 4)
        errors = predictions.horizon_errors(arrays)
        persistence = errors[errors["predictor"] == "persistence"]["mae"].mean()
        assert persistence == pytest.approx(baselines["persistence"]["mae"])
    assert tracking.load_predictions(sqlite_uri, runs["run_id"].iloc[0])["times"][0] == "2000-01-01"


def test_differenced_windows_read_changes_and_forecast_the_change_since_the_origin(data_dir):
    t = np.arange(80.0)
    name = write_series(data_dir, "quadratic.csv", {"y": 0.05 * t**2})
    task = forecast(dataset="csv", path=name, time_column="date", window=5, horizon=3, transform="difference")
    x, y = task.validation_data(len(task.validation_starts))
    steps = task.validation_starts[0] + np.arange(5)
    read = x[0, :, 0] * task.data.std[0] + task.data.mean[0]
    np.testing.assert_allclose(read, 0.05 * (t[steps] ** 2 - t[steps - 1] ** 2), rtol=1e-4)
    changes = task.to_original(y[0])[:, :, 0]  # [window, horizon]
    expected = 0.05 * (t[steps[:, None] + np.arange(1, 4)] ** 2 - t[steps, None] ** 2)
    np.testing.assert_allclose(changes, expected, rtol=1e-4)
    assert task.train_starts.min() == 1  # step 0 has no change to read


def test_a_differenced_model_carries_a_trend_beyond_the_training_range_where_a_level_model_cannot(data_dir):
    name = write_series(data_dir, "trend.csv", {"y": 5.0 + 3.0 * np.arange(120.0)})
    common = {"dataset": "csv", "path": name, "time_column": "date", "window": 6, "horizon": 2}
    changes = forecast(**common, transform="difference")
    steady = changes.prediction_arrays(lambda x: np.zeros((*np.shape(x)[:2], 2), np.float32))  # "the usual change"
    np.testing.assert_allclose(steady["forecast"], steady["truth"], atol=1e-6)
    np.testing.assert_allclose(steady["rollout"][:, :, 0], 5.0 + 3.0 * (steady["rollout_origins"][:, None]
                                                                        + np.arange(1, changes.rollout_steps + 1)),
                               atol=1e-3)
    assert steady["truth"].max() > changes.data.raw[: changes.data.num_train].max()  # beyond anything trained on
    assert changes.baseline > 0 and changes.metric_baselines["persistence"]["mae"] == pytest.approx(4.5)
    levels = forecast(**common)
    flat = levels.prediction_arrays(lambda x: np.zeros((*np.shape(x)[:2], 2), np.float32))  # "the usual value"
    assert np.abs(flat["forecast"] - flat["truth"]).min() > 100
