"""Records a training worker writes and the dashboard reads without keras: `GradientFlow`, the gradient flow over
time that `rnnlib.worker.gradients` probes and logs as `gradient_flow.npz`."""

import dataclasses
import io
import json

import numpy as np
import pandas as pd

from rnnlib.core import cells

# What `GradientFlow.norms` holds, each `[probe, layer, timestep]`, averaged over the probe sequences.
GRADIENT_QUANTITIES = {
    "loss_hidden": "‖∂L_T/∂h_t‖",  # what the update receives from the loss at the last step (under truncation)
    "loss_cell": "‖∂L_T/∂c_t‖",  # the same for the LSTM cell state
    "jacobian": "‖∂h_T/∂h_t‖₂",  # spectral norm of the product of step Jacobians (no truncation)
    "input": "‖∂y_T/∂x_t‖",  # connectivity: the last output's dependence on each input (no truncation)
}

# The truncation-bias meter (`rnnlib.worker.gradients.truncation_bias`), one value per probe: the run's truncated
# parameter gradient against full BPTT's on the probe sequences.
TRUNCATION_BIAS = {
    "cosine": "cosine with the full gradient",
    "error": "relative error ‖g − g_full‖ / ‖g_full‖",
    "bias": "relative bias ‖E[g] − g_full‖ / ‖g_full‖ (less the samples' noise)",
    "variance": "relative variance E‖g − E[g]‖² / ‖g_full‖²",
}


@dataclasses.dataclass
class GradientFlow:
    """Gradient flow over time, probed at several points of training on the same fixed sequences.

    Attributes:
        cell_type, num_layers, sequence_length (T), truncation: what was probed (`truncation` as its label).
        steps: `<int>[num_probes]` batches trained before each probe (0: at initialisation).
        epochs: `<float>[num_probes]` the same in epochs.
        reaches: `<int>[num_probes]` first timestep the loss at the last step sends gradient to under
            the run's truncation (0 for full BPTT, T - k2 for TBPTT).
        losses: `<float>[num_probes]` mean loss at the last step over the probe sequences.
        norms: quantity (see `GRADIENT_QUANTITIES`) -> `<float>[num_probes, num_layers, T]`. `input`, a
            property of the whole network, holds the same values for every layer.
        bias: the truncation-bias meter, statistic (see `TRUNCATION_BIAS`) -> `<float>[num_probes]`; empty in
            records written before it existed.
    """

    cell_type: str
    num_layers: int
    sequence_length: int
    truncation: str
    steps: np.ndarray
    epochs: np.ndarray
    reaches: np.ndarray
    losses: np.ndarray
    norms: dict[str, np.ndarray]
    bias: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls, cell_type: str, num_layers: int, sequence_length: int, truncation: str) -> "GradientFlow":
        has_cell_state = "c" in cells.get_cell(cell_type).states
        quantities = [q for q in GRADIENT_QUANTITIES if q != "loss_cell" or has_cell_state]
        return cls(cell_type, num_layers, sequence_length, truncation, np.zeros(0, np.int64), np.zeros(0),
                   np.zeros(0, np.int64), np.zeros(0),
                   {q: np.zeros((0, num_layers, sequence_length)) for q in quantities},
                   {b: np.zeros(0) for b in TRUNCATION_BIAS})

    def append(self, step: int, epoch: float, reach: int, loss: float,
               norms: dict[str, np.ndarray], bias: dict[str, float] | None = None) -> None:
        """Add one probe; `norms` maps each quantity to `[num_layers, T]`, `bias` each meter statistic to its
        value (NaN when left out)."""
        self.steps = np.append(self.steps, step)
        self.epochs = np.append(self.epochs, epoch)
        self.reaches = np.append(self.reaches, reach)
        self.losses = np.append(self.losses, loss)
        for quantity in self.norms:
            self.norms[quantity] = np.concatenate([self.norms[quantity], norms[quantity][None]])
        for statistic in self.bias:
            self.bias[statistic] = np.append(self.bias[statistic], (bias or {}).get(statistic, np.nan))

    def latest_bias(self) -> dict[str, float]:
        """The last probe's meter as epoch metrics: `trunc_cosine`, `trunc_error`, `trunc_bias`, `trunc_variance`."""
        return {f"trunc_{s}": float(v[-1]) for s, v in self.bias.items() if len(v)}

    def to_bytes(self) -> bytes:
        """The `.npz` artifact: float32 norms, metadata as JSON (about 1 KB per probe for T = 100)."""
        meta = {"cell_type": self.cell_type, "num_layers": self.num_layers,
                "sequence_length": self.sequence_length, "truncation": self.truncation}
        buffer = io.BytesIO()
        norms = {f"norms_{q}": v.astype(np.float32) for q, v in self.norms.items()}
        norms.update({f"bias_{s}": v.astype(np.float64) for s, v in self.bias.items()})
        # numpy's stub lets **kwds fill `allow_pickle: bool`, so mypy reads a ** of arrays as that bool
        np.savez_compressed(buffer, meta=np.array(json.dumps(meta)), steps=self.steps, epochs=self.epochs,
                            window_starts=self.reaches,  # the file's key for the reaches since the first version
                            losses=self.losses, **norms)  # type: ignore[arg-type]
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "GradientFlow":
        with np.load(io.BytesIO(data)) as archive:
            meta = json.loads(str(archive["meta"]))
            norms = {name.removeprefix("norms_"): archive[name].astype(np.float64)
                     for name in archive.files if name.startswith("norms_")}
            bias = {name.removeprefix("bias_"): archive[name] for name in archive.files if name.startswith("bias_")}
            return cls(**meta, steps=archive["steps"], epochs=archive["epochs"],
                       reaches=archive["window_starts"], losses=archive["losses"], norms=norms, bias=bias)

    def to_frame(self) -> pd.DataFrame:
        """Long format: `step`, `epoch`, `reach`, `quantity`, `layer`, `t`, `lag` (T - 1 - t), `value`."""
        frames = []
        length = self.sequence_length
        for quantity, values in self.norms.items():
            num_probes, num_layers, _ = values.shape
            index = np.indices(values.shape).reshape(3, -1)
            frames.append(pd.DataFrame({
                "step": self.steps[index[0]], "epoch": self.epochs[index[0]],
                "reach": self.reaches[index[0]], "quantity": quantity, "layer": index[1],
                "t": index[2], "lag": length - 1 - index[2], "value": values.reshape(-1),
            }))
        return pd.concat(frames, ignore_index=True)

    def bias_frame(self) -> pd.DataFrame:
        """The meter in long format: `step`, `epoch`, `statistic`, `value` (empty for an older record)."""
        return pd.DataFrame([{"step": int(step), "epoch": float(epoch), "statistic": s, "value": float(v[i])}
                             for s, v in self.bias.items()
                             for i, (step, epoch) in enumerate(zip(self.steps, self.epochs))],
                            columns=["step", "epoch", "statistic", "value"])


def vanishing_lag(norms: np.ndarray, threshold: float = 1e-3) -> int | None:
    """The first lag (T - 1 - t) at which `norms[t]` `[T]` falls below `threshold` times its value at the last
    step, or None when it never does (the gradient reaches all the way back)."""
    norms = np.asarray(norms, np.float64)[::-1]
    if not norms[0] > 0:
        return 0
    below = np.flatnonzero(norms / norms[0] < threshold)
    return int(below[0]) if len(below) else None


