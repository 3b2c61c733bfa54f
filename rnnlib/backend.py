"""The one place that talks to a specific Keras backend (TensorFlow, JAX or PyTorch) directly."""

import os


def backend_name() -> str:
    """The Keras backend that `import keras` will pick, read without importing keras."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def recurrent_layer_options(backend: str, cell_type: str, stateful: bool) -> dict:
    """Extra Keras layer arguments a backend needs.

    Keras 3.15 on PyTorch: the fused LSTM / GRU paths (cuDNN, and the torch fallback used on CPU) read the
    carried state of a stateful layer without copying it, then the layer assigns the new state in place, and
    backward fails with "modified by an inplace operation". The generic loop copies states first.
    """
    if backend == "torch" and stateful and cell_type in ("lstm", "gru"):
        return {"use_cudnn": False}
    return {}


def tracks_rnn_state(backend: str) -> bool:
    """Whether the state variables of stateful RNN layers must be tracked as model variables.

    Keras 3.15 creates them untracked. TensorFlow and PyTorch assign them in place, but JAX compiles stateless
    steps that only carry the model's tracked variables: untracked states are read as constants baked in at
    trace time and their updates are dropped, so truncated BPTT would silently restart from a stale state.
    """
    return backend == "jax"


def device_without_framework() -> str:
    """The GPU training would use, asked of `nvidia-smi` (no framework import), else `cpu`."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return "cpu"
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=5, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    return names[0].strip() or "cpu"


def device_name() -> str:
    """The accelerator training runs on (GPU name when there is one), else `cpu`."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "gpu")
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0)
        elif backend == "jax":
            import jax

            device = jax.devices()[0]
            if device.platform != "cpu":
                return device.device_kind
    except Exception:  # a device query must never stop training
        return "unknown"
    return "cpu"
