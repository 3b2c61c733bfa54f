"""Looking inside recurrent layers with numpy: the textbook cell equations, run on a layer's own weights, and
the gradient flow over time that training logged.

The cell references serve two purposes: tests check that Keras' layers compute exactly these equations, and
the dashboard (which never imports keras) traces gates, cell states and hidden states from weights a run logged
as `weights.npz` (`rnnlib.models.export_weights`). `GradientFlow` is the record `rnnlib.gradients` computes in
the training worker and logs as `gradient_flow.npz`; everything here reads it without keras.

Weight layout follows Keras: `kernel` `[features, g * units]`, `recurrent_kernel` `[units, g * units]`, gates
concatenated in Keras' order (LSTM: i, f, c, o; GRU: z, r, h), `bias` `[g * units]` (GRU with
`reset_after=True`: `[2, 3 * units]`, input and recurrent biases).
"""

import dataclasses
import io
import json

import numpy as np
import pandas as pd


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def rnn_step(x_t, state, kernel, recurrent_kernel, bias):
    """Elman cell: h_t = tanh(W_xh x_t + W_hh h_{t-1} + b). Returns (h_t, [h_t], trace)."""
    (h,) = state
    pre_activation = x_t @ kernel + h @ recurrent_kernel + bias
    h = np.tanh(pre_activation)
    return h, [h], {"pre_activation": pre_activation, "h": h}


def lstm_step(x_t, state, kernel, recurrent_kernel, bias):
    """LSTM cell (Hochreiter & Schmidhuber 1997, with forget gate):

    i = σ(W_i x + U_i h + b_i), f = σ(W_f x + U_f h + b_f), c̃ = tanh(W_c x + U_c h + b_c),
    o = σ(W_o x + U_o h + b_o), c_t = f ⊙ c_{t-1} + i ⊙ c̃, h_t = o ⊙ tanh(c_t).
    """
    h, c = state
    z = x_t @ kernel + h @ recurrent_kernel + bias
    zi, zf, zc, zo = np.split(z, 4, axis=-1)
    i, f, candidate, o = sigmoid(zi), sigmoid(zf), np.tanh(zc), sigmoid(zo)
    c = f * c + i * candidate
    h = o * np.tanh(c)
    trace = {"input_gate": i, "forget_gate": f, "candidate": candidate, "output_gate": o, "c": c, "h": h}
    return h, [h, c], trace


def gru_step(x_t, state, kernel, recurrent_kernel, bias):
    """GRU cell (Cho et al. 2014) in Keras' `reset_after=True` form (the cuDNN one):

    z = σ(W_z x + b_z + U_z h + b'_z), r = σ(W_r x + b_r + U_r h + b'_r),
    h̃ = tanh(W_h x + b_h + r ⊙ (U_h h + b'_h)), h_t = z ⊙ h_{t-1} + (1 - z) ⊙ h̃.
    """
    (h,) = state
    input_bias, recurrent_bias = (bias[0], bias[1]) if bias.ndim == 2 else (bias, np.zeros_like(bias))
    x_z, x_r, x_h = np.split(x_t @ kernel + input_bias, 3, axis=-1)
    h_z, h_r, h_h = np.split(h @ recurrent_kernel + recurrent_bias, 3, axis=-1)
    z = sigmoid(x_z + h_z)
    r = sigmoid(x_r + h_r)
    candidate = np.tanh(x_h + r * h_h)
    h = z * h + (1.0 - z) * candidate
    return h, [h], {"update_gate": z, "reset_gate": r, "candidate": candidate, "h": h}


CELL_STEPS = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step}
NUM_STATES = {"rnn": 1, "lstm": 2, "gru": 1}


def run_cell(cell_type, inputs, kernel, recurrent_kernel, bias, initial_state=None):
    """Unroll one layer's cell over a batch of sequences with the same weights at every step.

    Args:
        inputs: `[batch, time, features]`.
        initial_state: list of `[batch, units]` arrays (h, and c for LSTM); zeros when None.

    Returns:
        outputs `[batch, time, units]` (h_t for every t), the final state list, and a dict of per-step traces
        (each `[batch, time, units]`) named after the cell's gates and states.
    """
    step = CELL_STEPS[cell_type]
    units = recurrent_kernel.shape[0]
    state = initial_state or [np.zeros((inputs.shape[0], units)) for _ in range(NUM_STATES[cell_type])]
    traces = []
    for t in range(inputs.shape[1]):
        _, state, trace = step(inputs[:, t].astype(np.float64), state, kernel, recurrent_kernel, bias)
        traces.append(trace)
    stacked = {name: np.stack([trace[name] for trace in traces], axis=1) for name in traces[0]}
    return stacked["h"], state, stacked


GATES = {
    "rnn": ("pre_activation",),
    "lstm": ("input_gate", "forget_gate", "output_gate"),
    "gru": ("update_gate", "reset_gate"),
}


