"""The Train page's two forms. Both return plain data for `rnnlib.core.config` to validate, or None until submitted."""

import hashlib
import re
import typing
from pathlib import Path

import pandas as pd
import streamlit as st
import yaml

from rnnlib import tasks
from rnnlib.core import config, paths
from rnnlib.core.cells import CELLS
from rnnlib.run import executors, jobs
from rnnlib.tasks import sources
from rnnlib.viz import plots
from ui import data, safe


def _parse_list(text: str) -> list:
    """`0, 1, 2` or `[0, 1, 2]` -> a list, each item parsed as YAML (numbers stay numbers)."""
    text = text.strip().strip("[]")
    return [yaml.safe_load(item) for item in text.split(",") if item.strip()]


PARAMS_PER_ROW = 6


def _has_input(annotation) -> bool:
    """Numbers, switches and choices get an input; other params (column lists, file paths) keep their default
    here and are set in the YAML editor."""
    return annotation in (int, float, bool) or typing.get_origin(annotation) is typing.Literal


def _task_param_inputs(task_name: str) -> dict:
    """One input per parameter of the task (numbers, switches, choices), with its default and bounds."""
    params = {}
    fields = {k: f for k, f in tasks.get(task_name).params_type.model_fields.items()
              if k != "name" and _has_input(f.annotation)}
    columns = [column for row in range(0, len(fields), PARAMS_PER_ROW)
               for column in st.columns(PARAMS_PER_ROW)][: len(fields)]
    for column, (name, field) in zip(columns, fields.items()):
        bounds = {m.__class__.__name__: m for m in field.metadata}
        low = getattr(bounds.get("Ge"), "ge", None)
        if field.annotation is int:
            params[name] = column.number_input(name, value=field.default, min_value=low, step=1,
                                               key=f"train_{task_name}_{name}")
        elif field.annotation is float:
            params[name] = column.number_input(name, value=float(field.default), min_value=low, format="%g",
                                               key=f"train_{task_name}_{name}")
        elif field.annotation is bool:
            params[name] = column.checkbox(name, value=field.default, key=f"train_{task_name}_{name}")
        elif typing.get_origin(field.annotation) is typing.Literal:
            options = list(typing.get_args(field.annotation))
            params[name] = column.selectbox(name, options, index=options.index(field.default),
                                            key=f"train_{task_name}_{name}")
    return params


def builder(uri: str) -> dict | None:
    """Task, cells, truncations, clipping, seeds and schedule; a sweep over every combination picked. Not a form,
    so that the line above Start says, as settings change, how many runs it launches and about how long they take
    (`launch_estimate`)."""
    task_name = st.selectbox("Task", list(tasks.TASKS), key="train_task",
                             format_func=lambda n: f"{n} (baseline: {tasks.get(n).baseline_name})")
    with st.container(border=True):
        task_params = _task_param_inputs(task_name)
        settings = _run_settings("train_builder", f"{task_name}_dashboard")
        raw = {**settings, "task": {"name": task_name, **task_params}}
        try:
            estimated = launch_estimate(config.validate(raw, source="the form"), uri)
        except config.ConfigError as error:
            st.caption(f"Start launches nothing with these settings: {safe.text(error.problems[0])}.")
        else:
            st.caption(f"Start launches {safe.text(estimated.describe())}.")
        if not st.button("Start training", type="primary", key="train_builder_start"):
            return None
    return raw


def launch_estimate(experiment: config.ExperimentConfig, uri: str) -> jobs.Estimate:
    """What `experiment` trains and about how long it takes at the pace of the store's finished runs
    (`jobs.estimate`); without a time when the store cannot be read."""
    try:
        return jobs.estimate(experiment, data.recent_pace(uri))
    except Exception:  # an unreadable store: the count still holds, the time is left out
        return jobs.estimate(experiment)


