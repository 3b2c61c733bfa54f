"""Cached reads of the tracking store. A store that cannot be read stops the page with one clear message."""

import functools

import pandas as pd
import streamlit as st

from rnnlib import tracking
from rnnlib.core.config import SCHEMA_VERSION
from rnnlib.core.errors import RunDataError, TrackingError
from ui import safe

CACHE_SECONDS = 15
tracking.apply_http_policy("dashboard")  # a page waits on the store: fail in seconds, not minutes


def tracking_uri() -> str:
    """The store this dashboard reads: $MLFLOW_TRACKING_URI, else the embedded sqlite store."""
    return tracking.resolve_tracking_uri()


@st.cache_data(ttl=5, show_spinner=False)
def _check_store(uri: str) -> bool:
    tracking.check_store(uri, timeout=2.0)  # raises (and so caches nothing) when the store is unreachable
    return True


def _stop_on_store_error(function):
    """A read that stops the page with one message when the store fails. One run's unreadable data
    (`RunDataError`) is not a store failure: it passes through, for the page to show the other runs."""

    @functools.wraps(function)
    def guarded(uri, *args, **kwargs):
        try:
            _check_store(uri)
            return function(uri, *args, **kwargs)
        except RunDataError:
            raise
        except TrackingError as error:
            _stop(f"Cannot read the tracking store {uri}: {str(error)[:400]}\n\nCheck that the tracking server is "
                  "running (or unset MLFLOW_TRACKING_URI to use the embedded store), then reload the page.")
        except Exception as error:  # any other failure must reach the user as a message, not a traceback
            _stop(f"Reading the tracking store {uri} failed: {type(error).__name__}: {str(error)[:400]}")

    return guarded


def _stop(message: str) -> None:
    st.error(message, icon=":material/warning:")
    st.stop()


@st.cache_data(ttl=CACHE_SECONDS, max_entries=8, show_spinner=False)
def _experiments(uri: str) -> pd.DataFrame:
    return tracking.list_experiments(uri)


@st.cache_data(ttl=60, max_entries=4, show_spinner=False)
def recent_pace(uri: str) -> pd.DataFrame:
    """Seconds per update of recent finished runs, for a new job's time estimate (`jobs.estimate`)."""
    return tracking.recent_pace(uri)


@st.cache_data(ttl=CACHE_SECONDS, max_entries=32, show_spinner="Reading runs…")
def _runs(uri: str, experiment: str) -> pd.DataFrame:
    return tracking.runs_frame(uri, experiment)


@st.cache_data(ttl=CACHE_SECONDS, max_entries=32, show_spinner="Reading metric histories…")
def _histories(uri: str, run_ids: tuple[str, ...], keys: tuple[str, ...]) -> pd.DataFrame:
    return tracking.metric_histories(uri, list(run_ids), list(keys))


def _each_run(load, uri: str, run_ids: tuple[str, ...]) -> dict:
    """`load(uri, run_id)` over runs: `{run_id: value, or the RunDataError that run raised}`."""
    loaded = {}
    for run_id in run_ids:
        try:
            loaded[run_id] = load(uri, run_id)
        except RunDataError as error:
            loaded[run_id] = error
    return loaded


# Three functions, not one made three times: Streamlit keys a cache by the function's name and source, so
# copies of one nested function would share theirs.
@st.cache_data(ttl=CACHE_SECONDS, max_entries=16, show_spinner="Reading gradient-flow records…")
def _gradient_flows(uri: str, run_ids: tuple[str, ...]) -> dict:
    return _each_run(tracking.load_gradient_flow, uri, run_ids)


@st.cache_data(ttl=300, max_entries=16, show_spinner="Reading the runs' predictions…")
def _predictions(uri: str, run_ids: tuple[str, ...]) -> dict:
    return _each_run(tracking.load_predictions, uri, run_ids)


@st.cache_data(ttl=300, max_entries=64, show_spinner=False)
def _configs(uri: str, run_ids: tuple[str, ...]) -> dict:
    return _each_run(tracking.load_config, uri, run_ids)


@st.cache_data(ttl=300, max_entries=16, show_spinner="Reading the run's weights…")
def _weights(uri: str, run_id: str) -> dict:
    return tracking.load_weights(uri, run_id)


experiments = _stop_on_store_error(_experiments)
runs = _stop_on_store_error(_runs)
histories = _stop_on_store_error(_histories)


def _readable(loaded: dict, labels=None) -> dict:
    """The runs whose data could be read; each other one gets one notice naming it and what is wrong."""
    for run_id, value in loaded.items():
        if isinstance(value, RunDataError):
            name = labels(run_id) if labels else f"Run {run_id[:8]}"
            st.warning(f"{safe.text(name)} is left out: {safe.text(value.problem)}.", icon=":material/report:")
    return {run_id: value for run_id, value in loaded.items() if not isinstance(value, RunDataError)}


def gradient_flows(uri: str, run_ids: tuple[str, ...], labels=None) -> dict:
    """{run_id: GradientFlow or None (logged none)} of the runs whose record can be read."""
    return _readable(_stop_on_store_error(_gradient_flows)(uri, run_ids), labels)


def predictions(uri: str, run_ids: tuple[str, ...], labels=None) -> dict:
    """{run_id: arrays or None (logged none)} of the runs whose predictions can be read."""
    return _readable(_stop_on_store_error(_predictions)(uri, run_ids), labels)


def run_configs(uri: str, run_ids: list[str], labels=None) -> dict:
    """{run_id: ExperimentConfig} of the runs whose logged config this version can read (any schema version);
    a run logged by a later version with keys this one does not know says which, and is shown without them."""
    logged = _readable(_stop_on_store_error(_configs)(uri, tuple(run_ids)), labels)
    for run_id, config in logged.items():
        if config.unknown:
            keys = safe.text(", ".join(f"{key} = {value!r}" for key, value in list(config.unknown.items())[:5]))
            name = labels(run_id) if labels else f"Run {run_id[:8]}"
            st.info(f"{safe.text(name)} was logged by schema version "
                    f"{config.schema_version} (this version reads {SCHEMA_VERSION}); shown without what this "
                    f"version does not know: {keys}.", icon=":material/history:")
    return {run_id: config.config for run_id, config in logged.items()}


def run_config(uri: str, run_id: str, labels=None):
    """One run's config, or None (with a notice) when it cannot be read."""
    return run_configs(uri, [run_id], labels).get(run_id)


def weights(uri: str, run_id: str, labels=None) -> dict | None:
    """One run's weights, or None (with a notice) when they cannot be read."""
    try:
        return _stop_on_store_error(_weights)(uri, run_id)
    except RunDataError as error:
        return _readable({run_id: error}, labels) or None


@st.cache_data(ttl=10, max_entries=4, show_spinner=False)
def _reconcile(uri: str) -> list[dict]:
    from rnnlib.run import jobs

    return jobs.reconcile(uri)


def reconcile(uri: str) -> list[dict]:
    """End the runs whose worker is gone (`rnnlib.run.jobs.reconcile`), at most every 10 s; a store that cannot be
    reached is left for the page to report."""
    try:
        _check_store(uri)
        ended = _reconcile(uri)
    except Exception:  # noqa: BLE001 - the page's own reads say what is wrong with the store
        return []
    if ended:
        refresh()  # the runs' statuses changed under the cached listings
    return ended


def refresh() -> None:
    """Forget the cached listings of experiments and runs (a launch or an ended run changed them). Per-run data
    (weights, predictions, configs, gradient records, histories) keeps its cache until it expires by itself, so
    one user's launch does not make every other user read it all again."""
    _experiments.clear()
    _runs.clear()
