"""What every sequence task provides: arrays, a loss, a metric and the baseline a model has to beat.

Tasks are numpy-only so that the dashboard can list them, validate their parameters and compute their
baselines without importing keras.
"""

import abc
from typing import ClassVar, Literal

import numpy as np
import pydantic

# Seed of the validation set: fixed, so every run of an experiment (every cell, truncation and training seed)
# is scored on the same sequences.
VALIDATION_SEED = 12345


class TaskParams(pydantic.BaseModel):
    """Base of every task's parameters; `name` is the registry key (the YAML's `task.name`)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    name: str

    @property
    def sequence_length(self) -> int:
        """Number of timesteps of one input sequence (bounds the truncation length)."""
        raise NotImplementedError


class Task(abc.ABC):
    """A supervised sequence task.

    Class attributes:
        params_type: the pydantic model of the task's YAML parameters.
        target_form: "final" (one target per sequence, seq2vec) or "per_step" (a target at every timestep).
        loss: the Keras loss identifier used for training.
        metric: name of the task metric, logged as `val_<metric>`.
        baseline_name: what the baseline is (shown next to it).
    """

    params_type: ClassVar[type[TaskParams]]
    target_form: ClassVar[Literal["final", "per_step"]]
    loss: ClassVar[Literal["mse", "sparse_categorical_crossentropy"]]
    metric: ClassVar[str]
    baseline_name: ClassVar[str]

    def __init__(self, params: TaskParams):
        self.params = params

    @property
    def sequence_length(self) -> int:
        return self.params.sequence_length

    @property
    @abc.abstractmethod
    def num_features(self) -> int:
        """Size of the input vector at each timestep."""

    @property
    def num_outputs(self) -> int:
        """Units of the output layer: 1 for regression, the number of classes for classification."""
        return 1

    @property
    @abc.abstractmethod
    def baseline(self) -> float:
        """Loss of the trivial (memoryless / persistence) predictor, in the units of `loss`."""

    @abc.abstractmethod
    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """A fresh training batch drawn with `rng`.

        Returns:
            x: float32 `[batch_size, sequence_length, num_features]`.
            y: `[batch_size, 1]` (final target) or `[batch_size, sequence_length, 1]` (per step; int32 class ids
                for classification, float32 otherwise).
        """

    @abc.abstractmethod
    def validation_data(self, num_sequences: int) -> tuple[np.ndarray, np.ndarray]:
        """A fixed validation set of `num_sequences` sequences, the same for every run; shapes as `sample_batch`."""

    def loss_value(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The training loss computed in numpy (mean over sequences and steps)."""
        return LOSSES[self.loss](y_true, y_pred)

    @abc.abstractmethod
    def metric_value(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The task metric in numpy."""


def mean_squared_error(y_true, y_pred):
    return float(np.mean((np.asarray(y_pred, np.float64) - y_true) ** 2))


def mean_absolute_error(y_true, y_pred):
    return float(np.mean(np.abs(np.asarray(y_pred, np.float64) - y_true)))


def sparse_categorical_crossentropy(y_true, y_pred):
    """Mean cross-entropy in nats; `y_pred` holds probabilities `[..., num_classes]`, `y_true` ids `[..., 1]`."""
    probs = np.take_along_axis(np.asarray(y_pred, np.float64), np.asarray(y_true, np.int64), axis=-1)
    return float(-np.mean(np.log(np.clip(probs, 1e-7, 1.0))))


LOSSES = {
    "mse": mean_squared_error,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
}
