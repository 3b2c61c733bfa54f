"""Next-step forecasting of a univariate series, framed as seq2seq: at every step predict the next value.

Training windows are drawn at random positions of the training part of the series on the fly; validation
windows come from the later, held-out part (a split by time, never shuffled across it).
"""

import functools
from typing import Literal

import numpy as np
import pydantic

from rnnlib.tasks.base import Task, TaskParams, absolute_error, first_of


class SeriesTask(Task):
    """Base for series tasks. Subclasses provide `raw_series()` and `num_train_points`.

    When `standardize` is set the model sees the series standardised with the training part's mean and std,
    and the loss (MSE) is in those units; the metric (MAE) is always on the original scale.
    Baseline: persistence (predict x_{t+1} = x_t) on the validation windows.
    """

    target_form = "per_step"
    io_form = "seq2seq"
    loss = "mse"
    metric = "mae"
    baseline_name = "persistence (x_{t+1} = x_t)"
    standardize = True

    @property
    def num_features(self) -> int:
        return 1

    def raw_series(self) -> np.ndarray:
        """The series in its original units, `[num_points]`."""
        raise NotImplementedError

    @property
    def num_train_points(self) -> int:
        raise NotImplementedError

    @functools.cached_property
    def _scaled(self) -> tuple[np.ndarray, float, float]:
        raw = np.asarray(self.raw_series(), np.float64)
        train = raw[: self.num_train_points]
        mean, std = (float(train.mean()), float(train.std()) or 1.0) if self.standardize else (0.0, 1.0)
        return ((raw - mean) / std).astype(np.float32), mean, std

    @property
    def scale(self) -> float:
        """Std of the training part: multiply a standardised error by it to get original units."""
        return self._scaled[2]

    def _windows(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        series = self._scaled[0]
        window = self.sequence_length
        offsets = starts[:, None] + np.arange(window + 1)[None, :]
        chunk = series[offsets]
        return chunk[:, :-1, None], chunk[:, 1:, None]

    def sample_batch(self, rng, batch_size):
        last_start = self.num_train_points - self.sequence_length - 1
        return self._windows(rng.integers(0, last_start + 1, size=batch_size))

    @functools.cached_property
    def validation_starts(self) -> np.ndarray:
        """Every window that lies wholly in the held-out part: one starting at each of its steps."""
        return np.arange(self.num_train_points, len(self._scaled[0]) - self.sequence_length)

    def validation_size(self, requested):
        return len(self.validation_starts)

    def validation_data(self, num_sequences):
        return self._windows(first_of(self.validation_starts, num_sequences))

    @functools.cached_property
    def baseline(self) -> float:
        x, y = self.validation_data(self.validation_size(0))
        return float(np.mean((y - x) ** 2))

    def metric_per_step(self, y_true, y_pred):
        """Absolute error in the series' original units (so the metric is the MAE)."""
        return absolute_error(y_true, y_pred) * self.scale


class SineParams(TaskParams):
    """d2l.ai's noisy sine: x_t = sin(0.01 t) + N(0, noise^2), t = 1..num_points, first num_train for training.

    Attributes:
        window: τ, the number of past steps fed to the model per sequence.
    """

    name: Literal["sine"] = "sine"
    window: int = pydantic.Field(32, ge=1)
    num_points: int = pydantic.Field(1000, ge=10, le=10_000_000)
    num_train: int = pydantic.Field(600, ge=2)
    noise: float = pydantic.Field(0.2, ge=0.0, le=10.0)
    series_seed: int = pydantic.Field(0, ge=0)

    @property
    def sequence_length(self) -> int:
        return self.window

    @pydantic.model_validator(mode="after")
    def _fits(self):
        if self.num_train >= self.num_points:
            raise ValueError(f"num_train ({self.num_train}) must be smaller than num_points ({self.num_points})")
        if self.window + 1 > min(self.num_train, self.num_points - self.num_train):
            raise ValueError(
                f"window ({self.window}) leaves no complete window in the training part ({self.num_train} points) "
                f"or the validation part ({self.num_points - self.num_train} points); use a smaller window"
            )
        return self


class SineTask(SeriesTask):
    """Kept in its own units (no standardisation), so the noise variance, 0.04, is the floor of the MSE."""

    params_type = SineParams
    params: SineParams  # what `params_type` validates (narrows `Task.params`)
    standardize = False

    def raw_series(self):
        p = self.params
        t = np.arange(1, p.num_points + 1)
        noise = np.random.default_rng(p.series_seed).normal(0.0, p.noise, size=p.num_points)
        return np.sin(0.01 * t) + noise

    @property
    def num_train_points(self):
        return self.params.num_train


class SunspotsParams(TaskParams):
    """Yearly mean sunspot numbers 1700-2008 (309 values), bundled with statsmodels.

    Attributes:
        window: τ, the number of past years fed to the model per sequence.
        train_fraction: the first share of the years used for training; the rest is validation.
    """

    name: Literal["sunspots"] = "sunspots"
    window: int = pydantic.Field(20, ge=1, le=80)
    train_fraction: float = pydantic.Field(0.7, gt=0.3, lt=0.9)

    @property
    def sequence_length(self) -> int:
        return self.window


@functools.cache
def _sunspots() -> np.ndarray:
    from statsmodels.datasets import sunspots  # imported lazily: statsmodels takes a second to import

    return sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(np.float64)


class SunspotsTask(SeriesTask):
    params_type = SunspotsParams
    params: SunspotsParams  # what `params_type` validates (narrows `Task.params`)

    def raw_series(self):
        return _sunspots()

    @property
    def num_train_points(self):
        return int(len(_sunspots()) * self.params.train_fraction)
