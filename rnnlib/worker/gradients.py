"""Gradient flow over time of a Keras recurrent model (training-worker side: imports keras).

How much does the loss at the last step T depend on the state at an earlier step t? Differentiating through a
fused recurrent layer's output sequence gives only the direct path from h_t to the head, so the probe unrolls
each layer's own cell (the same weights: `layer.cell`) one step at a time and adds a zero perturbation e_t to
every state after step t. The gradient with respect to e_t is then exactly ∂L_T/∂h_t (and ∂L_T/∂c_t for the
LSTM's cell state), through every path.

Truncation is reproduced as training applies it: the loss at T only reaches back to the start of the last
update, because the state carried into an update is a constant (`truncation.gradient_reach`). The
Jacobian view ∂h_T/∂h_t is a property of the dynamics and is computed without truncation, and so is the
connectivity ‖∂y_T/∂x_t‖ (Distill's "Memorization in RNNs"): how much the last output depends on each input.

The truncation-bias meter (`GradientProbe.truncation_gradients`, `truncation_bias`) compares gradients of the
parameters themselves: full BPTT's on the probe sequences against the one the run's truncation gives on the same
sequences and weights, through the same windows its updates use.
"""

import collections
import functools
import typing

import numpy as np
from keras import ops
from scipy.linalg import lapack

from rnnlib.core import records, truncation
from rnnlib.core.cells import get_cell, model_traces
from rnnlib.core.config import ExperimentConfig
from rnnlib.tasks import Task
from rnnlib.worker import backends, models

# Jacobians are taken row by row, one replica of a sequence per unit of h_T: cap the replicated batch.
MAX_JACOBIAN_ROWS = 1024
# `GradientProbe.parameter_gradients` takes recipes in chunks of at most this many, holding at most
# `MAX_WEIGHT_COPIES` floats of weight copies (e.g. 64 copies of a 32-unit GRU, one of a 1,024-unit LSTM).
MAX_RECIPES_PER_PASS = 64
MAX_WEIGHT_COPIES = 1 << 22
# Probes of one architecture and task share their traced functions (`GradientProbe`'s `shared_key`): at most
# this many architectures kept per process, the least recently used dropped first.
MAX_SHARED_PROBES = 8
_TEMPLATES: collections.OrderedDict = collections.OrderedDict()
# Offset of the probe sequences' seed from the training seed, so they are fixed per run and not training data.
PROBE_SEED_OFFSET = 7919


def unroll(cells, x, perturbations, keep=None):
    """Run stacked cells over `x` `[batch, T, features]` step by step, adding `perturbations` to the states.

    Args:
        cells: the Keras cells of the stacked recurrent layers, bottom first (only these layers run).
        perturbations: per layer, one `[batch, T, units]` tensor per state (h; h and c for the LSTM), added to
            that state after each step (zeros: the forward pass is unchanged).
        keep: `<float>[T]`, or `[batch, T]` for one per sequence: the factor on the gradient that flows back
            through the states entering each step (the forward pass is unchanged): 0 where they are constants
            (no gradient flows back past the first step of a truncated update), 1 for plain backpropagation (the
            default), other values for a compensated truncation. A mask rather than indices so that one
            compiled graph serves every update.

    Returns:
        The hidden states of the last layer, `[batch, T, units]`.
    """
    hidden = ops.transpose(x, (1, 0, 2))  # time-major, for `ops.scan`
    keep = ops.ones((x.shape[1],)) if keep is None else keep
    keep = ops.expand_dims(keep if len(keep.shape) == 1 else ops.transpose(keep), -1)  # [T, 1] or [T, batch, 1]
    for cell, layer_perturbations in zip(cells, perturbations):
        hidden = _scan_layer(cell, hidden, keep, [ops.transpose(p, (1, 0, 2)) for p in layer_perturbations])[0]
    return ops.transpose(hidden, (1, 0, 2))


