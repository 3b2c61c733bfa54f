"""Live view of training jobs: progress read from the store every two seconds, cancel buttons, logs."""

import streamlit as st

from rnnlib import jobs, tracking


@st.cache_data(ttl=2, max_entries=16, show_spinner=False)
def _live_runs(uri: str, experiment: str):
    return tracking.runs_frame(uri, experiment)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "estimating…"
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


@st.fragment(run_every=2)
def show(uri: str, limit: int = 5) -> None:
    """The latest jobs writing to `uri`, newest first; refreshes itself while any is running."""
    recorded = jobs.list_jobs(uri)[:limit]
    if not recorded:
        st.caption("No training jobs yet.")
        return
    for job in recorded:
        running = job.running
        try:
            runs = _live_runs(uri, job.experiment)
        except Exception as error:  # the store went away: say so, keep the panel alive
            st.error(f"Cannot read progress from {uri}: {error}")
            continue
        table, fraction, eta = jobs.progress(job, runs)
        state = "running" if running else ("finished" if fraction >= 1 else "stopped")
        with st.container(border=True):
            head, button = st.columns([5, 1])
            head.markdown(f"**{job.experiment}** · {job.num_runs} run(s) · {state} · job `{job.job_id}`")
            if running and button.button("Cancel", key=f"cancel_{job.job_id}", type="secondary"):
                jobs.cancel(job)
                st.toast(f"Cancelling {job.experiment}: its open run will end KILLED.")
            elif not running and button.button("Dismiss", key=f"forget_{job.job_id}"):
                jobs.forget(job)
                st.rerun(scope="fragment")
            label = f"{fraction:.0%} done" + (f", about {_duration(eta)} left" if running else "")
            st.progress(fraction, text=label)
            if not table.empty:
                st.dataframe(table, hide_index=True, width="stretch",
                             column_config={"eta_s": st.column_config.NumberColumn("ETA (s)", format="%.0f"),
                                            "val_loss": st.column_config.NumberColumn(format="%.4f")})
            with st.expander("Log"):
                st.code(job.log_tail() or "(empty)", language=None)
