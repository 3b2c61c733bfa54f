"""Every validation metric is computed on exactly the validation set its baselines use: all of it, each sequence
once, for any batch size. An oracle "model" that outputs a baseline's own prediction must score that baseline."""


import numpy as np
import pytest

from rnnlib import tasks
from rnnlib.core import config as cfg
from rnnlib.worker import training


class Oracle:
    """A stand-in for a trained Keras model: answers each validation sequence with a prepared output, looked up
    by the sequence itself, and counts how often each one was scored. Zero padding gets zeros."""

    layers = ()  # no recurrent layers: `evaluate` feeds whole sequences

    def __init__(self, x, outputs, batch_size):
        x = np.asarray(x, np.float32)
        self.index = {}  # a sequence -> its first position; a text can hold the same window twice
        self.copies = np.zeros(len(x), np.int64)  # at each first position: how many times the set holds it
        for i, row in enumerate(x):
            first = self.index.setdefault(row.tobytes(), i)
            self.copies[first] += 1
        self.outputs = np.asarray(outputs, np.float32)
        self.batch_size = batch_size
        self.seen = np.zeros(len(x), np.int64)

    def predict_on_batch(self, batch):
        batch = np.asarray(batch, np.float32)
        assert len(batch) == self.batch_size, "a stateful model takes only whole batches"
        out = np.zeros((len(batch), *self.outputs.shape[1:]), np.float32)
        for row, sequence in enumerate(batch):
            i = self.index.get(sequence.tobytes())
            if i is not None:
                out[row] = self.outputs[i]
                self.seen[i] += 1
        return out

    def scored_each_once(self) -> bool:
        return bool(np.all(self.seen == self.copies))


def build(name, **params):
    return tasks.build(cfg.validate({"task": {"name": name, **params}}).task)


def score(task, outputs, batch_size, requested=256):
    """Evaluate an oracle on the task's whole validation set, as `training.train` does."""
    x, y = task.validation_data(task.validation_size(requested))
    oracle = Oracle(x, outputs(x, y), batch_size)
    loss, metrics = training.evaluate(oracle, task, x, y, batch_size)
    assert oracle.scored_each_once(), "every validation sequence is scored exactly once"
    return loss, metrics


def persistence_forecast(task, x):
    """The persistence forecast of every window and step, in the model's standardised target units."""
    steps = task._steps(task.validation_starts[: len(x)])
    return task.data.scaled_targets(steps, task.horizon, persistence=True).reshape(len(x), task.sequence_length, -1)


@pytest.mark.parametrize("batch_size", [7, 64, 1000])
@pytest.mark.parametrize(("dataset", "params"), [
    ("seattle_weather", {"targets": ["temp_max"], "window": 30, "horizon": 7}),
    ("co2", {"window": 104, "horizon": 13}),
    ("co2", {"window": 104, "horizon": 13, "transform": "difference"}),
    ("stocks", {"window": 12, "horizon": 3}),
])
def test_a_forecast_that_is_persistence_scores_the_logged_persistence_baselines(dataset, params, batch_size):
    task = build("forecast", dataset=dataset, **params)
    loss, metrics = score(task, lambda x, y: persistence_forecast(task, x), batch_size)
    assert loss == pytest.approx(task.baseline, rel=1e-6)
    assert metrics["mae"] == pytest.approx(task.metric_baselines["persistence"]["mae"], rel=1e-5)
    assert metrics["rmse"] == pytest.approx(task.metric_baselines["persistence"]["rmse"], rel=1e-5)


def test_a_forecast_that_is_seasonal_naive_scores_the_logged_seasonal_naive_baseline():
    task = build("forecast", dataset="co2", window=104, horizon=13, transform="difference")
    (name,) = [n for n in task.metric_baselines if n.startswith("seasonal naive")]
    forecasts = task.baseline_forecasts()[name]  # values, [origins, horizon, targets]
    change = forecasts - task._raw_targets()[task.validation_origins][:, None, :]  # what a differenced model says
    n = len(task.targets)
    scaled = (change - task.data.framing.drift_steps(task.horizon) * task.data.mean[:n]) / task.data.std[:n]

    def outputs(x, y):
        out = np.zeros(y.shape, np.float32)
        out[:, -1] = scaled.reshape(len(x), -1)  # only the origin is scored
        return out

    _, metrics = score(task, outputs, batch_size=64)
    assert metrics["mae"] == pytest.approx(task.metric_baselines[name]["mae"], rel=1e-5)
    assert metrics["rmse"] == pytest.approx(task.metric_baselines[name]["rmse"], rel=1e-5)


