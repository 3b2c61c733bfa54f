"""Widgets of the Compare page, drawn through the page's `ui.permalink.Permalink` (`open_link`), so that every
setting is in the URL and a copied link reopens exactly this comparison."""

import dataclasses

import pandas as pd
import streamlit as st

from rnnlib.analysis import compare, verdicts
from rnnlib.viz import views
from ui.permalink import Permalink, shown

PREFIX = "compare_"
FILTER_PREFIX = "f."  # a filter on param p is the URL key `f.p`
STATISTICS = views.STATISTICS


def open_link() -> Permalink:
    """The page's settings, seeded from the URL the first time this session opens it (and from the last view
    when the user comes back from another page)."""
    return Permalink(PREFIX)


def _reset_experiment_state(link: Permalink) -> None:
    for field in ("sweep", "selected", FILTER_PREFIX, "group_by", "x_param", "line_param"):
        link.forget(field)  # their defaults follow what varies in the new experiment


def experiment_picker(link: Permalink, names: list[str]) -> str:
    return link.choice("Experiment", "experiment", names, on_change=_reset_experiment_state, args=(link,))


def run_picker(link: Permalink, all_runs: pd.DataFrame) -> pd.DataFrame:
    """Sweep, param filters and an optional hand-picked subset; returns the training runs left."""
    trials = all_runs[all_runs["kind"] != "sweep"]
    sweeps = all_runs[all_runs["kind"] == "sweep"].sort_values("start_time", ascending=False)
    labels = {"": f"all runs of the experiment ({len(trials)})"}
    for _, sweep in sweeps.iterrows():
        count = int((trials["parent_run_id"] == sweep["run_id"]).sum())
        labels[sweep["run_id"]] = f"{sweep['run_name']} ({count} runs, {sweep['status'].lower()})"
    sweep = link.choice("Sweep", "sweep", list(labels), default="", format_func=labels.get)
    runs = trials[trials["parent_run_id"] == sweep] if sweep else trials
    with st.expander("Filter runs", expanded=bool(link.pending(FILTER_PREFIX) or _filtered(link))):
        runs = _filters(link, runs)
        runs = _selection(link, runs)
    return runs


def _filtered(link: Permalink) -> bool:
    return any(st.session_state.get(k) for k in st.session_state if str(k).startswith(link.key(FILTER_PREFIX)))


def _filters(link: Permalink, runs: pd.DataFrame) -> pd.DataFrame:
    """One multiselect per varying param. A link's filter on a param that no longer varies by itself but through
    a summary param (`model.cell_type`, now told by `model.label`) filters on the summary's matching values."""
    varying = compare.varying_params(runs)
    for field, values in link.pending(FILTER_PREFIX).items():
        name = field.removeprefix(FILTER_PREFIX)
        summary = next((s for s, parts in compare.SUMMARY_PARAMS.items() if name in parts and s in varying), None)
        if summary and f"params.{name}" in runs:
            matching = runs[runs[f"params.{name}"].astype(str).isin(_split(values))][f"params.{summary}"]
            link.forget(field)
            link.reseed(FILTER_PREFIX + summary, sorted(matching.astype(str).unique()))
        elif name not in varying:
            link.notice(f"Ignored the link's filter on {shown(name)}: no such param varies here.")
            link.forget(field)
    chosen = {}
    columns = st.columns(3)
    for index, name in enumerate(varying):
        options = sorted(runs[f"params.{name}"].fillna("").astype(str).unique(), key=compare.natural_key)
        chosen[name] = link.choices(name, FILTER_PREFIX + name, options, [], widget=columns[index % 3].multiselect,
                                    placeholder="all")
    return compare.filter_runs(runs, chosen)


def _split(values: list[str]) -> list[str]:
    return [piece for value in values for piece in str(value).split(",")]


def _selection(link: Permalink, runs: pd.DataFrame) -> pd.DataFrame:
    names = dict(zip(runs["run_id"], runs["run_name"]))
    selected = link.choices("Only these runs", "selected", list(names), [], placeholder=f"all {len(runs)} runs",
                            format_func=lambda r: f"{names[r]} ({r[:6]})")
    return runs[runs["run_id"].isin(selected)] if selected else runs


