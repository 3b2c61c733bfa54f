"""Static reports (`rnnlab report`, the pages' "Export this view"): one HTML file, the page's numbers, no network,
nothing from the store rendered as markup."""

import json
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from conftest import run_cli
from rnnlib import tracking
from rnnlib.analysis import compare
from rnnlib.viz import plots, report, views

HOSTILE = "<script>alert(1)</script><a href='https://evil.example/x'>y</a>"


def chart_specs(text: str) -> list[dict]:
    """The plotly figures a report draws, decoded from its scripts."""
    return [json.loads(spec.replace("<\\/", "</").replace("<\\!--", "<!--"))
            for spec in re.findall(r"var f=(\{.*?\});Plotly\.newPlot", text)]


def write_report(uri, tmp_path, cli_env, *args):
    out = tmp_path / "out" / "report.html"
    result = run_cli(["report", "--experiment", "smoke", "--out", str(out), "--tracking-uri", uri, *args], cli_env)
    return result, out


def test_a_compare_report_holds_the_pages_charts_numbers_settings_and_provenance(fixture_store, tmp_path, cli_env):
    result, out = write_report(fixture_store, tmp_path, cli_env)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert not list(out.parent.glob("*.partial"))
    assert "Plotly.newPlot" in text and "Content-Security-Policy" in text
    assert "src=" not in text.split("<body>", 1)[1]  # nothing loaded from anywhere: plotly.js is inline

    runs = tracking.runs_frame(fixture_store, "smoke")
    trials = views.select_runs(runs, {})
    settings = views.compare_settings_from({}, trials)
    keys = views.history_keys(trials, settings)
    histories = tracking.metric_histories(fixture_store, trials["run_id"].tolist(), keys)
    view = views.compare_view(trials, histories, settings)
    for mean in view.groups["mean"]:  # the summary the page shows, to its 4 digits
        assert f">{mean:.4g}<" in text
    for run_id in trials["run_id"]:
        assert run_id in text
    assert trials["tags.mlflow.source.git.commit"].iloc[0] in text
    legends = {trace["name"] for trace in chart_specs(text)[0]["data"] if trace.get("showlegend") is not False}
    assert legends == {trace.name for trace in view.curves.data if trace.showlegend is not False}
    assert "gru · full (n=2)" in legends
    link = re.search(r"<code>(compare\?[^<]*)</code>", text).group(1)
    assert "experiment=smoke" in link and "group_by=model.label&amp;group_by=training.truncation" in link


def test_a_report_follows_the_link_it_is_given(fixture_store, tmp_path, cli_env):
    result, out = write_report(fixture_store, tmp_path, cli_env, "--link",
                               "http://127.0.0.1:8501/compare?experiment=smoke&band=se&group_by=model.label"
                               "&f.training.truncation=5&statistic=last")
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    curves = chart_specs(text)[0]
    names = {t["name"] for t in curves["data"] if t.get("showlegend") is not False}
    assert names == {"gru (n=2)", "lstm (n=2)", "rnn (n=2)"}  # grouped by cell, TBPTT(5) runs only
    assert "± 1 standard error" in curves["layout"]["title"]["text"]
    assert "val_loss (last) mean" in text and "f.training.truncation=5" in text


