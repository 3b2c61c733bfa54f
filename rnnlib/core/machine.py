"""What the dashboard may know about the training machine without importing a framework: the Keras backend a
worker will pick, and the GPU it would use."""

import os


def backend_name() -> str:
    """The Keras backend that `import keras` will pick, read without importing keras."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


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
