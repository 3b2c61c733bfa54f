"""Widgets of the Compare page. Each widget's value lives in session state under `compare_<field>`; the URL
(`st.query_params`) seeds them once per session and is rewritten from them after every run (`save_url`)."""

import dataclasses

import pandas as pd
import streamlit as st

from rnnlib.analysis import compare
from rnnlib.analysis.views import CompareView

PREFIX = "compare_"
NOTICES = PREFIX + "notices"


def _key(field: str) -> str:
    return PREFIX + field


def load_url() -> None:
    """Seed the widgets from the URL the first time this session opens the page (and from the last view when
    the user comes back from another page, which drops widget state), and show link problems."""
    view = None
    if not st.session_state.get(PREFIX + "seeded"):
        view, st.session_state[NOTICES] = CompareView.from_query(st.query_params.to_dict())
        st.session_state[PREFIX + "seeded"] = True
    elif _key("experiment") not in st.session_state:
        view = st.session_state.get(PREFIX + "view")
    if view is not None:
        for field in dataclasses.fields(view):
            value = getattr(view, field.name)
            st.session_state[_key(field.name)] = list(value) if isinstance(value, tuple) else value
    for notice in st.session_state.get(NOTICES, []):
        st.warning(notice, icon=":material/link:")


def _notice(text: str) -> None:
    st.session_state.setdefault(NOTICES, []).append(text)
    st.warning(text, icon=":material/link:")


def current_view() -> CompareView:
    fields = {}
    for field in dataclasses.fields(CompareView):
        value = st.session_state.get(_key(field.name), getattr(CompareView(), field.name))
        fields[field.name] = tuple(value) if isinstance(value, list) else value
    return CompareView(**fields)


def save_url() -> None:
    """Write the current view to the URL, so copying it shares exactly this comparison."""
    view = current_view()
    st.session_state[PREFIX + "view"] = view  # not a widget key: survives a visit to another page
    query = view.to_query()
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)


def _reset_experiment_state() -> None:
    for field in ("sweep", "filters", "selected"):
        st.session_state[_key(field)] = getattr(CompareView(), field)
    for key in [k for k in st.session_state if str(k).startswith(PREFIX + "f_")]:
        del st.session_state[key]


def experiment_picker(names: list[str]) -> str:
    key = _key("experiment")
    if st.session_state.get(key) and st.session_state[key] not in names:
        _notice(f"Experiment {st.session_state[key]!r} from the link is not in this store.")
        st.session_state[key] = names[0]
    if not st.session_state.get(key):
        st.session_state[key] = names[0]
    return st.selectbox("Experiment", names, key=key, on_change=_reset_experiment_state)


def run_picker(all_runs: pd.DataFrame) -> pd.DataFrame:
    """Sweep, param filters and an optional hand-picked subset; returns the training runs left."""
    trials = all_runs[all_runs["kind"] != "sweep"]
    sweeps = all_runs[all_runs["kind"] == "sweep"].sort_values("start_time", ascending=False)
    labels = {"": f"all runs of the experiment ({len(trials)})"}
    for _, sweep in sweeps.iterrows():
        count = int((trials["parent_run_id"] == sweep["run_id"]).sum())
        labels[sweep["run_id"]] = f"{sweep['run_name']} ({count} runs, {sweep['status'].lower()})"
    key = _key("sweep")
    if st.session_state.get(key) and st.session_state[key] not in labels:
        _notice("The sweep in the link is not part of this experiment; showing all runs.")
        st.session_state[key] = ""
    sweep = st.selectbox("Sweep", list(labels), format_func=labels.get, key=key)
    runs = trials[trials["parent_run_id"] == sweep] if sweep else trials
    with st.expander("Filter runs", expanded=bool(st.session_state.get(_key("filters")))):
        runs = _filters(runs)
        runs = _selection(runs)
    return runs


