"""The truncation-bias meter and the connectivity probe: truncated parameter gradients against finite differences
of the numpy reference equations, full BPTT metered as exactly itself, the tanh RNN's bias shrinking with k, and
the metrics a training run logs."""

import keras
import numpy as np
import pytest

from rnnlib import tasks
from rnnlib.core import cells, truncation
from rnnlib.core import config as cfg
from rnnlib.worker import backends, gradients, models, training

pytestmark = pytest.mark.filterwarnings("ignore")


def build(task, cell_type="rnn", units=3, truncation_mode="full", seed=0, **training_options):
    config = cfg.validate({"task": task, "model": {"cell_type": cell_type, "units": units},
                           "training": {"batch_size": 2, "truncation": truncation_mode, **training_options}})
    built = tasks.build(config.task)
    keras.utils.set_random_seed(seed)
    model = models.build_model(config.model, built, batch_size=2, stateful=True)
    return config, built, model


def truncated_objective_gradient(weights, x, y, updates, num_scored, epsilon=1e-6):
    """Finite differences of Σ_u Σ_{t scored by u} loss_t / N, where update u runs the Elman cell from the state
    at its `start` held constant (computed with the unperturbed weights): the truncated gradient, independently."""
    kernel, recurrent, bias = cells.layer_weights(weights, "rnn", 0)
    states, h = [], np.zeros((len(x), recurrent.shape[0]))
    for t in range(x.shape[1]):
        states.append(h)
        h = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)

    def objective(w):
        kernel, recurrent, bias = cells.layer_weights(w, "rnn", 0)
        total = 0.0
        for update in updates:
            h = states[update.start]
            for t in range(update.start, update.stop):
                h = np.tanh(x[:, t] @ kernel + h @ recurrent + bias)
                if t >= update.loss_start:
                    prediction = h @ w["head/kernel"] + w["head/bias"]
                    total += np.mean((y[:, t] - prediction) ** 2) / num_scored
        return total

    gradient = []
    for path, value in weights.items():
        for index in np.ndindex(value.shape):
            shifted = []
            for sign in (1.0, -1.0):
                w = {k: v.copy() for k, v in weights.items()}
                w[path][index] += sign * epsilon
                shifted.append(objective(w))
            gradient.append((shifted[0] - shifted[1]) / (2 * epsilon))
    return np.array(gradient)


@pytest.mark.parametrize("mode", [4, {"k1": 3, "k2": 5}, {"mode": "random_length", "mean": 4}])
def test_truncated_gradient_equals_an_independent_finite_difference_gradient(mode):
    config, task, model = build({"name": "sine", "window": 12}, truncation_mode=mode)
    x, y = task.sample_batch(np.random.default_rng(2), 2)
    updates = truncation.schedule(12, config.training.truncation, np.random.default_rng(5))
    probe = gradients.GradientProbe(model, task)
    measured = probe.truncation_gradient(x, y, updates)
    weights = {v.path: np.asarray(v.numpy(), np.float64) for v in model.trainable_variables}
    expected = truncated_objective_gradient(weights, np.asarray(x, np.float64), np.asarray(y, np.float64),
                                            updates, num_scored=12)
    np.testing.assert_allclose(measured, expected, rtol=2e-3, atol=2e-6)
    full = probe.parameter_gradient(x, y, gradients.scored_weights(task, 12))
    assert not np.allclose(measured, full, rtol=1e-3)  # truncation changed the gradient


@pytest.mark.parametrize("mode", ["full", 40])
def test_full_bptt_and_a_window_as_long_as_the_sequence_meter_as_exactly_full(mode):
    config, task, model = build({"name": "adding", "length": 40}, truncation_mode=mode)
    flow = gradients.FlowRecorder(model, task, config).record(0, 0.0)
    assert flow.latest_bias() == {"trunc_cosine": 1.0, "trunc_error": 0.0, "trunc_bias": 0.0,
                                  "trunc_variance": 0.0}


