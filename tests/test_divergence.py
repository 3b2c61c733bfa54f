"""NaN and infinity stay what they are from the store to the page, and a diverged run is said to be one: never a
zero, never ranked best, never averaged in as a number (`rnnlib.core.divergence`)."""

import logging
import math

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from conftest import run_cli, start_mlflow_server
from rnnlib import tracking
from rnnlib.analysis import compare
from rnnlib.core import config, divergence
from rnnlib.run import sweep
from rnnlib.viz import plots
from rnnlib.worker import training

VALUES = [0.5, math.nan, math.inf, -math.inf, 1e300, -1e300, 0.0, 1.7e308]


@pytest.fixture
def odd_store(tmp_path):
    """One sqlite store whose two runs logged NaN, +-inf and huge values at steps 1-8 for two keys; returns the
    URI, the database file and the history every reader must give back."""
    uri = f"sqlite:///{tmp_path / 'odd.db'}"
    client = tracking.open_client(uri)
    experiment = client.create_experiment("odd", artifact_location=(tmp_path / "artifacts").as_uri())
    rows = []
    for shift in (0, 3):
        run_id = client.create_run(experiment).info.run_id
        values = VALUES[shift:] + VALUES[:shift]
        client.log_batch(run_id, metrics=[Metric(key, value, 1000 + step, step + 1)
                                          for key in ("val_loss", "grad_norm") for step, value in enumerate(values)])
        client.log_metric(run_id, "val_loss", 0.25, timestamp=5000, step=1)  # logged again: the latest counts
        client.set_terminated(run_id)
        rows += [(run_id, key, step + 1, 0.25 if (key, step) == ("val_loss", 0) else value)
                 for key in ("grad_norm", "val_loss") for step, value in enumerate(values)]
    expected = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"]).sort_values(
        ["run_id", "key", "step"], ignore_index=True)
    return uri, tmp_path / "odd.db", expected


def same_history(frame, expected):
    frame = frame.assign(key=frame["key"].astype(str), step=frame["step"].astype("int64")).reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected)  # NaN equals NaN here, inf equals inf


def test_every_reader_gives_back_nan_and_infinity_as_logged(odd_store, tmp_path, monkeypatch, caplog):
    uri, database, expected = odd_store
    run_ids, keys = sorted(expected["run_id"].unique()), ["grad_norm", "val_loss"]
    caplog.set_level(logging.WARNING, logger="rnnlib.tracking")

    fast = tracking.metric_histories(uri, run_ids, keys)
    assert fast.attrs["reader"] == "sql" and not caplog.records  # the fast path answered, and did not fall back
    same_history(fast, expected)
    assert np.isnan(fast["value"]).sum() == 4 and np.isposinf(fast["value"]).sum() == 4  # not zeros, not 1.8e308

    with monkeypatch.context() as patched:  # MLflow's client API, one call per run and key: the slowest reader
        patched.setattr(tracking.queries, "_database_history_bulk",
                        lambda uri, runs, keys: ("client", tracking.queries._client_histories(uri, runs, keys)))
        same_history(tracking.metric_histories(uri, run_ids, keys), expected)

    with monkeypatch.context() as patched:  # the SQL fast path breaks: MLflow's bulk call answers, and says why
        def broken(*args):
            raise RuntimeError("no such column: is_nan")
        patched.setattr(tracking.queries, "_read_metrics_table", broken)
        fallback = tracking.metric_histories(uri, run_ids, keys)
    assert fallback.attrs["reader"] == "mlflow-bulk"
    assert any("no such column" in r.getMessage() and "20x slower" in r.getMessage() for r in caplog.records)
    same_history(fallback, expected)

    caplog.clear()
    with start_mlflow_server(f"sqlite:///{database}", tmp_path / "server-artifacts") as server:
        served = tracking.metric_histories(server, run_ids, keys)
        assert served.attrs["reader"] == "server-bulk" and not caplog.records
        same_history(served, expected)
        monkeypatch.setattr(tracking.queries, "SERVER_BULK_LIMIT", 10)  # a full answer may be cut: asked in halves
        same_history(tracking.metric_histories(server, run_ids, keys), expected)
        latest = tracking.runs_frame(server, "odd").set_index("run_id")["metrics.val_loss"]
    assert sorted(latest.tolist()) == [1.7e308, math.inf]  # the latest values, inf included
    local = tracking.runs_frame(uri, "odd").set_index("run_id")["metrics.val_loss"]
    pd.testing.assert_series_equal(local.sort_index(), latest.sort_index())