def layer_weights(weights: dict[str, np.ndarray], cell_type: str, layer: int) -> tuple[np.ndarray, ...]:
    """(kernel, recurrent_kernel, bias) of stacked layer `layer` from `rnnlib.models.export_weights` output."""
    prefix = [k for k in weights if k.startswith(f"{cell_type}_{layer}/") and k.endswith("/kernel")
              and not k.endswith("recurrent_kernel")]
    if not prefix:
        layers = sorted({k.split("/")[0] for k in weights})
        raise ValueError(f"No weights for layer {cell_type}_{layer}; these weights hold: {', '.join(layers)}.")
    cell = prefix[0].removesuffix("/kernel")
    return tuple(np.asarray(weights[f"{cell}/{name}"], np.float64) for name in ("kernel", "recurrent_kernel", "bias"))


def model_traces(weights: dict[str, np.ndarray], cell_type: str, num_layers: int,
                 inputs: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    """Run every stacked layer's cell over `inputs` `[batch, time, features]` with the logged weights.

    Returns `{layer: {quantity: [batch, time, units]}}`; quantities are the cell's gates, candidate, cell state
    (LSTM `c`) and hidden state `h` (see the `*_step` functions).
    """
    traces, hidden = {}, np.asarray(inputs, np.float64)
    for layer in range(num_layers):
        hidden, _, traces[layer] = run_cell(cell_type, hidden, *layer_weights(weights, cell_type, layer))
    return traces


def tidy_traces(traces: dict[int, dict[str, np.ndarray]], sequence: int = 0) -> pd.DataFrame:
    """One sequence's traces as a long DataFrame: `layer`, `quantity`, `t`, `unit`, `value`."""
    frames = []
    for layer, quantities in traces.items():
        for quantity, values in quantities.items():
            time_steps, units = values.shape[1:]
            frames.append(pd.DataFrame({
                "layer": layer, "quantity": quantity,
                "t": np.repeat(np.arange(time_steps), units), "unit": np.tile(np.arange(units), time_steps),
                "value": values[sequence].reshape(-1),
            }))
    return pd.concat(frames, ignore_index=True)


def gate_saturation(traces: dict[int, dict[str, np.ndarray]], cell_type: str, low: float = 0.1,
                    high: float = 0.9) -> pd.DataFrame:
    """Share of (sequence, step) pairs each gate unit spends nearly closed (< low) or nearly open (> high).

    Returns `layer`, `gate`, `unit`, `closed`, `open`; a saturated gate passes (or blocks) gradient unchanged.
    """
    rows = []
    for layer, quantities in traces.items():
        for gate in GATES[cell_type]:
            if gate == "pre_activation":
                continue  # not a gate: the tanh RNN has none
            values = quantities[gate]
            for unit in range(values.shape[-1]):
                column = values[..., unit]
                rows.append({"layer": layer, "gate": gate, "unit": unit, "closed": float(np.mean(column < low)),
                             "open": float(np.mean(column > high))})
    return pd.DataFrame(rows, columns=["layer", "gate", "unit", "closed", "open"])


# What `GradientFlow.norms` holds, each `[probe, layer, timestep]`, averaged over the probe sequences.
GRADIENT_QUANTITIES = {
    "loss_hidden": "‖∂L_T/∂h_t‖",  # what the update receives from the loss at the last step (under truncation)
    "loss_cell": "‖∂L_T/∂c_t‖",  # the same for the LSTM cell state
    "jacobian": "‖∂h_T/∂h_t‖₂",  # spectral norm of the product of step Jacobians (no truncation)
}


@dataclasses.dataclass
class GradientFlow:
    """Gradient flow over time, probed at several points of training on the same fixed sequences.

    Attributes:
        cell_type, num_layers, sequence_length (T), truncation: what was probed (`truncation` as its label).
        steps: `<int>[num_probes]` batches trained before each probe (0: at initialisation).
        epochs: `<float>[num_probes]` the same in epochs.
        window_starts: `<int>[num_probes]` first timestep the loss at the last step sends gradient to under
            the run's truncation (0 for full BPTT, T - k2 for TBPTT).
        losses: `<float>[num_probes]` mean loss at the last step over the probe sequences.
        norms: quantity (see `GRADIENT_QUANTITIES`) -> `<float>[num_probes, num_layers, T]`.
    """

    cell_type: str
    num_layers: int
    sequence_length: int
    truncation: str
    steps: np.ndarray
    epochs: np.ndarray
    window_starts: np.ndarray
    losses: np.ndarray
    norms: dict[str, np.ndarray]

    @classmethod
    def empty(cls, cell_type: str, num_layers: int, sequence_length: int, truncation: str) -> "GradientFlow":
        quantities = [q for q in GRADIENT_QUANTITIES if q != "loss_cell" or cell_type == "lstm"]
        return cls(cell_type, num_layers, sequence_length, truncation, np.zeros(0, np.int64), np.zeros(0),
                   np.zeros(0, np.int64), np.zeros(0),
                   {q: np.zeros((0, num_layers, sequence_length)) for q in quantities})

    def append(self, step: int, epoch: float, window_start: int, loss: float,
               norms: dict[str, np.ndarray]) -> None:
        """Add one probe; `norms` maps each quantity to `[num_layers, T]`."""
        self.steps = np.append(self.steps, step)
        self.epochs = np.append(self.epochs, epoch)
        self.window_starts = np.append(self.window_starts, window_start)
        self.losses = np.append(self.losses, loss)
        for quantity in self.norms:
            self.norms[quantity] = np.concatenate([self.norms[quantity], norms[quantity][None]])

    def to_bytes(self) -> bytes:
        """The `.npz` artifact: float32 norms, metadata as JSON (about 1 KB per probe for T = 100)."""
        meta = {"cell_type": self.cell_type, "num_layers": self.num_layers,
                "sequence_length": self.sequence_length, "truncation": self.truncation}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), steps=self.steps, epochs=self.epochs,
                            window_starts=self.window_starts, losses=self.losses,
                            **{f"norms_{q}": v.astype(np.float32) for q, v in self.norms.items()})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "GradientFlow":
        with np.load(io.BytesIO(data)) as archive:
            meta = json.loads(str(archive["meta"]))
            norms = {name.removeprefix("norms_"): archive[name].astype(np.float64)
                     for name in archive.files if name.startswith("norms_")}
            return cls(**meta, steps=archive["steps"], epochs=archive["epochs"],
                       window_starts=archive["window_starts"], losses=archive["losses"], norms=norms)

    def to_frame(self) -> pd.DataFrame:
        """Long format: `step`, `epoch`, `window_start`, `quantity`, `layer`, `t`, `lag` (T - 1 - t), `value`."""
        frames = []
        length = self.sequence_length
        for quantity, values in self.norms.items():
            num_probes, num_layers, _ = values.shape
            index = np.indices(values.shape).reshape(3, -1)
            frames.append(pd.DataFrame({
                "step": self.steps[index[0]], "epoch": self.epochs[index[0]],
                "window_start": self.window_starts[index[0]], "quantity": quantity, "layer": index[1],
                "t": index[2], "lag": length - 1 - index[2], "value": values.reshape(-1),
            }))
        return pd.concat(frames, ignore_index=True)