def test_a_tanh_rnn_loses_gradient_direction_under_short_windows_and_regains_it_with_k():
    cosines = []
    for k in (2, 5, 10, 20, 60):
        config, task, model = build({"name": "adding", "length": 60}, units=16, truncation_mode=k)
        cosines.append(gradients.FlowRecorder(model, task, config).record(0, 0.0).latest_bias()["trunc_cosine"])
    assert cosines[0] < 0.99
    assert all(a < b for a, b in zip(cosines, cosines[1:])), cosines
    assert cosines[-1] == 1.0


def test_a_random_mode_is_metered_over_several_schedules_with_bias_and_variance_apart():
    config, task, model = build({"name": "adding", "length": 40}, units=8,
                                truncation_mode={"mode": "random_length", "mean": 8}, bias_samples=6)
    recorder = gradients.FlowRecorder(model, task, config)
    assert recorder.bias_samples == 6
    meter = recorder.record(0, 0.0).latest_bias()
    assert meter["trunc_variance"] > 0.0
    assert 0.0 < meter["trunc_bias"] < meter["trunc_error"]  # the mean of samples is closer than a sample
    assert meter["trunc_cosine"] < 1.0


def test_truncation_bias_statistics_of_known_vectors_and_nan_for_a_vanished_gradient():
    full = np.array([1.0, 0.0])
    stats = gradients.truncation_bias(full, [np.array([1.0, 1.0]), np.array([1.0, -1.0])])
    assert stats["cosine"] == pytest.approx(np.sqrt(0.5))
    assert stats["error"] == pytest.approx(1.0)
    assert stats["bias"] == pytest.approx(0.0, abs=1e-12)  # the two errors cancel: unbiased
    assert stats["variance"] == pytest.approx(2.0)  # (1 + 1) / (2 - 1)
    assert all(np.isnan(v) for v in gradients.truncation_bias(np.zeros(2), [np.ones(2)]).values())


def test_the_bias_of_a_few_noisy_samples_is_their_systematic_error_not_their_noise():
    rng = np.random.default_rng(0)
    full = np.ones(2000)
    noise = rng.normal(0.0, 1.0, (8, 2000))  # relative variance 1: the mean of 8 is off by ~0.35 from noise alone
    unbiased = gradients.truncation_bias(full, list(full + noise))
    assert np.linalg.norm(noise.mean(axis=0)) / np.linalg.norm(full) > 0.3
    assert unbiased["bias"] < 0.05 and unbiased["variance"] == pytest.approx(1.0, rel=0.05)
    shifted = gradients.truncation_bias(full, list(0.5 * full + noise))  # a real bias of 0.5
    assert shifted["bias"] == pytest.approx(0.5, abs=0.03)


def test_connectivity_is_the_norm_of_the_last_outputs_finite_difference_jacobian_in_each_input():
    config, task, model = build({"name": "adding", "length": 6}, units=3)
    x, _ = task.sample_batch(np.random.default_rng(3), 2)
    measured = gradients.GradientProbe(model, task).input_connectivity(x)
    weights = {v.path: np.asarray(v.numpy(), np.float64) for v in model.trainable_variables}
    kernel, recurrent, bias = cells.layer_weights(weights, "rnn", 0)

    def output(sequence):
        h = np.zeros(3)
        for x_t in sequence:
            h = np.tanh(x_t @ kernel + h @ recurrent + bias)
        return h @ weights["head/kernel"] + weights["head/bias"]

    expected = np.zeros(6)
    for sequence in np.asarray(x, np.float64):
        for t in range(6):
            jacobian = []
            for feature in range(sequence.shape[1]):
                shifted = []
                for sign in (1.0, -1.0):
                    moved = sequence.copy()
                    moved[t, feature] += sign * 1e-6
                    shifted.append(output(moved))
                jacobian.append((shifted[0] - shifted[1]) / 2e-6)
            expected[t] += np.linalg.norm(jacobian) / len(x)
    np.testing.assert_allclose(measured, expected, rtol=2e-3)
    assert measured[0] < measured[-1]  # the last input matters most to a fresh tanh RNN


