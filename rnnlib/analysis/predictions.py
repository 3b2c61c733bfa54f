"""What the Predictions page computes from the arrays a run logged (`Task.prediction_arrays`), and text sampled
from logged weights. Numpy and pandas only: the dashboard imports this, never keras.
"""

import numpy as np
import pandas as pd

from rnnlib.core import cells, rollouts

# ---- Forecasts


def _forecasts(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The direct forecasts at every validation origin, `[origins, horizon, targets]`: the model's ("model")
    and the trivial ones by name."""
    trivial = {str(name): forecast for name, forecast in zip(arrays["baseline_names"], arrays["baseline_forecasts"])}
    return {"model": arrays["forecast"], **trivial}


def horizon_errors(arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """MAE per horizon step of the model's direct forecasts and of the trivial forecasts, over every validation
    origin and target: columns predictor, k, mae."""
    truth = arrays["truth"]
    return pd.DataFrame([
        {"predictor": name, "k": k + 1, "mae": float(error)}
        for name, forecast in _forecasts(arrays).items()
        for k, error in enumerate(np.mean(np.abs(forecast - truth), axis=(0, 2)))
    ])


def rollout_truth(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """What happened after each rollout origin: `[origins, steps, targets]`."""
    steps = arrays["rollout"].shape[1]
    return arrays["series"][arrays["rollout_origins"][:, None] + np.arange(1, steps + 1)[None, :]]


def rollout_errors(arrays_by_run: dict[str, dict[str, np.ndarray]], labels: dict[str, str]) -> pd.DataFrame:
    """MAE of the k-step-ahead rollout predictions per run: columns run_id, group, k, mae (runs that logged no
    rollout are left out)."""
    frames = []
    for run_id, arrays in arrays_by_run.items():
        if arrays is None or "rollout" not in arrays:
            continue
        errors = rollouts.error_by_step(arrays["rollout"], rollout_truth(arrays))
        frames.append(pd.DataFrame({"run_id": run_id, "group": labels[run_id], "k": np.arange(1, len(errors) + 1),
                                    "mae": errors}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run_id", "group", "k", "mae"])


def trivial_rollout_errors(arrays: dict[str, np.ndarray], season: int | None) -> pd.DataFrame:
    """MAE by k of the trivial forecasts from the rollout origins: persistence (x̂_{i+k} = x_i) and, with a
    season m, seasonal naive (x̂_{i+k} = x_{i+k-m}): columns predictor, k, mae."""
    truth = rollout_truth(arrays)
    origins, series = arrays["rollout_origins"], arrays["series"]
    steps = np.arange(1, truth.shape[1] + 1)
    forecasts = {"persistence": np.broadcast_to(series[origins][:, None, :], truth.shape)}
    if season:
        back = season * np.ceil(steps / season).astype(np.int64)
        forecasts[f"seasonal naive (m = {season})"] = series[origins[:, None] + steps[None, :] - back[None, :]]
    return pd.DataFrame([{"predictor": name, "k": int(k), "mae": float(error)} for name, forecast in forecasts.items()
                         for k, error in zip(steps, np.mean(np.abs(forecast - truth), axis=(0, 2)))])


def kstep_frame(arrays: dict[str, np.ndarray], steps: tuple[int, ...], target: int = 0) -> pd.DataFrame:
    """d2l's k-step figure as data: for each k, the predictions of step t made k steps earlier, along time.

    Returns:
        Columns k, time, value (one target).
    """
    frames = []
    for k in steps:
        index, predicted = rollouts.kstep_series(arrays["rollout"], arrays["rollout_origins"], k)
        frames.append(pd.DataFrame({"k": k, "time": arrays["times"][index], "value": predicted[:, target]}))
    return pd.concat(frames, ignore_index=True)


def forecast_paths(arrays: dict[str, np.ndarray], origin_position: int, target: int = 0) -> pd.DataFrame:
    """The forecasts made at one validation origin: the model's and the trivial ones, each starting from the
    last observed value (at the origin) and going on through steps 1 ... horizon.

    Returns:
        Columns predictor, time, value.
    """
    origin = int(arrays["origins"][origin_position])
    horizon = arrays["forecast"].shape[1]
    times = arrays["times"][origin : origin + 1 + horizon]
    observed = arrays["series"][origin, target]
    return pd.concat([pd.DataFrame({"predictor": name, "time": times,
                                    "value": np.concatenate([[observed], forecast[origin_position, :, target]])})
                      for name, forecast in _forecasts(arrays).items()], ignore_index=True)


# ---- Sequences


def sequence_frame(y_true: np.ndarray, y_pred: dict[str, np.ndarray]) -> pd.DataFrame:
    """One sequence's per-step target `[T, 1]` and each run's prediction `[T, outputs]` as columns step, series,
    value; class probabilities become the most likely class."""
    def values(array):
        array = np.asarray(array)
        return np.argmax(array, axis=-1) if array.shape[-1] > 1 else array[..., 0]

    frames = [pd.DataFrame({"series": "target", "value": np.asarray(y_true)[..., 0]})]
    frames += [pd.DataFrame({"series": label, "value": values(array)}) for label, array in y_pred.items()]
    return pd.concat([f.assign(step=np.arange(len(f))) for f in frames], ignore_index=True)


# ---- Classes


def confusion(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Counts `[true class, predicted class]` of the most likely class."""
    num_classes = probabilities.shape[-1]
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64).reshape(-1), np.argmax(probabilities, axis=-1).reshape(-1)), 1)
    return matrix


