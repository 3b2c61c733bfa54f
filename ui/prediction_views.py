"""The Predictions page's views, one per kind of task output (`Task.prediction_view`): a registry, so the page
has no task-specific branches. Each view draws from the arrays runs logged (`Task.prediction_arrays`) or, for
text, samples from the logged weights; the figures and numbers come from `rnnlib.viz.plots` /
`rnnlib.analysis.predictions`.
"""

import dataclasses

import numpy as np
import pandas as pd
import streamlit as st

from rnnlib.analysis import predictions, probes
from rnnlib.core import cells, rollouts
from rnnlib.tasks import Task
from rnnlib.tasks.base import CharacterTask
from rnnlib.tasks.forecast import ForecastTask
from rnnlib.viz import plots
from ui import data, safe
from ui.permalink import Permalink

MAX_SIDE_BY_SIDE = 3  # confusion matrices / text samples per row


@dataclasses.dataclass(frozen=True)
class Selection:
    """What a view gets: the task, the chosen runs, their configs and arrays (None for a run that logged none),
    a label per run, the group of each run (runs that differ only by seed share one), and the page's
    permalink."""

    uri: str
    task: Task
    run_ids: list[str]
    configs: dict
    arrays: dict[str, dict | None]
    labels: dict[str, str]
    groups: dict[str, str]
    link: Permalink


def _logged(selection: Selection) -> dict[str, dict]:
    """The chosen runs that logged predictions; when none did, the page says so and stops."""
    logged = {run_id: arrays for run_id, arrays in selection.arrays.items() if arrays is not None}
    if not logged:
        selection.link.stop("These runs logged no predictions (they ended before predictions were kept with runs): "
                            "train them again to see them here.", icon=":material/info:")
    return logged


def _per_run(frames: dict[str, pd.DataFrame], labels: dict[str, str], keys: list[str]) -> pd.DataFrame:
    """Each run's frame of `predictor` rows with its "model" rows named after the run; the trivial forecasts,
    the same in every run, once."""
    named = [frame.assign(predictor=frame["predictor"].replace("model", labels[run_id]))
             for run_id, frame in frames.items()]
    return pd.concat(named, ignore_index=True).drop_duplicates(keys)


def forecast_view(selection: Selection) -> None:
    task, link = selection.task, selection.link
    assert isinstance(task, ForecastTask), "the forecast view is ForecastTask's"
    logged = _logged(selection)
    first = next(iter(logged.values()))
    targets = [str(t) for t in first["targets"]]
    target = targets.index(link.choice("Target", "target", targets)) if len(targets) > 1 else 0
    units = targets[target]

    st.subheader("Forecast from one origin")
    origins = first["origins"]
    times = first["times"]
    position = link.choice("Forecast origin (last step read)", "origin", list(range(len(origins))),
                           default=len(origins) // 2, widget=st.select_slider,
                           format_func=lambda i: times[origins[i]])
    origin = int(origins[position])
    start, stop = max(0, origin - task.sequence_length + 1), origin + 1 + task.horizon
    history = pd.DataFrame({"time": times[start:stop], "value": first["series"][start:stop, target]})
    paths = _per_run({r: predictions.forecast_paths(a, position, target) for r, a in logged.items()},
                     selection.labels, ["predictor", "time"])
    st.plotly_chart(plots.forecast_figure(history, paths, f"{units}: {task.horizon}-step forecast made at "
                                          f"{times[origin]}", units), width="stretch", key="predictions_fan")
    st.caption(f"The model read the {task.sequence_length} steps up to the origin and forecast the next "
               f"{task.horizon} in one go (seq2seq: a forecast at every step, scored at the window's last). Grey: "
               "the trivial forecasts every model must beat.")

    errors = _per_run({r: predictions.horizon_errors(a) for r, a in logged.items()}, selection.labels,
                      ["predictor", "k"])
    if task.horizon > 1:
        st.plotly_chart(plots.horizon_error_figure(errors, f"MAE ({', '.join(targets)})"), width="stretch",
                        key="predictions_horizon")
    st.dataframe(errors.groupby("predictor", sort=False)["mae"].mean().rename("MAE over all horizon steps")
                 .reset_index(), hide_index=True)
    _rollout_section(selection, logged, target, units)


