"""Which experiment and runs a page looks at: the store's experiments, training and finished runs, run labels.
(A page's settings in its URL: `ui.permalink`.)"""

from pathlib import Path

import pandas as pd
import streamlit as st

# The pages by absolute path: Streamlit resolves a relative one against the entrypoint's folder, which is not
# the project's when the hosted demo starts from hosted/streamlit_app.py.
PAGES_DIR = Path(__file__).resolve().parent.parent / "app_pages"


def page(name: str) -> Path:
    """The page file `name` (`compare`), for `st.Page` and `st.page_link`."""
    return PAGES_DIR / f"{name}.py"


def experiment_names(uri: str, empty_message: str) -> list[str]:
    """The store's experiments; with none, the page says `empty_message`, links to Train and stops."""
    from ui import data

    names = data.experiments(uri)["name"].tolist()
    if not names:
        st.info(empty_message, icon=":material/science:")
        st.page_link(page("train"), label="Train a model", icon=":material/model_training:")
        st.stop()
    return names


def experiment_runs(link, uri: str, empty_message: str, select, no_runs_message: str, widget=None
                    ) -> tuple[str, pd.DataFrame]:
    """A page's experiment picker (`link`'s field `experiment`, drawn by `widget`) and the runs of it that
    `select` keeps (e.g. `finished_runs`); with no experiment the page says `empty_message`, with no such run
    `no_runs_message`, and stops."""
    from ui import data

    names = experiment_names(uri, empty_message)
    experiment = link.choice("Experiment", "experiment", names, widget=widget)
    runs = select(data.runs(uri, experiment))
    if runs.empty:
        link.stop(no_runs_message, icon=":material/info:")
    return experiment, runs


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that trained a model (not the sweep parents), newest first."""
    return runs[runs["kind"] != "sweep"].sort_values("start_time", ascending=False)


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The training runs that ended normally, so their weights and predictions are logged, newest first."""
    trained = training_runs(runs)
    return trained[trained["status"] == "FINISHED"]


def best_runs(runs: pd.DataFrame, count: int) -> list[str]:
    """The ids of the `count` runs with the lowest `best_val_loss` (a diverged run's is NaN: never best), else the
    newest ones."""
    if "metrics.best_val_loss" not in runs:
        return runs["run_id"].tolist()[:count]
    ranked = runs.sort_values("metrics.best_val_loss", kind="stable", na_position="last")
    return ranked["run_id"].tolist()[:count]


def with_param(runs: pd.DataFrame, key: str, value: str) -> pd.DataFrame:
    """The runs whose param `key` (dotted, as logged) is `value`; none when no run has the param."""
    column = f"params.{key}"
    return runs[runs[column] == value] if column in runs else runs.iloc[:0]


def run_label(runs: pd.DataFrame):
    """Format function for run pickers: the run name and a short id."""
    names = dict(zip(runs["run_id"], runs["run_name"]))
    return lambda run_id: f"{names.get(run_id, '?')} ({run_id[:6]})"