def vanishing_lag(norms: np.ndarray, threshold: float = 1e-3) -> int | None:
    """The first lag (T - 1 - t) at which `norms[t]` `[T]` falls below `threshold` times its value at the last
    step, or None when it never does (the gradient reaches all the way back)."""
    norms = np.asarray(norms, np.float64)[::-1]
    if not norms[0] > 0:
        return 0
    below = np.flatnonzero(norms / norms[0] < threshold)
    return int(below[0]) if len(below) else None


def example_sequences(task, seed: int, num_sequences: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """`num_sequences` input sequences of `task` drawn with `seed`: float `[num, T, features]` and targets."""
    x, y = task.sample_batch(np.random.default_rng(seed), num_sequences)
    return np.asarray(x, np.float64), np.asarray(y)


def memory_units(traces: dict[str, np.ndarray], signal: np.ndarray, quantity: str = "h") -> pd.DataFrame:
    """How closely each unit's `quantity` (`[batch, T, units]`) follows `signal` `[batch, T]` over all sequences
    and steps (`Task.memory_signal`): `unit`, `correlation` (Pearson), strongest first. A unit near ±1 holds
    what the task needs remembered."""
    values = traces[quantity].reshape(-1, traces[quantity].shape[-1])
    target = np.asarray(signal, np.float64).reshape(-1)
    centred, target = values - values.mean(axis=0), target - target.mean()
    spread = np.linalg.norm(centred, axis=0) * np.linalg.norm(target)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(spread > 0, centred.T @ target / spread, 0.0)
    table = pd.DataFrame({"unit": np.arange(values.shape[1]), "correlation": correlation})
    return table.reindex(table["correlation"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def most_active_units(traces: dict[str, np.ndarray], quantity: str = "h", count: int = 4) -> list[int]:
    """The `count` units whose `quantity` varies most over time (a starting point when no memory signal exists)."""
    spread = traces[quantity].std(axis=1).mean(axis=0)
    return [int(u) for u in np.argsort(spread)[::-1][:count]]


def predictions(weights: dict[str, np.ndarray], traces: dict[int, dict[str, np.ndarray]], task) -> np.ndarray:
    """The model's outputs from the top layer's hidden states and the logged `head` weights: `[batch, outputs]`
    at the last step for final-target tasks, `[batch, T, outputs]` otherwise (class probabilities for
    classification tasks)."""
    hidden = traces[max(traces)]["h"]
    if task.target_form == "final":
        hidden = hidden[:, -1]
    logits = hidden @ np.asarray(weights["head/kernel"], np.float64) + np.asarray(weights["head/bias"], np.float64)
    if task.loss != "sparse_categorical_crossentropy":
        return logits
    exponentials = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponentials / exponentials.sum(axis=-1, keepdims=True)
