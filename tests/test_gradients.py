"""Gradient flow over time: the probe's per-timestep gradients against finite differences of the numpy reference
equations, truncation cutting them off exactly where training does, and the record logged during training."""

import collections

import keras
import numpy as np
import pytest

from rnnlib import tasks
from rnnlib.core import callbacks, cells, records
from rnnlib.core import config as cfg
from rnnlib.core import truncation as tbptt
from rnnlib.worker import gradients, models, training

pytestmark = pytest.mark.filterwarnings("ignore")


def tiny(cell_type, length=6, units=3, num_layers=2, truncation="full", **training_options):
    config = cfg.validate({
        "task": {"name": "adding", "length": length},
        "model": {"cell_type": cell_type, "units": units, "num_layers": num_layers},
        "training": {"batch_size": 2, "truncation": truncation, **training_options},
    })
    task = tasks.build(config.task)
    keras.utils.set_random_seed(0)
    model = models.build_model(config.model, task, batch_size=2, stateful=True)
    # Non-trivial biases, so no derivative is accidentally symmetric around zero.
    for layer in models.recurrent_layers(model):
        bias = layer.cell.bias
        bias.assign(np.random.default_rng(1).normal(0, 0.5, bias.shape).astype(np.float32))
    return config, task, model


def reference_forward(weights, cell_type, num_layers, x, perturb=None):
    """float64 numpy forward with the reference equations; `perturb(layer, t, states, trace)` may change the
    states after each step. Returns (prediction at T `[batch, 1]`, top-layer hidden states)."""
    hidden = np.asarray(x, np.float64)
    for layer in range(num_layers):
        kernel, recurrent_kernel, bias = cells.layer_weights(weights, cell_type, layer)
        states = [np.zeros((len(x), recurrent_kernel.shape[0])) for _ in cells.get_cell(cell_type).states]
        outputs = []
        for t in range(hidden.shape[1]):
            _, states, trace = cells.get_cell(cell_type).step(hidden[:, t], states, kernel, recurrent_kernel, bias)
            if perturb:
                states = perturb(layer, t, list(states), trace)
            outputs.append(states[0])
        hidden = np.stack(outputs, axis=1)
    prediction = hidden[:, -1] @ weights["head/kernel"].astype(np.float64) + weights["head/bias"]
    return prediction, hidden


