"""What every sequence task provides: arrays, a loss, a metric and the baseline a model has to beat.

Tasks are numpy-only so that the dashboard can list them, validate their parameters and compute their
baselines without importing keras.
"""

import abc
import dataclasses
import typing
from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
import pandas as pd
import pydantic
import pydantic_core

# Seed of the validation set: fixed, so every run of an experiment (every cell, truncation and training seed)
# is scored on the same sequences.
VALIDATION_SEED = 12345


# Validation sequences kept with a run for the Predictions page (`Task.prediction_arrays`).
NUM_SHOWN_SEQUENCES = 16

# The four sequence input/output forms (Karpathy 2015; d2l.ai chapter 9-10).
IO_FORMS = ("seq2seq", "seq2vec", "vec2seq", "encoder_decoder")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A validation metric: the weighted mean of `per_step` values (`[batch, steps]`, weighted by the task's
    `metric_weights`), then `finish` (e.g. a square root for an RMSE)."""

    per_step: Callable[[np.ndarray, np.ndarray], np.ndarray]
    finish: Callable[[float], float] | None = None

    def value(self, mean: float) -> float:
        return float(self.finish(mean)) if self.finish else float(mean)


def is_number_field(model: type[pydantic.BaseModel], name: str) -> bool:
    """Whether field `name` of `model` takes a number and not also a switch (bool)."""
    annotation = model.model_fields[name].annotation
    allowed = {annotation, *typing.get_args(annotation)}
    return bool(allowed & {int, float}) and bool not in allowed


def refuse_boolean_number(model: type[pydantic.BaseModel], value, info):
    """A field validator (`mode="before"`): YAML reads `true` as a boolean, which pydantic would take as the
    number 1 (`units: true`); refuse it for a number field."""
    if isinstance(value, bool) and is_number_field(model, info.field_name):
        raise ValueError("expected a number, not a switch (true/false)")
    return value


class TaskParams(pydantic.BaseModel):
    """Base of every task's parameters; `name` is the registry key (the YAML's `task.name`). Numbers must be
    finite (`.inf` is refused) and not booleans."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str

    @pydantic.model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data):
        # a model validator, not a field one: `name` is the tasks' discriminator, which pydantic keeps unvalidated
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, bool) and key in cls.model_fields and is_number_field(cls, key):
                    raise pydantic_core.PydanticCustomError(
                        "boolean_number", "expected a number, not a switch (true/false)",
                        {"field": key, "value": value})
        return data

    @property
    def sequence_length(self) -> int:
        """Number of timesteps of one input sequence (bounds the truncation length)."""
        raise NotImplementedError


