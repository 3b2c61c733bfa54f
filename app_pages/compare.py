import streamlit as st

from rnnlib.analysis import compare, verdicts
from rnnlib.viz import views
from ui import compare_controls as controls
from ui import data, report_button, safe, scope

st.title("Compare runs")
st.caption("Cells and truncation lengths side by side: the mean of each group of runs with its spread (the band "
           "is yours to pick), the task's baseline drawn. Every setting is in the URL: copy it to share this exact "
           "view, or export it as one HTML file that opens anywhere, offline.")
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
metrics = compare.metric_keys(runs)
if not metrics:
    link.stop("These runs have not logged an epoch yet; the charts appear with the first one.")
params = compare.param_names(runs)
group_by = controls.group_by_picker(link, runs)

# Widgets first, each above the place its output goes; then one view of everything (`views.compare_view`), the
# same one an exported report writes.
st.subheader("Learning curves")
curve_settings = controls.curve_settings(link, metrics, compare.default_band(runs, group_by))
curves_slot = st.container()
keys = views.history_keys(runs, views.CompareSettings(metric=curve_settings.metric))
histories = data.histories(uri, tuple(runs["run_id"]), tuple(keys))

st.subheader("Summary")
statistic, step = controls.statistic_picker(link, int(histories["step"].max()) if not histories.empty else 1)
summary_slot = st.container()

st.subheader("Verdicts")
interval, width = controls.verdict_settings(link)
verdicts_slot = st.container()

st.subheader("Metric vs hyperparameter")
x_param, line_param = controls.hyperparameter_pickers(link, params, compare.varying_params(runs))
vs_param_slot = st.container()

settings = views.CompareSettings(
    metric=curve_settings.metric, group_by=tuple(group_by), band=curve_settings.band,
    smoothing=curve_settings.smoothing, log_y=curve_settings.log_y, show_runs=curve_settings.show_runs,
    statistic=statistic, step=step, x_param=x_param, line_param=line_param, interval=interval, width=width,
)
view = views.compare_view(runs, histories, settings)

with curves_slot:
    if view.notice:
        st.warning(view.notice, icon=":material/trending_up:")
    st.plotly_chart(view.curves, width="stretch", key="compare_curves")
with summary_slot:
    st.dataframe(view.groups, hide_index=True, width="stretch", column_config=views.group_columns(settings))
    with st.expander(f"Per run ({len(view.per_run)})"):
        st.dataframe(view.per_run, hide_index=True, width="stretch",
                     column_config={"run_id": st.column_config.TextColumn(width="small"),
                                    **{column: st.column_config.Column(help=meaning)
                                       for column, meaning in compare.MACHINE_HELP.items()}})
with verdicts_slot:
    if view.verdicts.empty:
        st.info("A verdict needs two groups with at least two runs each that did not diverge.")
    else:
        st.markdown("\n".join(f"- {safe.text(text)}" for text in verdicts.headlines(view.verdicts)))
        st.dataframe(view.verdicts.drop(columns="verdict"), hide_index=True, width="stretch",
                     column_config=views.VERDICT_COLUMNS)
        st.caption(f"{settings.metric} ({settings.statistic_name}) per run; the better group first. p is Welch's "
                   "two-sided test, corrected by Holm for the pairs shown; a verdict needs p (Holm) < 0.05 and "
                   "an interval that excludes 0.")
with vs_param_slot:
    st.plotly_chart(view.vs_param, width="stretch", key="compare_vs_param")

st.subheader("Params that differ")
st.dataframe(view.differences, hide_index=True, width="stretch")
left, right = st.columns([1, 4])
report_button.csv(left, view.table, f"{experiment}-runs.csv")
report_button.compare(right, experiment, runs, histories, settings, controls.selection(link))

st.subheader("Parallel coordinates")
st.plotly_chart(view.parallel, width="stretch", key="compare_parallel")

link.save()
