"""What the dashboard may know about the training machine without importing a framework: the Keras backend a
worker will pick, and the GPU it would use."""

import importlib.util
import os

# The backends in order of preference, where none is asked for (`pick_backend`). On a GPU the fused cuDNN LSTM and
# GRU kernels decide: Keras has them on TensorFlow and PyTorch, not on JAX. On a CPU TensorFlow is the default path
# the lab is measured on, then JAX (faster than PyTorch's generic loop there).
PREFERRED_BACKENDS = {"gpu": ("tensorflow", "torch", "jax"), "cpu": ("tensorflow", "jax", "torch")}
# Set beside KERAS_BACKEND when the lab picked it, for the processes it starts.
REASON_VARIABLE = "RNNLAB_BACKEND_REASON"


def pick_backend(environ=os.environ, installed=None, has_gpu=None) -> tuple[str, str]:
    """The Keras backend a worker trains on, and why: `KERAS_BACKEND` when set, else the first installed of
    `PREFERRED_BACKENDS` for this machine (found without importing any of them)."""
    if environ.get("KERAS_BACKEND"):  # asked for, or picked by the process that started this one
        return environ["KERAS_BACKEND"], environ.get(REASON_VARIABLE, "KERAS_BACKEND")
    gpu = device_without_framework() != "cpu" if has_gpu is None else has_gpu
    preferred = PREFERRED_BACKENDS["gpu" if gpu else "cpu"]
    if installed is None:  # each backend's module has the backend's name
        installed = {name for name in preferred if importlib.util.find_spec(name) is not None}
    for name in preferred:
        if name in installed:
            return name, f"picked: the first installed of {', '.join(preferred)}"
    return "tensorflow", "none of tensorflow, jax, torch is installed"


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