# ---- Text


def sample_text(weights: dict[str, np.ndarray], cell_type: str, num_layers: int, alphabet: str, prompt: str,
                length: int, temperature: float, seed: int = 0) -> str:
    """Characters drawn one at a time from a character model's logged weights, each fed back as the next input.

    The network reads `prompt` first, then samples from softmax(logits / `temperature`): near 0 it always takes
    the most likely character (greedy), at 1 it samples the model's own distribution, above 1 it flattens it.

    Raises:
        ValueError: a prompt character outside the corpus' alphabet.
    """
    unknown = sorted({c for c in prompt if c not in alphabet})
    if unknown or not prompt:
        raise ValueError(f"The prompt must be non-empty and use the corpus' characters only; not in it: "
                         f"{', '.join(map(repr, unknown))}.")
    eye = np.eye(len(alphabet))
    states = [None] * num_layers
    rng = np.random.default_rng(seed)
    inputs, generated = eye[[alphabet.index(c) for c in prompt]][None], []
    for _ in range(length):
        logits = _step_logits(weights, cell_type, inputs, states)
        choice = _draw(logits, temperature, rng)
        generated.append(alphabet[choice])
        inputs = eye[[choice]][None]
    return "".join(generated)


def _step_logits(weights, cell_type, inputs, states) -> np.ndarray:
    """Run `inputs` `[1, time, features]` through every layer from `states` (updated in place); the head's
    logits after the last step."""
    hidden = inputs
    for layer in range(len(states)):
        hidden, states[layer], _ = cells.run_cell(cell_type, hidden, *cells.layer_weights(weights, cell_type, layer),
                                                   initial_state=states[layer])
    return hidden[0, -1] @ weights["head/kernel"] + weights["head/bias"]


def _draw(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = (logits - logits.max()) / temperature
    probabilities = np.exp(scaled) / np.exp(scaled).sum()
    return int(rng.choice(len(probabilities), p=probabilities))


# ---- Generated sequences (vec2seq) and translations (encoder-decoder)


def generated_frame(y_true: np.ndarray, y_pred: dict[str, np.ndarray], count: int) -> pd.DataFrame:
    """The first `count` targets `[n, T, 1]` and each run's generations as columns sequence, step, series
    (target or the run's label), value."""
    length = np.asarray(y_true).shape[1]
    frames = [pd.DataFrame({"sequence": np.repeat(np.arange(count), length), "step": np.tile(np.arange(length), count),
                            "series": series, "value": np.asarray(values)[:count, :, 0].reshape(-1)})
              for series, values in {"target": y_true, **y_pred}.items()]
    return pd.concat(frames, ignore_index=True)


def sequence_errors(y_true: np.ndarray, y_pred: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each run's RMSE on each logged sequence: a row per sequence, a column per run."""
    return pd.DataFrame({label: np.sqrt(np.mean((np.asarray(values) - y_true) ** 2, axis=(1, 2)))
                         for label, values in y_pred.items()})


def translations(arrays_by_label: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Source, target and each run's decoded answer (✓ when exact) for the logged validation sequences."""
    first = next(iter(arrays_by_label.values()))
    table = pd.DataFrame({"source": first["source"].astype(str), "target": first["target"].astype(str)})
    for label, arrays in arrays_by_label.items():
        decoded = arrays["decoded"].astype(str)
        table[label] = [f"{'✓' if d == t else '✗'} {d}" for d, t in zip(decoded, table["target"])]
    return table
