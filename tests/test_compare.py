"""Comparison statistics, figures and permalinks on small hand-made frames (and one real store)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rnnlib import tracking
from rnnlib.analysis import compare
from rnnlib.viz import plots
from ui import permalink


def make_runs():
    rows = []
    for cell in ("rnn", "lstm"):
        for trunc in ("5", "full"):
            for seed in (0, 1, 2):
                rows.append({"run_id": f"{cell}-{trunc}-{seed}", "run_name": f"{cell}-{trunc}-s{seed}",
                             "status": "FINISHED", "params.model.cell_type": cell,
                             "params.training.truncation": trunc, "params.seed": str(seed),
                             "params.task.name": "adding", "metrics.baseline": 1 / 6})
    return pd.DataFrame(rows)


def make_histories(runs):
    rows = []
    for run_id in runs["run_id"]:
        cell, trunc, seed = run_id.split("-")
        level = {"rnn": 0.16, "lstm": 0.01}[cell] * (2 if trunc == "5" else 1)
        for step in range(1, 6):
            rows.append((run_id, "val_loss", step, level * (1 + int(seed) * 0.1) / step))
            rows.append((run_id, "val_copy_accuracy", step, 0.1 * step + int(seed) * 0.01))
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])


def debiased_ema(values, weight):
    """TensorBoard's smoothing, written out: y_t = w y_{t-1} + (1 - w) x_t over the same recursion on ones."""
    smoothed, last, norm = [], 0.0, 0.0
    for value in values:
        last, norm = weight * last + (1 - weight) * value, weight * norm + (1 - weight)
        smoothed.append(last / norm)
    return np.array(smoothed)


def test_smoothing_is_a_debiased_ema_per_run_and_zero_weight_is_identity():
    runs = make_runs()
    histories = make_histories(runs)
    raw = compare.curves(histories, runs, "val_loss", [], smoothing=0.0)
    np.testing.assert_array_equal(raw["smoothed"], raw["value"])
    curve = compare.curves(histories, runs, "val_loss", [], smoothing=0.6)
    for _, run in curve.groupby("run_id"):  # the vectorised smoothing of the page is this EMA, run by run
        np.testing.assert_allclose(run["smoothed"], debiased_ema(run["value"].to_numpy(), 0.6))
        assert run["smoothed"].iloc[0] == run["value"].iloc[0]  # debiased: no pull towards zero at the start


def test_confidence_band_is_the_student_t_interval_over_seeds():
    runs = make_runs()
    curve = compare.curves(make_histories(runs), runs, "val_loss", ["model.cell_type", "training.truncation"])
    band = compare.band(curve, "ci95", "value")
    row = band[(band["group"] == "lstm · full") & (band["step"] == 1)].iloc[0]
    seeds = np.array([0.01, 0.011, 0.012])
    half = stats.t.ppf(0.975, 2) * seeds.std(ddof=1) / np.sqrt(3)
    assert row["n"] == 3 and row["mean"] == pytest.approx(seeds.mean())
    assert (row["lower"], row["upper"]) == pytest.approx((seeds.mean() - half, seeds.mean() + half))
    assert set(band["group"]) == {"rnn · 5", "rnn · full", "lstm · 5", "lstm · full"}


def test_grouping_by_fewer_params_pools_the_runs():
    runs = make_runs()
    curve = compare.curves(make_histories(runs), runs, "val_loss", ["model.cell_type"])
    band = compare.band(curve)
    assert set(band["group"]) == {"rnn", "lstm"} and band["n"].max() == 6
    assert set(compare.band(compare.curves(make_histories(runs), runs, "val_loss", []))["group"]) == {
        "all runs"}


def test_summaries_best_last_and_at_step_respect_the_metric_direction():
    runs = make_runs()
    histories = make_histories(runs)
    best = compare.summarize(histories, runs, "val_loss", "best")
    last = compare.summarize(histories, runs, "val_loss", "last")
    at_two = compare.summarize(histories, runs, "val_loss", "at_step", 2)
    assert best["lstm-full-0"] == pytest.approx(0.01 / 5) == last["lstm-full-0"]
    assert at_two["lstm-full-0"] == pytest.approx(0.01 / 2)
    accuracy = compare.summarize(histories, runs, "val_copy_accuracy", "best")
    assert accuracy["rnn-5-2"] == pytest.approx(0.52)  # higher is better for accuracies
    with pytest.raises(ValueError, match="expected one of: best, last, at_step"):
        compare.summarize(histories, runs, "val_loss", "median")


