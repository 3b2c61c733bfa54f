"""The Train page's two forms. Both return plain data for `rnnlib.config` to validate, or None until submitted."""

import typing

import streamlit as st
import yaml

from rnnlib import config, tasks


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


def builder() -> dict | None:
    """Task, cells, truncations, clipping, seeds and schedule; a sweep over every combination picked."""
    task_name = st.selectbox("Task", list(tasks.TASKS), key="train_task",
                             format_func=lambda n: f"{n} (baseline: {tasks.get(n).baseline_name})")
    with st.form("train_builder"):
        task_params = _task_param_inputs(task_name)
        left, middle, right = st.columns(3)
        cells = left.multiselect("Cells", list(config.CELL_TYPES), default=["rnn", "lstm", "gru"])
        units = middle.number_input("Units per layer", 1, 4096, 32)
        num_layers = right.number_input("Layers", 1, 16, 1)
        truncations = left.text_input(
            "Truncations", "full, 10", help="Comma-separated: `full`, `k` (k1 = k2 = k), `k1/k2` (update every k1 "
            "steps, backpropagate k2), `randN` (random lengths with mean N).")
        clipnorm = middle.number_input("Clip global gradient norm at", 0.0, value=1.0, format="%g",
                                       help="0 disables clipping; the pre-clip norm is logged either way.")
        seeds = right.text_input("Seeds", "0, 1", key="train_builder_seeds")
        epochs = left.number_input("Epochs", 1, 100_000, 20)
        steps = middle.number_input("Batches per epoch", 1, 1_000_000, 50)
        batch_size = right.number_input("Batch size", 1, 65_536, 64)
        learning_rate = left.number_input("Learning rate", 1e-6, 10.0, 3e-3, format="%g")
        optimizer = middle.selectbox("Optimizer", list(config.OPTIMIZERS))
        name = right.text_input("Experiment name", f"{task_name}_dashboard")
        if not st.form_submit_button("Start training", type="primary"):
            return None
    grid = {"model.cell_type": cells,
            "training.truncation": [config.truncation_from_label(t) for t in _parse_list(truncations)],
            "seed": _parse_list(seeds)}
    return {
        "name": name,
        "task": {"name": task_name, **task_params},
        "model": {"cell_type": (cells or ["lstm"])[0], "units": units, "num_layers": num_layers},
        "training": {"epochs": epochs, "steps_per_epoch": steps, "batch_size": batch_size,
                     "learning_rate": learning_rate, "optimizer": optimizer, "clipnorm": clipnorm or None},
        "grid": grid,
    }


def from_yaml() -> tuple[str, str] | None:
    """Pick a bundled experiment and edit it; returns (name, YAML text) on submit."""
    files = sorted(config.EXPERIMENTS_DIR.glob("*.yaml"))
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