def test_training_logs_the_meter_in_each_epoch_that_probed_and_keeps_it_in_the_gradient_flow_record():
    config, _, _ = build({"name": "adding", "length": 12}, units=4, truncation_mode=3, epochs=3,
                         steps_per_epoch=2, num_validation_sequences=4, probe_every=3)
    history = training.train(config).history  # probes after 0, 3 and 6 batches: none in the first epoch
    assert "trunc_cosine" not in history[0]  # a stale reading (the probe at initialisation) is no measurement
    assert [sorted(k for k in logs if k.startswith("trunc_")) for logs in history[1:]] == [
        ["trunc_bias", "trunc_cosine", "trunc_error", "trunc_variance"]] * 2

    config, _, _ = build({"name": "adding", "length": 12}, units=4, truncation_mode=3, epochs=2,
                         steps_per_epoch=2, num_validation_sequences=4, probe_every="epoch")
    result = training.train(config)
    for logs in result.history:
        assert 0.0 < logs["trunc_cosine"] < 1.0 and logs["trunc_error"] > 0.0
        assert logs["trunc_variance"] == 0.0  # one fixed schedule
    flow = result.gradient_flow
    assert flow.bias["cosine"].shape == (3,)  # at initialisation and after each epoch
    assert flow.bias["cosine"][-1] == result.history[-1]["trunc_cosine"]
    assert flow.norms["input"].shape == (3, 1, 12)
    back = type(flow).from_bytes(flow.to_bytes())
    np.testing.assert_array_equal(back.bias["error"], flow.bias["error"])
    frame = back.bias_frame()
    assert set(frame["statistic"]) == {"cosine", "error", "bias", "variance"} and len(frame) == 12


def sampled_gradients(mode, num_schedules, length=20):
    config, task, model = build({"name": "sine", "window": length}, units=4, truncation_mode=mode)
    probe = gradients.GradientProbe(model, task)
    x, y = task.sample_batch(np.random.default_rng(1), 2)
    full = probe.parameter_gradient(x, y, gradients.scored_weights(task, length))
    trunc, rng = config.training.truncation, np.random.default_rng(0)
    schedules = [truncation.schedule(length, trunc, rng) for _ in range(num_schedules)]
    metered_full, samples = probe.truncation_gradients(x, y, schedules, truncation.gradient_scale(trunc))
    # float32 rounding of entries near zero (1e-7 on JAX) measured against the largest entry
    np.testing.assert_allclose(metered_full, full, rtol=1e-6, atol=1e-6 * np.abs(full).max())
    return full, samples


