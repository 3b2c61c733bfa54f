"""Vector to sequence: generate a sine wave from one vector (frequency, phase, amplitude).

The vector is the input at the first step only; every later input is zero, so from step 1 on the network runs
on its own state: the vector sets the state and the network unrolls from it (Karpathy's "one to many", the
shape of image captioning and of a decoder started from a context vector). To get the wave right at step t the
state must still hold all three numbers t steps later and turn them into the wave's value.
"""

import functools
from typing import Literal

import numpy as np
import pydantic

from rnnlib.tasks.base import VALIDATION_SEED, Metric, Task, TaskParams, squared_error


class WaveformParams(TaskParams):
    """`y_t = A sin(2π (f t / T + φ))` for t = 0 … T - 1, from the vector (f, φ, A) read at t = 0.

    Attributes:
        length: steps generated (T).
        min_cycles, max_cycles: the range of f, in cycles per sequence (uniform).
        min_amplitude, max_amplitude: the range of A (uniform). The phase φ is uniform over a whole cycle, in
            cycles [0, 1).
    """

    name: Literal["waveform"] = "waveform"
    length: int = pydantic.Field(50, ge=2, le=10_000)
    min_cycles: float = pydantic.Field(1.0, gt=0.0)
    max_cycles: float = pydantic.Field(3.0, gt=0.0)
    min_amplitude: float = pydantic.Field(0.5, ge=0.0)
    max_amplitude: float = pydantic.Field(1.5, gt=0.0)

    @pydantic.model_validator(mode="after")
    def _ranges(self):
        for low, high in (("min_cycles", "max_cycles"), ("min_amplitude", "max_amplitude")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"task.{low} ({getattr(self, low):g}) is above task.{high} "
                                 f"({getattr(self, high):g}); swap them")
        if self.max_cycles > self.length / 2:
            raise ValueError(f"task.max_cycles ({self.max_cycles:g}) is above the Nyquist limit of a "
                             f"{self.length}-step sequence ({self.length / 2:g} cycles): the wave could not be "
                             "told apart from a slower one; lower it or raise task.length")
        return self

    @property
    def sequence_length(self) -> int:
        return self.length


class WaveformTask(Task):
    """Inputs `[T, 3]`: (f, φ, A) at t = 0, zeros after; targets: the wave at every step. Loss MSE; metric RMSE.

    Baseline: silence. With the phase uniform over a cycle, every y_t has mean 0 and mean square E[A²] / 2
    whatever f is, so a model that ignores the vector can do no better than predicting 0, at MSE
    E[A²] / 2 = (a² + ab + b²) / 6 for A uniform on [a, b].
    """

    params_type = WaveformParams
    params: WaveformParams  # what `params_type` validates (narrows `Task.params`)
    target_form = "per_step"
    io_form = "vec2seq"
    loss = "mse"
    metric = "rmse"
    baseline_name = "silence (y = 0): E[A²] / 2"
    feature_names = ("frequency", "phase", "amplitude")
    prediction_view = "generated"

    @property
    def num_features(self) -> int:
        return 3

    def vectors(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` vectors (f, φ, A), float32 `[count, 3]`."""
        p = self.params
        return np.stack([rng.uniform(p.min_cycles, p.max_cycles, count), rng.uniform(0.0, 1.0, count),
                         rng.uniform(p.min_amplitude, p.max_amplitude, count)], axis=1).astype(np.float32)

    def waves(self, vectors: np.ndarray) -> np.ndarray:
        """The target waves of `vectors` `[count, 3]`: `[count, T]`."""
        cycles, phase, amplitude = (np.asarray(vectors, np.float64)[:, i, None] for i in range(3))
        t = np.arange(self.sequence_length)[None, :]
        return amplitude * np.sin(2.0 * np.pi * (cycles * t / self.sequence_length + phase))

    def _sequences(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.zeros((len(vectors), self.sequence_length, 3), np.float32)
        x[:, 0] = vectors
        return x, self.waves(vectors).astype(np.float32)[:, :, None]

    def targets_for(self, x):
        return self.waves(np.asarray(x)[:, 0]).astype(np.float32)[:, :, None]

    def sample_batch(self, rng, batch_size):
        return self._sequences(self.vectors(rng, batch_size))

    def validation_data(self, num_sequences):
        return self._sequences(self.vectors(np.random.default_rng(VALIDATION_SEED), num_sequences))

    @functools.cached_property
    def baseline(self) -> float:
        low, high = self.params.min_amplitude, self.params.max_amplitude
        return (low * low + low * high + high * high) / 6.0

    def metric_per_step(self, y_true, y_pred):
        return squared_error(y_true, y_pred)

    @property
    def metrics(self):
        return {"rmse": Metric(squared_error, np.sqrt)}

    @property
    def metric_baselines(self):
        return {"silence (y = 0)": {"rmse": float(np.sqrt(self.baseline))}}
