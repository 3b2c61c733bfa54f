"""Diverged runs: when a run has diverged, and what its numbers mean from then on. Pure python.

The rule, used by training, the CLI summary and every page:

- A run **diverged at epoch e** when e is the first epoch whose `train_loss` or `val_loss` is NaN or +-inf.
  Training stops there: its weights are no longer finite, and every later epoch would log the same. The run ends
  FINISHED with the tag `rnnlib.diverged_epoch`, and its `best_val_loss` is NaN.
- **Per run**, a statistic that covers a diverged epoch has no value (NaN, shown as "diverged"): the best and
  the last of a diverged run, its value at epoch N >= e. A diverged run is never ranked.
- **Per group** (seeds of one setting), means, spreads, confidence bands and curves are taken over the runs
  that have a value; `n` counts those and `diverged` counts the others, and both are shown side by side
  (a legend reads `rnn · full (n=2, 1 diverged)`). A group whose runs all diverged has no mean and ranks last.
  So a diverged run is never averaged in as a number, and never hidden either.
"""

import math

LOSS_KEYS = ("train_loss", "val_loss")
TAG = "rnnlib.diverged_epoch"


def is_finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def diverged(logs: dict[str, float]) -> bool:
    """Whether one epoch's logs show a diverged run: a loss that is not a finite number."""
    return any(key in logs and not is_finite(logs[key]) for key in LOSS_KEYS)


def diverged_epoch(history: list[dict[str, float]]) -> int | None:
    """The first epoch (1-based) whose losses are not finite, or None."""
    for epoch, logs in enumerate(history, start=1):
        if diverged(logs):
            return epoch
    return None


def best_val_loss(history: list[dict[str, float]]) -> float:
    """The lowest validation loss of a run; NaN when it diverged or logged no epoch."""
    if not history or diverged_epoch(history) is not None:
        return math.nan
    return min(logs["val_loss"] for logs in history)


def describe(epoch) -> str:
    """How tables say it: `diverged at epoch 3`."""
    return f"diverged at epoch {int(float(epoch))}" if is_finite(epoch) else "diverged"