def cosine(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_the_unbiased_mode_averages_to_the_full_gradient_where_random_lengths_do_not():
    full, unbiased = sampled_gradients({"mode": "unbiased", "mean": 5}, 1000)
    _, plain = sampled_gradients({"mode": "random_length", "mean": 5}, 1000)
    assert cosine(np.mean(unbiased, axis=0), full) > 0.999
    assert cosine(np.mean(plain, axis=0), full) < 0.99  # biased towards short-range dependencies
    unbiased_meter, plain_meter = gradients.truncation_bias(full, unbiased), gradients.truncation_bias(full, plain)
    assert unbiased_meter["bias"] < 0.05 < plain_meter["bias"]
    assert unbiased_meter["variance"] > plain_meter["variance"]  # the price of compensation


def test_the_compensated_keras_layer_trains_on_the_gradient_the_meter_computes():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("reads the layer's gradient with TensorFlow's tape")
    import tensorflow as tf

    config, task, _ = build({"name": "sine", "window": 10}, truncation_mode={"mode": "unbiased", "mean": 4})
    scale = truncation.gradient_scale(config.training.truncation)
    assert scale == pytest.approx(4 / 3)
    keras.utils.set_random_seed(0)
    model = models.build_model(config.model, task, batch_size=2, stateful=True, gradient_scale=scale)
    x, y = task.sample_batch(np.random.default_rng(1), 2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.mean_squared_error(y, model(x)))
    layered = np.concatenate([np.ravel(g) for g in tape.gradient(loss, model.trainable_variables)])
    probe = gradients.GradientProbe(model, task)
    metered = probe.truncation_gradient(x, y, [truncation.Update(0, 0, 10)], scale)
    np.testing.assert_allclose(layered, metered, rtol=1e-4, atol=1e-7)
    plain = probe.truncation_gradient(x, y, [truncation.Update(0, 0, 10)])
    assert not np.allclose(plain, metered, rtol=1e-3)
    portable = models.portable_copy(model, config.model, task)  # what is saved: Keras' own layers, same weights
    models.reset_states(models.recurrent_layers(model))
    np.testing.assert_allclose(portable.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5)


def test_an_unbiased_update_weighs_every_scored_step_by_one_over_the_mean():
    config, task, model = build({"name": "sine", "window": 12}, truncation_mode={"mode": "unbiased", "mean": 4})
    stepper = training._UpdateStepper(model, task, 0, config.training.truncation)
    y = np.zeros((2, 12, 1), np.float32)
    _, weight = stepper._targets(y, truncation.Update(3, 3, 9), final=False)
    np.testing.assert_allclose(weight, 6 / 4)  # Keras' mean over 6 steps times 6/4: the sum over 4
    plain = training._UpdateStepper(model, task, 0, cfg.Truncation.model_validate({"mode": "random_length",
                                                                                   "mean": 4}))
    assert plain._targets(y, truncation.Update(3, 3, 9), final=False)[1] is None


def direct_gradient(probe, x, y, weights, keep):
    """The recipe's gradient by plain reverse-mode through one `unroll` with the weights as inputs: what the
    two-pass `parameter_gradients` decomposes."""
    loss = keras.losses.get(probe.task.loss)

    def objective(x, target, weights, keep, *values):
        with keras.StatelessScope(state_mapping=list(zip(probe.variables, values))):
            hidden = gradients.unroll(probe.cells, x, probe._nest(probe._zeros(*x.shape[:2])), keep)
            if probe.task.target_form == "final":
                return keras.ops.mean(loss(target, probe.head(hidden[:, -1]))) * weights[-1]
            return keras.ops.sum(keras.ops.mean(loss(target, probe.head(hidden)), axis=0) * weights)

    _, grads = backends.gradient_function(objective)(
        [np.asarray(x, np.float32), np.asarray(y), weights, keep],
        [keras.ops.convert_to_numpy(v.value) for v in probe.variables])
    return np.concatenate([np.ravel(g) for g in grads])


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task", [{"name": "sine", "window": 9}, {"name": "adding", "length": 9}])
def test_recipes_computed_together_equal_each_recipes_direct_backpropagation_in_stacked_layers(cell_type, task):
    config = cfg.validate({"task": task, "model": {"cell_type": cell_type, "units": 3, "num_layers": 2},
                           "training": {"batch_size": 2}})
    built = tasks.build(config.task)
    keras.utils.set_random_seed(4)
    model = models.build_model(config.model, built, batch_size=2, stateful=True)
    probe = gradients.GradientProbe(model, built)
    x, y = built.sample_batch(np.random.default_rng(0), 3)
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.0, 1.0, (4, 9)).astype(np.float32)
    keep = rng.choice([0.0, 1.0, 1.5], (4, 9)).astype(np.float32)
    together = probe.parameter_gradients(x, y, weights, keep)
    assert together.shape == (4, sum(int(np.prod(v.shape)) for v in probe.variables))
    for row in range(4):
        np.testing.assert_allclose(together[row], direct_gradient(probe, x, y, weights[row], keep[row]),
                                   rtol=2e-4, atol=2e-6)
    assert not np.allclose(together[0], together[1], rtol=1e-2)  # each recipe its own gradient
