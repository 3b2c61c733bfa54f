"""The training worker: Keras models, the training loop, gradient probes and per-backend code. The ONLY package
that imports keras, tensorflow, jax or torch (tests/test_layers.py); the dashboard never imports it."""

import os

from rnnlib.core import machine

# Before any module here imports keras: the backend it loads (KERAS_BACKEND, else the best one installed), and why.
BACKEND, BACKEND_REASON = machine.pick_backend()
if "KERAS_BACKEND" not in os.environ:
    os.environ["KERAS_BACKEND"], os.environ[machine.REASON_VARIABLE] = BACKEND, BACKEND_REASON