def finite_difference_gradient(function, layer, t, state_index, units, epsilon=1e-5):
    """Central differences of a scalar `function(perturb)` with respect to one state at (layer, t). The LSTM
    cell state (`state_index` 1) is perturbed where it is made, so h_t = o_t tanh(c_t) sees the change too."""
    gradient = np.zeros(units)
    for unit in range(units):
        values = []
        for sign in (1.0, -1.0):
            def perturb(at_layer, at_t, states, trace, sign=sign, unit=unit):
                if (at_layer, at_t) == (layer, t):
                    states[state_index] = states[state_index].copy()
                    states[state_index][:, unit] += sign * epsilon
                    if state_index == 1:
                        states[0] = trace["output_gate"] * np.tanh(states[1])
                return states
            values.append(function(perturb))
        gradient[unit] = (values[0] - values[1]) / (2 * epsilon)
    return gradient


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_loss_gradient_norms_agree_with_finite_differences(cell_type):
    config, task, model = tiny(cell_type)
    x, y = task.sample_batch(np.random.default_rng(2), 1)
    weights = models.export_weights(model)
    loss, norms = gradients.GradientProbe(model, task).loss_gradients(x, y)

    def last_step_loss(perturb=None):
        prediction, _ = reference_forward(weights, cell_type, 2, x, perturb)
        return float(np.sum((prediction - y) ** 2))

    assert loss == pytest.approx(last_step_loss(), rel=1e-4)
    quantities = {"loss_hidden": 0, "loss_cell": 1} if cell_type == "lstm" else {"loss_hidden": 0}
    assert set(norms) == set(quantities)
    for quantity, state_index in quantities.items():
        for layer in range(2):
            for t in range(6):
                expected = np.linalg.norm(finite_difference_gradient(last_step_loss, layer, t, state_index, 3))
                assert norms[quantity][layer, t] == pytest.approx(expected, rel=2e-3, abs=1e-6), (quantity, layer, t)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_jacobian_norms_are_the_spectral_norms_of_finite_difference_jacobians(cell_type):
    config, task, model = tiny(cell_type)
    x, _ = task.sample_batch(np.random.default_rng(3), 2)
    weights = models.export_weights(model)
    measured = gradients.GradientProbe(model, task).jacobian_norms(x)
    assert measured.shape == (2, 6)
    for layer in range(2):
        for t in range(6):
            spectral = []
            for sequence in range(2):
                def last_state(perturb, sequence=sequence, layer=layer):
                    _, hidden = reference_forward(weights, cell_type, layer + 1, x[sequence : sequence + 1], perturb)
                    return hidden[0, -1]
                jacobian = np.stack([finite_difference_gradient(lambda p, j=j: last_state(p)[j], layer, t, 0, 3)
                                     for j in range(3)])
                spectral.append(np.linalg.norm(jacobian, ord=2))
            assert measured[layer, t] == pytest.approx(np.mean(spectral), rel=2e-3, abs=1e-6), (layer, t)
    np.testing.assert_allclose(measured[:, -1], 1.0, rtol=1e-5)  # ∂h_T/∂h_T is the identity


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_truncated_bptt_delivers_no_gradient_beyond_the_window(cell_type):
    config, task, model = tiny(cell_type, length=20, units=4, num_layers=1, truncation=5)
    x, y = task.sample_batch(np.random.default_rng(4), 2)
    probe = gradients.GradientProbe(model, task)
    _, truncated = probe.loss_gradients(x, y, reach=15)
    _, full = probe.loss_gradients(x, y, reach=0)
    for quantity in truncated:
        assert np.all(truncated[quantity][:, :15] == 0.0)
        assert np.all(truncated[quantity][:, 15:] > 0.0)
        assert np.all(full[quantity] > 0.0)
        # Inside the window the gradient is the full one: truncation only removes paths, it changes none.
        np.testing.assert_allclose(truncated[quantity][:, 15:], full[quantity][:, 15:], rtol=1e-5)


