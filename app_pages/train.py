import streamlit as st

from rnnlib.core import config
from rnnlib.run import jobs
from ui import data, jobs_panel, train_form

st.title("Train")
st.caption("Pick a task, the cells and truncations to compare, and start: training runs in a background "
           "process, logs every epoch to the store, and survives reloads. Cancelled runs end KILLED.")
uri = data.tracking_uri()

build, upload, edit = st.tabs(["Build an experiment", "Your own series (CSV)", "From a YAML file"])
with build:
    raw = train_form.builder()
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
    except config.ConfigError as error:
        st.error(train_form.config_error_message(error), icon=":material/block:")
    else:
        job = jobs.launch(experiment, uri)
        data.refresh()
        st.success(f"Started **{experiment.name}**: {job.num_runs} run(s). Progress below; results on the "
                   "Compare page as epochs come in.", icon=":material/rocket_launch:")

st.subheader("Jobs")
jobs_panel.show(uri)
