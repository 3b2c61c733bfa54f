"""Gradient flow over time of a Keras recurrent model (training-worker side: imports keras).

How much does the loss at the last step T depend on the state at an earlier step t? Differentiating through a
fused recurrent layer's output sequence gives only the direct path from h_t to the head, so the probe unrolls
each layer's own cell (the same weights: `layer.cell`) one step at a time and adds a zero perturbation e_t to
every state after step t. The gradient with respect to e_t is then exactly ∂L_T/∂h_t (and ∂L_T/∂c_t for the
LSTM's cell state), through every path.

Truncation is reproduced as training applies it: the loss at T only reaches back to the start of the last
update, because the state carried into an update is a constant (`truncation.gradient_reach`). The
Jacobian view ∂h_T/∂h_t is a property of the dynamics and is computed without truncation.
"""

import numpy as np
from keras import ops

from rnnlib.core import records, truncation
from rnnlib.core.cells import get_cell, model_traces
from rnnlib.core.config import ExperimentConfig
from rnnlib.tasks import Task
from rnnlib.worker import backends, models

# Jacobians are taken row by row, one replica of a sequence per unit of h_T: cap the replicated batch.
MAX_JACOBIAN_ROWS = 1024
# Offset of the probe sequences' seed from the training seed, so they are fixed per run and not training data.
PROBE_SEED_OFFSET = 7919


def unroll(cells, x, perturbations, cut=None):
    """Run stacked cells over `x` `[batch, T, features]` step by step, adding `perturbations` to the states.

    Args:
        cells: the Keras cells of the stacked recurrent layers, bottom first (only these layers run).
        perturbations: per layer, one `[batch, T, units]` tensor per state (h; h and c for the LSTM), added to
            that state after each step (zeros: the forward pass is unchanged).
        cut: `<float>[T]`, 1 at the step whose incoming states are constants (no gradient flows back past it,
            as at the first step of a truncated update), else 0. A mask rather than an index so that one compiled
            graph serves every update.

    Returns:
        The hidden states of the last layer, `[batch, T, units]`.
    """
    hidden = ops.transpose(x, (1, 0, 2))  # time-major, for `ops.scan`
    cut = ops.zeros((x.shape[1],)) if cut is None else cut
    for cell, layer_perturbations in zip(cells, perturbations):

        def step(states, inputs, cell=cell):
            x_t, cut_t, *perturbations_t = inputs
            states = [state * (1.0 - cut_t) + ops.stop_gradient(state) * cut_t for state in states]
            _, states = cell(x_t, states, training=False)
            states = [state + perturbation for state, perturbation in zip(states, perturbations_t)]
            return states, states  # TensorFlow's scan wants outputs shaped like the carry

        initial = [ops.zeros((x.shape[0], cell.units)) for _ in layer_perturbations]
        time_major = [ops.transpose(p, (1, 0, 2)) for p in layer_perturbations]
        _, outputs = ops.scan(step, initial, [hidden, cut, *time_major])
        hidden = outputs[0]
    return ops.transpose(hidden, (1, 0, 2))


