import re

import streamlit as st

from rnnlib.core import config
from rnnlib.run import jobs
from ui import data, jobs_panel, mode, safe, scope, train_form
from ui.permalink import Permalink

uri = data.tracking_uri()
if mode.read_only():
    st.title("Reproduce a run")
    st.caption("This lab is read-only: it trains nothing. Every run logged its resolved config; with it and "
               "the `rnnlab` command from this project's repository, the same run trains on your machine.")
    link = Permalink("reproduce_")
    left, right = st.columns([1, 2])
    experiment, runs = scope.experiment_runs(link, uri, "No runs yet in this store.", scope.training_runs,
                                             "This experiment has no training runs.", widget=left.selectbox)
    run_id = link.choice("Run", "run", runs["run_id"].tolist(), widget=right.selectbox,
                         format_func=scope.run_label(runs))
    run_config = data.run_config(uri, run_id, scope.run_label(runs))
    if run_config is None:
        link.stop("Pick another run: this one's config cannot be read.")
    file_name = re.sub(r"[^\w.-]+", "_", run_config.name) + ".yaml"
    st.markdown(f"Save this as `{file_name}`:")
    st.code(run_config.to_yaml(), language="yaml")
    st.markdown("then, in a checkout of the project (`bash scripts/test.sh` installs it):")
    st.code(f"rnnlab run {file_name}", language="bash")
    link.save()
    st.stop()

st.title("Train")
st.caption("Pick a task, the cells and truncations to compare, and start: training runs in a background "
           "process, logs every epoch to the store, and survives reloads. Cancelled runs end KILLED.")
build, upload, edit = st.tabs(["Build an experiment", "Your own series (CSV)", "From a YAML file"])
with build:
    raw = train_form.builder(uri)
with upload:
    raw = train_form.from_csv() or raw
submitted = (lambda: config.validate(raw, source="the form")) if raw is not None else None
with edit:
    picked = train_form.from_yaml()
    if picked is not None:
        submitted = lambda: config.parse_config(picked[1], source=f"{picked[0]}.yaml", default_name=picked[0])  # noqa: E731

if submitted is not None:
    try:
        experiment = submitted()
        jobs.check_dashboard_limits(experiment)
    except config.ConfigError as error:
        st.error(train_form.config_error_message(error), icon=":material/block:")
    else:
        estimated = train_form.launch_estimate(experiment, uri)
        job = jobs.launch(experiment, uri, estimated)
        data.refresh()
        ahead = [other for other in jobs.list_jobs() if other.running and other.job_id != job.job_id]
        verb = (f"Queued behind {len(ahead)} job(s) ({jobs.max_jobs()} train at once)"
                if len(ahead) >= jobs.max_jobs() else "Started")
        st.success(f"{verb}: **{safe.text(experiment.name)}**, {safe.text(config.describe_grid(experiment))}: "
                   f"{safe.text(estimated.describe())}. Progress below, with the time left from the first epoch "
                   "on; results on the Compare page as epochs come in.", icon=":material/rocket_launch:")

st.subheader("Jobs")
jobs_panel.show(uri)