def forward_states(cells, x):
    """Every layer's states at every step, `[layer][state]` -> `[batch, T, units]` (h; h and c for the LSTM),
    as constants: the forward pass of `unroll`."""
    hidden = ops.transpose(x, (1, 0, 2))
    keep = ops.ones((x.shape[1], 1))
    result = []
    for cell in cells:
        zeros = [ops.repeat(ops.zeros_like(hidden[..., :1]), cell.units, axis=-1)] * _num_states(cell)
        states = [ops.stop_gradient(s) for s in _scan_layer(cell, hidden, keep, zeros)]
        result.append([ops.transpose(s, (1, 0, 2)) for s in states])
        hidden = states[0]
    return result


def _scan_layer(cell, inputs, keep, perturbations):
    """One layer of `unroll`, time-major: inputs `[T, batch, features]`, keep `[T, 1]` or `[T, batch, 1]`, one
    `[T, batch, units]` perturbation per state. Returns each state's sequence, `[T, batch, units]`."""

    def step(states, step_inputs):
        x_t, keep_t, *perturbations_t = step_inputs
        states = [ops.stop_gradient(state) + (state - ops.stop_gradient(state)) * keep_t for state in states]
        _, states = cell(x_t, states, training=False)
        states = [state + perturbation for state, perturbation in zip(states, perturbations_t)]
        return states, states  # TensorFlow's scan wants outputs shaped like the carry

    initial = [ops.zeros_like(p[0]) for p in perturbations]  # [batch, units], whatever the traced batch size
    _, outputs = ops.scan(step, initial, [inputs, keep, *perturbations])
    return list(outputs)