def _filters(runs: pd.DataFrame) -> pd.DataFrame:
    seeded = dict(st.session_state.get(_key("filters")) or ())
    chosen = {}
    varying = compare.varying_params(runs)
    for name in [n for n in seeded if n not in varying]:
        _notice(f"Ignored the link's filter on {name!r}: no such param varies here.")
    columns = st.columns(3)
    for index, name in enumerate(varying):
        options = sorted(runs[f"params.{name}"].fillna("").astype(str).unique(), key=compare.natural_key)
        key = PREFIX + "f_" + name
        if key not in st.session_state:
            st.session_state[key] = [v for v in seeded.get(name, ()) if v in options]
        chosen[name] = columns[index % 3].multiselect(name, options, key=key, placeholder="all")
    st.session_state[_key("filters")] = [(n, tuple(v)) for n, v in chosen.items() if v]
    return compare.filter_runs(runs, chosen)


def _selection(runs: pd.DataFrame) -> pd.DataFrame:
    key = _key("selected")
    names = dict(zip(runs["run_id"], runs["run_name"]))
    stale = [r for r in st.session_state.get(key, []) if r not in names]
    if stale:
        _notice(f"{len(stale)} run(s) selected in the link are not among these runs; they were dropped.")
        st.session_state[key] = [r for r in st.session_state[key] if r in names]
    selected = st.multiselect("Only these runs", list(names), format_func=lambda r: f"{names[r]} ({r[:6]})",
                              key=key, placeholder=f"all {len(runs)} runs")
    return runs[runs["run_id"].isin(selected)] if selected else runs


def group_by_picker(params: list[str]) -> list[str]:
    key = _key("group_by")
    unknown = [p for p in st.session_state.get(key, []) if p not in params]
    if unknown:
        if st.session_state.get(key) != list(compare.DEFAULT_GROUP_BY):
            _notice(f"Ignored unknown group-by param(s): {', '.join(unknown)}.")
        st.session_state[key] = [p for p in st.session_state[key] if p in params]
    return st.multiselect("Group by", params, key=key, placeholder="no grouping: one group")


@dataclasses.dataclass(frozen=True)
class CurveSettings:
    metric: str
    smoothing: float
    log_y: bool
    show_runs: bool


def curve_settings(metrics: list[str]) -> CurveSettings:
    key = _key("metric")
    if st.session_state.get(key) not in metrics:
        if st.session_state.get(key) != CompareView().metric:
            _notice(f"Metric {st.session_state.get(key)!r} is not logged here.")
        st.session_state[key] = "val_loss" if "val_loss" in metrics else metrics[0]
    left, middle, right, last = st.columns([2, 2, 1, 1])
    metric = left.selectbox("Metric", metrics, key=key)
    smoothing = middle.slider("Smoothing", 0.0, 0.99, step=0.01, key=_key("smoothing"),
                              help="Exponential moving average; the raw mean stays as a faint line.")
    log_y = right.toggle("Log y", key=_key("log_y"))
    show_runs = last.toggle("Show seeds", key=_key("show_runs"), help="Draw every run under the group means.")
    return CurveSettings(metric, smoothing, log_y, show_runs)


def statistic_picker(max_step: int) -> tuple[str, int | None]:
    labels = {"best": "best", "last": "last", "at_step": "at epoch N"}
    left, right = st.columns([3, 2])
    statistic = left.radio("Statistic per metric", list(labels), format_func=labels.get, horizontal=True,
                           key=_key("statistic"))
    step_key = _key("step")
    st.session_state[step_key] = int(min(max(st.session_state.get(step_key, 1), 0), max(max_step, 1)))
    step = right.number_input("Epoch N", 0, max(max_step, 1), key=step_key, disabled=statistic != "at_step")
    return statistic, (int(step) if statistic == "at_step" else None)


def hyperparameter_pickers(params: list[str], varying: list[str]) -> tuple[str, str | None]:
    """x axis and line params; the x axis defaults to truncation if it varies, else the first varying param."""
    x_key, line_key = _key("x_param"), _key("line_param")
    if st.session_state.get(x_key) not in params:
        candidates = [p for p in ["training.truncation", *varying] if p in varying and p != "seed"]
        st.session_state[x_key] = (candidates or params)[0]
    if st.session_state.get(line_key) not in ["", *params]:
        st.session_state[line_key] = ""
    left, right = st.columns(2)
    x_param = left.selectbox("x axis", params, key=x_key)
    line_param = right.selectbox("One line per", ["", *params], key=line_key, format_func=lambda p: p or "(none)")
    return x_param, line_param or None
