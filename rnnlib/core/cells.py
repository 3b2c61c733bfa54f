"""The cell registry: every recurrent cell the lab knows, in one place, and its textbook equations in numpy.

Config validation (`model.cell_type`), model building (`rnnlib.worker.models`), the numpy reference steps the
dashboard traces gates with, gate names, state counts and the LSTM's extra state all come from `CELLS`. Adding a
cell is one `CellSpec` entry and its numpy step here (see the README's "Extending").

The numpy steps serve two purposes: tests check that Keras' layers compute exactly these equations, and the
dashboard (which never imports keras) traces gates, cell states and hidden states from weights a run logged as
`weights.npz` (`rnnlib.worker.models.export_weights`).

Weight layout follows Keras: `kernel` `[features, g * units]`, `recurrent_kernel` `[units, g * units]`, gates
concatenated in Keras' order (LSTM: i, f, c, o; GRU: z, r, h), `bias` `[g * units]` (GRU with
`reset_after=True`: `[2, 3 * units]`, input and recurrent biases).
"""

import dataclasses
from collections.abc import Callable

import numpy as np

from rnnlib.core.registry import lookup


def sigmoid(x):
    """The logistic function 1 / (1 + exp(-x)), written with tanh so that large |x| gives no overflow warning."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


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


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """One recurrent cell the lab knows.

    Attributes:
        name: the `model.cell_type` value, the prefix of its layers' names (`lstm_0`) and weight paths.
        keras_layer: the `keras.layers` class that trains it (built by `rnnlib.worker.models`).
        step: its equations in numpy, `(x_t, state, kernel, recurrent_kernel, bias) -> (h_t, state, trace)`;
            tests check the Keras layer against it, the dashboard traces gates with it.
        states: what it carries from step to step, `h` first (the LSTM also carries its cell state `c`).
        gates: the gates its `step` traces (the Gates page's heatmaps and saturation table).
        cudnn: whether Keras runs it on a fused cuDNN kernel, which the torch backend cannot make stateful.
        title: how pages and tables name it.
    """

    name: str
    keras_layer: str
    step: Callable
    states: tuple[str, ...]
    gates: tuple[str, ...]
    cudnn: bool
    title: str

    @property
    def memory_state(self) -> str:
        """The state that carries memory over long spans: the LSTM's cell state `c`, else `h`."""
        return self.states[-1]


CELLS = {spec.name: spec for spec in (
    CellSpec("rnn", "SimpleRNN", rnn_step, ("h",), (), cudnn=False, title="Elman RNN"),
    CellSpec("lstm", "LSTM", lstm_step, ("h", "c"), ("input_gate", "forget_gate", "output_gate"), cudnn=True,
             title="LSTM"),
    CellSpec("gru", "GRU", gru_step, ("h",), ("update_gate", "reset_gate"), cudnn=True, title="GRU"),
)}


def get_cell(cell_type: str) -> CellSpec:
    """The registered cell `cell_type`, or a `ValueError` that lists the known ones."""
    return lookup(CELLS, cell_type, "cell_type")


def run_cell(cell_type, inputs, kernel, recurrent_kernel, bias, initial_state=None):
    """Unroll one layer's cell over a batch of sequences with the same weights at every step.

    Args:
        inputs: `[batch, time, features]`.
        initial_state: list of `[batch, units]` arrays (h, and c for LSTM); zeros when None.

    Returns:
        outputs `[batch, time, units]` (h_t for every t), the final state list, and a dict of per-step traces
        (each `[batch, time, units]`) named after the cell's gates and states.
    """
    spec = get_cell(cell_type)
    units = recurrent_kernel.shape[0]
    state = initial_state or [np.zeros((inputs.shape[0], units)) for _ in spec.states]
    traces = []
    for t in range(inputs.shape[1]):
        _, state, trace = spec.step(inputs[:, t].astype(np.float64), state, kernel, recurrent_kernel, bias)
        traces.append(trace)
    stacked = {name: np.stack([trace[name] for trace in traces], axis=1) for name in traces[0]}
    return stacked["h"], state, stacked


def layer_weights(weights: dict[str, np.ndarray], cell_type: str,
                  layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kernel, recurrent_kernel, bias) of stacked layer `layer` from `rnnlib.worker.models.export_weights` output."""
    prefix = [k for k in weights if k.startswith(f"{cell_type}_{layer}/") and k.endswith("/kernel")
              and not k.endswith("recurrent_kernel")]
    if not prefix:
        layers = sorted({k.split("/")[0] for k in weights})
        raise ValueError(f"No weights for layer {cell_type}_{layer}; these weights hold: {', '.join(layers)}.")
    cell = prefix[0].removesuffix("/kernel")
    kernel, recurrent_kernel, bias = (np.asarray(weights[f"{cell}/{name}"], np.float64)
                                      for name in ("kernel", "recurrent_kernel", "bias"))
    return kernel, recurrent_kernel, bias


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