class GradientProbe:
    """Per-timestep gradients of one model, its differentiated functions built (and on TensorFlow traced) once.

    The functions read the model's weights as arguments, not as captured variables, so a probe of another model
    of the same architecture and task runs the same traced graphs (`shared_key`): a sweep's runs of one cell
    trace them once per process, not once per run (on TensorFlow 0.7 s of a tiny run's 2.5 s).

    Args:
        model: a model from `rnnlib.worker.models.build_model` (its recurrent layers' cells and its `head` are used;
            dropout between layers is left out, as at inference).
        task: decides the loss and which target is the last step's.
        shared_key: text that fixes the model's architecture and the task's shapes and loss (e.g. their configs):
            the probe reuses the functions of an earlier probe built with that key in this process. None: its own.
    """

    def __init__(self, model, task: Task, shared_key: str | None = None):
        self.model = model
        self.task = task
        layers = models.recurrent_layers(model)
        self.cell_type = models.cell_type_of(layers[0])
        self.weights = list(model.variables)  # the functions' first arguments, in the template's order
        if shared_key is not None:  # only models whose weights line up one to one share: no silent mismatch
            shared_key += repr([(tuple(v.shape), str(v.dtype), v.trainable) for v in self.weights])
        template = _TEMPLATES.get(shared_key) if shared_key is not None else None
        if template is None:
            template = _Functions(model, task)
        if shared_key is not None:
            _TEMPLATES[shared_key] = template
            _TEMPLATES.move_to_end(shared_key)
            while len(_TEMPLATES) > MAX_SHARED_PROBES:
                _TEMPLATES.popitem(last=False)
        self._template = template
        self.cells = [models.base_cell(layer) for layer in layers]
        self.head = model.get_layer("head")

    @property
    def variables(self) -> list:
        """This model's trainable weights, in the order `parameter_gradients` flattens their gradients."""
        return list(self.model.trainable_variables)

    def _call(self, function, constants, inputs):
        """One of the template's differentiated functions, on this model's current weights."""
        return function([*[v.value for v in self.weights], *constants], inputs)

    def flow(self, x: np.ndarray, y: np.ndarray | None = None, reach: int = 0, jacobian: bool = True,
             connectivity: bool = True) -> tuple[float, dict[str, np.ndarray]]:
        """One probe's gradient flow over time, from one backward pass through one scan of every layer.

        Args:
            x: `[batch, T, features]` probe sequences; y: their targets (the task's shape), or None for no loss
                gradients.
            reach: first step the last update backpropagates to (0: full BPTT); the loss sends no gradient to
                earlier steps, exactly as in the training update.
            jacobian, connectivity: whether to take the Jacobian norms and the input connectivity too.

        Returns:
            (mean loss at T, or NaN without `y`; {quantity: `<float>[num_layers, T]`}), the quantities being
            - `loss_hidden` (and `loss_cell` for the LSTM): ∂L_T/∂(state_t) for every layer, state and step, L_T
              the loss at the last step, each sequence's gradient norm averaged over the sequences. The LSTM's
              ∂L/∂c_t is the total derivative, through h_t = o_t ⊙ tanh(c_t) as well as through the carried cell
              state: the perturbation added after the step only sees the latter, so the former is added with the
              gate values of the reference equations (`rnnlib.core.cells`);
            - `jacobian`: the spectral norm of ∂h_T/∂h_t within each layer, averaged over sequences. Row j of the
              Jacobian is the gradient of h_T[j], so each sequence is replicated once per unit. NaN for layers
              wider than `MAX_JACOBIAN_ROWS` units, and where the network has diverged (non-finite Jacobians): a
              probe records what it sees and never stops training. No truncation: a property of the dynamics;
            - `input` (`<float>[T]`): ‖∂y_T/∂x_t‖, the Frobenius norm of the Jacobian of the last output with
              respect to the input x_t (Distill's "Memorization in RNNs"), averaged over sequences; no truncation.

        Every row of the one batch is a sequence of its own (the loss rows, each layer's Jacobian rows, the
        connectivity rows), so its gradient is the one a separate pass would give; each layer's Jacobian rows
        leave the scan after their layer.
        """
        x = np.asarray(x, np.float32)
        batch, length = x.shape[:2]
        layout = self._layout(batch if y is not None else 0, batch, jacobian, connectivity)
        losses, outputs, jacobians, sequences = layout
        keep = np.ones((layout_rows(layout), length), np.float32)
        keep[:losses, reach] = 0.0
        rows = [x] if losses else []
        rows.append(np.repeat(x[:sequences[-1]], outputs, axis=0))
        for index in reversed(range(len(self.cells))):
            rows.append(np.repeat(x[:sequences[index]], jacobians[index] // max(1, sequences[index]), axis=0))
        constants = [keep, np.zeros((1,), np.float32) if y is None else np.asarray(
            y if self.task.target_form == "final" else y[:, -1])]
        inputs = [np.concatenate(rows)] + [np.zeros((alive, length, cell.units), np.float32)
                                           for cell, alive in zip(self.cells, _alive(layout))
                                           for _ in range(_num_states(cell))]
        values, (x_grads, *grads) = self._call(self._template.flow(layout), constants, inputs)
        nested = self._nest(grads)
        result: dict[str, np.ndarray] = {}
        if losses:
            result["loss_hidden"] = np.stack([_mean_norm(layer[0][:losses]) for layer in nested])
            if "c" in get_cell(self.cell_type).states:
                traces = model_traces(models.export_weights(self.model), self.cell_type, len(self.cells), x)
                result["loss_cell"] = np.stack([
                    _mean_norm(carried[:losses] + from_hidden[:losses] * trace["output_gate"]
                               * (1.0 - np.tanh(trace["c"]) ** 2))
                    for (from_hidden, carried), trace in zip(nested, traces.values())
                ])
        if jacobian:
            result["jacobian"] = np.full((len(self.cells), length), np.nan)
            for index, (cell, alive) in enumerate(zip(self.cells, _alive(layout))):
                if jacobians[index]:
                    units = cell.units
                    block = nested[index][0][alive - jacobians[index] : alive]
                    matrices = block.reshape(sequences[index], units, length, units).transpose(0, 2, 1, 3)
                    finite = np.isfinite(matrices).all(axis=(0, 2, 3))  # a diverged network: inf / NaN Jacobians
                    result["jacobian"][index, finite] = spectral_norms(matrices[:, finite]).mean(axis=0)
        if connectivity:
            block = x_grads[losses : losses + outputs * sequences[-1]]
            matrices = block.reshape(sequences[-1], outputs, length, -1).astype(np.float64)
            norms = np.sqrt(np.square(matrices).sum(axis=(1, 3)))  # [sequences, T]
            norms[~np.isfinite(norms)] = np.nan
            result["input"] = norms.mean(axis=0)
        return (float(values[0]) / batch if losses else float("nan")), result

    def loss_gradients(self, x: np.ndarray, y: np.ndarray, reach: int = 0):
        """∂L_T/∂(state_t) for every layer, state and timestep (`flow`'s `loss_hidden`, `loss_cell`):
        (mean loss at T, {quantity: `<float>[num_layers, T]`})."""
        return self.flow(x, y, reach, jacobian=False, connectivity=False)

    def jacobian_norms(self, x: np.ndarray) -> np.ndarray:
        """Spectral norm of ∂h_T/∂h_t within each layer for every t, averaged over sequences: `[num_layers, T]`
        (`flow`'s `jacobian`)."""
        return self.flow(x, jacobian=True, connectivity=False)[1]["jacobian"]

    def input_connectivity(self, x: np.ndarray) -> np.ndarray:
        """‖∂y_T/∂x_t‖ for every t, averaged over sequences: `<float>[T]` (`flow`'s `input`)."""
        return self.flow(x, jacobian=False, connectivity=True)[1]["input"]

    def _layout(self, losses: int, batch: int, jacobian: bool, connectivity: bool) -> tuple:
        """The rows of `flow`'s batch, static for its traced function: (loss rows, outputs per connectivity
        sequence or 0, per layer its Jacobian rows, per layer the sequences replicated; the last entry of that
        tuple is the connectivity's). At most `MAX_JACOBIAN_ROWS` rows for each Jacobian and the connectivity."""
        outputs = self.task.num_outputs if connectivity else 0
        jacobians, sequences = [], []
        for cell in self.cells:
            wanted = jacobian and cell.units <= MAX_JACOBIAN_ROWS
            count = max(1, min(batch, MAX_JACOBIAN_ROWS // cell.units)) if wanted else 0
            jacobians.append(count * cell.units)
            sequences.append(count)
        sequences.append(max(1, min(batch, MAX_JACOBIAN_ROWS // max(1, outputs))) if outputs else 0)
        return losses, outputs, tuple(jacobians), tuple(sequences)

    def parameter_gradients(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                            keep: np.ndarray) -> np.ndarray:
        """Parameter gradients of several recipes on the sequences `x` at the current weights, `[R, P]` float64.

        Recipe r is the objective Σ_t weights[r, t] · loss_t (loss_t: step t's mean loss over the sequences; for
        a task scored at the last step only, that loss), backpropagated with the gradient factors keep[r]
        (`unroll`); row r is its gradient with respect to every trainable weight, flattened.

        Two passes, so that R recipes cost about one: (1) every recipe's replica of the sequences runs in one
        batch through one scan, and the gradient with respect to zero perturbations of every state gives each
        replica's own adjoint ∂objective/∂state_t; (2) with the forward states held constant, each step's cell
        and the head are applied once more, without a scan, to one copy of the weights per recipe, against
        those adjoints: the gradient with respect to copy r is recipe r's, Σ_t (∂state_t/∂θ)ᵀ adjoint_t.
        Recipes go in chunks that keep the replicated batch and the weight copies bounded.
        """
        x, y = np.asarray(x, np.float32), np.asarray(y)
        batch, length = x.shape[:2]
        weights = np.asarray(weights, np.float32) / batch  # each recipe's loss is a mean over its sequences
        keep = np.asarray(keep, np.float32)
        values = [ops.convert_to_numpy(v.value) for v in self.variables]
        size = max(1, min(len(weights), MAX_RECIPES_PER_PASS, MAX_JACOBIAN_ROWS // batch,
                          MAX_WEIGHT_COPIES // sum(v.size for v in values)))
        rows = []
        for start in range(0, len(weights), size):
            w, k = weights[start : start + size], keep[start : start + size]
            replicas = len(w)
            _, adjoints = self._call(self._template.adjoints, [
                np.tile(x, (replicas, 1, 1)), np.tile(y, (replicas,) + (1,) * (y.ndim - 1)),
                np.repeat(w, batch, axis=0), np.repeat(k, batch, axis=0)], self._zeros(replicas * batch, length))
            per_recipe = [a.reshape(replicas, batch, length, -1) for a in adjoints]
            _, grads = self._call(self._template.local_gradients, [x, y, w, *per_recipe], values * replicas)
            for r in range(replicas):
                rows.append(np.concatenate([np.asarray(g, np.float64).ravel()
                                            for g in grads[r * len(values) : (r + 1) * len(values)]]))
        return np.stack(rows)

    def parameter_gradient(self, x: np.ndarray, y: np.ndarray, weights: np.ndarray,
                           keep: np.ndarray | None = None) -> np.ndarray:
        """One recipe's gradient (`parameter_gradients`): Σ_t weights_t · loss_t backpropagated with the gradient
        factors `keep` (default: plain backpropagation), flattened into one float64 vector."""
        keep = np.ones(x.shape[1], np.float32) if keep is None else keep
        return self.parameter_gradients(x, y, np.asarray(weights)[None], np.asarray(keep)[None])[0]

    def truncation_gradients(self, x: np.ndarray, y: np.ndarray, schedules: list[list[truncation.Update]],
                             gradient_scale: float = 1.0) -> tuple[np.ndarray, list[np.ndarray]]:
        """Full BPTT's parameter gradient on `x` at the current weights, and the one each schedule of truncated
        updates gives (`schedule_recipes`), all from one `parameter_gradients` call.

        A schedule of one update over the whole sequence without compensation gives the full gradient itself,
        so that full BPTT meters as exactly full.
        """
        length = x.shape[1]
        weights, keep, owners = [scored_weights(self.task, length)], [np.ones(length, np.float32)], [-1]
        for index, updates in enumerate(schedules):
            if not _is_full(updates, length, gradient_scale):
                recipe_weights, recipe_keep = schedule_recipes(self.task, updates, length, gradient_scale)
                weights.extend(recipe_weights)
                keep.extend(recipe_keep)
                owners.extend([index] * len(recipe_weights))
        rows = self.parameter_gradients(x, y, np.stack(weights), np.stack(keep))
        owner = np.array(owners)
        full = rows[0]
        samples = [rows[owner == index].sum(axis=0) if (owner == index).any() else full
                   for index in range(len(schedules))]
        return full, samples

    def truncation_gradient(self, x: np.ndarray, y: np.ndarray, updates: list[truncation.Update],
                            gradient_scale: float = 1.0) -> np.ndarray:
        """The parameter gradient one schedule of truncated updates gives on `x` at the current weights
        (`truncation_gradients`)."""
        return self.truncation_gradients(x, y, [updates], gradient_scale)[1][0]

    def _zeros(self, batch, length):
        return [np.zeros((batch, length, cell.units), np.float32) for cell in self.cells
                for _ in range(_num_states(cell))]

    def _nest(self, flat):
        return _nest(self.cells, flat)


class _Functions:
    """A `GradientProbe`'s differentiated functions, built on one model's cells and head: each reads the weights
    (`model.variables`, in order) from its first arguments (`_bound`), so any model of the same architecture
    and task can run them. Up to `MAX_SHARED_PROBES` of them are kept for reuse (`_TEMPLATES`)."""

    def __init__(self, model, task: Task):
        import keras

        self.cells = [models.base_cell(layer) for layer in models.recurrent_layers(model)]
        self.head = model.get_layer("head")
        self.task = task
        self.loss = keras.losses.get(task.loss)
        self.weights = list(model.variables)
        self.variables = list(model.trainable_variables)
        self._flows: dict[tuple, typing.Callable] = {}  # one per row layout (`GradientProbe._layout`)
        self.adjoints = backends.gradient_function(self._bound(self._recipe_loss))
        self.local_gradients = backends.gradient_function(self._bound(self._local_loss))

    def flow(self, layout: tuple) -> typing.Callable:
        """`GradientProbe.flow`'s differentiated function for this row layout."""
        if layout not in self._flows:
            self._flows[layout] = backends.gradient_function(
                self._bound(functools.partial(self._flow_terms, layout)))
        return self._flows[layout]

    def _bound(self, function):
        """`function(*args)` as a function of `(*weights, *args)`: the template's variables read as those values
        (a Keras `StatelessScope`), so that the traced graph captures no model's variables."""
        import keras

        count = len(self.weights)

        def bound(*args):
            with keras.StatelessScope(state_mapping=list(zip(self.weights, args[:count]))):
                return function(*args[count:])

        return bound

    def _nest(self, flat):
        return _nest(self.cells, flat)

    def _flow_terms(self, layout, keep, target, x, *perturbations):
        """`flow`'s objective, [Σ loss rows' L_T, Σ Jacobian rows' h_T[j], Σ connectivity rows' y_T[j]]: each
        term only reaches its own rows, so the gradient of their sum is each row's own. Time-major through
        `_scan_layer`; a layer's Jacobian rows (the last ones) are left behind after it."""
        losses, outputs, jacobians, sequences = layout
        hidden = ops.transpose(x, (1, 0, 2))
        keep = ops.expand_dims(ops.transpose(keep), -1)  # [T, rows, 1]
        jacobian_total = ops.zeros(())
        for index, (cell, layer_perturbations, alive) in enumerate(
                zip(self.cells, self._nest(perturbations), _alive(layout))):
            hidden = _scan_layer(cell, hidden[:, :alive], keep[:, :alive],
                                 [ops.transpose(p, (1, 0, 2)) for p in layer_perturbations])[0]
            if jacobians[index]:
                units = cell.units
                selector = ops.tile(ops.eye(units), (sequences[index], 1))
                jacobian_total = jacobian_total + ops.sum(hidden[-1, alive - jacobians[index] :] * selector)
        last = hidden[-1]
        loss_total = ops.sum(self.loss(target, self.head(last[:losses]))) if losses else ops.zeros(())
        connectivity_total = ops.zeros(())
        if outputs:
            selector = ops.tile(ops.eye(outputs), (sequences[-1], 1))
            connectivity_total = ops.sum(self.head(last[losses : losses + outputs * sequences[-1]]) * selector)
        return ops.stack([loss_total, jacobian_total, connectivity_total])

    def _recipe_loss(self, x, target, weights, keep, *perturbations):
        """Pass 1 of `parameter_gradients`: Σ over rows and steps of weights · loss through perturbed states
        (`unroll`), each recipe's replica of the sequences its own rows of `weights` and `keep` `[rows, T]`."""
        hidden = unroll(self.cells, x, self._nest(perturbations), keep)
        return self._weighted_loss(target, hidden, weights)

    def _local_loss(self, x, target, weights, *rest):
        """Pass 2 of `parameter_gradients`: for each copy of the weights, every step's cell applied to the held
        forward states against that recipe's adjoints, plus its weighted loss through the head."""
        import keras

        count = sum(_num_states(cell) for cell in self.cells)
        adjoints, copies = rest[:count], rest[count:]
        states = forward_states(self.cells, x)
        # each layer's inputs and incoming states at every step, `[batch·T, n]`, the same for every copy
        inputs = [_flat(x)] + [_flat(layer[0]) for layer in states[:-1]]
        previous = [[_flat(ops.pad(s[:, :-1], ((0, 0), (1, 0), (0, 0)))) for s in layer] for layer in states]
        total = 0.0
        for r in range(len(copies) // len(self.variables)):
            values = copies[r * len(self.variables) : (r + 1) * len(self.variables)]
            with keras.StatelessScope(state_mapping=list(zip(self.variables, values))):
                position = 0
                for cell, layer_inputs, layer_previous in zip(self.cells, inputs, previous):
                    _, new_states = cell(layer_inputs, layer_previous, training=False)
                    for state in new_states:
                        total = total + ops.sum(_flat(adjoints[position][r]) * state)
                        position += 1
                total = total + self._weighted_loss(target, states[-1][0], weights[r])
        return total

    def _weighted_loss(self, target, hidden, weights):
        """Σ_rows Σ_t weights[.., t] · loss_t(row) for a `[rows, T, units]` top layer (the last step only, for a
        task with one target per sequence); `weights` `[rows, T]`, or `[T]` for the same on every row."""
        if self.task.target_form == "final":
            return ops.sum(self.loss(target, self.head(hidden[:, -1])) * weights[..., -1])
        return ops.sum(self.loss(target, self.head(hidden)) * weights)



def scored_weights(task: Task, length: int) -> np.ndarray:
    """`<float>[T]`: 1/N on each of the N steps a training loss scores (the last step for a task with one
    target; the steps after `task.unscored_steps` otherwise), 0 elsewhere: the full loss is their mean."""
    weights = np.zeros(length, np.float32)
    if task.target_form == "final":
        weights[-1] = 1.0
    else:
        weights[task.unscored_steps :] = 1.0 / (length - task.unscored_steps)
    return weights


def _scored_updates(task: Task, updates: list[truncation.Update], length: int) -> list[truncation.Update]:
    """The updates that score a step (as training runs them), their `loss_start` past the unscored steps."""
    if task.target_form == "final":
        return [u for u in updates if u.stop == length]
    return [truncation.Update(u.start, max(u.loss_start, task.unscored_steps), u.stop) for u in updates
            if u.stop > task.unscored_steps]


def schedule_recipes(task: Task, updates: list[truncation.Update], length: int,
                     gradient_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The recipes (`GradientProbe.parameter_gradients`: loss weights and gradient factors, `[G, T]` each) whose
    gradients sum to the one a schedule of truncated updates gives.

    Every scored step t contributes the gradient of its loss backpropagated only through its own update's
    window (from `start`, whose incoming state is a constant), each step weighted 1/N over the N scored steps
    as in the full gradient. `gradient_scale` multiplies the gradient each step passes back to the one before
    it within a window (a compensated truncation's factor). Updates whose windows overlap (k1 < k2) go in
    separate recipes; the others share one.
    """
    weights_all = scored_weights(task, length)
    groups = _disjoint_groups(_scored_updates(task, updates, length))
    assert groups, "a schedule scores at least one step"
    keep = np.full((len(groups), length), gradient_scale, np.float32)
    weights = np.zeros((len(groups), length), np.float32)
    for row, group in enumerate(groups):
        for update in group:
            keep[row, update.start] = 0.0
            weights[row, update.loss_start : update.stop] = weights_all[update.loss_start : update.stop]
    return weights, keep


def _is_full(updates: list[truncation.Update], length: int, gradient_scale: float) -> bool:
    """Whether a schedule is full BPTT: one update over the whole sequence, not compensated."""
    return len(updates) == 1 and updates[0].start == 0 and updates[0].stop == length and gradient_scale == 1.0


def _disjoint_groups(updates: list[truncation.Update]) -> list[list[truncation.Update]]:
    """Updates split into groups whose windows `[start, stop)` do not overlap, so that each group's cuts leave
    the other updates' windows alone and one backward pass serves a whole group (one group when k1 = k2)."""
    groups: list[list[truncation.Update]] = []
    for update in updates:
        group = next((g for g in groups if g[-1].stop <= update.start), None)
        if group is None:
            groups.append([update])
        else:
            group.append(update)
    return groups


def truncation_bias(full: np.ndarray, samples: list[np.ndarray]) -> dict[str, float]:
    """How far truncated gradients (`samples`, one per sampled schedule) are from full BPTT's (`full`).

    Returns:
        `cosine`: the mean cosine similarity of a sample with the full gradient (1: the same direction);
        `error`: the mean relative norm error ‖g − g_full‖ / ‖g_full‖;
        `bias`: ‖E[g] − g_full‖ / ‖g_full‖, the estimator's bias. Estimated from the samples' mean, whose squared
            distance from g_full is the squared bias plus the mean's own sampling variance (variance / M for M
            samples): that share is taken off (down to 0), so that the noise of a few samples is not read as bias;
        `variance`: E‖g − E[g]‖² / ‖g_full‖², from the samples' squared distances to their mean over M − 1 (0 for
            one sample).
        All NaN when the full gradient is zero or not finite (a diverged network).
    """
    full = np.asarray(full, np.float64)
    stack = np.asarray(samples, np.float64)
    reference = float(np.linalg.norm(full))
    if not (np.isfinite(reference) and reference > 0 and np.isfinite(stack).all()):
        return dict.fromkeys(records.TRUNCATION_BIAS, float("nan"))
    norms = np.linalg.norm(stack, axis=1)
    # 1 - ‖â − b̂‖² / 2 is the cosine, exactly 1 for identical vectors
    unit = stack / np.where(norms > 0, norms, 1.0)[:, None]
    cosines = 1.0 - np.square(np.linalg.norm(unit - full / reference, axis=1)) / 2.0
    cosines[norms == 0] = 0.0
    mean = stack.mean(axis=0)
    variance = float(np.square(stack - mean).sum() / (len(stack) - 1)) / reference ** 2 if len(stack) > 1 else 0.0
    squared_bias = float(np.square(mean - full).sum()) / reference ** 2 - variance / len(stack)
    return {
        "cosine": float(cosines.mean()),
        "error": float((np.linalg.norm(stack - full, axis=1) / reference).mean()),
        "bias": float(np.sqrt(max(squared_bias, 0.0))),
        "variance": variance,
    }



class FlowRecorder:
    """Probes a training model's gradient flow on fixed sequences and keeps every probe (`records.GradientFlow`).

    Each probe also meters the run's truncation (`truncation_bias`): its schedule drawn `bias_samples` times
    for a random mode (once for a fixed one), on the probe sequences and the current weights."""

    def __init__(self, model, task: Task, config: ExperimentConfig):
        self.task, self.truncation = task, config.training.truncation
        self.bias_samples = config.training.bias_samples if truncation.is_random(self.truncation) else 1
        # runs of one model and task config in this process share the probe's traced functions
        self.probe = GradientProbe(model, task, config.architecture_key)
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
        loss, norms = self.probe.flow(self.x, self.y, reach)
        norms["input"] = np.repeat(norms["input"][None], len(self.probe.cells), axis=0)
        self.flow.append(step, epoch, reach, loss, norms, self.meter())
        return self.flow

    def meter(self) -> dict[str, float]:
        """The truncation-bias meter now (`truncation_bias`); the schedules drawn from the probe's own generator."""
        length = self.task.sequence_length
        schedules = [truncation.schedule(length, self.truncation, self.rng) for _ in range(self.bias_samples)]
        full, samples = self.probe.truncation_gradients(self.x, self.y, schedules,
                                                        truncation.gradient_scale(self.truncation))
        return truncation_bias(full, samples)


def spectral_norms(matrices: np.ndarray) -> np.ndarray:
    """The largest singular value of each finite `[..., n, n]` matrix, float64 `[...]`.

    The same number as `np.linalg.svd(matrices, compute_uv=False)[..., 0]`, in a third less time: the square root
    of the largest eigenvalue of the float64 Gram matrix A Aᵀ, from LAPACK's `dsyevr` asked for that one
    eigenvalue only (its relative error is float64's, so the norm's is too: squaring loses nothing at the top of
    the spectrum, and float32 entries neither overflow nor underflow when squared in float64).
    """
    a = np.asarray(matrices, np.float64)
    flat = a.reshape(-1, *a.shape[-2:])
    gram = flat @ flat.transpose(0, 2, 1)
    size = gram.shape[-1]
    largest = np.empty(len(gram))
    for position, g in enumerate(gram):
        values, _, _, _, info = lapack.dsyevr(g, compute_v=0, range="I", il=size, iu=size, lower=1)
        largest[position] = values[0] if info == 0 else np.linalg.eigvalsh(g)[-1]
    return np.sqrt(np.maximum(largest, 0.0)).reshape(a.shape[:-2])


def _nest(cells, flat):
    """Split a flat list (one entry per layer and state) into per-layer lists."""
    nested, position = [], 0
    for cell in cells:
        nested.append(list(flat[position : position + _num_states(cell)]))
        position += _num_states(cell)
    return nested


def layout_rows(layout: tuple) -> int:
    """The rows of a `GradientProbe.flow` batch with this `_layout`."""
    losses, outputs, jacobians, sequences = layout
    return losses + outputs * sequences[-1] + sum(jacobians)


def _alive(layout: tuple) -> list[int]:
    """The rows of a `flow` batch that enter each layer: a layer's Jacobian rows leave after it."""
    alive, rows = [], layout_rows(layout)
    for jacobian in layout[2]:
        alive.append(rows)
        rows -= jacobian
    return alive


def _flat(a):
    """`[batch, T, n]` -> `[batch·T, n]`: every step of every sequence as one row."""
    return ops.reshape(a, (-1, a.shape[-1]))


def _mean_norm(gradients: np.ndarray) -> np.ndarray:
    """`[batch, T, units]` -> `[T]`: each sequence's gradient norm per step, averaged over the sequences."""
    return np.linalg.norm(gradients, axis=-1).mean(axis=0)


def _num_states(cell) -> int:
    return len(cell.state_size) if isinstance(cell.state_size, (list, tuple)) else 1
