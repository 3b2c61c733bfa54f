"""Truncation schedules: which slices of a sequence each parameter update backpropagates through.

Pure python and numpy, shared by the training loop and the dashboard's pictures of BPTT. A schedule is a list
of `Update`s over one batch of sequences of `length` steps. For each update the training loop runs the
network from the carried state at `start` (with the gradient stopped there) to `stop`, and the update's loss
covers the outputs from `loss_start` to `stop`. So an update backpropagates `stop - start` steps (k2) and
updates are `stop - loss_start` steps apart (k1).
"""

import dataclasses

import numpy as np

from rnnlib.core.registry import lookup


@dataclasses.dataclass(frozen=True)
class Update:
    """One parameter update: steps `[start, stop)` are unrolled with gradient, `[loss_start, stop)` are scored."""

    start: int
    loss_start: int
    stop: int

    def __post_init__(self):
        assert 0 <= self.start <= self.loss_start < self.stop, self


def full_schedule(length: int, truncation, rng: np.random.Generator) -> list[Update]:
    """One update over the whole sequence."""
    return [Update(0, 0, length)]


def tbptt_schedule(length: int, truncation, rng: np.random.Generator) -> list[Update]:
    """An update every k1 steps, each backpropagating k2 steps (fewer at the start of the sequence)."""
    k1, k2 = truncation.k1, truncation.k2
    stops = list(range(k1, length, k1)) + [length]
    loss_starts = [0] + stops[:-1]
    return [Update(max(0, stop - k2), loss_start, stop) for loss_start, stop in zip(loss_starts, stops)]


def random_length_schedule(length: int, truncation, rng: np.random.Generator) -> list[Update]:
    """Consecutive chunks whose lengths are geometric with mean `truncation.mean`; k1 = k2 = chunk length.

    Random-length TBPTT: each update is its chunk's plain mean loss, a biased estimate of the full gradient (no
    reweighting by truncation probabilities, unlike Tallec & Ollivier's 2017 unbiased truncation)."""
    updates, start = [], 0
    while start < length:
        stop = min(length, start + int(rng.geometric(1.0 / truncation.mean)))
        updates.append(Update(start, start, stop))
        start = stop
    return updates


def unbiased_schedule(length: int, truncation, rng: np.random.Generator) -> list[Update]:
    """The chunks of `random_length_schedule`: each step's incoming state is cut with probability 1/mean,
    independently (a geometric chunk length is that memoryless draw). What makes the estimate unbiased is the
    compensation of the gradient inside each chunk (`gradient_scale`) and the equal weight of every step's loss
    (`loss_scale`), which training applies."""
    return random_length_schedule(length, truncation, rng)


SCHEDULES = {
    "full": full_schedule,
    "tbptt": tbptt_schedule,
    "random_length": random_length_schedule,
    "unbiased": unbiased_schedule,
}


RANDOM_MODES = frozenset({"random_length", "unbiased"})  # modes whose schedule is drawn anew for every batch


def is_random(truncation) -> bool:
    """Whether `truncation`'s schedule is random (the bias meter then samples several)."""
    return truncation.mode in RANDOM_MODES


def gradient_scale(truncation) -> float:
    """The factor on the gradient each step passes back to the one before it inside an update's window: 1 for
    plain truncation; 1 / (1 − p) for the unbiased mode, whose cut probability per step is p = 1/mean (Tallec &
    Ollivier 2017's compensation, d2l.ai §9.7's ξ_t = 1/(1 − p) where the gradient is kept), so that the
    expected product of factors along every path is 1."""
    if truncation.mode != "unbiased":
        return 1.0
    return truncation.mean / (truncation.mean - 1.0)


def loss_scale(truncation, update: Update) -> float:
    """The factor on an update's mean loss over its scored steps: 1, except in the unbiased mode, where each
    update is the sum of its steps' losses over `mean` (every step weighs the same, whatever its chunk's length,
    so the expected sum of a sequence's updates is the full gradient times its expected number of updates)."""
    if truncation.mode != "unbiased":
        return 1.0
    return (update.stop - update.loss_start) / truncation.mean


def schedule(length: int, truncation, rng: np.random.Generator) -> list[Update]:
    """The updates for one batch of sequences of `length` steps under `truncation` (a config `Truncation`)."""
    return lookup(SCHEDULES, truncation.mode, "truncation mode")(length, truncation, rng)


def gradient_reach(updates: list[Update], step: int) -> int | None:
    """The earliest timestep that receives gradient from the loss at `step`, or None when `step` is not scored."""
    for update in updates:
        if update.loss_start <= step < update.stop:
            return update.start
    return None
