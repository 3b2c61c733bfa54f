"""Each Keras layer, step by step, against the textbook equations re-implemented in numpy (rnnlib.probes)."""

import keras
import numpy as np
import pytest

from conftest import CELL_LIST
from rnnlib import tasks
from rnnlib.core import cells
from rnnlib.core import config as cfg
from rnnlib.worker import backends, models

pytestmark = pytest.mark.filterwarnings("ignore")


def layer_weights(layer):
    kernel, recurrent_kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
    return kernel, recurrent_kernel, bias


@pytest.mark.parametrize("cell_type", list(cells.CELLS))
def test_keras_layer_equals_the_reference_equations(cell_type):
    keras.utils.set_random_seed(0)
    layer = models.get_cell(cell_type)(5, return_sequences=True, return_state=True,
                                        bias_initializer="random_normal")
    x = np.random.default_rng(1).normal(size=(3, 12, 4)).astype(np.float32)
    outputs, *states = layer(x)
    expected, final_state, traces = cells.run_cell(cell_type, x, *layer_weights(layer))
    assert len(states) == len(final_state) == len(cells.get_cell(cell_type).states)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), expected, atol=1e-5)
    for keras_state, reference_state in zip(states, final_state):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(keras_state), reference_state, atol=1e-5)
    assert set(traces) >= {"h"}


def test_rnn_reference_is_tanh_of_shared_weights_applied_at_every_step():
    rng = np.random.default_rng(0)
    w_xh, w_hh, b = rng.normal(size=(3, 2)), rng.normal(size=(3, 3)), rng.normal(size=3)  # column-vector form
    x = rng.normal(size=(1, 4, 2))
    h = np.zeros(3)
    for t in range(4):
        h = np.tanh(w_hh @ h + w_xh @ x[0, t] + b)
    # Keras stores the transposes: kernel = W_xh^T, recurrent_kernel = W_hh^T.
    outputs, _, _ = cells.run_cell("rnn", x, w_xh.T, w_hh.T, b)
    np.testing.assert_allclose(outputs[0, -1], h)


def test_lstm_cell_state_follows_forget_and_input_gates():
    keras.utils.set_random_seed(2)
    layer = keras.layers.LSTM(4, return_sequences=True)
    x = np.random.default_rng(3).normal(size=(2, 6, 3)).astype(np.float32)
    layer(x)
    _, _, traces = cells.run_cell("lstm", x, *layer_weights(layer))
    c, f, i, g, o = (traces[k] for k in ("c", "forget_gate", "input_gate", "candidate", "output_gate"))
    np.testing.assert_allclose(c[:, 1:], f[:, 1:] * c[:, :-1] + i[:, 1:] * g[:, 1:], atol=1e-12)
    np.testing.assert_allclose(traces["h"], o * np.tanh(c), atol=1e-12)
    assert np.all((f > 0) & (f < 1))


def test_gru_uses_keras_reset_after_form_with_two_biases():
    keras.utils.set_random_seed(4)
    layer = keras.layers.GRU(3)
    layer(np.zeros((1, 2, 2), np.float32))
    assert layer.reset_after and layer.get_weights()[2].shape == (2, 9)


def test_weights_exported_for_the_dashboard_reproduce_the_model_without_keras():
    config = cfg.parse_config("task: {name: sine, window: 10}\nmodel: {cell_type: lstm, units: 6, num_layers: 2}\n")
    task = tasks.build(config.task)
    keras.utils.set_random_seed(0)
    model = models.build_model(config.model, task)
    x = np.random.default_rng(0).normal(size=(2, 10, 1)).astype(np.float32)
    weights = models.export_weights(model)
    hidden = x
    for name in ("lstm_0", "lstm_1"):
        kernel, recurrent, bias = (weights[f"{name}/lstm_cell/{w}"] for w in ("kernel", "recurrent_kernel", "bias"))
        hidden, _, _ = cells.run_cell("lstm", hidden, kernel, recurrent, bias)
    prediction = hidden @ weights["head/kernel"] + weights["head/bias"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x)), prediction, atol=1e-5)


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_models_keep_cudnn_eligible_defaults(cell_type):
    config = cfg.parse_config(f"task: {{name: copy_memory, delay: 3}}\nmodel: {{cell_type: {cell_type}, units: 4}}\n")
    model = models.build_model(config.model, tasks.build(config.task))
    (layer,) = models.recurrent_layers(model)
    assert layer.cell.activation is keras.activations.tanh
    assert layer.cell.recurrent_dropout == 0 and not layer.unroll and layer.cell.use_bias
    if cell_type != "rnn":
        assert layer.cell.recurrent_activation is keras.activations.sigmoid
    assert model.output_shape == (None, None, 10)  # per-step softmax over 10 classes


def test_stacked_model_returns_sequences_between_layers_and_one_output_for_seq2vec():
    config = cfg.parse_config(
        "task: {name: adding, length: 9}\nmodel: {cell_type: gru, units: 4, num_layers: 3, dropout: 0.2}\n"
    )
    model = models.build_model(config.model, tasks.build(config.task))
    layers = models.recurrent_layers(model)
    assert [layer.return_sequences for layer in layers] == [True, True, False]
    assert len([layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]) == 2
    assert model.output_shape == (None, 1)


