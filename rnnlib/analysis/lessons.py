"""The numbers behind the dashboard's "how RNNs learn" pages: gradient reach under truncation, the Jacobian
products that make gradients vanish or explode, and the four sequence input/output forms.

Pure numpy and pandas (no keras): the pages compute these on every slider move. The Jacobian products are
measured on a real forward run of h_t = f(W_hh h_{t-1} + W_xh x_t), so saturation is whatever the run produced,
not an assumption; the analytic curves are the bounds of Pascanu, Mikolov & Bengio 2013 ("On the difficulty of
training recurrent neural networks", section 2.1).
"""

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd
import pydantic

from rnnlib import tasks
from rnnlib.core import config
from rnnlib.core.cells import sigmoid
from rnnlib.core.registry import lookup
from rnnlib.core.truncation import Update, gradient_reach, schedule


def tanh_derivative(a: np.ndarray) -> np.ndarray:
    return 1.0 - np.square(np.tanh(a))


def sigmoid_derivative(a: np.ndarray) -> np.ndarray:
    s = sigmoid(a)
    return s * (1.0 - s)


# Recurrent activations: the function, its derivative, and the derivative's maximum (at a = 0).
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"tanh": np.tanh, "sigmoid": sigmoid}
ACTIVATION_DERIVATIVES = {"tanh": tanh_derivative, "sigmoid": sigmoid_derivative}
ACTIVATION_DERIVATIVE_BOUNDS = {"tanh": 1.0, "sigmoid": 0.25}


def _check_activation(activation: str) -> None:
    lookup(ACTIVATIONS, activation, "activation")


# --- Vanishing and exploding gradients -------------------------------------------------------------------------


def derivative_bound_curve(spectral_radius: float, derivative_bound: float, max_lag: int) -> pd.DataFrame:
    """The upper bound on ||dh_T / dh_{T-lag}|| for h_t = f(W_hh h_{t-1} + W_xh x_t), lag = 0..max_lag.

    dh_T / dh_{T-lag} is the product of `lag` Jacobians J_t = diag(f'(a_t)) W_hh, and each has norm at most
    max f' * ||W_hh||; so the product is bounded by (max f' * ||W_hh||) ** lag: it vanishes geometrically when
    that factor is below 1 (Pascanu et al. 2013). `spectral_radius` stands for ||W_hh||; the two are equal for
    a normal matrix such as a rescaled orthogonal one (otherwise ||W_hh|| >= the radius).

    Args:
        derivative_bound: max f', e.g. `ACTIVATION_DERIVATIVE_BOUNDS["tanh"]` (1.0) or sigmoid's 0.25.

    Returns:
        `[max_lag + 1]` rows: lag (int), bound (float; 1.0 at lag 0).
    """
    lags = np.arange(max_lag + 1)
    return pd.DataFrame({"lag": lags, "bound": np.power(float(derivative_bound * spectral_radius), lags)})


def random_orthogonal(rng: np.random.Generator, num_samples: int, units: int) -> np.ndarray:
    """`[num_samples, units, units]` Haar-random orthogonal matrices: every singular value and |eigenvalue| is 1."""
    q, r = np.linalg.qr(rng.standard_normal((num_samples, units, units)))
    return q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # sign fix: uniform, not QR-biased


def _forward_preactivations(w_hh: np.ndarray, drive: np.ndarray, activation: str) -> np.ndarray:
    """a_t = W_hh h_{t-1} + drive_t, h_t = f(a_t), h_0 = 0. `w_hh` `[samples, units, units]`, `drive`
    `[steps, samples, units]` (the input term W_xh x_t) -> a `[steps, samples, units]`."""
    f = ACTIVATIONS[activation]
    state = np.zeros(drive.shape[1:])
    preactivations = np.empty_like(drive)
    for t, drive_t in enumerate(drive):
        preactivations[t] = np.einsum("sij,sj->si", w_hh, state) + drive_t
        state = f(preactivations[t])
    return preactivations


