"""Keras models: stacked recurrent networks with the head each task needs, optimizers.

Layers keep their cuDNN-eligible defaults (tanh / sigmoid, no recurrent dropout, no unroll); dropout, when
asked for, sits between stacked layers.
"""

import keras
import numpy as np
from keras import ops

from rnnlib.core import cells
from rnnlib.core.registry import lookup
from rnnlib.tasks import Task
from rnnlib.worker import backends


def get_cell(cell_type: str) -> type[keras.layers.RNN]:
    """The Keras recurrent layer class of the registered cell `cell_type` (`rnnlib.core.cells.CELLS`)."""
    return getattr(keras.layers, cells.get_cell(cell_type).keras_layer)


class TrainingLSTM(keras.layers.LSTM):
    """Keras' LSTM, run on TensorFlow's fused CPU kernel where it applies (`backends.fused_lstm`: the same
    equations and weights), else exactly as Keras runs it (cuDNN on a GPU, its step loop otherwise).

    Used for the stateful models `train` builds; the saved, portable models stay plain `keras.layers.LSTM`, so
    that `model.keras` loads anywhere without rnnlib. Its cell and weights have Keras' own names and paths."""

    def inner_loop(self, sequences, initial_state, mask, training=False):
        fused = backends.fused_lstm(self, sequences, initial_state, mask, training)
        return fused if fused is not None else super().inner_loop(sequences, initial_state, mask, training)


def layer_class(cell_type: str, stateful: bool) -> type[keras.layers.RNN]:
    """The class `build_recurrent_model` builds a layer of `cell_type` with: `TrainingLSTM` for a stateful
    (training) LSTM, else Keras' own (`get_cell`)."""
    return TrainingLSTM if stateful and get_cell(cell_type) is keras.layers.LSTM else get_cell(cell_type)


def cell_type_of(layer: keras.layers.Layer) -> str:
    """The registered cell a recurrent layer of `build_recurrent_model` computes, from its name (`lstm_0`): two
    cells may share a Keras class."""
    return cells.get_cell(layer.name.rsplit("_", 1)[0]).name


def build_model(model_config, task: Task, batch_size: int | None = None, stateful: bool = False,
                gradient_scale: float = 1.0) -> keras.Model:
    """The network a config's `model` asks for, by its `kind` (`BUILDERS`): recurrent
    (`build_recurrent_model`) or an AR(τ) baseline (`build_autoregressive_model`, which ignores `stateful` and
    `gradient_scale`: it has no state)."""
    return BUILDERS[model_config.kind](model_config, task, batch_size, stateful, gradient_scale)


class GradientScaledCell(keras.layers.Layer):
    """A Keras cell whose incoming states pass `scale` times the gradient back (the forward pass unchanged):
    `s + (scale − 1)(s − stop_gradient(s))`. The unbiased truncation's compensation
    (`rnnlib.core.truncation.gradient_scale`); the wrapped `cell` holds the weights, under the same names."""

    def __init__(self, cell, scale: float, **kwargs):
        super().__init__(name=kwargs.pop("name", f"scaled_{cell.name}"), **kwargs)
        self.cell, self.scale = cell, float(scale)
        self.units, self.state_size, self.output_size = cell.units, cell.state_size, cell.output_size

    def build(self, input_shape):
        self.cell.build(input_shape)
        self.built = True

    def get_initial_state(self, batch_size=None):
        return self.cell.get_initial_state(batch_size)

    def call(self, inputs, states, training=False):
        scaled = [ops.stop_gradient(s) + (s - ops.stop_gradient(s)) * self.scale for s in states]
        return self.cell(inputs, scaled, training=training)


def base_cell(layer: keras.layers.RNN):
    """The Keras cell of a recurrent layer of `build_recurrent_model`, unwrapped from `GradientScaledCell`."""
    return layer.cell.cell if isinstance(layer.cell, GradientScaledCell) else layer.cell


