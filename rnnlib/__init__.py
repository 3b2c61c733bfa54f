"""rnnlib: recurrent networks (SimpleRNN, LSTM, GRU) trained with full or truncated BPTT, tracked in MLflow.

Importing `rnnlib` or its config, tasks and tracking modules never imports keras or tensorflow: the dashboard
relies on that (see DESIGN.md). Keras work lives in `rnnlib.models` and `rnnlib.training`.
"""

__version__ = "0.1.0"