def test_training_records_gradient_flow_at_init_and_each_epoch_with_the_window_of_its_truncation():
    config, _, _ = tiny("rnn", length=12, units=4, num_layers=1, truncation={"k1": 3, "k2": 4}, epochs=2,
                        steps_per_epoch=3, num_validation_sequences=4, probe_every="epoch")
    flows = []

    class Collect(callbacks.Callback):
        def on_gradient_flow(self, flow):
            flows.append(len(flow.steps))

    result = training.train(config, [Collect()])
    flow = result.gradient_flow
    assert flows == [1, 2, 3]
    np.testing.assert_array_equal(flow.steps, [0, 3, 6])
    np.testing.assert_allclose(flow.epochs, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(flow.reaches, [8, 8, 8])  # last update: steps 8..11 (k2 = 4)
    assert flow.norms["loss_hidden"].shape == (3, 1, 12) and flow.truncation == "3/4"
    assert np.all(flow.norms["loss_hidden"][:, :, :8] == 0) and np.all(flow.norms["loss_hidden"][:, :, 8:] > 0)
    assert not np.allclose(flow.norms["jacobian"][0], flow.norms["jacobian"][-1])  # training changed the dynamics


@pytest.mark.parametrize("probe_every, expected_steps", [(2, [0, 2, 4, 6]), ("auto", [0, 6]), (0, None)])
def test_probe_every_sets_the_probe_schedule_in_batches(probe_every, expected_steps):
    config, _, _ = tiny("gru", length=8, units=2, num_layers=1, epochs=2, steps_per_epoch=3,
                        num_validation_sequences=4, probe_every=probe_every)
    flow = training.train(config).gradient_flow
    if expected_steps is None:
        assert flow is None
    else:
        np.testing.assert_array_equal(flow.steps, expected_steps)


def test_gradient_flow_round_trips_through_bytes_and_a_tidy_frame():
    flow = records.GradientFlow.empty("lstm", 2, 5, "full")
    rng = np.random.default_rng(0)
    for step in (0, 10):
        flow.append(step, step / 10, 0, 0.5, {q: rng.random((2, 5)) for q in flow.norms})
    back = records.GradientFlow.from_bytes(flow.to_bytes())
    assert (back.cell_type, back.num_layers, back.sequence_length, back.truncation) == ("lstm", 2, 5, "full")
    np.testing.assert_array_equal(back.steps, [0, 10])
    for quantity in flow.norms:
        np.testing.assert_allclose(back.norms[quantity], flow.norms[quantity], rtol=1e-6)
    frame = back.to_frame()
    assert len(frame) == len(flow.norms) * 2 * 2 * 5
    row = frame[(frame.quantity == "jacobian") & (frame.step == 10) & (frame.layer == 1) & (frame.t == 1)]
    assert row["lag"].item() == 3 and row["value"].item() == pytest.approx(flow.norms["jacobian"][1, 1, 1])


@pytest.mark.parametrize("norms, expected", [
    ([1e-5, 1e-4, 0.01, 0.1, 1.0], 3),  # lag 3 is the first below 1e-3 of the last step
    ([0.5, 0.6, 0.8, 1.0], None),  # never falls that far
    ([0.0, 0.0, 2.0, 4.0], 2),  # truncated: exactly zero beyond the window
])
def test_vanishing_lag_is_the_first_lag_below_the_threshold(norms, expected):
    assert records.vanishing_lag(np.array(norms)) == expected


def test_a_diverged_network_is_probed_as_nan_without_stopping_training():
    config, task, model = tiny("rnn", length=8, units=3, num_layers=1)
    layer = models.recurrent_layers(model)[0]
    layer.cell.recurrent_kernel.assign(np.full((3, 3), np.nan, np.float32))
    x, y = task.sample_batch(np.random.default_rng(0), 2)
    probe = gradients.GradientProbe(model, task)
    assert np.isnan(probe.jacobian_norms(x)[0, :-1]).all()
    _, norms = probe.loss_gradients(x, y)
    assert norms["loss_hidden"].shape == (1, 8)


def test_a_classification_task_trains_one_epoch_and_is_probed():
    config = cfg.validate({"task": {"name": "digits", "read": "pixels"}, "model": {"cell_type": "gru", "units": 8},
                           "training": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 8,
                                        "num_validation_sequences": 16, "truncation": 16}})
    result = training.train(config)
    (logs,) = result.history
    assert 0.0 <= logs["val_accuracy"] <= 1.0 and np.isfinite(logs["val_loss"])
    flow = result.gradient_flow
    assert flow.norms["loss_hidden"].shape == (2, 1, 64)
    assert np.all(flow.norms["loss_hidden"][:, :, :48] == 0) and np.all(flow.norms["loss_hidden"][:, :, 48:] > 0)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tracing is TensorFlow's (JAX/torch run eagerly)")