def test_inf_is_stored_as_the_largest_float_and_read_back_as_inf(odd_store):
    uri, _, expected = odd_store
    raw = MlflowClient(uri).get_metric_history(expected["run_id"].iloc[0], "grad_norm")
    assert sorted(m.value for m in raw if not math.isnan(m.value))[-1] == 1.7976931348623157e308  # MLflow's own
    assert tracking.restore_infinities([1.7976931348623157e308, -1.7976931348623157e308, 1.7e308]).tolist() == [
        math.inf, -math.inf, 1.7e308]


def diverging_runs():
    """Three seeds of `rnn` (seed 1 diverges at epoch 3: its loss turns inf, then NaN) and three of `lstm`."""
    runs = pd.DataFrame([{"run_id": f"{cell}{seed}", "run_name": f"{cell}-s{seed}", "status": "FINISHED",
                          "params.model.cell_type": cell, "params.seed": str(seed)}
                         for cell in ("rnn", "lstm") for seed in range(3)])
    rows = []
    for run_id in runs["run_id"]:
        for step in range(1, 6):
            value = {"rnn": 0.1, "lstm": 0.2}[run_id[:-1]] / step + int(run_id[-1]) * 0.01
            if run_id == "rnn1":
                if step > 3:
                    continue  # training stopped at its divergence
                value = {1: 0.001, 2: 1e40, 3: math.inf}[step]  # the lowest loss of all, then it blew up
            rows += [(run_id, "val_loss", step, value), (run_id, "train_loss", step, value)]
    return runs, pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def test_a_diverged_run_is_found_from_its_losses_or_its_tag():
    runs, histories = diverging_runs()
    epochs = compare.diverged_at(runs, histories)
    assert epochs["rnn1"] == 3 and epochs.drop("rnn1").isna().all()
    tagged = runs.assign(**{f"tags.{divergence.TAG}": ["", "", "", "", "4", ""]})
    assert compare.diverged_at(tagged)["lstm1"] == 4  # without histories, the tag tells


def test_a_diverged_run_is_never_ranked_and_its_group_says_how_many_diverged():
    runs, histories = diverging_runs()
    best = compare.summarize(histories, runs, "val_loss", "best")
    assert math.isnan(best["rnn1"])  # its 0.001 before diverging is not its best: it has none
    assert best.idxmin() == "rnn0"  # the best of the runs that did not diverge
    early = compare.summarize(histories, runs, "val_loss", "at_step", 1)
    assert early["rnn1"] == 0.001  # before it diverged, its value is a number
    assert math.isnan(compare.summarize(histories, runs, "val_loss", "at_step", 3)["rnn1"])
    table = compare.group_summary(best, runs, ["model.cell_type"]).set_index("group")
    assert table.loc["rnn", "n"] == 2 and table.loc["rnn", "diverged"] == 1
    assert table.loc["rnn", "mean"] == pytest.approx(np.mean([best["rnn0"], best["rnn2"]]))  # not 0, not inf
    assert table.loc["lstm", "diverged"] == 0
    per_run = compare.summary_table(histories, runs, ["val_loss"], "best", None, ["model.cell_type"])
    assert per_run.set_index("run_id").loc["rnn1", "status"] == "FINISHED · diverged at epoch 3"


