"""Live view of training jobs: progress read from the store every two seconds, cancel buttons, logs."""

import streamlit as st

from rnnlib import tracking
from rnnlib.run import jobs
from ui import data, safe

FINISHED_SHOWN = 5  # ended jobs listed below the running ones; older ones behind an expander


@st.cache_data(ttl=2, max_entries=16, show_spinner=False)
def _live_runs(uri: str, experiment: str):
    return tracking.runs_frame(uri, experiment)


@st.fragment(run_every=2)
def show(uri: str) -> None:
    """Every running job writing to `uri`, then the latest ended ones; refreshes itself every two seconds."""
    data.reconcile(uri)
    recorded = jobs.list_jobs(uri)
    if not recorded:
        st.caption("No training jobs yet.")
        return
    running = [job for job in recorded if job.running]
    ended = [job for job in recorded if job not in running]
    line = [job.job_id for job in jobs.queue(jobs.list_jobs())]  # the queue spans every store
    for job in running + ended[:FINISHED_SHOWN]:
        _job(uri, job, job in running, line)
    if len(ended) > FINISHED_SHOWN:
        with st.expander(f"{len(ended) - FINISHED_SHOWN} older job(s)"):
            for job in ended[FINISHED_SHOWN:]:
                _job(uri, job, False, line)


def _job(uri: str, job: jobs.Job, running: bool, line: list[str]) -> None:
    try:
        runs = _live_runs(uri, job.experiment)
    except Exception as error:  # the store went away: say so, keep the panel alive
        st.error(f"Cannot read progress of {safe.text(job.experiment)} from {safe.text(uri)}: {safe.text(error)}")
        return
    table, fraction, eta = jobs.progress(job, runs)
    queued = running and job.job_id in line
    if running:
        state = "stopping" if job.cancelled else ("queued" if queued else "running")
    else:
        state = "cancelled" if job.cancelled else ("finished" if fraction >= 1 else "stopped")
    with st.container(border=True):
        head, button = st.columns([5, 1])
        head.markdown(f"**{safe.text(job.experiment)}** · {job.num_runs} run(s) · {state} · job `{job.job_id}`")
        if running and button.button("Cancel", key=f"cancel_{job.job_id}", type="secondary",
                                     disabled=job.cancelled is not None):
            jobs.cancel(job)
            st.toast(f"Cancelling {job.experiment}: its open run will end KILLED.")
        elif not running and button.button("Dismiss", key=f"forget_{job.job_id}"):
            jobs.forget(job)
            st.rerun(scope="fragment")
        if queued:
            place = line.index(job.job_id) + 1
            cost = job.estimate or f"{job.num_epochs or '?'} epochs to train"
            label = (f"queued: place {place} of {len(line)}, waiting for a free slot ({jobs.max_jobs()} job(s) "
                     f"train at once; set RNNLAB_MAX_JOBS for more); {cost}")
        elif running:
            left = "starting…" if eta is None else f"about {jobs.describe_duration(eta)} left"
            label = f"{fraction:.0%} of {job.num_epochs or '?'} epochs done, {left}"
        else:
            label = f"{fraction:.0%} of {job.num_epochs or '?'} epochs done"
        st.progress(fraction, text=label)
        if not table.empty:
            st.dataframe(table, hide_index=True, width="stretch",
                         column_config={"eta_s": st.column_config.NumberColumn("ETA (s)", format="%.0f"),
                                        "val_loss": st.column_config.NumberColumn(format="%.4f")})
        with st.expander("Log"):
            st.code(job.log_tail() or "(empty)", language=None)
