"""Multi-step forecasting of a real multivariate series (aligned seq2seq): at every step of a window, predict the
next `horizon` values of the target columns.

The series is split by time: the first `train_fraction` of the steps train, the rest validate, and a validation
window lies wholly in the later part. A forecast is scored where the model has read the whole window, at its
last step (the forecast origin), so every model, recurrent or AR(τ), is judged on the same origins with the same
history; the loss trains on every step.
"""

import functools
from typing import Literal

import numpy as np
import pandas as pd
import pydantic

from rnnlib.core import rollouts
from rnnlib.tasks import sources
from rnnlib.tasks.base import Metric, Task, TaskParams, first_of

MAX_ROLLOUT_STEPS = 64


class ForecastParams(TaskParams):
    """A multivariate series and how to frame it.

    Attributes:
        dataset: a bundled series (`sources.SOURCES`) or `csv`, a file in the data folder (`path`).
        targets: the columns to forecast; empty for the dataset's default.
        features: further input columns the model reads but does not forecast (e.g. wind to help temperature).
        window: τ, the steps of history in one input sequence.
        horizon: h, how many steps ahead each forecast reaches (steps t+1 ... t+h).
        train_fraction: the first share of the steps used for training; the rest validates.
        missing: `interpolate` empty values inside the series (rows missing at its start or end are cut), or
            `error` to refuse a series with gaps.
        transform: `none`, the model reads the values and forecasts them; or `difference`, it reads the steps'
            changes x_t - x_{t-1} and forecasts the change since the origin, x_{t+k} - x_t (`FRAMINGS`). For
            trending series whose later part leaves the range seen in training (co2, stocks).
        path, time_column, delimiter: where and how to read a `csv` dataset (`time_column` null: row order).
        sha256: the CSV's content hash, set when a run is launched, so a changed file is refused, not used.
    """

    name: Literal["forecast"] = "forecast"
    dataset: Literal["seattle_weather", "stocks", "co2", "csv"] = "seattle_weather"
    targets: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    window: int = pydantic.Field(30, ge=2, le=5000)
    horizon: int = pydantic.Field(1, ge=1, le=1000)
    train_fraction: float = pydantic.Field(0.7, ge=0.3, le=0.95)
    missing: Literal["interpolate", "error"] = "interpolate"
    transform: Literal["none", "difference"] = "none"
    path: str | None = None
    time_column: str | None = None
    delimiter: Literal[",", ";", "\t", "|"] = ","
    sha256: str | None = None

    @property
    def sequence_length(self) -> int:
        return self.window

    @pydantic.model_validator(mode="after")
    def _fits(self):
        if self.dataset == "csv" and not self.path:
            raise ValueError("dataset csv needs `path`, the CSV file's path inside the data folder")
        if self.dataset != "csv" and (self.path or self.time_column or self.sha256):
            raise ValueError(f"path, time_column and sha256 belong to dataset csv, not {self.dataset}")
        prepare(self)  # raises with what is wrong with the data or the frame
        return self


def prepare(params: ForecastParams) -> "Prepared":
    """Load, check and frame the series once per parameter set and file version (a config validates and
    trains on the same).

    Raises:
        ValueError: what is wrong with the data or the frame, and how to fix it.
    """
    try:
        version = None
        if params.dataset == "csv":
            assert params.path is not None  # a csv dataset has a path (`ForecastParams._fits`)
            stat = sources.resolve_csv_path(params.path).stat()
            version = (stat.st_mtime_ns, stat.st_size)
        return _prepare(params, version)
    except sources.SeriesError as error:
        raise ValueError(str(error)) from None


@functools.lru_cache(maxsize=32)
def _prepare(params: ForecastParams, version) -> "Prepared":
    return Prepared(params, load_series(params))