def test_a_group_whose_runs_all_diverged_has_no_mean_and_ranks_last():
    runs, histories = diverging_runs()
    histories.loc[histories["run_id"].str.startswith("lstm") & (histories["step"] == 5), "value"] = math.nan
    table = compare.group_summary(compare.summarize(histories, runs, "val_loss", "best"), runs, ["model.cell_type"])
    assert table["group"].tolist() == ["rnn", "lstm"]
    assert math.isnan(table["mean"].iloc[1]) and table["diverged"].iloc[1] == 3 and table["n"].iloc[1] == 0


def test_curves_leave_a_gap_where_a_run_diverged_and_legends_count_it():
    runs, histories = diverging_runs()
    curve = compare.curves(histories, runs, "val_loss", ["model.cell_type"], smoothing=0.5)
    diverged = curve[curve["run_id"] == "rnn1"].set_index("step")
    assert math.isnan(diverged.loc[3, "value"]) and math.isnan(diverged.loc[3, "smoothed"])  # a gap, not a 0
    band = compare.band(curve).set_index(["group", "step"])
    assert band.loc[("rnn", 3), "n"] == 2 and band.loc[("rnn", 1), "n"] == 3
    expected = np.mean(curve[(curve["group"] == "rnn") & (curve["step"] == 4)]["smoothed"])
    assert band.loc[("rnn", 4), "mean"] == pytest.approx(expected)
    figure = plots.curves_figure(curve, compare.band(curve), "val_loss", log_y=True)
    names = {trace.name for trace in figure.data}
    assert {"rnn (n=3, 1 diverged)", "lstm (n=3)"} <= names
    notice = compare.divergence_notice(runs, compare.diverged_at(runs, histories))
    assert notice.startswith("1 of 6 runs diverged") and "rnn-s1 (epoch 3)" in notice


def test_metric_vs_param_leaves_diverged_runs_out_of_its_means_and_says_so():
    runs, histories = diverging_runs()
    table = compare.metric_vs_param(compare.summarize(histories, runs, "val_loss", "best"), runs,
                                    "model.cell_type", None).set_index("x")
    assert table.loc["rnn", "n"] == 2 and table.loc["rnn", "diverged"] == 1 and np.isfinite(table.loc["rnn", "mean"])
    figure = plots.metric_vs_param_figure(table.reset_index(), "val_loss (best)", "model.cell_type", None)
    assert "diverged" in figure.data[0].hovertemplate


def test_a_log_axis_over_forty_decades_does_not_tick_every_decade():
    runs, histories = diverging_runs()
    curve = compare.curves(histories, runs, "val_loss", ["model.cell_type"])
    wide = plots.curves_figure(curve, compare.band(curve), "val_loss", log_y=True, show_runs=True)
    assert wide.layout.yaxis.dtick is None  # 1e-3 .. 1e40: plotly spaces the ticks
    narrow = curve[curve["run_id"] != "rnn1"]
    assert plots.curves_figure(narrow, compare.band(narrow), "val_loss", log_y=True).layout.yaxis.dtick == 1


def test_the_vanishing_table_says_diverged_for_a_run_that_diverged():
    flow_rows = [{"run_id": run_id, "run_name": run_id, "group": run_id[:-1], "probe": probe, "t": t,
                  "value": 0.5 ** (4 - t), "reach": 0}
                 for run_id in ("rnn0", "rnn1") for probe in (0, 1) for t in range(5)]
    table = compare.vanishing_table(pd.DataFrame(flow_rows), threshold=0.1,
                                    diverged=pd.Series({"rnn0": math.nan, "rnn1": 3.0}))
    shown = compare.vanishing_text(table).set_index("run_name")
    assert shown.loc["rnn1", "trained"] == "diverged" and shown.loc["rnn0", "trained"] == "4"
    assert shown.loc["rnn1", "at_init"] == "4"  # at initialisation it had not diverged yet


