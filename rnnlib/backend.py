"""The one place that talks to a specific Keras backend (TensorFlow, JAX or PyTorch) directly."""

import os


def backend_name() -> str:
    """The Keras backend that `import keras` will pick, read without importing keras."""
    return os.environ.get("KERAS_BACKEND", "tensorflow")


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
