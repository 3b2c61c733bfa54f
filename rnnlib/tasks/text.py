"""Character-level language modelling: at every step predict the next character (seq2seq, aligned).

The corpus is the English text that ships inside Python itself, `pydoc_data.topics` (the help() topics of the
language reference, about 465,000 characters): nothing is downloaded, and every Python has it. The first
`1 - validation_fraction` of the text trains, the rest validates (a split by position, never shuffled).
"""

import functools
import math
from typing import Literal

import numpy as np
import pydantic

from rnnlib.tasks.base import (
    CharacterTask,
    OneHotSequences,
    Task,
    TaskParams,
    first_of,
    sparse_categorical_crossentropy,
)


class TextParams(TaskParams):
    """Next-character prediction on Python's bundled help text.

    Attributes:
        length: characters per training sequence (the model sees this much context at most).
        validation_fraction: the last share of the text, held out.
    """

    name: Literal["text"] = "text"
    length: int = pydantic.Field(100, ge=2, le=10_000)
    validation_fraction: float = pydantic.Field(0.1, gt=0.01, lt=0.5)

    @property
    def sequence_length(self) -> int:
        return self.length

    @pydantic.model_validator(mode="after")
    def _fits(self):
        held_out = int(len(corpus()[0]) * self.validation_fraction)
        if self.length + 1 > held_out:
            raise ValueError(f"task.length ({self.length}) leaves no whole sequence in the held-out text "
                             f"({held_out} characters at validation_fraction {self.validation_fraction:g}); "
                             "use a shorter length or a larger validation_fraction")
        return self


@functools.cache
def corpus() -> tuple[np.ndarray, str]:
    """The text as character ids `<int32>[num_chars]` and its alphabet (sorted characters, id = position)."""
    from pydoc_data import topics

    text = "\n\n".join(topics.topics[key] for key in sorted(topics.topics))
    alphabet = "".join(sorted(set(text)))
    lookup = {char: index for index, char in enumerate(alphabet)}
    return np.fromiter((lookup[char] for char in text), np.int32, count=len(text)), alphabet


class TextTask(CharacterTask, Task):
    """Inputs: one-hot characters `[T, alphabet]` (lazily, see `OneHotSequences`); targets: the next character
    at every step. Metric: bits per character. Baseline: the unigram model (each character's training
    frequency, add-one smoothed), scored on the validation text; a model has learned something about sequence
    only below it."""

    params_type = TextParams
    params: TextParams  # what `params_type` validates (narrows `Task.params`)
    target_form = "per_step"
    io_form = "seq2seq"
    loss = "sparse_categorical_crossentropy"
    metric = "bits_per_char"
    baseline_name = "unigram character frequencies"
    prediction_view = "text"

    @property
    def alphabet(self) -> str:
        return corpus()[1]

    @functools.cached_property
    def num_train_chars(self) -> int:
        return int(len(corpus()[0]) * (1.0 - self.params.validation_fraction))

    def _windows(self, starts: np.ndarray) -> tuple[OneHotSequences, np.ndarray]:
        ids = corpus()[0][starts[:, None] + np.arange(self.sequence_length + 1)[None, :]]
        return OneHotSequences(ids[:, :-1], self.num_features), ids[:, 1:, None]

    def sample_batch(self, rng, batch_size):
        return self._windows(rng.integers(0, self.num_train_chars - self.sequence_length - 1, size=batch_size))

    @functools.cached_property
    def validation_starts(self) -> np.ndarray:
        """Consecutive windows tiling the held-out text: every held-out character after the first is a target
        exactly once."""
        length = self.sequence_length
        return np.arange(self.num_train_chars, len(corpus()[0]) - length, length)

    def validation_size(self, requested):
        return len(self.validation_starts)

    def validation_data(self, num_sequences):
        return self._windows(first_of(self.validation_starts, num_sequences))

    @functools.cached_property
    def baseline(self) -> float:
        ids = corpus()[0]
        counts = np.bincount(ids[: self.num_train_chars], minlength=self.num_features) + 1.0
        _, targets = self.validation_data(self.validation_size(0))
        return float(-np.mean(np.log(counts / counts.sum())[targets]))

    @property
    def metric_baselines(self):
        return {"unigram": {"bits_per_char": self.baseline / math.log(2)}}

    def metric_per_step(self, y_true, y_pred):
        """Cross-entropy in bits: the average number of bits an ideal coder using the model would spend."""
        return sparse_categorical_crossentropy(y_true, y_pred) / math.log(2)