def test_unknown_cell_type_lists_the_registered_ones():
    with pytest.raises(ValueError, match=f"Unknown cell_type 'nosuchcell'; expected one of: {CELL_LIST}"):
        models.get_cell("nosuchcell")
    with pytest.raises(cfg.ConfigError, match=f"model.cell_type: unknown cell; expected one of: {CELL_LIST}"):
        cfg.validate({"task": {"name": "adding"}, "model": {"cell_type": "nosuchcell"}})


@pytest.mark.parametrize("cell_type", list(cells.CELLS))
def test_every_registered_cell_builds_its_keras_layer_and_traces_its_gates(cell_type):
    spec = cells.get_cell(cell_type)
    config = cfg.validate({"task": {"name": "adding", "length": 6}, "model": {"cell_type": cell_type, "units": 3}})
    model = models.build_model(config.model, tasks.build(config.task))
    (layer,) = models.recurrent_layers(model)
    assert type(layer).__name__ == spec.keras_layer and models.cell_type_of(layer) == cell_type
    x = np.zeros((1, 6, 2), np.float32)
    traces = cells.model_traces(models.export_weights(model), cell_type, 1, x)[0]
    assert set(spec.gates) | set(spec.states) <= set(traces) and spec.memory_state in traces


def stateful_lstm(layer_class, weights):
    """A stateful LSTM model as `models.build_recurrent_model` builds one, from `layer_class`, on any backend,
    with trainable `weights` by path."""
    backend = keras.backend.backend()
    inputs = keras.Input(batch_shape=(4, None, 3))
    hidden = layer_class(6, stateful=True, return_sequences=True, name="lstm_0",
                         **backends.recurrent_layer_options(backend, "lstm", True))(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="head")(hidden))
    if backends.tracks_rnn_state(backend):
        models.track_rnn_states(model)
    for variable in model.trainable_variables:
        variable.assign(weights[variable.path])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


@pytest.mark.parametrize("parts", [1, 3])
def test_training_lstm_computes_what_keras_lstm_computes_forward_backward_and_carried(parts, monkeypatch):
    """`models.TrainingLSTM` (TensorFlow's fused CPU kernel there, `backends.fused_lstm`, the batch of 4 in one
    kernel or in slices of 2, 1 and 1 rows side by side) against Keras' own LSTM with the same weights: outputs,
    the carried h and c, and one SGD update (so the gradients) across two chunks of a sequence. Weights are large
    enough that |c| passes 3, where a cell clip would show."""
    monkeypatch.setattr(backends, "fused_lstm_parts", lambda batch: parts)
    rng = np.random.default_rng(2)
    shapes = {"lstm_0/lstm_cell/kernel": (3, 24), "lstm_0/lstm_cell/recurrent_kernel": (6, 24),
              "lstm_0/lstm_cell/bias": (24,), "head/kernel": (6, 1), "head/bias": (1,)}
    weights = {path: rng.normal(0, 0.8, shape).astype(np.float32) for path, shape in shapes.items()}
    weights["lstm_0/lstm_cell/bias"][6:12] = 4.0  # forget gates near 1: the cell state accumulates
    fused, plain = stateful_lstm(models.TrainingLSTM, weights), stateful_lstm(keras.layers.LSTM, weights)
    x, y = rng.normal(size=(4, 20, 3)).astype(np.float32) * 2, rng.normal(size=(4, 20, 1)).astype(np.float32)
    for model in (fused, plain):
        model.train_on_batch(x[:, :8], y[:, :8])  # an update, then a second one from the carried state
        model.train_on_batch(x[:, 8:], y[:, 8:])
    for a, b in zip(fused.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    carried = [[keras.ops.convert_to_numpy(v) for v in models.recurrent_layers(m)[0].states] for m in (fused, plain)]
    assert np.abs(carried[1][1]).max() > 3.0
    for a, b in zip(*carried):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.predict_on_batch(x), plain.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert [v.path for v in fused.weights] == [v.path for v in plain.weights]  # lstm_0/lstm_cell/kernel, ...


def test_training_builds_the_fused_lstm_and_saves_plain_keras_layers():
    config = cfg.parse_config("task: {name: adding, length: 6}\nmodel: {cell_type: lstm, units: 4}\n")
    task = tasks.build(config.task)
    training_model = models.build_model(config.model, task, batch_size=2, stateful=True)
    assert type(models.recurrent_layers(training_model)[0]) is models.TrainingLSTM
    assert type(models.recurrent_layers(models.portable_copy(training_model, config.model, task))[0]) \
        is keras.layers.LSTM  # model.keras loads without rnnlib
    if keras.backend.backend() == "tensorflow":  # the fused kernel runs wherever it applies: TensorFlow's CPU
        layer = models.recurrent_layers(training_model)[0]
        zeros = keras.ops.zeros((2, 4))
        assert backends.fused_lstm(layer, keras.ops.zeros((2, 6, 2)), [zeros, zeros], None, True) is not None