def jacobian_product_norms(spectral_radius: float, activation: str, units: int, max_lag: int,
                           rng: np.random.Generator | int, num_samples: int = 16, input_scale: float = 0.1,
                           num_features: int = 4, quantiles: tuple[float, float] = (0.1, 0.9)) -> pd.DataFrame:
    """The measured spectral norm of dh_T / dh_{T-lag} = J_T J_{T-1} ... J_{T-lag+1}, J_t = diag(f'(a_t)) W_hh.

    Each sample draws W_hh = spectral_radius * (random orthogonal), so its spectral radius and its norm are both
    exactly `spectral_radius`, W_xh `[units, num_features]` with N(0, 1 / num_features) entries and inputs
    x_t ~ N(0, input_scale^2), runs T = `max_lag` steps from h_0 = 0 and multiplies the Jacobians of that run
    backwards from the last step. The products span hundreds of orders of magnitude, so each partial product
    is renormalised and its log scale accumulated.

    Args:
        rng: a numpy Generator, or an int seed (what a cached caller passes).

    Returns:
        `[max_lag + 1]` rows: lag; median, lower, upper (the `quantiles` over samples) of the norm, 1.0 at lag 0;
        derivative: mean f'(a) over samples and units at the step the lag-th Jacobian comes from (NaN at lag 0),
        which shows how saturated the run is there.
    """
    _check_activation(activation)
    if units < 1 or max_lag < 1 or num_samples < 1:
        raise ValueError(f"units, max_lag and num_samples must be positive integers, got {units}, {max_lag} and "
                         f"{num_samples}.")
    rng = np.random.default_rng(rng)  # a Generator passes through unchanged
    w_hh = spectral_radius * random_orthogonal(rng, num_samples, units)
    w_xh = rng.standard_normal((num_samples, units, num_features)) / np.sqrt(num_features)
    inputs = input_scale * rng.standard_normal((max_lag, num_samples, num_features))
    preactivations = _forward_preactivations(w_hh, np.einsum("snf,tsf->tsn", w_xh, inputs), activation)
    derivatives = ACTIVATION_DERIVATIVES[activation](preactivations)  # [steps, samples, units]

    product = np.broadcast_to(np.eye(units), w_hh.shape).copy()
    log_scale = np.zeros(num_samples)
    directions = np.empty((max_lag, *w_hh.shape))  # each partial product at Frobenius norm 1
    log_scales = np.empty((max_lag, num_samples))
    for lag in range(1, max_lag + 1):
        step = max_lag - lag  # the Jacobian of h_{step+1} with respect to h_step
        product = product @ (derivatives[step][:, :, None] * w_hh)
        scale = np.linalg.norm(product, axis=(1, 2))
        scale = np.where(scale > 0, scale, 1.0)  # an exactly zero product stays zero
        product /= scale[:, None, None]
        log_scale += np.log(scale)
        directions[lag - 1], log_scales[lag - 1] = product, log_scale
    largest = np.linalg.svd(directions, compute_uv=False)[..., 0]
    with np.errstate(divide="ignore"):
        norms = np.exp(np.log(largest) + log_scales)  # [lags, samples]
    lower, median, upper = np.quantile(norms, [quantiles[0], 0.5, quantiles[1]], axis=1)
    return pd.DataFrame({
        "lag": np.arange(max_lag + 1),
        "median": np.concatenate([[1.0], median]),
        "lower": np.concatenate([[1.0], lower]),
        "upper": np.concatenate([[1.0], upper]),
        "derivative": np.concatenate([[np.nan], derivatives[::-1].mean(axis=(1, 2))]),
    })


# --- Unrolled backpropagation through time ---------------------------------------------------------------------


def make_truncation(mode: str, k1: int | None = None, k2: int | None = None,
                    mean: float | None = None) -> config.Truncation:
    """A validated `config.Truncation` from the values of a form; only the values `mode` uses are read.

    Raises:
        ValueError: with the config's own explanation, e.g. when k1 > k2.
    """
    values = {"full": {"mode": "full"}, "tbptt": {"mode": "tbptt", "k1": k1, "k2": k2},
              "random_length": {"mode": "random_length", "mean": mean},
              "unbiased": {"mode": "unbiased", "mean": mean}}
    try:
        return config.Truncation.model_validate(lookup(values, mode, "truncation mode"))
    except pydantic.ValidationError as error:  # keep only the sentences meant for the user
        problems = [": ".join([*map(str, e["loc"][:1]), e["msg"].removeprefix("Value error, ")])
                    for e in error.errors()]
        raise ValueError("; ".join(problems)) from None


def truncation_updates(length: int, truncation: config.Truncation, seed: int = 0) -> list[Update]:
    """`rnnlib.core.truncation.schedule` for one sequence of `length` steps; `seed` draws random lengths."""
    return schedule(length, truncation, np.random.default_rng(seed))