def _run_settings(prefix: str, default_name: str) -> dict:
    """Inputs for everything but the task: cells, size, truncations, clipping, seeds, schedule;
    the config's `name`, `model`, `training` and `grid`. `prefix` keys the widgets (one set per form)."""
    left, middle, right = st.columns(3)
    cells = left.multiselect("Cells", list(CELLS), default=list(CELLS), key=f"{prefix}_cells",
                             format_func=lambda name: CELLS[name].title)
    units = middle.number_input("Units per layer", 1, 1024, 32, key=f"{prefix}_units")
    num_layers = right.number_input("Layers", 1, 4, 1, key=f"{prefix}_layers")
    truncations = left.text_input(
        "Truncations", "full, 10", key=f"{prefix}_truncations",
        help="Comma-separated: `full`, `k` (k1 = k2 = k), `k1/k2` (update every k1 steps, backpropagate k2), "
        "`randN` (random-length TBPTT: chunks of geometric length with mean N, a biased gradient like "
        "fixed TBPTT).")
    clipnorm = middle.number_input("Clip global gradient norm at", 0.0, value=1.0, format="%g",
                                   key=f"{prefix}_clipnorm",
                                   help="0 disables clipping; the pre-clip norm is logged either way.")
    seeds = right.text_input("Seeds", "0, 1", key=f"{prefix}_seeds")
    epochs = left.number_input("Epochs", 1, 2000, 20, key=f"{prefix}_epochs")
    steps = middle.number_input("Batches per epoch", 1, 10_000, 50, key=f"{prefix}_steps")
    batch_size = right.number_input("Batch size", 1, 4096, 64, key=f"{prefix}_batch_size")
    learning_rate = left.number_input("Learning rate", 1e-6, 10.0, 3e-3, format="%g", key=f"{prefix}_learning_rate")
    optimizer = middle.selectbox("Optimizer", list(config.OPTIMIZERS), key=f"{prefix}_optimizer")
    name = right.text_input("Experiment name", default_name, key=f"{prefix}_name_{default_name}")
    cores = executors.default_workers()
    placements = {"sequential": "one worker: one run after another",
                  "processes": f"{cores} worker processes: {cores} runs at once",
                  "ray": f"Ray tasks on a local Ray: {cores} runs at once"}
    executor = left.selectbox("Runs train on", list(placements), format_func=placements.__getitem__,
                              key=f"{prefix}_executor",
                              help="How the job's runs share this machine's cores; the numbers each run logs are "
                                   "the same either way. Ray also reaches a cluster from the command line "
                                   "(`rnnlab run --executor ray --address ...`).")
    grid = {"model.cell_type": cells,
            "training.truncation": [config.truncation_from_label(t) for t in _parse_list(truncations)],
            "seed": _parse_list(seeds)}
    return {
        "name": name,
        "model": {"cell_type": (cells or ["lstm"])[0], "units": units, "num_layers": num_layers},
        "training": {"epochs": epochs, "steps_per_epoch": steps, "batch_size": batch_size,
                     "learning_rate": learning_rate, "optimizer": optimizer, "clipnorm": clipnorm or None},
        "grid": grid,
        "execution": {"executor": executor},
    }


PREVIEW_ROWS = 8