def test_group_summary_ranks_groups_best_first():
    runs = make_runs()
    per_run = compare.summarize(make_histories(runs), runs, "val_loss", "best")
    table = compare.group_summary(per_run, runs, ["model.cell_type", "training.truncation"])
    assert table["group"].tolist() == ["lstm · full", "lstm · 5", "rnn · full", "rnn · 5"]
    assert table["n"].tolist() == [3, 3, 3, 3] and (table["ci"] > 0).all()


def test_metric_vs_param_orders_numbers_then_words_and_draws_one_line_per_cell():
    runs = make_runs()
    per_run = compare.summarize(make_histories(runs), runs, "val_loss", "best")
    table = compare.metric_vs_param(per_run, runs, "training.truncation", "model.cell_type")
    assert table[table["line"] == "lstm"]["x"].tolist() == ["5", "full"]
    fig = plots.metric_vs_param_figure(table, "val_loss", "training.truncation", "model.cell_type",
                                       baselines={"baseline": 1 / 6})
    assert {trace.name for trace in fig.data} == {"lstm", "rnn"}
    assert list(fig.layout.xaxis.categoryarray) == ["5", "full"]
    assert fig.layout.shapes[0].y0 == pytest.approx(1 / 6)  # the baseline line
    assert all(trace.error_y.array is not None for trace in fig.data)


def test_the_truncation_meters_reference_is_full_bptt_and_a_loss_keeps_its_baseline():
    runs = make_runs()
    assert compare.baselines(runs, "trunc_cosine") == {"full BPTT": 1.0}
    assert compare.baselines(runs, "trunc_variance") == {"full BPTT": 0.0}
    assert compare.baselines(runs, "val_loss") != {"full BPTT": 0.0}
    assert compare.baselines(runs, "trunc_other") == {}


def test_diff_params_keeps_only_what_differs():
    runs = make_runs()
    runs["params.training.truncation.mode"] = runs["params.training.truncation"].map({"5": "tbptt", "full": "full"})
    table = compare.diff_params(runs)
    assert list(table.columns) == ["run_name", "run_id", "model.cell_type", "training.truncation", "seed"]
    assert len(table) == 12


def test_bands_are_the_named_spread_of_each_groups_runs_and_min_max_is_the_default_at_few_runs():
    runs = make_runs()
    curve = compare.curves(make_histories(runs), runs, "val_loss", ["model.cell_type"])
    step = curve[(curve["group"] == "lstm") & (curve["step"] == 2)]["smoothed"].to_numpy()
    rows = {kind: compare.band(curve, kind).set_index(["group", "step"]).loc[("lstm", 2)] for kind in compare.BANDS}
    assert rows["range"]["lower"] == step.min() and rows["range"]["upper"] == step.max()
    assert rows["std"]["upper"] - rows["std"]["mean"] == pytest.approx(step.std(ddof=1))
    assert rows["se"]["upper"] - rows["se"]["mean"] == pytest.approx(step.std(ddof=1) / np.sqrt(len(step)))
    assert rows["ci95"]["upper"] - rows["ci95"]["mean"] == pytest.approx(
        stats.t.ppf(0.975, len(step) - 1) * step.std(ddof=1) / np.sqrt(len(step)))
    assert rows["none"]["lower"] == rows["none"]["upper"] == rows["none"]["mean"] == pytest.approx(step.mean())
    assert compare.default_band(runs, ["model.cell_type"]) == "ci95"  # 6 runs per group
    assert compare.default_band(runs, ["model.cell_type", "training.truncation"]) == "range"  # 3 per group
    with pytest.raises(ValueError, match="Unknown band 'iqr'; expected one of: ci95, se, std, range, none"):
        compare.band(curve, "iqr")