class GradientProbe:
    """Per-timestep gradients of one model, its differentiated functions built (and on TensorFlow traced) once.

    Args:
        model: a model from `rnnlib.worker.models.build_model` (its recurrent layers' cells and its `head` are used;
            dropout between layers is left out, as at inference).
        task: decides the loss and which target is the last step's.
    """

    def __init__(self, model, task: Task):
        import keras

        self.model = model
        layers = models.recurrent_layers(model)
        self.cells = [layer.cell for layer in layers]
        self.cell_type = models.cell_type_of(layers[0])
        self.head = model.get_layer("head")
        self.task = task
        loss = keras.losses.get(task.loss)
        self._loss_gradients = backends.gradient_function(
            lambda x, target, cut, *flat: ops.sum(loss(target, self.head(
                unroll(self.cells, x, self._nest(flat), cut)[:, -1])))
        )
        self._state_gradients = {
            index: backends.gradient_function(
                lambda x, selector, *flat, index=index: ops.sum(
                    unroll(self.cells[: index + 1], x, self._nest(flat)[: index + 1])[:, -1] * selector)
            )
            for index in range(len(self.cells))
        }

    def loss_gradients(self, x: np.ndarray, y: np.ndarray, reach: int = 0):
        """∂L_T/∂(state_t) for every layer, state and timestep, L_T being the loss at the last step.

        Args:
            x: `[batch, T, features]` probe sequences; y: their targets (the task's shape).
            reach: first step the last update backpropagates to (0: full BPTT); the loss sends no gradient to
                earlier steps, exactly as in the training update.

        Returns:
            (mean loss at T, {quantity: `<float>[num_layers, T]`}) with quantities `loss_hidden` (and
            `loss_cell` for the LSTM): each sequence's gradient norm, averaged over the sequences. The LSTM's
            ∂L/∂c_t is the total derivative, through h_t = o_t ⊙ tanh(c_t) as well as through the carried cell
            state: the perturbation added after the step only sees the latter, so the former is added with the
            gate values of the reference equations (`rnnlib.core.cells`).
        """
        x = np.asarray(x, np.float32)
        batch, length = x.shape[:2]
        cut = np.zeros(length, np.float32)
        cut[reach] = 1.0
        target = y if self.task.target_form == "final" else y[:, -1]
        total, grads = self._loss_gradients([x, np.asarray(target), cut], self._zeros(batch, length))
        nested = self._nest(grads)  # per layer: ∂L/∂h_t (and ∂L/∂c_t through the carried cell state only)
        result = {"loss_hidden": np.stack([_mean_norm(layer[0]) for layer in nested])}
        if "c" in get_cell(self.cell_type).states:
            traces = model_traces(models.export_weights(self.model), self.cell_type, len(self.cells), x)
            result["loss_cell"] = np.stack([
                _mean_norm(carried + from_hidden * trace["output_gate"] * (1.0 - np.tanh(trace["c"]) ** 2))
                for (from_hidden, carried), trace in zip(nested, traces.values())
            ])
        return total / batch, result

    def jacobian_norms(self, x: np.ndarray) -> np.ndarray:
        """Spectral norm of ∂h_T/∂h_t within each layer for every t, averaged over sequences: `[num_layers, T]`.

        Row j of the Jacobian is the gradient of h_T[j]; one backward pass gets all rows by replicating each
        sequence once per unit. NaN for layers wider than `MAX_JACOBIAN_ROWS` units, and where the network has
        diverged (non-finite Jacobians): a probe records what it sees and never stops training.
        """
        length = x.shape[1]
        result = np.full((len(self.cells), length), np.nan)
        for index, cell in enumerate(self.cells):
            units = cell.units
            if units > MAX_JACOBIAN_ROWS:
                continue
            num_sequences = max(1, min(len(x), MAX_JACOBIAN_ROWS // units))
            replicated = np.repeat(np.asarray(x[:num_sequences], np.float32), units, axis=0)
            selector = np.tile(np.eye(units, dtype=np.float32), (num_sequences, 1))
            _, grads = self._state_gradients[index]([replicated, selector], self._zeros(len(replicated), length))
            position = sum(_num_states(c) for c in self.cells[:index])  # this layer's h perturbation
            rows = grads[position].reshape(num_sequences, units, length, units).transpose(0, 2, 1, 3)
            finite = np.isfinite(rows).all(axis=(0, 2, 3))  # a diverged network has inf / NaN Jacobians
            result[index, finite] = np.linalg.svd(rows[:, finite], compute_uv=False)[..., 0].mean(axis=0)
        return result

    def _zeros(self, batch, length):
        return [np.zeros((batch, length, cell.units), np.float32) for cell in self.cells
                for _ in range(_num_states(cell))]

    def _nest(self, flat):
        """Split a flat list (one entry per layer and state) into per-layer lists."""
        nested, position = [], 0
        for cell in self.cells:
            nested.append(list(flat[position : position + _num_states(cell)]))
            position += _num_states(cell)
        return nested


class FlowRecorder:
    """Probes a training model's gradient flow on fixed sequences and keeps every probe (`records.GradientFlow`)."""

    def __init__(self, model, task: Task, config: ExperimentConfig):
        self.task, self.truncation = task, config.training.truncation
        self.probe = GradientProbe(model, task)
        self.rng = np.random.default_rng(config.seed + PROBE_SEED_OFFSET)
        x, self.y = task.sample_batch(self.rng, config.training.num_probe_sequences)
        self.x = np.asarray(x, np.float32)
        assert config.model.cell_type is not None, "gradient flow is probed on recurrent models (they have a cell)"
        self.flow = records.GradientFlow.empty(config.model.cell_type, config.model.num_layers, task.sequence_length,
                                              self.truncation.label)

    def record(self, step: int, epoch: float) -> records.GradientFlow:
        """Probe now; returns the record of all probes so far."""
        length = self.task.sequence_length
        reach = truncation.gradient_reach(truncation.schedule(length, self.truncation, self.rng), length - 1)
        assert reach is not None, "a schedule scores every step, the last one too"
        loss, norms = self.probe.loss_gradients(self.x, self.y, reach)
        norms["jacobian"] = self.probe.jacobian_norms(self.x)
        self.flow.append(step, epoch, reach, loss, norms)
        return self.flow


def _mean_norm(gradients: np.ndarray) -> np.ndarray:
    """`[batch, T, units]` -> `[T]`: each sequence's gradient norm per step, averaged over the sequences."""
    return np.linalg.norm(gradients, axis=-1).mean(axis=0)


def _num_states(cell) -> int:
    return len(cell.state_size) if isinstance(cell.state_size, (list, tuple)) else 1
