"""The training worker: Keras models, the training loop, gradient probes and per-backend code. The ONLY package
that imports keras, tensorflow, jax or torch (tests/test_layers.py); the dashboard never imports it."""
