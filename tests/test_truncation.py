"""Truncated BPTT: the schedules, and what the training loop does with them on a stateful Keras model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from rnnlib import tasks
from rnnlib.core import config as cfg
from rnnlib.core import truncation
from rnnlib.core.truncation import Update
from rnnlib.worker import models, training

pytestmark = pytest.mark.filterwarnings("ignore")


def trunc(text):
    text = f"task: {{name: adding, length: 100}}\ntraining: {{truncation: {text}}}\n"
    return cfg.parse_config(text).training.truncation


def test_full_is_one_update_over_the_sequence():
    assert truncation.schedule(10, trunc("full"), np.random.default_rng(0)) == [Update(0, 0, 10)]


def test_tbptt_updates_every_k1_steps_and_backpropagates_k2():
    updates = truncation.schedule(10, trunc("{k1: 3, k2: 5}"), np.random.default_rng(0))
    assert updates == [Update(0, 0, 3), Update(1, 3, 6), Update(4, 6, 9), Update(5, 9, 10)]
    assert truncation.schedule(10, trunc(5), np.random.default_rng(0)) == [Update(0, 0, 5), Update(5, 5, 10)]


def test_every_step_is_scored_exactly_once():
    for text in ("full", "7", "{k1: 3, k2: 8}", "{mode: random_length, mean: 6}"):
        updates = truncation.schedule(50, trunc(text), np.random.default_rng(1))
        scored = [t for w in updates for t in range(w.loss_start, w.stop)]
        assert scored == list(range(50)), text


def test_random_length_chunks_have_the_requested_mean_length():
    rng = np.random.default_rng(0)
    random_length = trunc("{mode: random_length, mean: 12}")
    lengths = [w.stop - w.start for _ in range(200) for w in truncation.schedule(10_000, random_length, rng)]
    assert np.mean(lengths) == pytest.approx(12, rel=0.05)
    assert len(set(lengths)) > 10


def test_gradient_reach_is_the_update_start():
    updates = truncation.schedule(20, trunc("{k1: 4, k2: 10}"), np.random.default_rng(0))
    assert truncation.gradient_reach(updates, 19) == 10
    assert truncation.gradient_reach(updates, 3) == 0


def tiny(task_text, model_text="{cell_type: gru, units: 4}", truncation_text="full", batch_size=3):
    config = cfg.parse_config(f"task: {task_text}\nmodel: {model_text}\n"
                              f"training: {{truncation: {truncation_text}, batch_size: {batch_size}}}\n")
    task = tasks.build(config.task)
    keras.utils.set_random_seed(0)
    model = models.build_model(config.model, task, batch_size=batch_size, stateful=True)
    return config, task, model


def state(model):
    return [np.array(v.numpy()) for layer in models.recurrent_layers(model) for v in layer.states]


def test_state_is_carried_across_chunks_and_reset_between_batches():
    config, task, model = tiny("{name: sine, window: 12}", "{cell_type: lstm, units: 4}")
    stepper = training._UpdateStepper(model, task)
    x, _ = task.sample_batch(np.random.default_rng(0), 3)
    stepper._reset()
    full = np.asarray(model.predict_on_batch(x))
    stepper._reset()
    chunked = np.concatenate([np.asarray(model.predict_on_batch(x[:, s : s + 4])) for s in (0, 4, 8)], axis=1)
    np.testing.assert_allclose(chunked, full, atol=1e-5)  # carried state == one pass over the whole sequence
    stepper._reset()
    assert all(np.all(s == 0) for s in state(model))
    stepper._reset()
    fresh = np.asarray(model.predict_on_batch(x[:, :4]))
    np.testing.assert_allclose(fresh, full[:, :4], atol=1e-6)  # a new batch starts from zeros, not the last state


def test_overlapping_updates_start_from_the_state_at_their_own_start():
    """With k2 > k1 the loop rewinds: with a zero learning rate each update's loss must equal the loss of the same
    steps in one full forward pass."""
    config, task, model = tiny("{name: sine, window: 12}", "{cell_type: gru, units: 4}", "{k1: 3, k2: 7}")
    model.compile(optimizer=models.make_optimizer("sgd", 1e-30, None), loss="mse")
    stepper = training._UpdateStepper(model, task)
    x, y = task.sample_batch(np.random.default_rng(0), 3)
    stepper._reset()
    full = np.asarray(model.predict_on_batch(x))
    updates = truncation.schedule(12, config.training.truncation, np.random.default_rng(0))
    losses = [loss for loss, _, _ in stepper.train_on_sequences(x, y, updates)]
    expected = [float(np.mean((full[:, w.loss_start : w.stop] - y[:, w.loss_start : w.stop]) ** 2)) for w in updates]
    np.testing.assert_allclose(losses, expected, rtol=1e-4)


def test_seq2vec_tasks_train_only_the_update_that_ends_at_the_target():
    config, task, model = tiny("{name: adding, length: 20}", truncation_text="5")
    models.compile_model(model, task, config.training)
    stepper = training._UpdateStepper(model, task)
    x, y = task.sample_batch(np.random.default_rng(0), 3)
    schedule = truncation.schedule(20, config.training.truncation, np.random.default_rng(0))
    trained = list(stepper.train_on_sequences(x, y, schedule))
    assert len(trained) == 1 and trained[0][1] == 1


def input_gradient(model, task, x, start, stop, stepper):
    """d(output at the last step of [start, stop)) / d(inputs), computed the way training runs an update:
    the state carried up to `start` by a forward pass, then the update's steps with gradient."""
    stepper._reset()
    stepper._advance(x, 0, start)
    inputs = tf.Variable(x)
    with tf.GradientTape() as tape:
        output = model(inputs[:, start:stop], training=True)
        target = tf.reduce_sum(output[:, -1])
    return np.abs(tape.gradient(target, inputs).numpy()).sum(axis=(0, 2))


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_loss_gradient_is_exactly_zero_beyond_k2_under_tbptt_and_not_under_full(cell_type):
    if keras.backend.backend() != "tensorflow":
        pytest.skip("uses tf.GradientTape to read input gradients")
    config, task, model = tiny("{name: sine, window: 30}", f"{{cell_type: {cell_type}, units: 4}}", "{k1: 5, k2: 10}")
    stepper = training._UpdateStepper(model, task)
    x, _ = task.sample_batch(np.random.default_rng(0), 3)
    updates = truncation.schedule(30, config.training.truncation, np.random.default_rng(0))
    last = updates[-1]  # scores steps 25..29, backpropagates from step 20
    truncated = input_gradient(model, task, x, last.start, last.stop, stepper)
    assert last.stop - last.start == 10
    assert np.all(truncated[: last.start] == 0.0)  # more than k2 steps back: exactly zero
    assert np.all(truncated[last.start : last.stop] > 0.0)
    full = input_gradient(model, task, x, 0, 30, stepper)
    assert np.all(full > 0.0)  # full BPTT reaches the very first input


