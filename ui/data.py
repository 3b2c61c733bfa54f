"""Cached reads of the tracking store. A store that cannot be read stops the page with one clear message."""

import functools
import os

import pandas as pd
import streamlit as st

from rnnlib import tracking

CACHE_SECONDS = 15
# A page waits on the store: fail in seconds, not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no tqdm bars in the server log


def tracking_uri() -> str:
    """The store this dashboard reads: $MLFLOW_TRACKING_URI, else the embedded sqlite store."""
    return tracking.resolve_tracking_uri()


@st.cache_data(ttl=5, show_spinner=False)
def _check_store(uri: str) -> bool:
    tracking.check_store(uri, timeout=2.0)  # raises (and so caches nothing) when the store is unreachable
    return True


def _stop_on_store_error(function):
    @functools.wraps(function)
    def guarded(uri, *args, **kwargs):
        try:
            _check_store(uri)
            return function(uri, *args, **kwargs)
        except Exception as error:  # any failure of the store must reach the user as a message, not a traceback
            st.error(f"Cannot read the tracking store {uri}: {str(error)[:400]}\n\n"
                     "Check that the tracking server is running (or unset MLFLOW_TRACKING_URI to use the embedded "
                     "store), then reload the page.", icon=":material/warning:")
            st.stop()

    return guarded


@st.cache_data(ttl=CACHE_SECONDS, max_entries=8, show_spinner=False)
def _experiments(uri: str) -> pd.DataFrame:
    return tracking.list_experiments(uri)


@st.cache_data(ttl=CACHE_SECONDS, max_entries=32, show_spinner="Reading runs…")
def _runs(uri: str, experiment: str) -> pd.DataFrame:
    return tracking.runs_frame(uri, experiment)


@st.cache_data(ttl=CACHE_SECONDS, max_entries=32, show_spinner="Reading metric histories…")
def _histories(uri: str, run_ids: tuple[str, ...], keys: tuple[str, ...]) -> pd.DataFrame:
    return tracking.metric_histories(uri, list(run_ids), list(keys))


@st.cache_data(ttl=CACHE_SECONDS, max_entries=16, show_spinner="Reading gradient-flow records…")
def _gradient_flows(uri: str, run_ids: tuple[str, ...]) -> dict:
    return {run_id: tracking.load_gradient_flow(uri, run_id) for run_id in run_ids}


@st.cache_data(ttl=300, max_entries=16, show_spinner="Reading the run's weights…")
def _weights(uri: str, run_id: str) -> dict:
    return tracking.load_weights(uri, run_id)


@st.cache_data(ttl=300, max_entries=16, show_spinner="Reading the runs' predictions…")
def _predictions(uri: str, run_ids: tuple[str, ...]) -> dict:
    return {run_id: tracking.load_predictions(uri, run_id) for run_id in run_ids}


@st.cache_data(ttl=300, max_entries=64, show_spinner=False)
def _run_config(uri: str, run_id: str):
    from rnnlib import config

    return config.parse_config(tracking.load_artifact_text(uri, run_id, "config.yaml"))


experiments = _stop_on_store_error(_experiments)
runs = _stop_on_store_error(_runs)
histories = _stop_on_store_error(_histories)
gradient_flows = _stop_on_store_error(_gradient_flows)
weights = _stop_on_store_error(_weights)
predictions = _stop_on_store_error(_predictions)
run_config = _stop_on_store_error(_run_config)


def metric_keys(runs_frame: pd.DataFrame) -> list[str]:
    """Metrics logged per epoch on these runs (from the latest-value columns), most useful first."""
    keys = [c.removeprefix("metrics.") for c in runs_frame.columns if c.startswith("metrics.")]
    keys = [k for k in keys if k not in ("baseline", "best_val_loss")]
    first = [k for k in ("val_loss", "train_loss") if k in keys]
    return first + sorted(k for k in keys if k not in first)


def refresh() -> None:
    st.cache_data.clear()