def unrolled_gradient_reach(length: int, updates: list[Update], step: int,
                            gradient_scale: float = 1.0) -> pd.DataFrame:
    """Which hidden states the loss at `step` sends gradient to, and how the updates tile the sequence.

    Args:
        updates: a schedule over `length` steps (`truncation_updates` / `rnnlib.core.truncation.schedule`).
        step: the loss (output) to follow, 0 <= step < length.

    Returns:
        `[length]` rows, one per timestep t:
        - update: the parameter update whose loss scores the output at t (index into `updates`);
        - update_start, loss_start, update_stop: that update's span (unrolled from update_start with the
          gradient stopped on the carried state there, scored on [loss_start, update_stop));
        - in_followed_update: t is unrolled with gradient by the update that scores `step`;
        - scored_with_step: t's loss is part of that same update (its gradients add up in one step);
        - reached: h_t receives gradient from the loss at `step` (reach <= t <= step);
        - followed: t == step;
        - weight: the factor on the gradient that loss sends to h_t, `gradient_scale` ** (step − t) where it is
          reached (the unbiased mode's compensation, `rnnlib.core.truncation.gradient_scale`; 1 for plain
          truncation), 0 where it is not.
    """
    if not 0 <= step < length:
        raise ValueError(f"The loss step to follow must be in [0, {length - 1}], got {step}.")
    t = np.arange(length)
    scorer = np.full(length, -1)  # the update that scores each step
    for index, update in enumerate(updates):
        scorer[update.loss_start:update.stop] = index
    assert (scorer >= 0).all(), "a schedule scores every step exactly once"
    starts = np.array([(u.start, u.loss_start, u.stop) for u in updates])[scorer]
    followed = updates[scorer[step]]
    reach = gradient_reach(updates, step)
    assert reach is not None, "a schedule scores every step exactly once"
    return pd.DataFrame({
        "t": t,
        "update": scorer,
        "update_start": starts[:, 0],
        "loss_start": starts[:, 1],
        "update_stop": starts[:, 2],
        "in_followed_update": (t >= followed.start) & (t < followed.stop),
        "scored_with_step": scorer == scorer[step],
        "reached": (t >= reach) & (t <= step),
        "followed": t == step,
        "weight": np.where((t >= reach) & (t <= step), float(gradient_scale) ** (step - t).clip(min=0), 0.0),
    })


def updates_table(updates: list[Update]) -> pd.DataFrame:
    """One row per update of a schedule: update, unrolled_from (gradient stopped there), scored_from, stop,
    backprop_steps (k2) and scored_steps (k1)."""
    return pd.DataFrame({
        "update": range(len(updates)),
        "unrolled_from": [u.start for u in updates],
        "scored_from": [u.loss_start for u in updates],
        "stop": [u.stop for u in updates],
        "backprop_steps": [u.stop - u.start for u in updates],
        "scored_steps": [u.stop - u.loss_start for u in updates],
    })


def reach_summary(reach: pd.DataFrame) -> dict[str, int]:
    """Headline numbers of an `unrolled_gradient_reach` frame: num_updates, step (the followed loss), reach
    (the earliest t it sends gradient to), num_reached (hidden states it reaches), backprop_steps (the
    followed update's k2: steps unrolled with gradient) and stopped_at (where the gradient is cut; -1 if not)."""
    followed = reach[reach["followed"]].iloc[0]
    reached = reach[reach["reached"]]
    return {
        "num_updates": int(reach["update"].nunique()),
        "step": int(followed["t"]),
        "reach": int(reached["t"].min()),
        "num_reached": len(reached),
        "backprop_steps": int(followed["update_stop"] - followed["update_start"]),
        "stopped_at": int(followed["update_start"]) if followed["update_start"] > 0 else -1,
    }


# --- Sequence input/output forms -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IOFormInfo:
    """How one of `rnnlib.tasks.IO_FORMS` maps sequences to outputs, in words for the dashboard."""

    title: str
    description: str
    examples: tuple[str, ...]


IO_FORM_INFO = {
    "seq2seq": IOFormInfo(
        "Sequence to sequence (aligned)",
        "One output for every input step: the network reads x_t and emits y_t from the state h_t.",
        ("time-series forecasting (the next value at every step)", "part-of-speech tagging",
         "frame-by-frame video labelling"),
    ),
    "seq2vec": IOFormInfo(
        "Sequence to vector",
        "Many inputs, one output: the whole sequence is read and only the final state h_T is scored.",
        ("sentiment of a review", "classifying a sequence (e.g. sequential MNIST)",
         "the adding problem: the sum of two marked values"),
    ),
    "vec2seq": IOFormInfo(
        "Vector to sequence",
        "One input, many outputs: a single vector enters at the first step (or sets the initial state) and the "
        "network unrolls from it, running on its own state from then on.",
        ("image captioning (image features in, words out)", "music generation from a seed or style"),
    ),
    "encoder_decoder": IOFormInfo(
        "Encoder-decoder",
        "An encoder reads the input sequence into a state (the context vector c); a decoder, started from c, "
        "emits an output sequence whose length can differ from the input's, reading its own previous output at "
        "each step. Encoder and decoder can be two networks (Sutskever et al. 2014) or, as in the bundled dates "
        "task, one stack that switches from reading to writing at a start mark.",
        ("machine translation", "summarisation", "speech recognition"),
    ),
}


def tasks_by_form() -> dict[str, list[str]]:
    """`{io_form: [task names]}` for every form in `rnnlib.tasks.IO_FORMS`, from each task's `io_form`, in
    registry order; a form no bundled task demonstrates maps to an empty list."""
    found: dict[str, list[str]] = {form: [] for form in tasks.IO_FORMS}
    for name, task in tasks.TASKS.items():
        found[task.io_form].append(name)
    return found