def build_autoregressive_model(model_config, task: Task, batch_size: int | None = None,
                               stateful: bool = False, gradient_scale: float = 1.0) -> keras.Model:
    """AR(τ): at every step t, a prediction from inputs t - τ + 1 ... t only (τ = `ar_order`).

    A causal 1-D convolution with kernel size τ is exactly that window, slid along the sequence: `ar` is the
    convolution alone (linear AR with a bias; kernel `[τ, features, outputs]`, row τ - 1 weighting x_t), `ar_mlp`
    a convolution into `units` ReLU units, `num_layers - 1` further dense ReLU layers, and a dense head. The
    first τ - 1 steps see zero padding and are left out of the loss (`warmup_steps`).
    """
    inputs = keras.Input(batch_shape=(batch_size, None, task.num_features), name="sequence")
    activation = "softmax" if task.loss == "sparse_categorical_crossentropy" else None
    order = model_config.ar_order
    if model_config.kind == "ar":
        outputs = keras.layers.Conv1D(task.num_outputs, order, padding="causal", activation=activation,
                                      name="head")(inputs)
        return keras.Model(inputs, outputs, name=f"ar_{order}")
    hidden = keras.layers.Conv1D(model_config.units, order, padding="causal", activation="relu", name="ar_0")(inputs)
    for index in range(1, model_config.num_layers):
        if model_config.dropout:
            hidden = keras.layers.Dropout(model_config.dropout, name=f"dropout_{index - 1}")(hidden)
        hidden = keras.layers.Dense(model_config.units, activation="relu", name=f"ar_{index}")(hidden)
    outputs = keras.layers.Dense(task.num_outputs, activation=activation, name="head")(hidden)
    return keras.Model(inputs, outputs, name=f"ar_mlp_{order}_x{model_config.num_layers}")


def warmup_steps(model_config) -> int:
    """Leading steps of a sequence where the model sees less history than it was built for: an AR(τ) model's
    first τ - 1 steps (zero-padded); none for a recurrent network, whose state starts empty by design."""
    return 0 if model_config.kind == "recurrent" else model_config.ar_order - 1


def build_recurrent_model(model_config, task: Task, batch_size: int | None = None,
                          stateful: bool = False, gradient_scale: float = 1.0) -> keras.Model:
    """A stack of `num_layers` recurrent layers and a dense head.

    Args:
        model_config: a config's `model` (cell_type, units, num_layers, dropout, recurrent_gain).
        task: decides the head: one output per sequence (`final`, seq2vec) or per step (`per_step`, seq2seq);
            a softmax over classes for cross-entropy tasks, a linear unit for regression.
        batch_size: fixed batch size, required when `stateful` (truncated BPTT carries state in the layers).
        stateful: keep the last state of each batch as the initial state of the next call.
        gradient_scale: the factor on the gradient each step passes back to the one before (1: plain
            backpropagation with Keras' own layers; otherwise a generic `keras.layers.RNN` over
            `GradientScaledCell`s, with the same weights).

    Returns:
        A model mapping `[batch, time, task.num_features]` to `[batch, task.num_outputs]` or
        `[batch, time, task.num_outputs]`. The time axis is unspecified, so chunks of any length can be fed.
    """
    layer_type = layer_class(model_config.cell_type, stateful)
    inputs = keras.Input(batch_shape=(batch_size, None, task.num_features), name="sequence")
    hidden = inputs
    for index in range(model_config.num_layers):
        is_last = index == model_config.num_layers - 1
        options = {"return_sequences": not is_last or task.target_form == "per_step", "stateful": stateful,
                   "name": f"{model_config.cell_type}_{index}"}
        initializer = keras.initializers.Orthogonal(gain=model_config.recurrent_gain)
        if gradient_scale == 1.0:
            layer = layer_type(model_config.units, recurrent_initializer=initializer, **options,
                               **backends.recurrent_layer_options(keras.backend.backend(), model_config.cell_type,
                                                                  stateful))
        else:
            cell = getattr(keras.layers, f"{get_cell(model_config.cell_type).__name__}Cell")(model_config.units,
                                                                      recurrent_initializer=initializer)
            layer = keras.layers.RNN(GradientScaledCell(cell, gradient_scale), **options)
        hidden = layer(hidden)
        if model_config.dropout and not is_last:
            hidden = keras.layers.Dropout(model_config.dropout, name=f"dropout_{index}")(hidden)
    activation = "softmax" if task.loss == "sparse_categorical_crossentropy" else None
    outputs = keras.layers.Dense(task.num_outputs, activation=activation, name="head")(hidden)
    model = keras.Model(inputs, outputs, name=f"{model_config.cell_type}_x{model_config.num_layers}")
    if stateful and backends.tracks_rnn_state(keras.backend.backend()):
        track_rnn_states(model)
    return model