EXPLODES = {"task": {"name": "adding", "length": 12},
            "model": {"cell_type": "rnn", "units": 4, "recurrent_gain": 3.0},
            "training": {"epochs": 6, "steps_per_epoch": 3, "batch_size": 8, "num_validation_sequences": 16,
                         "optimizer": "sgd", "learning_rate": 10.0, "clipnorm": None, "probe_every": 0}}


@pytest.mark.slow
def test_training_stops_at_the_epoch_its_loss_stops_being_a_number():
    result = training.train(config.validate(EXPLODES))
    assert result.diverged_epoch == 4 and len(result.history) == 4  # of 6 epochs planned
    assert all(math.isfinite(logs["val_loss"]) for logs in result.history[:3])
    assert math.isnan(divergence.best_val_loss(result.history))


@pytest.mark.slow
def test_the_cli_logs_a_diverged_run_as_such_and_its_summary_says_so(sqlite_uri, cli_env, tmp_path):
    path = tmp_path / "explodes.yaml"
    path.write_text(config.ExperimentConfig.model_validate({**EXPLODES, "name": "explodes", "grid": {
        "training.clipnorm": [None, 1.0]}}).to_yaml())
    result = run_cli(["run", str(path), "--tracking-uri", sqlite_uri, "--quiet"], cli_env)
    assert result.returncode == 0, result.stderr
    assert "1 run(s) diverged (loss NaN or inf; left out of the means): rnn-full-s0-clipnorm=None (epoch 4)" in \
        result.stdout
    line = next(row for row in result.stdout.splitlines() if row.strip().startswith("rnn") and "None" in row)
    assert "diverged" in line and " 1 " in line
    runs = tracking.runs_frame(sqlite_uri, "explodes").set_index("run_name")
    diverged = runs.loc["rnn-full-s0-clipnorm=None"]
    assert diverged["status"] == "FINISHED" and diverged[f"tags.{divergence.TAG}"] == "4"
    assert math.isnan(diverged["metrics.best_val_loss"]) and math.isnan(diverged["metrics.val_loss"])
    clipped = runs.loc["rnn-full-s0-clipnorm=1.0"]
    assert math.isfinite(clipped["metrics.best_val_loss"]) and pd.isna(clipped.get(f"tags.{divergence.TAG}"))


def test_the_sweep_summary_leaves_diverged_seeds_out_of_the_mean_and_counts_them():
    base = config.validate({"task": {"name": "adding"}})
    results = [sweep.TrialResult("a", base.model_copy(update={"seed": 0}), {}, "FINISHED", 1 / 6,
                                 [{"val_loss": 0.2, "train_loss": 0.2}, {"val_loss": 0.1, "train_loss": 0.1}]),
               sweep.TrialResult("b", base.model_copy(update={"seed": 1}), {}, "FINISHED", 1 / 6,
                                 [{"val_loss": 0.05, "train_loss": 0.05}, {"val_loss": math.nan, "train_loss": 9.0}])]
    table = sweep.summary_table(results)
    assert table.loc[0, "runs"] == 2 and table.loc[0, "diverged"] == 1
    assert table.loc[0, "best_val_loss"] == pytest.approx(0.1)  # seed 1's 0.05 came before it diverged


def test_gradient_lag_curves_leave_a_diverged_runs_nan_norms_out_and_say_so():
    rows = [{"run_id": run_id, "run_name": run_id, "group": "rnn", "probe": 1, "t": t, "lag": 4 - t,
             "reach": 0, "value": math.nan if run_id == "rnn1" else 0.5 ** (4 - t)}
            for run_id in ("rnn0", "rnn1") for t in range(5)]
    band = compare.lag_band(pd.DataFrame(rows))
    assert band["n"].tolist() == [1] * 5 and band["diverged"].tolist() == [1] * 5
    np.testing.assert_allclose(band["mean"], 0.5 ** band["lag"])  # the other run's norms, not dragged to NaN
    figure = plots.gradient_lag_figure(band, "‖∂L_T/∂h_t‖")
    assert "rnn (n=2, 1 diverged)" in {trace.name for trace in figure.data}