def test_the_y_axis_fits_the_curves_not_a_wide_band():
    runs = make_runs()
    curve = compare.curves(make_histories(runs), runs, "val_loss", ["model.cell_type"])
    band = compare.band(curve, "ci95").assign(lower=-50.0, upper=50.0)  # a band far wider than the curves
    low, high = plots.curves_figure(curve, band, "val_loss").layout.yaxis.range
    assert band["mean"].min() > low > -0.1 and band["mean"].max() < high < 0.5
    low, high = plots.curves_figure(curve, band, "val_loss", show_runs=True).layout.yaxis.range
    assert curve["smoothed"].min() > low > -0.1 and curve["smoothed"].max() < high < 0.5  # the seeds drawn fit too
    log_low, log_high = plots.curves_figure(curve, band, "val_loss", log_y=True).layout.yaxis.range
    assert 10**log_low < band["mean"].min() and 10**log_high > band["mean"].max() and log_high < 1


def test_compare_groups_by_what_varies_by_default_and_never_by_seed():
    runs = make_runs()
    runs["params.model.label"] = runs["params.model.cell_type"]
    assert compare.default_group_by(runs) == ["model.label", "training.truncation"]  # the label stands for the cell
    one_cell = runs[runs["params.model.cell_type"] == "lstm"]
    assert compare.default_group_by(one_cell) == ["training.truncation"]
    assert compare.default_group_by(one_cell[one_cell["params.training.truncation"] == "5"]) == []


def test_filters_keep_matching_runs():
    runs = make_runs()
    kept = compare.filter_runs(runs, {"model.cell_type": ["lstm"], "seed": ["0", "1"]})
    assert sorted(kept["run_id"]) == ["lstm-5-0", "lstm-5-1", "lstm-full-0", "lstm-full-1"]


def test_curves_figure_has_a_band_mean_and_optional_seeds_per_group():
    runs = make_runs()
    curve = compare.curves(make_histories(runs), runs, "val_loss", ["model.cell_type"], smoothing=0.5)
    band = compare.band(curve)
    plain = plots.curves_figure(curve, band, "val_loss", baselines={"baseline": 1 / 6})
    names = [trace.name for trace in plain.data]
    assert "lstm (n=6)" in names and "rnn (n=6)" in names and "lstm 95% confidence band" in names
    detailed = plots.curves_figure(curve, band, "val_loss", show_runs=True, log_y=True,
                                   raw_band=compare.band(curve, "ci95", "value"))
    assert len(detailed.data) == len(plain.data) + 4  # seeds and raw shadow for both groups
    assert detailed.layout.yaxis.type == "log"
    band_trace = next(t for t in detailed.data if t.name == "lstm 95% confidence band")
    assert min(v for v in band_trace.y if v is not None) > 0  # clipped for the log axis


def test_parallel_coordinates_encode_text_params_as_categories():
    runs = make_runs()
    histories = make_histories(runs)
    summary = compare.summary_table(histories, runs, ["val_loss", "val_copy_accuracy"], "best", None,
                                    ["model.cell_type"])
    table, dims = compare.parallel_table(compare.diff_params(runs), summary, ["val_loss", "val_copy_accuracy"])
    fig = plots.parallel_coordinates_figure(table, dims, "val_loss")
    labels = [d.label for d in fig.data[0].dimensions]
    assert labels == ["model.cell_type", "training.truncation", "seed", "val_loss", "val_copy_accuracy"]
    assert list(fig.data[0].dimensions[1].ticktext) == ["5", "full"]


def test_settings_round_trip_through_the_url_encoding_and_defaults_stay_out():
    settings = {"experiment": "adding_cells", "group_by": ["model.label", "seed"], "smoothing": 0.6,
                "log_y": True, "show_runs": False, "step": 7, "f.seed": ["0", "1"], "selected": []}
    defaults = {"group_by": ["model.label", "training.truncation"], "smoothing": 0.0, "log_y": False,
                "show_runs": False, "step": 1}
    query = permalink.query_of(settings, defaults)
    assert query == {"experiment": ["adding_cells"], "group_by": ["model.label", "seed"], "smoothing": ["0.6"],
                     "log_y": ["1"], "step": ["7"], "f.seed": ["0", "1"], "selected": [""]}  # a key per list item
    assert permalink.query_of(defaults, defaults) == {}
    assert permalink.query_of({"group_by": []}, defaults) == {"group_by": [""]}  # none, not the default
    assert permalink.list_values(query["group_by"], ["seed", "model.label"]) == (["model.label", "seed"], [])


