"""k-step-ahead prediction by feeding a model its own forecasts (d2l.ai "Sequence models", section 9.1).

A one-step model only ever sees true history in training. To look k steps ahead without new data it must read
its own predictions as inputs for k - 1 steps, and its errors compound. `rollout` does that for any model, an
AR(τ) baseline and a recurrent network alike, through one `predict` callable; `kstep_series` and
`error_by_step` turn the result into d2l's figure (the k-step predictions along the series) and its error curve.
Numpy only.
"""

from collections.abc import Callable

import numpy as np

# The look-aheads shown by default (d2l's 1, 4, 16, 64).
STEPS_SHOWN = (1, 4, 16, 64)


def rollout(predict: Callable[[np.ndarray], np.ndarray], values: np.ndarray, origins: np.ndarray, window: int,
            steps: int) -> np.ndarray:
    """Predict `steps` steps ahead of every origin, feeding each one-step forecast back as the next input.

    Args:
        predict: the model: `[batch, window, features]` -> `[batch, window, outputs]`; the first `features`
            outputs of the last step are the one-step forecast of the next input.
        values: the series the model reads, `[time, features]` (in the model's units).
        origins: indices of the last observed step of each rollout, each >= `window` - 1.
        window: how many steps of (true, then predicted) history the model is given each time.

    Returns:
        `[origins, steps, features]`: element k - 1 is the k-step-ahead prediction from each origin.
    """
    values = np.asarray(values, np.float32)
    num_features = values.shape[1]
    context = values[np.asarray(origins)[:, None] + np.arange(1 - window, 1)[None, :]]
    predicted = np.empty((len(origins), steps, num_features), np.float32)
    for k in range(steps):
        following = np.asarray(predict(context))[:, -1, :num_features]
        predicted[:, k] = following
        context = np.concatenate([context[:, 1:], following[:, None, :]], axis=1)
    return predicted


def kstep_series(predicted: np.ndarray, origins: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-step-ahead predictions as a series: for each origin i, the prediction of step i + k made at i.

    Returns:
        The time indices `[origins]` and the predictions `[origins, features]`.
    """
    return np.asarray(origins) + k, predicted[:, k - 1]


def error_by_step(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean absolute error of the k-step-ahead predictions, k = 1 ... steps: `[steps]` (over origins and
    features)."""
    return np.mean(np.abs(np.asarray(predicted, np.float64) - truth), axis=(0, 2))


def steps_shown(max_steps: int) -> tuple[int, ...]:
    """The look-aheads of `STEPS_SHOWN` that a rollout of `max_steps` reaches."""
    return tuple(k for k in STEPS_SHOWN if k <= max_steps)