def test_weather_is_scored_on_every_validation_origin_not_the_first_batches():
    task = build("forecast", dataset="seattle_weather", targets=["temp_max"], window=30, horizon=7)
    assert task.validation_size(256) == len(task.validation_origins) == 403
    x, _ = task.validation_data(task.validation_size(256))
    assert len(x) == 403
    with pytest.raises(ValueError, match="holds 403 sequences; 404 were asked for"):
        task.validation_data(404)


@pytest.mark.parametrize(("name", "params"), [("sine", {"window": 32}), ("sunspots", {"window": 20})])
def test_a_series_model_that_is_persistence_scores_the_logged_baseline(name, params):
    task = build(name, **params)
    loss, _ = score(task, lambda x, y: x, batch_size=64)
    assert loss == pytest.approx(task.baseline, rel=1e-6)
    assert task.validation_size(10) == len(task.validation_starts)  # the request does not shrink a data set


@pytest.mark.parametrize("read", ["rows", "pixels"])
def test_a_classifier_that_answers_the_class_frequencies_scores_the_logged_baseline(read):
    task = build("digits", read=read)
    labels = tasks.classification._digits()[1][task._split[0]]
    prior = np.bincount(labels, minlength=10) / len(labels)
    loss, metrics = score(task, lambda x, y: np.tile(prior, (len(x), 1)), batch_size=64)
    assert task.validation_size(256) == 359  # every held-out digit once, not 384 with repeats
    assert loss == pytest.approx(task.baseline, rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(task.metric_baselines["most frequent class"]["accuracy"])


def test_a_language_model_that_is_the_unigram_scores_the_logged_baseline():
    task = build("text", length=100)
    ids, _ = tasks.text.corpus()
    counts = np.bincount(ids[: task.num_train_chars], minlength=task.num_features) + 1.0
    unigram = counts / counts.sum()
    loss, metrics = score(task, lambda x, y: np.broadcast_to(unigram, (*y.shape[:2], len(unigram))), batch_size=64)
    assert loss == pytest.approx(task.baseline, rel=1e-6)
    assert metrics["bits_per_char"] == pytest.approx(task.metric_baselines["unigram"]["bits_per_char"], rel=1e-6)
    starts = task.validation_starts  # consecutive windows tiling the held-out text, no room for one more
    assert starts[0] == task.num_train_chars and set(np.diff(starts)) == {100}
    assert starts[-1] + 101 <= len(ids) < starts[-1] + 201 and task.validation_size(128) == len(starts)


def test_copy_memory_memoryless_predictor_scores_its_analytic_baseline_exactly():
    task = build("copy_memory", delay=20)

    def memoryless(x, y):
        out = np.zeros((*y.shape[:2], 10), np.float32)
        out[:, :-10, 0] = 1.0  # blank
        out[:, -10:, 1:9] = 1 / 8  # any of the 8 symbols
        return out

    loss, metrics = score(task, memoryless, batch_size=7, requested=50)
    assert loss == pytest.approx(task.baseline, rel=1e-5)


@pytest.mark.parametrize(("name", "params", "predict"), [
    ("adding", {"length": 30}, lambda x, y: np.ones_like(y)),
    ("waveform", {"length": 20}, lambda x, y: np.zeros_like(y)),
])
def test_generated_tasks_score_the_requested_sequences_once_near_their_analytic_baseline(name, params, predict):
    task = build(name, **params)
    loss, _ = score(task, predict, batch_size=64, requested=3001)  # 3001 = 46 whole batches and 57 more
    assert task.validation_size(3001) == 3001
    assert loss == pytest.approx(task.baseline, rel=0.05)  # a sample of the expectation the baseline is


@pytest.mark.slow
def test_a_trained_forecasts_logged_mae_is_the_mae_of_its_forecasts_on_the_predictions_page():
    config = cfg.validate({"task": {"name": "forecast", "dataset": "stocks", "window": 12, "horizon": 2},
                           "model": {"cell_type": "gru", "units": 4},
                           "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "probe_every": 0}})
    from rnnlib.worker import models

    result = training.train(config)
    portable = models.portable_copy(result.model, config.model, result.task)
    arrays = result.task.prediction_arrays(training._batched_predict(portable))
    assert len(arrays["origins"]) == 24  # every validation origin, once (not 8 x 3 with repeats)
    mae = float(np.mean(np.abs(arrays["forecast"] - arrays["truth"])))
    assert result.history[-1]["val_mae"] == pytest.approx(mae, rel=1e-4)