def test_old_comma_joined_lists_read_like_repeated_keys_and_unknown_values_are_named():
    options = ["model.label", "training.truncation", "seed", "task.targets"]
    assert permalink.list_values(["model.label,seed"], options) == (["model.label", "seed"], [])
    assert permalink.list_values(["seed", "seed,model.colour"], options) == (["seed"], ["model.colour"])
    assert permalink.list_values(["['a', 'b']"], ["['a', 'b']", "a"]) == (["['a', 'b']"], [])  # a value with a comma
    assert permalink.matching_option("1", [0, 1]) == 1 and permalink.matching_option("x", [0, 1]) is None


def test_bulk_histories_from_a_real_store_match_per_run_histories(fixture_store):
    runs = tracking.runs_frame(fixture_store, "smoke")
    trials = runs[runs["kind"] == "trial"]
    assert len(trials) == 12 and (runs["kind"] == "sweep").sum() == 1
    history = tracking.metric_histories(fixture_store, trials["run_id"].tolist(), ["val_loss", "train_loss"])
    assert len(history) == 12 * 3 * 2
    from mlflow.tracking import MlflowClient

    one = trials["run_id"].iloc[0]
    expected = [m.value for m in sorted(MlflowClient(fixture_store).get_metric_history(one, "val_loss"),
                                        key=lambda m: m.step)]
    got = history[(history["run_id"] == one) & (history["key"] == "val_loss")]["value"].tolist()
    assert got == expected
    assert compare.baseline(trials) == pytest.approx(1 / 6)


def test_groups_are_ordered_naturally_in_legends_and_axes():
    band = pd.DataFrame({"group": ["full", "10", "5", "25"], "step": [1] * 4, "mean": [0.1] * 4,
                         "lower": [0.1] * 4, "upper": [0.1] * 4, "n": [1] * 4})
    fig = plots.curves_figure(pd.DataFrame(columns=["group", "run_id", "step", "smoothed"]), band, "val_loss")
    means = [t.name for t in fig.data if t.name.endswith("(n=1)")]
    assert means == ["5 (n=1)", "10 (n=1)", "25 (n=1)", "full (n=1)"]
    assert sorted(["lstm · full", "lstm · 10", "gru · 5"], key=compare.group_sort_key) == [
        "gru · 5", "lstm · 10", "lstm · full"]


def make_flows(runs, length=10):
    """Synthetic gradient-flow records: norm = decay ** lag, the decay set by cell; TBPTT(5) zero beyond 5 steps."""
    from rnnlib.core.records import GradientFlow

    flows = {}
    for _, run in runs.iterrows():
        cell, truncation = run["params.model.cell_type"], run["params.training.truncation"]
        flow = GradientFlow.empty(cell, 1, length, truncation)
        lags = np.arange(length)[::-1]
        for step, decay in ((0, 0.5), (10, {"rnn": 0.1, "lstm": 0.9}[cell])):
            norms = decay ** lags.astype(float)
            reach = 0 if truncation == "full" else length - 5
            norms[:reach] = 0.0
            flow.append(step, step / 5, reach, 1.0,
                        {q: np.broadcast_to(norms, (1, length)).copy() for q in flow.norms})
        flows[run["run_id"]] = flow
    return flows


def test_flow_curves_and_at_epoch_pick_each_runs_probe():
    runs = make_runs()
    curves = compare.flow_curves(make_flows(runs), runs, ["model.cell_type"], "loss_hidden")
    assert len(curves) == 12 * 2 * 10 and set(curves["group"]) == {"rnn", "lstm"}
    assert set(compare.at_epoch(curves, None)["epoch"]) == {2.0}
    assert set(compare.at_epoch(curves, 0.3)["epoch"]) == {0.0}
    cells = compare.flow_curves(make_flows(runs), runs, ["model.cell_type"], "loss_cell")
    assert set(cells["group"]) == {"lstm"}  # only LSTMs have a cell state