def _rollout_section(selection: Selection, logged: dict, target: int, units: str) -> None:
    st.subheader("k steps ahead on its own predictions")
    with_rollouts = {r: a for r, a in logged.items() if "rollout" in a}
    if not with_rollouts:
        st.info("These runs read input columns they do not forecast (`features`), so they cannot feed their own "
                "predictions back: no k-step rollouts.", icon=":material/info:")
        return
    errors = predictions.rollout_errors(with_rollouts, selection.groups)
    first = next(iter(with_rollouts.values()))
    assert isinstance(selection.task, ForecastTask), "the forecast view is ForecastTask's"
    trivial = predictions.trivial_rollout_errors(first, selection.task.season)
    st.plotly_chart(plots.rollout_error_figure(errors, f"MAE ({', '.join(str(t) for t in first['targets'])})",
                                               trivial), width="stretch", key="predictions_rollout_error")
    st.caption("From each origin a model predicts one step, appends its prediction to the inputs and predicts "
               "again (d2l.ai 9.1). Errors compound, so the error grows with k for every model; how fast it grows "
               "separates the ones that learned the dynamics from the ones that learned to echo the last value. "
               "Grey: the trivial forecasts from the same origins, which need no rollout.")
    run_id = selection.link.choice("Run for the k-step view", "kstep_run", list(with_rollouts),
                                   format_func=selection.labels.get)
    arrays = with_rollouts[run_id]
    steps = rollouts.steps_shown(arrays["rollout"].shape[1])
    first_time = int(arrays["rollout_origins"][0])
    truth = pd.DataFrame({"time": arrays["times"][first_time:], "value": arrays["series"][first_time:, target]})
    st.plotly_chart(plots.kstep_figure(truth, predictions.kstep_frame(arrays, steps, target),
                                       f"{units}: {', '.join(map(str, steps))}-step-ahead predictions of "
                                       f"{selection.labels[run_id]}", units),
                    width="stretch", key="predictions_kstep")


def classes_view(selection: Selection) -> None:
    st.subheader("Confusion matrix (validation)")
    logged = list(_logged(selection).items())
    for row in range(0, len(logged), MAX_SIDE_BY_SIDE):
        for column, (run_id, arrays) in zip(st.columns(MAX_SIDE_BY_SIDE), logged[row : row + MAX_SIDE_BY_SIDE]):
            matrix = predictions.confusion(arrays["y_true"], arrays["y_pred"])
            accuracy = np.trace(matrix) / matrix.sum()
            labels = [str(c) for c in range(matrix.shape[0])]
            column.plotly_chart(plots.confusion_figure(matrix, labels, f"{selection.labels[run_id]}: "
                                                       f"accuracy {accuracy:.1%}"), width="stretch",
                                key=f"predictions_confusion_{run_id}")
    st.caption("Rows: the true class; columns: the class the model found most likely. Off-diagonal cells are the "
               "confusions, e.g. which digits a pixel-by-pixel reader mixes up.")


TEMPERATURES = (0.2, 0.5, 0.8, 1.0, 1.2, 1.5)


def text_view(selection: Selection) -> None:
    task, link = selection.task, selection.link
    assert isinstance(task, CharacterTask), "the text view is a character task's"
    st.subheader("Sampled text")
    left, middle, right = st.columns([2, 2, 1])
    prompt = left.text_input("Prompt (the network reads it first)", value="The ", key="predictions_prompt")
    temperatures = middle.multiselect("Temperatures", TEMPERATURES, default=[0.5, 1.0, 1.5],
                                      key="predictions_temperatures")
    length = right.number_input("Characters", 20, 1000, 300, step=20, key="predictions_length")
    seed = link.number("Sampling seed", "sample_seed", 0, 0, 10**6)
    runs = [r for r in selection.run_ids if r in selection.labels]
    for row in range(0, len(runs), MAX_SIDE_BY_SIDE):
        for column, run_id in zip(st.columns(MAX_SIDE_BY_SIDE), runs[row : row + MAX_SIDE_BY_SIDE]):
            column.markdown(f"**{safe.text(selection.labels[run_id])}**")
            weights = data.weights(selection.uri, run_id, selection.labels.get)
            if weights is None:
                continue
            model = selection.configs[run_id].model
            if model.cell_type is None:
                column.info(f"An AR(τ) model ({model.kind}) keeps no state to carry a prompt; sampling here "
                            "unrolls recurrent cells.", icon=":material/info:")
                continue
            for temperature in temperatures:
                try:
                    text = _sample(selection.uri, run_id, model.cell_type, model.num_layers, task.alphabet, prompt,
                                   int(length), temperature, seed, weights)
                except ValueError as error:
                    st.error(str(error), icon=":material/edit_off:")
                    return
                column.caption(f"temperature {temperature:g}")
                column.code(prompt + text, language=None, wrap_lines=True)
    st.caption("One character at a time from softmax(logits / temperature), each fed back as the next input, with "
               "the run's logged weights. Low temperatures repeat the likeliest phrases; 1 is the model's own "
               "distribution; higher ones drift into invented words.")


@st.cache_data(max_entries=64, show_spinner="Sampling…")
def _sample(uri: str, run_id: str, cell_type: str, num_layers: int, alphabet: str, prompt: str, length: int,
            temperature: float, seed: int, _weights: dict) -> str:
    """Cached by run and settings; the run's weights (not hashed) come with it."""
    return predictions.sample_text(_weights, cell_type, num_layers, alphabet, prompt, length, temperature, seed)


