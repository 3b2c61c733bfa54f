import streamlit as st

from rnnlib import tasks
from rnnlib.analysis import compare
from ui import data, prediction_views, safe, scope
from ui.permalink import Permalink

st.title("Predictions")
st.caption("What trained models answer on held-out data, next to the truth: forecasts and k-step rollouts, "
           "confusion matrices, generated sequences, translations, sampled text. One run, or several side by side.")
uri = data.tracking_uri()
link = Permalink("predictions_")

left, right = st.columns([1, 2])
experiment, runs = scope.experiment_runs(
    link, uri, "No runs yet. Train something first: every run logs its predictions.", scope.finished_runs,
    "No finished run in this experiment: a run logs its predictions when it ends.", widget=left.selectbox)
labels = scope.run_label(runs)
run_ids = link.choices("Runs", "runs", runs["run_id"].tolist(), default=scope.best_runs(runs, 1),
                       widget=right.multiselect, format_func=labels, placeholder="pick one or more runs")
if not run_ids:
    link.stop("Pick one or more runs.")
configs = data.run_configs(uri, run_ids, labels)
run_ids = [r for r in run_ids if r in configs]
if not run_ids:
    link.stop("None of the chosen runs can be read by this version of the lab; pick others.")
chosen = runs[runs["run_id"].isin(run_ids)]
first = configs[run_ids[0]].task
mismatched = [labels(r) for r in run_ids if configs[r].task != first]
if mismatched:
    st.warning(f"{safe.text(', '.join(mismatched))} trained on a different task setting than the first run; "
               "showing the runs that match it.", icon=":material/rule:")
    run_ids = [r for r in run_ids if configs[r].task == first]
task = tasks.build(first)
arrays = data.predictions(uri, tuple(run_ids), labels)
run_ids = [r for r in run_ids if r in arrays]
chosen = chosen[chosen["run_id"].isin(run_ids)]
varying = compare.default_group_by(chosen)  # what tells the runs apart, model first
prediction_views.VIEWS[task.prediction_view](prediction_views.Selection(
    uri=uri, task=task, run_ids=run_ids, configs=configs, arrays=arrays,
    labels={r: labels(r) for r in run_ids},
    groups=dict(zip(chosen["run_id"], compare.group_labels(chosen, varying or ["model.label"]))),
    link=link,
))
link.save()