def test_lag_band_is_the_geometric_mean_and_ends_where_truncation_cuts():
    runs = make_runs()
    curves = compare.at_epoch(compare.flow_curves(make_flows(runs), runs, ["model.cell_type", "training.truncation"],
                                                  "loss_hidden"), None)
    band = compare.lag_band(curves).set_index(["group", "lag"])
    assert band.loc[("rnn · full", 3), "mean"] == pytest.approx(0.1**3)
    assert band.loc[("lstm · full", 9), "mean"] == pytest.approx(0.9**9)
    assert band.xs("lstm · 5", level="group").index.max() == 4  # zeros beyond the window are not averaged in
    overlay = compare.lag_overlay(curves, suffix="trained")
    assert set(overlay["label"]) >= {"rnn · full (trained)"}
    assert overlay.loc[overlay["lag"] == 0, "value"].tolist() == pytest.approx([1.0] * 4)


def test_vanishing_table_finds_the_first_lag_below_a_thousandth():
    runs = make_runs()
    curves = compare.flow_curves(make_flows(runs), runs, ["model.cell_type", "training.truncation"], "loss_hidden")
    table = compare.vanishing_table(curves)
    rnn = table[table["group"] == "rnn · full"]
    assert np.isinf(rnn["at_init"]).all()  # 0.5 ** 9 = 0.002: still above 1e-3 at the first step
    assert rnn["trained"].tolist() == [4.0] * 3  # 0.1 ** 4 = 1e-4 < 1e-3, 0.1 ** 3 = 1e-3 is not below
    summary = compare.vanishing_summary(table).set_index("group")
    assert summary.loc["lstm · full", "trained"] == "never (> 9)" and summary.loc["lstm · 5", "trained"] == "5"


def test_clip_threshold_is_the_shared_clipnorm_only():
    runs = make_runs().assign(**{"params.training.clipnorm": "1.0"})
    assert compare.clip_threshold(runs) == 1.0
    runs.loc[0, "params.training.clipnorm"] = "None"
    assert compare.clip_threshold(runs) == 1.0  # runs without clipping do not set a threshold
    runs.loc[1, "params.training.clipnorm"] = "5.0"
    assert compare.clip_threshold(runs) is None


def test_gradient_figures_use_a_log_axis_and_mark_the_truncation_window():
    runs = make_runs()
    curves = compare.flow_curves(make_flows(runs), runs, ["model.cell_type"], "loss_hidden")
    fig = plots.gradient_lag_figure(compare.lag_band(compare.at_epoch(curves, None)), "‖∂L_T/∂h_t‖",
                                    reference=compare.lag_band(compare.at_epoch(curves, 0.0)))
    assert fig.layout.yaxis.type == "log"
    names = {t.name for t in fig.data}
    assert {"rnn (n=6)", "lstm (n=6)", "rnn at initialisation"} <= names
    truncated = curves[curves["run_id"] == "lstm-5-0"]
    heatmap = plots.gradient_heatmap_figure(truncated, "‖∂L_T/∂h_t‖")
    z = np.array(heatmap.data[0].z, dtype=float)
    assert np.isnan(z[:, :5]).all() and np.isfinite(z[:, 5:]).all()  # no gradient: blank, not log10(0)
    assert list(heatmap.data[1].x) == [4.5, 4.5]
    probes = sorted(truncated["epoch"].unique())
    labels = ["init" if e == 0 else f"{e:g}" for e in probes]
    assert len(probes) > 1 and list(heatmap.data[0].y) == labels and list(heatmap.data[1].y) == labels
    assert heatmap.layout.yaxis.type == "category"  # one row per probe, equally tall, however far apart
    assert list(heatmap.layout.yaxis.categoryarray) == labels
    full = plots.gradient_heatmap_figure(curves[curves["run_id"] == "lstm-full-0"], "‖∂L_T/∂h_t‖")
    assert len(full.data) == 1


def test_gradient_lag_axis_fits_the_means_not_a_wide_band():
    band = pd.DataFrame({"group": "rnn", "lag": [0, 1, 2], "mean": [1.0, 1e-3, 1e-6],
                         "lower": [1e-40, 1e-40, 1e-40], "upper": [1e5, 1e5, 1e5], "n": 3})
    fig = plots.gradient_lag_figure(band, "‖∂L_T/∂h_t‖")
    assert list(fig.layout.yaxis.range) == [-6.5, 0.5]