def sequence_view(selection: Selection) -> None:
    task, link = selection.task, selection.link
    logged = _logged(selection)
    first = next(iter(logged.values()))
    st.subheader("Validation sequences")
    if task.target_form == "final":
        rows = [{"sequence": i, "target": task.format_target(first["y_true"][i]),
                 **{selection.labels[r]: task.format_answer(a["y_pred"][i]) for r, a in logged.items()}}
                for i in range(len(first["y_true"]))]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        return
    index = link.number("Sequence", "sequence", 0, 0, len(first["y_true"]) - 1)
    st.plotly_chart(plots.sequence_prediction_figure(
        predictions.sequence_frame(first["y_true"][index], {selection.labels[r]: a["y_pred"][index]
                                                            for r, a in logged.items()}),
        f"Validation sequence {index}: target and predictions"), width="stretch", key="predictions_sequence")


GENERATED_SHOWN = 6


def generated_view(selection: Selection) -> None:
    task = selection.task
    logged = _logged(selection)
    first = next(iter(logged.values()))
    st.subheader("Generated from one vector")
    by_label = {selection.labels[r]: a["y_pred"] for r, a in logged.items()}
    count = min(GENERATED_SHOWN, len(first["y_true"]))
    titles = {i: ", ".join(f"{name} {value:.2f}" for name, value in zip(task.feature_names, first["x"][i, 0]))
              for i in range(count)}
    st.plotly_chart(plots.generated_figure(predictions.generated_frame(first["y_true"], by_label, count), titles),
                    width="stretch", key="predictions_generated")
    st.caption("Each panel: one validation vector, read at the first step only; from then on the network runs on "
               "its own state (the inputs are zero), so everything it draws it unrolls from that one vector. "
               "Black: the target.")
    errors = predictions.sequence_errors(first["y_true"], by_label)
    st.dataframe(errors.describe().loc[["mean", "50%", "max"]].rename(index={"50%": "median"}).T
                 .rename(columns=lambda c: f"RMSE {c}"), width="stretch")
    _own_vector(selection, first["x"][0, 0])


def _own_vector(selection: Selection, default: np.ndarray) -> None:
    """A vector the user types, unrolled by every chosen run from its logged weights (numpy, no Keras)."""
    task = selection.task
    st.subheader("Your own vector")
    columns = st.columns(len(task.feature_names))
    vector = [column.number_input(name, value=float(value), format="%g", key=f"predictions_vector_{name}")
              for column, name, value in zip(columns, task.feature_names, default)]
    x = np.zeros((1, task.sequence_length, task.num_features), np.float32)
    x[0, 0] = vector
    outputs = {}
    for run_id in selection.run_ids:
        model = selection.configs[run_id].model
        weights = data.weights(selection.uri, run_id, selection.labels.get)
        if weights is None:
            continue
        traces = cells.model_traces(weights, model.cell_type, model.num_layers, x)
        outputs[selection.labels[run_id]] = probes.predictions(weights, traces, task)
    target = task.targets_for(x)
    frame = predictions.generated_frame(target if target is not None else np.full((1, task.sequence_length, 1),
                                                                                  np.nan), outputs, 1)
    title = ", ".join(f"{name} {value:g}" for name, value in zip(task.feature_names, vector))
    st.plotly_chart(plots.generated_figure(frame, {0: title}, columns=1), width="stretch",
                    key="predictions_own_vector")
    st.caption("Computed here from each run's logged weights with the textbook cell equations. Values outside "
               "the ranges the task drew in training show what the network does not know: it was never asked "
               "for them.")


def translations_view(selection: Selection) -> None:
    task, link = selection.task, selection.link
    assert isinstance(task, CharacterTask), "the translations view is a character task's"
    logged = _logged(selection)
    st.subheader("Greedy decodings of held-out inputs")
    by_label = {selection.labels[r]: a for r, a in logged.items()}
    st.dataframe(predictions.translations(by_label), hide_index=True, width="stretch")
    st.caption("The decoder starts from the state the source left at ▶ and reads its own previous character "
               "(greedy decoding), never the target; ✓ marks an exact match, ■ ends an answer.")
    run_id = link.choice("Run", "decoder_run", list(logged), format_func=selection.labels.get)
    arrays = logged[run_id]
    index = link.number("Sequence", "sequence", 0, 0, len(arrays["source"]) - 1)
    start = task.unscored_steps
    decoded = [task.alphabet[i] for i in np.argmax(arrays["y_pred"][index, start:], axis=-1)]
    st.plotly_chart(plots.decoder_figure(arrays["y_pred"][index, start:], task.alphabet, decoded,
                                         f"{arrays['source'][index]} → {arrays['decoded'][index]} "
                                         f"(target {arrays['target'][index]})"),
                    width="stretch", key="predictions_decoder")
    st.caption("The decoder's distribution over characters at each step; the darkest cell of each column is the "
               "character it chose and read next. Spread-out columns are where it was unsure (often the day or "
               "the month of a format it reads poorly).")


VIEWS = {
    "generated": generated_view,
    "translations": translations_view,
    "forecast": forecast_view,
    "classes": classes_view,
    "text": text_view,
    "sequence": sequence_view,
}
