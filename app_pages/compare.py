import streamlit as st

from rnnlib.analysis import compare
from rnnlib.viz import plots
from ui import compare_controls as controls
from ui import data, safe, scope

st.title("Compare runs")
st.caption("Cells and truncation lengths side by side: means over seeds with 95% confidence bands, the task's "
           "baseline drawn. Every setting is in the URL: copy it to share this exact view.")
uri = data.tracking_uri()
link = controls.open_link()

names = scope.experiment_names(uri, "No runs yet. Train something first.")

left, right = st.columns([1, 2])
with left:
    experiment = controls.experiment_picker(link, names)
with right:
    runs = controls.run_picker(link, data.runs(uri, experiment))
if runs.empty:
    link.stop("No run matches these filters.", show=st.warning)
metrics = data.metric_keys(runs)
if not metrics:
    link.stop("These runs have not logged an epoch yet; the charts appear with the first one.")
params = compare.param_names(runs)
group_by = controls.group_by_picker(link, runs)

st.subheader("Learning curves")
settings = controls.curve_settings(link, metrics, compare.default_band(runs, group_by))
summary_metrics = compare.summary_metrics(metrics, settings.metric)
histories = data.histories(uri, tuple(runs["run_id"]), tuple(summary_metrics))
diverged = compare.diverged_at(runs, histories)
curve = compare.curves(histories, runs, settings.metric, group_by, settings.smoothing, diverged)
notice = compare.divergence_notice(runs, diverged)
if notice:
    st.warning(notice, icon=":material/trending_up:")
baselines = compare.baselines(runs, settings.metric)
st.plotly_chart(
    plots.curves_figure(
        curve, compare.band(curve, settings.band), settings.metric,
        baselines=baselines, log_y=settings.log_y, show_runs=settings.show_runs,
        raw_band=compare.band(curve, settings.band, "value") if settings.smoothing > 0 else None,
        band_name=compare.BANDS[settings.band],
    ),
    width="stretch", key="compare_curves",
)

st.subheader("Summary")
statistic, step = controls.statistic_picker(link, int(histories["step"].max()) if not histories.empty else 1)
summary = compare.summary_table(histories, runs, summary_metrics, statistic, step, group_by, diverged)
per_run = summary.set_index("run_id")[settings.metric]
st.dataframe(compare.group_summary(per_run, runs, group_by), hide_index=True, width="stretch",
             column_config={"group": "group", "mean": f"{settings.metric} ({statistic}) mean",
                            "n": "runs in the mean", "diverged": "runs diverged"})
with st.expander(f"Per run ({len(summary)})"):
    st.dataframe(summary, hide_index=True, width="stretch")

st.subheader("Metric vs hyperparameter")
x_param, line_param = controls.hyperparameter_pickers(link, params, compare.varying_params(runs))
st.plotly_chart(
    plots.metric_vs_param_figure(compare.metric_vs_param(per_run, runs, x_param, line_param),
                                 f"{settings.metric} ({statistic})", x_param, line_param,
                                 baselines=baselines, log_y=settings.log_y),
    width="stretch", key="compare_vs_param",
)

st.subheader("Params that differ")
differences = compare.diff_params(runs)
st.dataframe(differences, hide_index=True, width="stretch")
table = safe.csv_safe(differences.merge(summary, on=["run_id", "run_name"]))  # no formulas for a spreadsheet
st.download_button("Download as CSV", table.to_csv(index=False), file_name=f"{experiment}-runs.csv", mime="text/csv")

st.subheader("Parallel coordinates")
table, dimensions = compare.parallel_table(differences, summary, summary_metrics)
st.plotly_chart(plots.parallel_coordinates_figure(table, dimensions, settings.metric), width="stretch",
                key="compare_parallel")

link.save()