def test_float32_underflow_counts_as_tiny_not_missing_but_truncation_is_missing():
    curves = pd.DataFrame({"run_id": ["a", "a", "b", "b", "c", "c"], "group": "rnn", "t": [0, 1] * 3,
                           "lag": [1, 0] * 3, "reach": [0, 0, 0, 0, 1, 1],
                           "value": [0.0, 1.0, 1e-20, 1.0, 0.0, 1.0]})
    band = compare.lag_band(curves).set_index("lag")
    assert band.loc[1, "n"] == 2  # run c's zero is truncation: left out; run a's is underflow: kept at the floor
    assert band.loc[1, "mean"] == pytest.approx(np.sqrt(compare.FLOAT32_FLOOR * 1e-20), rel=1e-6)


def test_a_diverged_run_reads_diverged_not_never():
    curves = pd.DataFrame({"run_id": "a", "run_name": "a", "group": "rnn · none", "probe": [0, 0, 1, 1],
                           "t": [0, 1, 0, 1], "value": [1e-5, 1.0, np.nan, 1.0]})
    table = compare.vanishing_table(curves)
    assert table["at_init"].item() == 1 and np.isnan(table["trained"].item())
    summary = compare.vanishing_summary(table)
    assert summary["trained"].item() == "diverged"


def test_unset_params_group_as_none_and_a_bare_value_carries_its_param_name():
    runs = make_runs().assign(**{"params.training.clipnorm": ["", "1.0"] * 6})
    assert set(compare.group_labels(runs, ["training.clipnorm"])) == {"clipnorm=none", "clipnorm=1.0"}
    assert set(compare.group_labels(runs, ["model.cell_type", "training.truncation"])) == {
        "lstm · 5", "lstm · full", "rnn · 5", "rnn · full"}  # these name themselves


def test_gates_figure_draws_few_inputs_as_lines_and_many_as_a_heatmap():
    tidy = pd.DataFrame({"quantity": "h", "t": np.repeat(np.arange(3), 2), "unit": np.tile([0, 1], 3),
                         "value": np.linspace(-1, 1, 6)})
    few = plots.gates_figure(tidy, pd.DataFrame({"value": [0.1, 0.2, 0.3], "mask": [0, 1, 0]}), ["h"], "t")
    assert [t.type for t in few.data] == ["scatter", "scatter", "heatmap"]
    many = plots.gates_figure(tidy, pd.DataFrame(np.eye(3, 8), columns=[f"c{i}" for i in range(8)]), ["h"], "t")
    assert [t.type for t in many.data] == ["heatmap", "heatmap"] and np.asarray(many.data[0].z).shape == (8, 3)


def test_gates_figure_writes_symbol_inputs_out_as_text():
    tidy = pd.DataFrame({"quantity": "h", "t": [0, 1, 2], "unit": 0, "value": [0.1, 0.2, 0.3]})
    fig = plots.gates_figure(tidy, pd.DataFrame({"character": ["a", " ", "\n"]}), ["h"], "t")
    assert fig.data[0].mode == "text" and list(fig.data[0].text) == ["a", "␣", "⏎"]


def test_the_machine_table_shows_each_runs_seconds_and_the_readings_any_run_has_each_column_explained():
    runs = pd.DataFrame({
        "run_id": ["a", "b"],
        "start_time": pd.to_datetime(["2026-01-01 10:00:00", "2026-01-01 10:00:00"]),
        "end_time": pd.to_datetime(["2026-01-01 10:00:12.34", None]),  # b still runs
        "metrics.system/process_cpu_utilization_percentage": [98.76, 51.0],
        "metrics.system/cpu_utilization_percentage": [100.0, 100.0],  # two runs at once: the machine is full
        "metrics.system/gpu_0_utilization_percentage": [np.nan, np.nan],  # no GPU: the column is left out
        "tags.rnnlib.executor": ["processes", None],
    })
    table = compare.machine_table(runs)
    assert list(table.columns) == ["run_id", "seconds", "run CPU %", "machine CPU %", "executor"]
    assert table["seconds"].iloc[0] == 12.3 and np.isnan(table["seconds"].iloc[1])
    assert table["run CPU %"].tolist() == [98.8, 51.0]
    assert table["executor"].tolist() == ["processes", ""]
    assert set(compare.MACHINE_HELP) == {column for column, _, _ in compare.MACHINE_COLUMNS}
    assert all(compare.MACHINE_HELP.values())