def track_rnn_states(model: keras.Model) -> None:
    """Make the carried states of `model`'s stateful recurrent layers (non-trainable) variables of `model`, so
    that `model.variables` holds them (`backends.tracks_rnn_state` says why JAX needs it).

    Keras creates them untracked, and a built layer refuses new state; a functional model does not (Keras keeps
    it open so that layers outside the graph can be attached), and tracks variables assigned to its attributes
    like any layer. Raises ValueError where Keras stops allowing it.
    """
    model.carried_states = [variable for layer in recurrent_layers(model) for variable in layer.states or []]


BUILDERS = {"recurrent": build_recurrent_model, "ar": build_autoregressive_model,
            "ar_mlp": build_autoregressive_model}


def portable_copy(model: keras.Model, model_config, task: Task) -> keras.Model:
    """A stateless, batch-size-free copy of a (stateful) training model, with the same weights."""
    portable = build_model(model_config, task)
    carried = {id(v) for layer in recurrent_layers(model) for v in (layer.states or [])}
    portable.set_weights([ops.convert_to_numpy(v.value) for v in model.weights if id(v) not in carried])
    return portable


def recurrent_layers(model: keras.Model) -> list[keras.layers.RNN]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.RNN)]


def reset_states(layers: list[keras.layers.RNN]) -> None:
    """Zero the carried state of stateful recurrent layers (Keras 3.15 has no `Model.reset_state()`)."""
    for layer in layers:
        layer.reset_state()


class _RecordsGradientNorm(keras.optimizers.Optimizer):
    """Optimizer mixin: keeps the global norm of the latest gradients, measured before clipping.

    Every backend's compiled train step hands the raw gradients to the optimizer's `apply` (TensorFlow through
    `apply_gradients`, JAX through `stateless_apply`), and Keras clips inside it; so the norm is taken there, of
    the gradients that exist and unscaled as Keras unscales them before clipping, kept in an optimizer variable
    and read after each update. (With gradient accumulation, which rnnlib does not use, Keras would clip the
    accumulated gradients instead.)
    """

    def build(self, variables):
        super().build(variables)
        self.gradient_norm = self.add_variable(shape=(), initializer="zeros", name="gradient_norm")

    def apply(self, grads, trainable_variables=None):
        squares = [ops.sum(ops.square(g)) for g in grads if g is not None]
        if not squares:  # nothing to update (Keras returns or raises before building)
            return super().apply(grads, trainable_variables)
        norm = ops.sqrt(sum(squares))
        if self.loss_scale_factor is not None:
            norm = norm / self.loss_scale_factor
        super().apply(grads, trainable_variables)  # builds the optimizer on the first call
        self.gradient_norm.assign(norm)


OPTIMIZERS = {
    name: type(f"{base.__name__}WithGradientNorm", (_RecordsGradientNorm, base), {})
    for name, base in (
        ("adam", keras.optimizers.Adam),
        ("rmsprop", keras.optimizers.RMSprop),
        ("sgd", keras.optimizers.SGD),
    )
}


def make_optimizer(name: str, learning_rate: float, clipnorm: float | None) -> keras.optimizers.Optimizer:
    """An optimizer that clips the global gradient norm at `clipnorm` (None: no clipping) and records it."""
    return lookup(OPTIMIZERS, name, "optimizer")(learning_rate=learning_rate, global_clipnorm=clipnorm)


def compile_model(model: keras.Model, task: Task, training_config) -> keras.Model:
    """Compile with the task's loss and the configured optimizer and clipping."""
    optimizer = make_optimizer(training_config.optimizer, training_config.learning_rate, training_config.clipnorm)
    model.compile(optimizer=optimizer, loss=task.loss)
    return model


def export_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Every weight by its Keras path (`lstm_0/lstm_cell/kernel`, ...) as numpy: the plain format the
    dashboard reads without Keras."""
    return {variable.path: ops.convert_to_numpy(variable.value) for variable in model.weights}