def selection(link: Permalink) -> dict[str, list[str]]:
    """The run selection drawn by `run_picker` as permalink fields (`sweep`, `f.<param>`, `selected`)."""
    state, chosen = st.session_state, {}
    if state.get(link.key("sweep")):
        chosen["sweep"] = [state[link.key("sweep")]]
    for key in sorted(k for k in state if str(k).startswith(link.key(FILTER_PREFIX)) and state[k]):
        chosen[key.removeprefix(link.prefix)] = [str(v) for v in state[key]]
    if state.get(link.key("selected")):
        chosen["selected"] = list(state[link.key("selected")])
    return chosen


def group_by_picker(link: Permalink, runs: pd.DataFrame) -> list[str]:
    """The params runs are grouped by; until picked, the ones that vary (`compare.default_group_by`)."""
    return link.choices("Group by", "group_by", compare.param_names(runs), compare.default_group_by(runs),
                        placeholder="no grouping: one group")


@dataclasses.dataclass(frozen=True)
class CurveSettings:
    metric: str
    smoothing: float
    band: str
    log_y: bool
    show_runs: bool


def curve_settings(link: Permalink, metrics: list[str], default_band: str) -> CurveSettings:
    """Metric, smoothing, band (`default_band` until picked: min–max at few runs per group), log y, seeds."""
    left, middle, band_column, right, last = st.columns([2, 2, 2, 1, 1.3])
    metric = link.choice("Metric", "metric", metrics, default="val_loss", widget=left.selectbox)
    smoothing = link.fraction("Smoothing", "smoothing", 0.0, 0.0, 0.99, widget=middle.slider, step=0.01,
                              help="Exponential moving average; the raw mean stays as a faint line.")
    band = link.choice("Band", "band", list(compare.BANDS), default=default_band, widget=band_column.selectbox,
                       format_func=compare.BANDS.__getitem__,
                       help="The spread of each group's runs around its mean. A Student-t interval is wide at "
                       f"a few runs (t = 12.7 at 2), so below {compare.MIN_RUNS_FOR_CI} runs per group the "
                       "default is min–max.")
    log_y = link.flag("Log y", "log_y", widget=right.toggle)
    show_runs = link.flag("Show runs", "show_runs", widget=last.toggle,
                          help="Draw every run (each seed) under the group means.")
    return CurveSettings(metric, smoothing, band, log_y, show_runs)


def statistic_picker(link: Permalink, max_step: int) -> tuple[str, int | None]:
    left, right = st.columns([3, 2])
    statistic = link.choice("Statistic per metric", "statistic", list(STATISTICS), widget=left.radio,
                            format_func=STATISTICS.get, horizontal=True)
    step = link.number("Epoch N", "step", 1, 0, max(max_step, 1), widget=right.number_input,
                       disabled=statistic != "at_step")
    return statistic, (step if statistic == "at_step" else None)


def verdict_settings(link: Permalink) -> tuple[str, float]:
    """The verdicts' interval (Welch t or bootstrap) and the interval width their seed counts aim at."""
    left, right = st.columns([3, 2])
    interval = link.choice("Interval of a difference", "interval", list(verdicts.METHODS), widget=left.radio,
                           format_func=verdicts.METHODS.get, horizontal=True,
                           help="Welch's t assumes roughly normal run-to-run spread; the bootstrap resamples "
                                "the runs themselves (rough with 2–3 runs a group).")
    width = link.fraction("Interval width wanted (0: half the largest difference)", "width", 0.0, 0.0, 1e9,
                          widget=right.number_input, format="%g",
                          help="How many seeds per group would give a 95% interval this wide, at the spread "
                               "seen so far.")
    return interval, width


def hyperparameter_pickers(link: Permalink, params: list[str], varying: list[str]) -> tuple[str, str | None]:
    """x axis and line params; the x axis defaults to truncation if it varies, else the first varying param, and
    the lines to the model's label."""
    left, right = st.columns(2)
    x_param = link.choice("x axis", "x_param", params, default=views.default_x_param(params, varying),
                          widget=left.selectbox)
    line_param = link.choice("One line per", "line_param", ["", *params], default="model.label",
                             widget=right.selectbox, format_func=lambda p: p or "(none)")
    return x_param, line_param or None