class Task(abc.ABC):
    """A supervised sequence task.

    Class attributes:
        params_type: the pydantic model of the task's YAML parameters.
        target_form: "final" (one target per sequence, seq2vec) or "per_step" (a target at every timestep).
        io_form: the sequence input/output form the task demonstrates (one of `IO_FORMS`).
        loss: the Keras loss identifier used for training.
        metric: name of the task metric, logged as `val_<metric>`.
        baseline_name: what the baseline is (shown next to it).
        prediction_view: how the Predictions page shows this task's outputs (a key of `ui.prediction_views.VIEWS`):
            `sequence`, `classes`, `forecast`, `text`, `generated`, `translations`.
    """

    params_type: ClassVar[type[TaskParams]]
    target_form: ClassVar[Literal["final", "per_step"]]
    io_form: ClassVar[Literal["seq2seq", "seq2vec", "vec2seq", "encoder_decoder"]]
    loss: ClassVar[Literal["mse", "sparse_categorical_crossentropy"]]
    metric: ClassVar[str]
    baseline_name: ClassVar[str]
    prediction_view: ClassVar[str] = "sequence"

    def __init__(self, params: TaskParams):
        self.params = params

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The name of each input feature (a class attribute, or a property where the parameters decide)."""
        return ("x",)

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
        """The first `num_sequences` sequences of the task's fixed validation set, the same for every run;
        shapes as `sample_batch`. A generated task draws them from `VALIDATION_SEED`; a task on a data set
        holds `validation_size` of them and refuses more."""

    def validation_size(self, requested: int) -> int:
        """How many sequences the validation set holds: `requested` (`training.num_validation_sequences`) for a
        task that generates them; a data set's own count (every held-out window, origin or example once) for a
        task on data, whatever was requested. Runs are scored on exactly these sequences, and so are the
        baselines logged beside them."""
        return requested

    def to_table(self, x: np.ndarray) -> pd.DataFrame:
        """One input sequence `[T, num_features]` as an editable table: a row per step, a column per feature."""
        return pd.DataFrame(np.asarray(x, np.float64), columns=list(self.feature_names))

    def from_table(self, table: pd.DataFrame) -> np.ndarray:
        """The inverse of `to_table`: float32 `[T, num_features]`.

        Raises:
            ValueError: with what is wrong and how to fix it (empty cells, wrong columns).
        """
        missing = [name for name in self.feature_names if name not in table]
        if missing:
            raise ValueError(f"The sequence needs the columns {', '.join(self.feature_names)}; "
                             f"missing: {', '.join(missing)}.")
        values = table[list(self.feature_names)].apply(pd.to_numeric, errors="coerce")
        if values.empty or values.isna().any().any():
            raise ValueError("Every step needs a number in every column: fill or delete the empty rows.")
        return values.to_numpy(np.float32)

    def format_answer(self, prediction: np.ndarray) -> str:
        """One final prediction `[num_outputs]` as a user reads it: the value, or the class and its probability."""
        if self.loss == "sparse_categorical_crossentropy":
            best = int(np.argmax(prediction))
            return f"{best} (p = {float(prediction[best]):.2f})"
        return f"{float(prediction[0]):.3f}"

    def format_target(self, target: np.ndarray) -> str:
        """One final target `[1]` as a user reads it."""
        value = float(np.asarray(target).reshape(-1)[0])
        return str(int(value)) if self.loss == "sparse_categorical_crossentropy" else f"{value:.3f}"

    def memory_signal(self, x: np.ndarray) -> np.ndarray | None:
        """What a solution has to hold in its state after each step, `[batch, T]`, or None when no single
        quantity says it. Units that track it are the network's memory (see the Gates page)."""
        return None

    def inspection_guidance(self, state: str, num_sequences: int) -> str | None:
        """What to look for on the Gates page in a network trained on this task (Markdown), or None.

        Args:
            state: the state that holds memory, `c` (LSTM) or `h`; the page ranks units by how closely it follows
                `memory_signal` over `num_sequences` sequences.
        """
        return None

    @property
    def unscored_steps(self) -> int:
        """Leading steps with nothing to predict (an encoder-decoder's source): left out of the loss."""
        return 0

    def targets_for(self, x: np.ndarray) -> np.ndarray | None:
        """The targets of any input `[batch, T, features]` when the task can compute them (a generator's wave for
        a vector a user typed), else None."""
        return None

    def generate(self, predict, x: np.ndarray) -> np.ndarray | None:
        """The outputs scored by the metrics when the model must read its own predictions (greedy decoding), or
        None (the default) when the metrics score `predict(x)` itself.

        Args:
            predict: the model on whole sequences, numpy in and out, each call from a fresh state.
            x: validation inputs (with the teacher-forced targets a decoder must not read).
        """
        return None

    def loss_per_step(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """The training loss of each sequence and step, `[batch, steps]` (`[batch, 1]` for final targets)."""
        return LOSSES[self.loss](y_true, y_pred)

    @abc.abstractmethod
    def metric_per_step(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """The task metric of each sequence and step, `[batch, steps]`; averaged with `metric_weights`."""

    def metric_weights(self, length: int) -> np.ndarray:
        """Weight of each timestep in the metric, `[length]`; all steps count by default."""
        return np.ones(length)

    def loss_value(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """Mean loss over sequences and steps."""
        return float(np.mean(self.loss_per_step(y_true, y_pred)))

    @property
    def metrics(self) -> dict[str, Metric]:
        """Every validation metric by name, the task's `metric` first; each is logged as `val_<name>`."""
        return {self.metric: Metric(self.metric_per_step)}

    @property
    def metric_baselines(self) -> dict[str, dict[str, float]]:
        """Trivial predictors scored with the task's metrics on the validation set: `{name: {metric: value}}`."""
        return {}

    @property
    def data_files(self) -> list:
        """Files outside the installed packages that the task reads (a user's CSV): logged with every run."""
        return []

    def prediction_arrays(self, predict) -> dict[str, np.ndarray]:
        """What the Predictions page shows of a trained model, computed once in the worker and logged with the
        run: here the first `NUM_SHOWN_SEQUENCES` validation sequences, their targets and the predictions.

        Args:
            predict: the trained model, `[batch, time, features]` -> its outputs (numpy in, numpy out).
        """
        x, y = self.validation_data(NUM_SHOWN_SEQUENCES)
        x = np.asarray(x, np.float32)
        return {"x": x, "y_true": np.asarray(y), "y_pred": np.asarray(predict(x))}

    def metric_value(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        """The task's `metric` over whole sequences (or final targets), as logged (`metrics`)."""
        metric = self.metrics[self.metric]
        values = metric.per_step(y_true, y_pred)
        weights = np.broadcast_to(self.metric_weights(values.shape[1]), values.shape)
        return metric.value(np.sum(values * weights) / np.sum(weights))


def first_of(indices: np.ndarray, num_sequences: int) -> np.ndarray:
    """The first `num_sequences` of a data set's validation `indices` (windows, origins, examples), each once.

    Raises:
        ValueError: when more are asked for than the set holds (ask `Task.validation_size` first).
    """
    if num_sequences > len(indices):
        raise ValueError(f"The validation set holds {len(indices)} sequences; {num_sequences} were asked for.")
    return indices[:num_sequences]


# Per-step scores of single-output predictions: `[batch, steps, 1]` or `[batch, 1]` -> `[batch, steps]` / `[batch, 1]`.
def squared_error(y_true, y_pred):
    return np.square(y_pred - y_true, dtype=np.float64).reshape(len(y_true), -1)


def absolute_error(y_true, y_pred):
    return np.abs(y_pred - y_true, dtype=np.float64).reshape(len(y_true), -1)


def sparse_categorical_crossentropy(y_true, y_pred):
    """Cross-entropy in nats per step; `y_pred` holds probabilities `[..., classes]`, `y_true` ids `[..., 1]`."""
    probs = np.take_along_axis(y_pred, y_true.astype(np.int64), axis=-1).astype(np.float64)
    return -np.log(np.clip(probs, 1e-7, 1.0)).reshape(len(y_true), -1)


LOSSES = {
    "mse": squared_error,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
}


class OneHotSequences:
    """Class ids `[batch, time]` that read as one-hot float32 `[batch, time, classes]` when sliced.

    Only the slice asked for is expanded, so a batch of 100,000-step sequences costs its ids, not 10 floats
    per step. Supports `x[:, a:b]`, `x[i:j, a:b]`, `x.shape`, `len(x)` and `np.asarray(x)`.
    """

    def __init__(self, ids: np.ndarray, num_classes: int):
        self.ids = ids
        self.num_classes = num_classes

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.ids.shape, self.num_classes)

    dtype = np.dtype(np.float32)

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, key):
        ids = self.ids[key]
        return np.eye(self.num_classes, dtype=np.float32)[ids]

    def __array__(self, dtype=None, copy=None):
        return self[:, :].astype(dtype or self.dtype, copy=False)


class CharacterTask:
    """Task mixin for one-hot characters in and a distribution over the same characters out (needs `alphabet`);
    a sequence is shown and edited as a `character` column."""

    @property
    def alphabet(self) -> str:
        """The characters, in the order of their one-hot index (the task defines it)."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        return len(self.alphabet)

    @property
    def num_outputs(self) -> int:
        return len(self.alphabet)

    def to_table(self, x):
        return pd.DataFrame({"character": [self.alphabet[i] for i in np.argmax(np.asarray(x), axis=-1)]})

    def from_table(self, table):
        characters = table.get("character", pd.Series(dtype=object)).fillna("").astype(str)
        unknown = sorted({c for c in characters if len(c) != 1 or c not in self.alphabet})
        if characters.empty or unknown:
            raise ValueError(f"Every step needs exactly one character of the task's alphabet; not usable: "
                             f"{', '.join(repr(c) for c in unknown[:10]) or 'an empty table'}.")
        return np.eye(len(self.alphabet), dtype=np.float32)[[self.alphabet.index(c) for c in characters]]