def test_probes_trace_each_differentiated_function_once_and_warn_of_no_retracing(monkeypatch):
    """Every probe of a run reuses the graphs the first one traced (a traced function's Python body runs only
    while tracing); TensorFlow's "triggered tf.function retracing" warning, once logged for every run, stays
    silent."""
    import logging

    from rnnlib.worker import backends

    traces = []
    tensorflow_gradients = backends._GRADIENTS["tensorflow"]

    def counted(function):
        return tensorflow_gradients(lambda *args: traces.append(1) or function(*args))

    monkeypatch.setitem(backends._GRADIENTS, "tensorflow", counted)
    monkeypatch.setattr(gradients, "_TEMPLATES", collections.OrderedDict())  # none traced by an earlier test
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        config, task, model = tiny("lstm", length=8, truncation="4")
        recorder = gradients.FlowRecorder(model, task, config)
        recorder.record(0, 0.0)
        first = len(traces)
        for step in range(1, 4):
            recorder.record(step, step / 10)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert first >= 3 and len(traces) == first, (first, len(traces))
    assert not [message for message in warnings if "retracing" in message], warnings


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_a_probe_sharing_another_models_traced_functions_measures_its_own_weights(cell_type, monkeypatch):
    """Two runs of one config (different seeds, so different weights) share the probe's functions: the second
    probe's every number equals that of a probe of its own, and it traces nothing."""
    from rnnlib.worker import backends

    monkeypatch.setattr(gradients, "_TEMPLATES", collections.OrderedDict())
    traces = []  # Python bodies run: on TensorFlow only while tracing
    original = backends._GRADIENTS[keras.backend.backend()]
    monkeypatch.setitem(backends._GRADIENTS, keras.backend.backend(),
                        lambda function: original(lambda *args: traces.append(1) or function(*args)))
    config, task, first = tiny(cell_type, length=8, truncation="3")
    keras.utils.set_random_seed(5)
    second = models.build_model(config.model, task, batch_size=2, stateful=True)
    for layer in models.recurrent_layers(second):
        layer.cell.bias.assign(np.random.default_rng(7).normal(0, 0.5, layer.cell.bias.shape).astype(np.float32))
    assert not np.allclose(first.trainable_variables[0].numpy(), second.trainable_variables[0].numpy())
    x, y = task.sample_batch(np.random.default_rng(6), 3)
    key = config.model.model_dump_json() + config.task.model_dump_json()
    schedules = [tbptt.schedule(8, config.training.truncation, np.random.default_rng(0))]
    shared_first = gradients.GradientProbe(first, task, shared_key=key)
    shared_first.flow(x, y, reach=2)
    shared_first.truncation_gradients(x, y, schedules)
    shared = gradients.GradientProbe(second, task, shared_key=key)
    traced = len(traces)
    shared_flows = {reach: shared.flow(x, y, reach) for reach in (0, 2)}
    shared_full, shared_samples = shared.truncation_gradients(x, y, schedules)
    if keras.backend.backend() == "tensorflow":
        assert len(traces) == traced > 0
    own = gradients.GradientProbe(second, task)
    assert shared._template is shared_first._template and own._template is not shared._template
    for reach in (0, 2):
        (shared_loss, shared_norms), (own_loss, own_norms) = shared_flows[reach], own.flow(x, y, reach)
        assert shared_loss == pytest.approx(own_loss, rel=1e-6)
        for quantity in own_norms:
            np.testing.assert_allclose(shared_norms[quantity], own_norms[quantity], rtol=1e-5, atol=1e-9)
        assert not np.allclose(shared_norms["jacobian"], shared_first.flow(x, y, reach)[1]["jacobian"])
    own_full, own_samples = own.truncation_gradients(x, y, schedules)
    np.testing.assert_allclose(shared_full, own_full, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(shared_samples[0], own_samples[0], rtol=1e-5, atol=1e-9)


def test_spectral_norms_equal_numpy_svd_on_random_ill_conditioned_tiny_and_huge_matrices():
    rng = np.random.default_rng(0)
    random = rng.normal(size=(3, 5, 8, 8))
    rank_one = rng.normal(size=(4, 8, 1)) @ rng.normal(size=(4, 1, 8))
    graded = rng.normal(size=(4, 8, 8)) * np.logspace(0, -12, 8)  # condition number ~1e12
    matrices = np.concatenate([random.reshape(-1, 8, 8), rank_one, graded, np.zeros((1, 8, 8)),
                               1e-40 * rank_one[:1], 1e30 * random[0, :2]]).astype(np.float32)
    measured = gradients.spectral_norms(matrices)
    exact = np.linalg.svd(matrices.astype(np.float64), compute_uv=False)[..., 0]
    np.testing.assert_allclose(measured, exact, rtol=1e-12, atol=0)
    np.testing.assert_allclose(measured, np.linalg.svd(matrices, compute_uv=False)[..., 0], rtol=1e-5, atol=0)
    assert gradients.spectral_norms(random.astype(np.float32)).shape == (3, 5)