@pytest.mark.parametrize("args, message", [
    (["--metric", "accuracy"], "Unknown metric 'accuracy'; expected one of: val_loss, train_loss"),
    (["--link", "group_by=model.label&group_by=nope"], "Unknown group_by 'nope'"),
    (["--link", "sweep=0123abcd"], "No sweep '0123abcd'"),
    (["--link", "smoothing=lots"], "smoothing must be a number"),
])
def test_a_report_of_an_impossible_view_says_why_and_writes_nothing(fixture_store, tmp_path, cli_env, args, message):
    result, out = write_report(fixture_store, tmp_path, cli_env, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_report_of_a_missing_experiment_lists_the_ones_there(fixture_store, tmp_path, cli_env):
    out = tmp_path / "r.html"
    result = run_cli(["report", "--experiment", "nope", "--out", str(out), "--tracking-uri", fixture_store], cli_env)
    assert result.returncode == 2 and "experiments there: smoke" in result.stderr and not out.exists()


def test_a_gradient_flow_report_holds_the_lag_chart_and_the_vanishing_table(fixture_store, tmp_path, cli_env):
    result, out = write_report(fixture_store, tmp_path, cli_env, "--view", "gradients", "--link",
                               "quantity=loss_hidden&band=none")
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    specs = chart_specs(text)
    assert "vs lag" in specs[0]["layout"]["title"]["text"] and "no band" in specs[0]["layout"]["title"]["text"]
    assert "Where the gradient vanishes" in text and "lag after training" in text
    assert "Exploding gradients and clipping" in text and len(specs) == 3
    assert "What truncation does to the gradient" in text  # the bias meter, as on the page
    assert "gradients?experiment=smoke" in text


def test_nothing_from_the_store_is_markup_in_a_report():
    figure = plots.curves_figure(
        pd.DataFrame({"run_id": "a", "group": HOSTILE, "step": [1, 2], "value": [1.0, 0.5], "smoothed": [1.0, 0.5]}),
        pd.DataFrame({"group": HOSTILE, "step": [1, 2], "mean": [1.0, 0.5], "lower": [1.0, 0.5],
                      "upper": [1.0, 0.5], "n": 1}), "val_loss")
    runs = pd.DataFrame({"run_id": ["r1"], "run_name": [HOSTILE], "status": ["FINISHED"]})
    text = report.html_report(HOSTILE, [report.Section(HOSTILE, figure, pd.DataFrame({"name": [HOSTILE]}),
                                                       caption=HOSTILE, notice=HOSTILE)],
                              runs, {"experiment": [HOSTILE]}, "compare", {"runs": HOSTILE})
    body = text.split("<body>", 1)[1]
    assert "<script>alert" not in body and "<a href" not in body and "</script><a" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    names = [t["name"] for t in chart_specs(text)[0]["data"]]
    assert all("<" not in name for name in names)  # plotly would make <a href> a link: shown as text instead
    assert any("&lt;a href=" in name for name in names)


def test_plotly_gets_every_label_from_the_data_as_text_not_markup():
    fig = plots.plain_labels(go.Figure([
        go.Scatter(x=[HOSTILE, "b"], y=[1.0, 2.0], name=HOSTILE, text=[HOSTILE, "ok"]),
        go.Bar(x=["a"], y=np.array([1.0]), name="plain & simple"),
    ]))
    assert fig.data[0].name.startswith("&lt;script&gt;") and fig.data[0].x[0].startswith("&lt;script&gt;")
    assert fig.data[0].text[1] == "ok" and fig.data[1].name == "plain &amp; simple"
    assert list(fig.data[1].y) == [1.0]


def test_metric_vs_param_bars_follow_the_band_of_the_curves():
    runs = pd.DataFrame({"run_id": list("abcd"), "params.model.label": ["gru"] * 4,
                         "params.training.truncation": ["5", "5", "full", "full"]})
    per_run = pd.Series([1.0, 3.0, 2.0, 2.0], index=list("abcd"), name="val_loss")
    ranged = compare.metric_vs_param(per_run, runs, "training.truncation", "model.label", "range").set_index("x")
    assert ranged.loc["5", ["lower", "mean", "upper"]].tolist() == [1.0, 2.0, 3.0]
    t_interval = compare.metric_vs_param(per_run, runs, "training.truncation", "model.label", "ci95").set_index("x")
    assert t_interval.loc["5", "upper"] == pytest.approx(2.0 + 12.706 * np.sqrt(2) / np.sqrt(2), rel=1e-3)
    fig = plots.metric_vs_param_figure(ranged.reset_index(), "val_loss", "training.truncation", "model.label",
                                       band_name=compare.BANDS["range"])
    assert list(fig.data[0].error_y.array) == [1.0, 0.0] and "min–max" in fig.layout.title.text


def test_many_gradient_groups_split_into_one_panel_per_model():
    runs = pd.DataFrame([{"run_id": f"{c}{k}{s}", "params.model.label": c, "params.training.truncation": k,
                          "params.seed": str(s)} for c in ("gru", "lstm", "rnn") for k in ("5", "10", "20", "full")
                         for s in (0, 1)])
    group_by = ["model.label", "training.truncation"]
    assert views.default_panels(runs, group_by) == "model.label"  # 12 curves
    assert views.default_panels(runs[runs["params.training.truncation"] == "5"], group_by) == ""  # 3 curves
    panels = compare.panel_of(runs, group_by, "model.label")
    assert panels["lstm · 10"] == ("lstm", "10")
    band = pd.DataFrame([{"group": g, "lag": lag, "mean": 0.5 ** lag, "lower": 0.4 ** lag, "upper": 0.6 ** lag,
                          "n": 2, "diverged": 0} for g in panels for lag in range(3)])
    fig = plots.gradient_lag_figure(band, "‖∂L_T/∂h_t‖", panels=panels)
    assert [a.text for a in fig.layout.annotations][:3] == ["gru (n=2)", "lstm (n=2)", "rnn (n=2)"]
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["5", "10", "20", "full"]  # one entry per truncation, one color across the panels
    assert len({t.line.color for t in fig.data if t.name == "10"}) == 1 and len(fig.data) == 24
