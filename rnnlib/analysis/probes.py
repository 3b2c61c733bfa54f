"""Looking inside recurrent layers with numpy: gate and state traces of a run's own weights as tables, how often
gates saturate, which units carry a task's memory, and what the traced network answers. The cell equations
themselves are `rnnlib.core.cells`; the gradient-flow record is `rnnlib.core.records`."""


import numpy as np
import pandas as pd

from rnnlib.core import cells


def tidy_traces(traces: dict[int, dict[str, np.ndarray]], sequence: int = 0) -> pd.DataFrame:
    """One sequence's traces as a long DataFrame: `layer`, `quantity`, `t`, `unit`, `value`."""
    frames = []
    for layer, quantities in traces.items():
        for quantity, values in quantities.items():
            time_steps, units = values.shape[1:]
            frames.append(pd.DataFrame({
                "layer": layer, "quantity": quantity,
                "t": np.repeat(np.arange(time_steps), units), "unit": np.tile(np.arange(units), time_steps),
                "value": values[sequence].reshape(-1),
            }))
    return pd.concat(frames, ignore_index=True)


def gate_saturation(traces: dict[int, dict[str, np.ndarray]], cell_type: str, low: float = 0.1,
                    high: float = 0.9) -> pd.DataFrame:
    """Share of (sequence, step) pairs each gate unit spends nearly closed (< low) or nearly open (> high).

    Returns `layer`, `gate`, `unit`, `closed`, `open`; a saturated gate passes (or blocks) gradient unchanged.
    """
    rows = []
    for layer, quantities in traces.items():
        for gate in cells.get_cell(cell_type).gates:  # none for the tanh RNN
            values = quantities[gate]
            for unit in range(values.shape[-1]):
                column = values[..., unit]
                rows.append({"layer": layer, "gate": gate, "unit": unit, "closed": float(np.mean(column < low)),
                             "open": float(np.mean(column > high))})
    return pd.DataFrame(rows, columns=["layer", "gate", "unit", "closed", "open"])


def example_sequences(task, seed: int, num_sequences: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`num_sequences` input sequences of `task` drawn with `seed`: float `[num, T, features]` and targets."""
    x, y = task.sample_batch(np.random.default_rng(seed), num_sequences)
    return np.asarray(x, np.float64), np.asarray(y)


def memory_units(traces: dict[str, np.ndarray], signal: np.ndarray, quantity: str = "h") -> pd.DataFrame:
    """How closely each unit's `quantity` (`[batch, T, units]`) follows `signal` `[batch, T]` over all sequences
    and steps (`Task.memory_signal`): `unit`, `correlation` (Pearson), strongest first. A unit near ±1 holds
    what the task needs remembered."""
    values = traces[quantity].reshape(-1, traces[quantity].shape[-1])
    target = np.asarray(signal, np.float64).reshape(-1)
    centred, target = values - values.mean(axis=0), target - target.mean()
    spread = np.linalg.norm(centred, axis=0) * np.linalg.norm(target)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(spread > 0, centred.T @ target / spread, 0.0)
    table = pd.DataFrame({"unit": np.arange(values.shape[1]), "correlation": correlation})
    return table.reindex(table["correlation"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def most_active_units(traces: dict[str, np.ndarray], quantity: str = "h", count: int = 4) -> list[int]:
    """The `count` units whose `quantity` varies most over time (a starting point when no memory signal exists)."""
    spread = traces[quantity].std(axis=1).mean(axis=0)
    return [int(u) for u in np.argsort(spread)[::-1][:count]]


def predictions(weights: dict[str, np.ndarray], traces: dict[int, dict[str, np.ndarray]], task) -> np.ndarray:
    """The model's outputs from the top layer's hidden states and the logged `head` weights: `[batch, outputs]`
    at the last step for final-target tasks, `[batch, T, outputs]` otherwise (class probabilities for
    classification tasks)."""
    hidden = traces[max(traces)]["h"]
    if task.target_form == "final":
        hidden = hidden[:, -1]
    logits = hidden @ np.asarray(weights["head/kernel"], np.float64) + np.asarray(weights["head/bias"], np.float64)
    if task.loss != "sparse_categorical_crossentropy":
        return logits
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def state_trajectory(states: np.ndarray, fit_on: np.ndarray | None = None,
                     components: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    """One sequence's state path, `states` `[T, units]`, projected on the first principal components of the
    states `fit_on` (`[..., units]`: e.g. every step of many sequences, so the axes are the ones the network
    uses in general; default: `states` itself). Returns (`t`, `pc1`, `pc2`, ... per step, the share of
    `fit_on`'s variance each component explains). PCA by SVD of the centred states, signs fixed so that each
    component's largest loading is positive."""
    reference = np.asarray(fit_on if fit_on is not None else states, np.float64).reshape(-1, states.shape[-1])
    mean = reference.mean(axis=0)
    _, singular, basis = np.linalg.svd(reference - mean, full_matrices=False)
    count = min(components, basis.shape[0])
    basis = basis[:count]
    basis *= np.sign(basis[np.arange(count), np.abs(basis).argmax(axis=1)])[:, None]
    variance = singular**2
    explained = variance[:count] / variance.sum() if variance.sum() > 0 else np.zeros(count)
    projected = (np.asarray(states, np.float64) - mean) @ basis.T
    table = pd.DataFrame(projected, columns=[f"pc{i + 1}" for i in range(count)])
    table.insert(0, "t", np.arange(len(table)))
    return table, explained


def memory_steps(signal: np.ndarray | None) -> list[int]:
    """The steps of one sequence where what the task needs remembered changes (`Task.memory_signal`, `[T]`): for
    the adding problem, the two marked steps."""
    if signal is None:
        return []
    signal = np.asarray(signal, np.float64)
    return [int(t) for t in np.flatnonzero(np.diff(signal, prepend=0.0) != 0)]
