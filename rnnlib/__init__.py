"""rnnlib: recurrent networks (SimpleRNN, LSTM, GRU) trained with full or truncated BPTT, tracked in MLflow.

Subpackages by role (see the README's "The layout"): `core`, `tasks`, `worker`, `tracking`, `run`, `analysis`,
`viz`. Only `rnnlib.worker` imports keras, tensorflow, jax or torch; the dashboard imports everything else and
relies on that (see DESIGN.md).
"""

__version__ = "0.1.0"
