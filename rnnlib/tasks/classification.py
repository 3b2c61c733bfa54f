"""Sequence classification (seq2vec): read a sequence, answer one class at the end.

The data is scikit-learn's bundled `digits` (1,797 handwritten digits, 8 x 8 pixels, 0-16 grey levels; UCI
optdigits test set), read from the installed package: nothing is downloaded.
"""

import functools
from typing import Literal

import numpy as np
import pydantic

from rnnlib.tasks.base import Task, TaskParams, first_of

# Fixed split and permutation seeds: every run of an experiment sees the same train/validation digits and, for
# the permuted variant, the same pixel order.
SPLIT_SEED = 20
PERMUTATION_SEED = 1997


class DigitsParams(TaskParams):
    """Handwritten digits as sequences ("sequential MNIST" in miniature; Le, Jaitly & Hinton 2015).

    Attributes:
        read: `rows`, 8 steps of 8 pixels (a row per step), or `pixels`, 64 steps of 1 pixel (row-major), the
            long-range version: the answer depends on pixels up to 63 steps back.
        permuted: shuffle the pixel order once (same permutation for every digit and run), which destroys the
            local structure a model could lean on (permuted sequential MNIST).
        validation_fraction: the share of the digits held out for validation (a fixed, stratified-free split).
    """

    name: Literal["digits"] = "digits"
    read: Literal["rows", "pixels"] = "rows"
    permuted: bool = False
    validation_fraction: float = pydantic.Field(0.2, gt=0.05, lt=0.5)

    @property
    def sequence_length(self) -> int:
        return 8 if self.read == "rows" else 64


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn takes a second to import

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int32)


class DigitsTask(Task):
    """Inputs `[T, features]` (8 x 8 rows, or 64 x 1 pixels, grey levels scaled to [0, 1]); the target is the
    digit, 0-9. Baseline: the cross-entropy of always answering the training class frequencies (about ln 10 =
    2.30 nats; accuracy 10%)."""

    params_type = DigitsParams
    params: DigitsParams  # what `params_type` validates (narrows `Task.params`)
    target_form = "final"
    io_form = "seq2vec"
    loss = "sparse_categorical_crossentropy"
    metric = "accuracy"
    baseline_name = "class frequencies (≈ ln 10)"
    prediction_view = "classes"
    num_classes = 10

    @property
    def num_features(self) -> int:
        return 8 if self.params.read == "rows" else 1

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f"column {c}" for c in range(8)) if self.params.read == "rows" else ("pixel",)

    @functools.cached_property
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the training and validation digits."""
        order = np.random.default_rng(SPLIT_SEED).permutation(len(_digits()[1]))
        num_validation = int(round(len(order) * self.params.validation_fraction))
        return order[num_validation:], order[:num_validation]

    def _sequences(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images, labels = _digits()
        pixels = images[indices].reshape(len(indices), 64)
        if self.params.permuted:
            pixels = pixels[:, np.random.default_rng(PERMUTATION_SEED).permutation(64)]
        return pixels.reshape(len(indices), self.sequence_length, self.num_features), labels[indices][:, None]

    @functools.cached_property
    def baseline(self) -> float:
        counts = np.bincount(_digits()[1][self._split[0]], minlength=self.num_classes)
        prior = counts / counts.sum()
        _, validation_labels = self._sequences(self._split[1])
        return float(-np.mean(np.log(prior[validation_labels[:, 0]])))

    @functools.cached_property
    def metric_baselines(self):
        """Always answering the most frequent training class: its share of the validation digits (about 10%)."""
        common = np.bincount(_digits()[1][self._split[0]], minlength=self.num_classes).argmax()
        return {"most frequent class": {"accuracy": float(np.mean(_digits()[1][self._split[1]] == common))}}

    def sample_batch(self, rng, batch_size):
        return self._sequences(rng.choice(self._split[0], size=batch_size))

    def validation_size(self, requested):
        return len(self._split[1])

    def validation_data(self, num_sequences):
        """The first `num_sequences` held-out digits (all of them: each once)."""
        return self._sequences(first_of(self._split[1], num_sequences))

    def prediction_arrays(self, predict):
        """Every validation digit's label and class probabilities (for the confusion matrix), and the first 16
        digits' pixels."""
        x, y = self._sequences(self._split[1])
        return {"x": x[:16], "y_true": y[:, 0], "y_pred": np.asarray(predict(x))}

    def metric_per_step(self, y_true, y_pred):
        """1 when the most likely class is the digit, so the metric is the accuracy (chance: 10%)."""
        return (np.argmax(y_pred, axis=-1)[:, None] == y_true).astype(np.float64)
