"""Long-range memory benchmarks whose batches are generated on the fly from a seeded generator.

Nothing is materialised beyond one batch, so a sequence of 100,000 steps costs one batch of memory.
"""

import math
from typing import Literal

import numpy as np
import pandas as pd
import pydantic

from rnnlib.tasks.base import VALIDATION_SEED, OneHotSequences, Task, TaskParams, absolute_error


class AddingParams(TaskParams):
    """The adding problem (Hochreiter & Schmidhuber 1997, in the form of Arjovsky et al. 2016).

    Attributes:
        length: T, the number of timesteps.
    """

    name: Literal["adding"] = "adding"
    length: int = pydantic.Field(100, ge=2, le=1_000_000)

    @property
    def sequence_length(self) -> int:
        return self.length


class AddingTask(Task):
    """Inputs `[T, 2]`: values drawn from U[0, 1] and a mask marking one value in each half of the sequence.

    The target is the sum of the two marked values. Always predicting its mean, 1, gives MSE = Var(u1 + u2) =
    2 / 12 = 1/6: a model has learned to remember only once it goes well below that.
    """

    params_type = AddingParams
    params: AddingParams  # what `params_type` validates (narrows `Task.params`)
    target_form = "final"
    io_form = "seq2vec"
    loss = "mse"
    metric = "mae"
    baseline_name = "predict 1 (MSE 1/6)"
    feature_names = ("value", "mask")

    @property
    def num_features(self) -> int:
        return 2

    @property
    def baseline(self) -> float:
        return 1.0 / 6.0

    def sample_batch(self, rng, batch_size):
        length = self.params.length
        values = rng.uniform(0.0, 1.0, size=(batch_size, length)).astype(np.float32)
        half = length // 2
        first = rng.integers(0, half, size=batch_size)
        second = rng.integers(half, length, size=batch_size)
        mask = np.zeros((batch_size, length), np.float32)
        rows = np.arange(batch_size)
        mask[rows, first] = 1.0
        mask[rows, second] = 1.0
        x = np.stack([values, mask], axis=-1)
        y = (values[rows, first] + values[rows, second])[:, None].astype(np.float32)
        return x, y

    def validation_data(self, num_sequences):
        return self.sample_batch(np.random.default_rng(VALIDATION_SEED), num_sequences)

    def metric_per_step(self, y_true, y_pred):
        return absolute_error(y_true, y_pred)

    def memory_signal(self, x):
        """The running sum of the marked values: 0, then the first marked value, then the answer."""
        x = np.asarray(x)
        return np.cumsum(x[..., 0] * x[..., 1], axis=-1)

    def inspection_guidance(self, state, num_sequences):
        return (
            "**What to look for (adding problem).** The answer is the sum of the two values whose mask is 1, so a "
            "network that solves it must hold the first marked value until the end and then add the second. Look "
            f"for units whose {state} steps at the first marked step, stays flat through the unmarked ones and "
            "steps again at the second: they latch the marked values. The table ranks the units by how closely "
            f"their {state} follows the running sum of marked values over {num_sequences} sequences. In a "
            "trained LSTM the input gate opens (bright) at the marked steps and the forget gate stays near 1 in "
            "between; in a GRU the update gate stays near 1 (keep the state) except at the marked steps. An "
            "untrained or failed tanh RNN shows no such unit: its state is overwritten at every step."
        )


class CopyMemoryParams(TaskParams):
    """The copy memory task (Arjovsky et al. 2016).

    Attributes:
        delay: T, the number of blanks between the symbols to remember and the delimiter, plus one. The sequence
            has T + 20 steps.
    """

    name: Literal["copy_memory"] = "copy_memory"
    delay: int = pydantic.Field(20, ge=1, le=1_000_000)

    @property
    def sequence_length(self) -> int:
        return self.delay + 2 * CopyMemoryTask.num_symbols_to_copy


class CopyMemoryTask(Task):
    """Remember 10 symbols drawn from an alphabet of 8, wait T steps, then reproduce them.

    Input and target are class ids in 0..9 (0 blank, 1-8 symbols, 9 delimiter), the input one-hot encoded
    (lazily, see `OneHotSequences`):
    input  = s1..s10, T-1 blanks, delimiter, 10 blanks;  target = T+10 blanks, s1..s10.
    The memoryless strategy (blank for T+10 steps, uniform over the 8 symbols for the last 10) has cross-entropy
    10 ln 8 / (T + 20).
    """

    params_type = CopyMemoryParams
    params: CopyMemoryParams  # what `params_type` validates (narrows `Task.params`)
    target_form = "per_step"
    io_form = "seq2seq"
    loss = "sparse_categorical_crossentropy"
    metric = "copy_accuracy"
    baseline_name = "memoryless (10 ln 8 / (T+20))"
    num_symbols_to_copy = 10
    alphabet_size = 8
    num_classes = 10  # blank, 8 symbols, delimiter
    delimiter = 9

    @property
    def num_features(self) -> int:
        return self.num_classes

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def baseline(self) -> float:
        return self.num_symbols_to_copy * math.log(self.alphabet_size) / self.sequence_length

    def sample_batch(self, rng, batch_size):
        n, length = self.num_symbols_to_copy, self.sequence_length
        symbols = rng.integers(1, self.alphabet_size + 1, size=(batch_size, n))
        ids = np.zeros((batch_size, length), np.int32)
        ids[:, :n] = symbols
        ids[:, length - n - 1] = self.delimiter
        targets = np.zeros((batch_size, length, 1), np.int32)
        targets[:, -n:, 0] = symbols
        return OneHotSequences(ids, self.num_classes), targets

    def validation_data(self, num_sequences):
        return self.sample_batch(np.random.default_rng(VALIDATION_SEED), num_sequences)

    def metric_per_step(self, y_true, y_pred):
        """Whether the argmax prediction is right; only the 10 recalled symbols count (`metric_weights`), so the
        metric is the share of symbols copied correctly, 1/8 at chance."""
        return (np.argmax(y_pred, axis=-1) == y_true[..., 0]).astype(np.float64)

    def to_table(self, x):
        """A `symbol` column of class ids (0 blank, 1-8 symbols, 9 delimiter) instead of ten one-hot columns."""
        return pd.DataFrame({"symbol": np.argmax(np.asarray(x), axis=-1)})

    def from_table(self, table):
        symbols = pd.to_numeric(table.get("symbol", pd.Series(dtype=float)), errors="coerce")
        if symbols.empty or symbols.isna().any() or not symbols.between(0, self.num_classes - 1).all() \
                or not (symbols == symbols.round()).all():
            raise ValueError(f"Every step needs a symbol id, a whole number from 0 to {self.num_classes - 1} "
                             f"(0 blank, 1-{self.alphabet_size} symbols, {self.delimiter} delimiter).")
        return np.eye(self.num_classes, dtype=np.float32)[symbols.to_numpy(np.int64)]

    def metric_weights(self, length):
        weights = np.zeros(length)
        weights[-self.num_symbols_to_copy :] = 1.0
        return weights