def load_series(params: ForecastParams) -> sources.Series:
    if params.dataset != "csv":
        return sources.bundled(params.dataset)
    assert params.path is not None  # a csv dataset has a path (`ForecastParams._fits`)
    path = sources.resolve_csv_path(params.path)
    if params.sha256 and sources.file_sha256(path) != params.sha256:
        raise sources.SeriesError(f"{params.path} has changed since this configuration was made (its sha256 "
                                  "differs); upload it again or drop `sha256` to use the file as it is now.")
    return sources.read_csv(params.path, params.time_column, params.delimiter)


class Levels:
    """The model reads the values and forecasts the values (`transform: none`)."""

    first_step = 0  # the first step a window may start at

    @staticmethod
    def model_series(raw: np.ndarray) -> np.ndarray:
        return raw

    @staticmethod
    def targets(raw: np.ndarray, steps: np.ndarray, ahead: np.ndarray) -> np.ndarray:
        """What is forecast at `steps` for the steps `ahead` (`[..., horizon]` indices), in units: the values."""
        return raw[ahead]

    @staticmethod
    def origin_offset(raw: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """What to add to a forecast in units to get the values it forecasts: nothing."""
        return np.zeros_like(raw[origins])[:, None, :]

    @staticmethod
    def drift_steps(horizon: int) -> np.ndarray:
        """How many one-step means a k-step target holds, `[horizon, 1]`: one value is one."""
        return np.ones((horizon, 1))

    @staticmethod
    def integrate(steps: np.ndarray, raw: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Values from a rollout's one-step outputs in units `[origins, k, targets]`: they are the values."""
        return steps


class Differences:
    """The model reads x_t - x_{t-1} and forecasts x_{t+k} - x_t (`transform: difference`): it never needs a
    level it has not seen, so a trend that carries the series out of its training range costs it nothing. The
    change since the origin, added to the last value read, is the forecast; its error in units is the same."""

    first_step = 1  # step 0 has no change

    @staticmethod
    def model_series(raw: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros_like(raw[:1]), np.diff(raw, axis=0)])

    @staticmethod
    def targets(raw: np.ndarray, steps: np.ndarray, ahead: np.ndarray) -> np.ndarray:
        return raw[ahead] - raw[steps][..., None, :]

    @staticmethod
    def origin_offset(raw: np.ndarray, origins: np.ndarray) -> np.ndarray:
        return raw[origins][:, None, :]

    @staticmethod
    def drift_steps(horizon: int) -> np.ndarray:
        """A k-step change is k one-step changes."""
        return np.arange(1, horizon + 1, dtype=np.float64)[:, None]

    @staticmethod
    def integrate(steps: np.ndarray, raw: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """The changes added up from the value at each origin."""
        return raw[origins][:, None, :] + np.cumsum(steps, axis=1)


FRAMINGS: dict[str, type[Levels] | type[Differences]] = {"none": Levels, "difference": Differences}


class Prepared:
    """The checked series of a parameter set: columns, gap filling, the split, the framing and the scaling.

    Attributes:
        frame: the selected columns (targets then features), trimmed and interpolated, original units.
        framing: what the model reads and forecasts (`FRAMINGS`): values, or changes.
        values: what the model reads, standardised with the training part's mean and std, float32
            `[steps, columns]`.
        num_train: steps in the training part.
    """

    def __init__(self, params: ForecastParams, series: sources.Series):
        self.series = series
        self.targets = params.targets or series.default_targets
        self.columns = self._check_columns(params, series)
        frame, self.filled, self.trimmed = fill_gaps(series.frame[list(self.columns)], params.missing)
        self.frame = frame
        self.num_train = int(len(frame) * params.train_fraction)
        self.framing = FRAMINGS[params.transform]
        self.raw = frame.to_numpy(np.float64)
        read = self.framing.model_series(self.raw)
        train = read[self.framing.first_step : self.num_train]
        self.mean, spread = train.mean(axis=0), train.std(axis=0)
        self.std = np.where(spread > 0, spread, 1.0)
        self.values = ((read - self.mean) / self.std).astype(np.float32)
        self._check_lengths(params)

    def scaled_targets(self, steps: np.ndarray, horizon: int, persistence: bool = False) -> np.ndarray:
        """The targets at `steps` (any shape), standardised like the inputs: `[*steps.shape, horizon, targets]`;
        with `persistence`, the persistence forecast (x̂_{t+k} = x_t) in the same units.

        A k-step target is scaled as k one-step inputs would add up (`drift_steps`), so that for k = 1 it is on
        the scale of the input it becomes (what rollouts feed back)."""
        n = len(self.targets)
        ahead = steps[..., None] + (0 if persistence else np.arange(1, horizon + 1))
        units = self.framing.targets(self.raw[:, :n], steps, np.broadcast_to(ahead, (*steps.shape, horizon)))
        return (units - self.framing.drift_steps(horizon) * self.mean[:n]) / self.std[:n]

    def to_units(self, scaled: np.ndarray, horizon: int) -> np.ndarray:
        """Standardised targets or forecasts `[..., horizon, targets]` back in units (values, or changes)."""
        n = len(self.targets)
        return scaled * self.std[:n] + self.framing.drift_steps(horizon) * self.mean[:n]

    def _check_columns(self, params, series) -> tuple[str, ...]:
        unknown = [c for c in (*self.targets, *params.features) if c not in series.columns]
        if unknown:
            raise sources.SeriesError(f"No column {', '.join(map(repr, unknown))} in the {params.dataset} series; "
                                      f"its columns are: {', '.join(series.columns)}.")
        both = sorted(set(self.targets) & set(params.features))
        if both:
            raise sources.SeriesError(f"{', '.join(both)} is both a target and a feature; targets are read as "
                                      "inputs already, so list it once, under targets.")
        return (*self.targets, *params.features)

    def _check_lengths(self, params) -> None:
        need = params.window + params.horizon + self.framing.first_step
        parts = {"training": self.num_train, "validation": len(self.frame) - self.num_train}
        for part, steps in parts.items():
            if steps < need:
                raise sources.SeriesError(
                    f"The {part} part has {steps} steps ({len(self.frame)} in all, train_fraction "
                    f"{params.train_fraction:g}), fewer than window + horizon = {need}; use a shorter window or "
                    f"horizon, move train_fraction, or use a longer series.")


def fill_gaps(frame: pd.DataFrame, missing: str) -> tuple[pd.DataFrame, dict[str, int], int]:
    """Cut rows missing at the start and end; interpolate inside (linearly in time), or refuse if asked to.

    Returns:
        The filled frame, the values filled per column, and the number of rows cut.
    """
    present = frame.notna().all(axis=1).to_numpy()
    if not present.any():
        raise sources.SeriesError("Every row has an empty value in a selected column; select other columns.")
    first, last = np.flatnonzero(present)[[0, -1]]
    trimmed = frame.iloc[first : last + 1]
    gaps = trimmed.isna().sum()
    if gaps.any() and missing == "error":
        column = gaps.idxmax()
        row = int(np.flatnonzero(trimmed[column].isna().to_numpy())[0])
        raise sources.SeriesError(f"Column {column!r} has {int(gaps.sum())} empty values inside the series "
                                  f"(first at {trimmed.index[row]}); set missing: interpolate to fill them.")
    method = "time" if isinstance(trimmed.index, pd.DatetimeIndex) else "linear"
    filled = trimmed.interpolate(method=method) if gaps.any() else trimmed
    return filled, {c: int(n) for c, n in gaps.items() if n}, len(frame) - len(trimmed)


class ForecastTask(Task):
    """Inputs `[window, columns]` standardised; the target at step t is the next `horizon` steps of the target
    columns, flattened `[horizon * targets]` (horizon-major). The loss is the MSE in standardised units; the
    metrics, MAE and RMSE, are in the series' own units at the forecast origin (the window's last step).

    Baseline (in loss units): persistence, x̂_{t+k} = x_t. The metrics' baselines, persistence and seasonal
    naive (x̂_{t+k} = x_{t+k-m}, m the season), are on the same origins (`metric_baselines`).
    """

    params_type = ForecastParams
    params: ForecastParams  # what `params_type` validates (narrows `Task.params`)
    target_form = "per_step"
    io_form = "seq2seq"
    loss = "mse"
    metric = "mae"
    baseline_name = "persistence (x̂_{t+k} = x_t)"
    prediction_view = "forecast"

    @property
    def data(self) -> Prepared:
        return prepare(self.params)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.data.columns

    @property
    def targets(self) -> tuple[str, ...]:
        return self.data.targets

    @property
    def horizon(self) -> int:
        return self.params.horizon

    @property
    def num_features(self) -> int:
        return len(self.data.columns)

    @property
    def num_outputs(self) -> int:
        return self.horizon * len(self.targets)

    @property
    def season(self) -> int | None:
        return self.data.series.season

    def _steps(self, starts: np.ndarray) -> np.ndarray:
        return starts[:, None] + np.arange(self.sequence_length)[None, :]

    def _windows(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        steps = self._steps(starts)
        targets = self.data.scaled_targets(steps, self.horizon)
        return self.data.values[steps], targets.reshape(*steps.shape, -1).astype(np.float32)

    @property
    def train_starts(self) -> np.ndarray:
        first = self.data.framing.first_step
        return np.arange(first, self.data.num_train - self.sequence_length - self.horizon + 1)

    @property
    def validation_starts(self) -> np.ndarray:
        return np.arange(self.data.num_train, len(self.data.values) - self.sequence_length - self.horizon + 1)

    @property
    def validation_origins(self) -> np.ndarray:
        """The step index of each validation forecast origin (the last step of each validation window)."""
        return self.validation_starts + self.sequence_length - 1

    def sample_batch(self, rng, batch_size):
        return self._windows(rng.choice(self.train_starts, size=batch_size))

    def validation_size(self, requested):
        return len(self.validation_starts)

    def validation_data(self, num_sequences):
        """The first `num_sequences` validation windows in time order (all of them: every origin once)."""
        return self._windows(first_of(self.validation_starts, num_sequences))

    def to_original(self, y: np.ndarray) -> np.ndarray:
        """Standardised targets or predictions `[..., horizon * targets]` in the series' units
        `[..., horizon, targets]`: values, or with `transform: difference` changes since the origin (errors are
        the same either way)."""
        shaped = np.asarray(y, np.float64).reshape(*np.shape(y)[:-1], self.horizon, len(self.targets))
        return self.data.to_units(shaped, self.horizon)

    def loss_per_step(self, y_true, y_pred):
        return np.mean(np.square(np.asarray(y_pred, np.float64) - y_true), axis=-1)

    def metric_per_step(self, y_true, y_pred):
        """Mean absolute error over horizons and targets, in the targets' own units."""
        return np.mean(np.abs(self.to_original(y_pred) - self.to_original(y_true)), axis=(-2, -1))

    def squared_error_per_step(self, y_true, y_pred):
        return np.mean(np.square(self.to_original(y_pred) - self.to_original(y_true)), axis=(-2, -1))

    @property
    def metrics(self) -> dict[str, Metric]:
        return {"mae": Metric(self.metric_per_step), "rmse": Metric(self.squared_error_per_step, np.sqrt)}

    def metric_weights(self, length):
        """Only the forecast origin counts: the last step, where the whole window has been read."""
        weights = np.zeros(length)
        weights[-1] = 1.0
        return weights

    @functools.cached_property
    def baseline(self) -> float:
        _, y = self.validation_data(len(self.validation_starts))
        steps = self._steps(self.validation_starts)
        persistence = self.data.scaled_targets(steps, self.horizon, persistence=True).reshape(y.shape)
        return float(np.mean(self.loss_per_step(y, persistence)))

    def baseline_forecasts(self) -> dict[str, np.ndarray]:
        """The trivial forecasts at every validation origin, original units `[origins, horizon, targets]`."""
        raw = self._raw_targets()
        origins = self.validation_origins[:, None]
        ahead = np.arange(1, self.horizon + 1)[None, :]
        forecasts = {"persistence": raw[np.broadcast_to(origins, (len(origins), self.horizon))]}
        if self.season:
            back = self.season * np.ceil(ahead / self.season).astype(np.int64)  # the same phase a season back
            forecasts[f"seasonal naive (m = {self.season})"] = raw[origins + ahead - back]
        return forecasts

    def _raw_targets(self) -> np.ndarray:
        """The target columns in their own units, `[steps, targets]`."""
        return self.data.raw[:, : len(self.targets)]

    def truth(self) -> np.ndarray:
        """What happened after every validation origin, original units `[origins, horizon, targets]`."""
        return self._raw_targets()[self.validation_origins[:, None] + np.arange(1, self.horizon + 1)[None, :]]

    @functools.cached_property
    def metric_baselines(self) -> dict[str, dict[str, float]]:
        truth = self.truth()
        return {name: {"mae": float(np.mean(np.abs(forecast - truth))),
                       "rmse": float(np.sqrt(np.mean(np.square(forecast - truth))))}
                for name, forecast in self.baseline_forecasts().items()}

    @property
    def data_files(self) -> list:
        if self.params.dataset != "csv":
            return []
        assert self.params.path is not None  # a csv dataset has a path (`ForecastParams._fits`)
        return [sources.resolve_csv_path(self.params.path)]

    @property
    def times(self) -> pd.Index:
        return self.data.frame.index

    @property
    def rollout_steps(self) -> int:
        """How far rollouts look ahead: up to 64 steps, at most half the validation part (so that half of it
        still provides origins)."""
        return min(MAX_ROLLOUT_STEPS, (len(self.data.values) - self.data.num_train) // 2)

    @property
    def rollout_origins(self) -> np.ndarray:
        """Origins of the k-step rollouts: from the last training step on, as long as all k steps are known."""
        first = max(self.data.num_train - 1, self.sequence_length - 1 + self.data.framing.first_step)
        return np.arange(first, len(self.data.values) - self.rollout_steps)

    def prediction_arrays(self, predict):
        """At every validation origin: the direct `horizon`-step forecast, the truth and the trivial forecasts;
        and, when the model forecasts all of its inputs (no extra features), k-step rollouts (`rnnlib.core.rollouts`).
        All in the series' units; `times` labels every step of the series."""
        x, _ = self.validation_data(len(self.validation_starts))
        baselines = self.baseline_forecasts()
        arrays = {
            "times": time_labels(self.times),
            "series": self._raw_targets(),
            "targets": np.asarray(self.targets),
            "origins": self.validation_origins,
            "truth": self.truth(),
            "forecast": self.to_original(np.asarray(predict(x))[:, -1])
            + self.data.framing.origin_offset(self._raw_targets(), self.validation_origins),
            "baseline_names": np.asarray(list(baselines)),
            "baseline_forecasts": np.stack(list(baselines.values())),
        }
        if not self.params.features:
            origins = self.rollout_origins
            scaled = rollouts.rollout(predict, self.data.values, origins, self.sequence_length, self.rollout_steps)
            n = len(self.targets)
            arrays["rollout_origins"] = origins
            one_step = scaled * self.data.std[:n] + self.data.mean[:n]  # each fed-back input, in units
            arrays["rollout"] = self.data.framing.integrate(one_step, self._raw_targets(), origins)
        return arrays


def time_labels(index: pd.Index) -> np.ndarray:
    """Timestamps as text for charts: dates without a midnight time, numbers as they are."""
    if isinstance(index, pd.DatetimeIndex):
        text = index.strftime("%Y-%m-%d" if (index == index.normalize()).all() else "%Y-%m-%d %H:%M:%S")
        return np.asarray(text, dtype=str)
    return np.asarray([str(t) for t in index], dtype=str)