def from_csv() -> dict | None:
    """A forecasting experiment on an uploaded CSV: delimiter, time column, targets, features and frame.

    The file is checked as soon as it is chosen (`sources.parse_csv`); a file that fails is reported and never
    written. On submit it is kept under the data folder's `uploads/`, named by its sha256, which the config
    records so every run can be reproduced from it, and taken back if the experiment does not validate.
    """
    upload = st.file_uploader("A CSV file: a header row, then one row per time step", type=["csv", "tsv", "txt"],
                              max_upload_size=sources.MAX_CSV_BYTES // 2**20, key="train_csv_file")
    if upload is None:
        st.caption("Columns of numbers, one row per time step, and optionally a column of timestamps (dates or "
                   "numbers), unique, sorted and evenly spaced; empty cells inside the series are interpolated. "
                   f"Up to {sources.MAX_CSV_BYTES // 2**20} MB.")
        return None
    content = upload.getvalue()
    file_key = hashlib.sha256(content).hexdigest()[:16]  # a new file starts with fresh choices
    left, right = st.columns(2)
    delimiters = list(sources.DELIMITERS)
    try:
        sources.check_size(len(content))
        delimiter = left.selectbox("Delimiter", delimiters, format_func=sources.DELIMITERS.__getitem__,
                                   index=delimiters.index(sources.guess_delimiter(content)),
                                   key=f"train_csv_delimiter_{file_key}")
        columns, guessed = _sniffed(content, file_key, delimiter)
        options = [None, *columns]
        time_column = right.selectbox("Time column", options, index=options.index(guessed),
                                      format_func=lambda c: "none: row order is time" if c is None else c,
                                      key=f"train_csv_time_{file_key}")
        series = _parsed(content, file_key, time_column, delimiter)
    except sources.SeriesError as error:
        st.error(f"**{safe.text(upload.name)} cannot be used.** {safe.text(error)}", icon=":material/block:")
        return None
    _preview(series, upload.name)
    values = list(series.columns)
    with st.form(f"train_csv_{file_key}"):
        left, right = st.columns(2)
        targets = left.multiselect("Forecast these columns (targets)", values, default=values[:1],
                                  key=f"train_csv_targets_{file_key}")
        features = right.multiselect("Also read these (input-only features)", values,
                                     key=f"train_csv_features_{file_key}")
        window_input, horizon_input, split_input, missing_input, transform_input = st.columns(5)
        window = window_input.number_input("Window (steps read)", 2, 5000, min(30, max(2, len(series.frame) // 10)),
                                           key=f"train_csv_window_{file_key}")
        horizon = horizon_input.number_input("Horizon (steps ahead)", 1, 1000, 1, key=f"train_csv_horizon_{file_key}")
        train_fraction = split_input.slider("Training share (the rest, later in time, validates)", 0.3, 0.95, 0.7,
                                            0.05, key=f"train_csv_split_{file_key}")
        missing = missing_input.selectbox("Empty cells", ["interpolate", "error"], key=f"train_csv_missing_{file_key}")
        transform = transform_input.selectbox(
            "The model reads", ["none", "difference"], key=f"train_csv_transform_{file_key}",
            format_func={"none": "values", "difference": "changes (x_t - x_t-1)"}.__getitem__,
            help="Changes suit a trending series whose later part leaves the range of the training part.")
        settings = _run_settings("train_csv", _experiment_name(upload.name))
        if not st.form_submit_button("Start training", type="primary"):
            return None
    if not targets:
        st.error("Pick at least one column to forecast.", icon=":material/block:")
        return None
    kept = sources.save_upload(content)
    raw = {**settings, "task": {"name": "forecast", "dataset": "csv", "targets": targets, "features": features,
                                "window": window, "horizon": horizon, "train_fraction": train_fraction,
                                "missing": missing, "transform": transform, "path": kept.path,
                                "time_column": time_column, "delimiter": delimiter, "sha256": kept.sha256}}
    try:
        config.validate(raw, source="the form")
    except config.ConfigError as error:
        kept.discard()  # a launch that fails keeps nothing
        st.error(config_error_message(error), icon=":material/block:")
        return None
    return raw


def _experiment_name(file_name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(file_name).stem).strip("_") or "upload"
    return f"{stem}_forecast"


def _when(time) -> str:
    return str(time).removesuffix(" 00:00:00")


def _sniffed(content: bytes, file_key: str, delimiter: str) -> tuple[list[str], str | None]:
    """`sources.sniff` once per file and delimiter."""
    kept = st.session_state.get("train_csv_sniffed")
    if kept is None or kept[0] != (file_key, delimiter):
        kept = ((file_key, delimiter), sources.sniff(content, delimiter))
        st.session_state["train_csv_sniffed"] = kept
    return kept[1]


def _parsed(content: bytes, file_key: str, time_column: str | None, delimiter: str):
    """`sources.parse_csv` once per file and choice of columns: a rerun (every widget change) reuses it. One
    parsed file is kept per session."""
    key = (file_key, time_column, delimiter)
    kept = st.session_state.get("train_csv_parsed")
    if kept is None or kept[0] != key:
        with st.spinner("Reading the file…"):
            kept = (key, sources.parse_csv(content, time_column, delimiter))
        st.session_state["train_csv_parsed"] = kept
    return kept[1]


def _preview(series, file_name: str) -> None:
    frame = series.frame
    index = frame.index
    span = (f"from {_when(index[0])} to {_when(index[-1])}" if not isinstance(index, pd.RangeIndex)
            else "time is the row order")
    empty = int(frame.isna().sum().sum())
    st.markdown(f"**{safe.text(file_name)}**: {len(frame):,} steps × {frame.shape[1]:,} columns, {span}; "
                f"{empty:,} empty cells.")
    sample, stride = plots.preview_sample(frame)
    if stride > 1 or sample.shape[1] < frame.shape[1]:
        st.caption(f"The chart shows {sample.shape[1]:,} of {frame.shape[1]:,} columns"
                   + (f", one step in {stride:,}" if stride > 1 else "") + "; training reads them all.")
    chart, table = st.columns([3, 2])
    chart.plotly_chart(plots.series_preview_figure(frame), width="stretch", key="train_csv_preview")
    head = frame.iloc[:PREVIEW_ROWS, : plots.PREVIEW_COLUMNS]
    if isinstance(index, pd.DatetimeIndex) and (index == index.normalize()).all():
        head = head.set_axis(head.index.date).rename_axis(index.name)  # dates, without midnight
    table.dataframe(head, width="stretch")


def from_yaml() -> tuple[str, str] | None:
    """Pick a bundled experiment and edit it; returns (name, YAML text) on submit."""
    files = sorted(paths.EXPERIMENTS_DIR.glob("*.yaml"))
    chosen = st.selectbox("Experiment file", files, format_func=lambda p: p.name, key="train_yaml_file")
    with st.form("train_yaml"):
        text = st.text_area("YAML (edit freely; this file is not changed)", chosen.read_text(encoding="utf-8"),
                            height=420, key=f"train_yaml_{chosen.stem}")
        if not st.form_submit_button("Start training", type="primary"):
            return None
    return chosen.stem, text


def config_error_message(error: Exception) -> str:
    problems = getattr(error, "problems", None) or [str(error)]
    return "**Nothing was launched.** Fix these and submit again:\n\n" + "\n".join(f"- {p}" for p in problems)