def test_training_with_tbptt_on_a_long_sequence_keeps_memory_bounded_by_k2():
    """A 3,000-step sequence trained with TBPTT(50): one update per 50 steps, each backpropagating 50."""
    config = cfg.parse_config("task: {name: copy_memory, delay: 2980}\nmodel: {cell_type: gru, units: 4}\n"
                              "training: {epochs: 1, steps_per_epoch: 1, batch_size: 2, num_validation_sequences: 2, "
                              "truncation: 50}\n")
    result = training.train(config)
    assert result.history[0]["updates"] == 3000 / 50
    assert np.isfinite(result.history[0]["val_loss"])


@pytest.mark.parametrize("task_text", ["{name: copy_memory, delay: 15}", "{name: adding, length: 35}"])
def test_evaluation_in_chunks_scores_like_one_pass_over_whole_sequences(monkeypatch, task_text):
    config, task, model = tiny(task_text, "{cell_type: lstm, units: 4}")
    x, y = task.validation_data(6)
    predictions = []
    for first in (0, 3):
        training._UpdateStepper(model, task)._reset()
        predictions.append(np.asarray(model.predict_on_batch(np.asarray(x[first : first + 3, :]))))
    y_pred = np.concatenate(predictions)
    expected = (task.loss_value(y, y_pred), task.metric_value(y, y_pred))
    monkeypatch.setattr(training, "FORWARD_CHUNK", 4)  # 35 steps -> 9 chunks, the last one short
    loss, metrics = training.evaluate(model, task, x, y, 3)
    np.testing.assert_allclose((loss, metrics[task.metric]), expected, rtol=1e-5)
