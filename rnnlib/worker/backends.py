"""The one place that talks to a specific Keras backend (TensorFlow, JAX or PyTorch) directly: layer options a
backend needs, the device it trains on, and autodiff for the gradient probes."""

import functools
import os

import numpy as np

from rnnlib.core import cells


def recurrent_layer_options(backend: str, cell_type: str, stateful: bool) -> dict:
    """Extra Keras layer arguments a backend needs.

    Keras 3.15 on PyTorch: the fused LSTM / GRU paths (cuDNN, and the torch fallback used on CPU) read the
    carried state of a stateful layer without copying it, then the layer assigns the new state in place, and
    backward fails with "modified by an inplace operation". The generic loop copies states first.
    """
    if backend == "torch" and stateful and cells.get_cell(cell_type).cudnn:
        return {"use_cudnn": False}
    return {}


def uses_cudnn(backend: str, device: str, cell_type: str | None, stateful: bool, gradient_scale: float) -> bool:
    """Whether Keras trains these layers on its fused cuDNN kernel: on a GPU, for a cuDNN-eligible cell in the
    lab's default settings (tanh, sigmoid gates, no recurrent dropout), unless a workaround here or the
    compensated truncation's generic loop (`gradient_scale` != 1) takes the plain loop instead."""
    if device == "cpu" or cell_type is None or not cells.get_cell(cell_type).cudnn or gradient_scale != 1.0:
        return False
    return recurrent_layer_options(backend, cell_type, stateful).get("use_cudnn", True)


def tracks_rnn_state(backend: str) -> bool:
    """Whether the state variables of stateful RNN layers must be tracked as model variables.

    Keras 3.15 creates them untracked. TensorFlow and PyTorch assign them in place, but JAX compiles stateless
    steps that only carry the model's tracked variables: untracked states are read as constants baked in at
    trace time and their updates are dropped, so truncated BPTT would silently restart from a stale state.
    """
    return backend == "jax"


def fused_lstm(layer, sequences, initial_state, mask, training):
    """`keras.layers.LSTM.inner_loop` on TensorFlow's fused CPU LSTM kernel (`BlockLSTM`), or None where it does
    not apply (another backend, a GPU, a mask, dropout, other activations, no bias, reversed time).

    Keras 3 has a fused LSTM only through cuDNN; on the CPU it runs its cell step by step in a `while_loop`, whose
    per-step overhead made training 2.4x slower than PyTorch's fused CPU LSTM at T = 100. `BlockLSTM` computes
    the same equations over the whole sequence in one kernel, and its gradient in another, on the layer's own
    weights: no peepholes, no cell clipping (`cell_clip` < 0), no forget bias added (Keras puts its unit forget
    bias in the bias itself), Keras' gate columns i, f, c, o reordered to the kernel's i, c, f, o. (Not
    `BlockLSTMV2`, which takes Keras' order: TensorFlow 2.21 registers V1's gradient for it, which reads the gates
    in V1's order and returns wrong gradients.) Returns `(last_output, outputs, [h, c])` as `inner_loop` does.

    The kernel runs each step's small matrix product on one core, so the batch is cut into `fused_lstm_parts`
    slices of rows, one kernel each, which TensorFlow runs side by side (rows never mix: the same outputs, and
    gradients summed over the slices). On 2 cores at B = 64, T = 100: 25% less time per update.
    """
    import keras

    cell = layer.cell
    applies = (keras.backend.backend() == "tensorflow" and mask is None and not layer.go_backwards
               and not cell.recurrent_dropout and not (training and cell.dropout) and cell.use_bias
               and cell.activation is keras.activations.tanh
               and cell.recurrent_activation is keras.activations.sigmoid and not _tensorflow_gpus())
    if not applies:
        return None
    import tensorflow as tf

    h, c = initial_state
    def icfo(gates, axis):  # Keras' gate order i, f, c, o -> the kernel's i, c, f, o
        i, f, g, o = tf.split(gates, 4, axis=axis)
        return tf.concat([i, g, f, o], axis=axis)

    w = icfo(tf.concat([cell.kernel.value, cell.recurrent_kernel.value], axis=0), axis=1)
    b = icfo(cell.bias.value, axis=0)
    no_peephole = tf.zeros([cell.units], w.dtype)
    time_major = tf.transpose(sequences, (1, 0, 2))

    def kernel(x, h, c):  # -> (cs, h) over all steps, time-major
        _, cs, _, _, _, _, outputs = tf.raw_ops.BlockLSTM(  # i, cs, f, o, ci, co, h
            seq_len_max=tf.cast(tf.shape(x)[0], tf.int64), x=x, cs_prev=c, h_prev=h, w=w, wci=no_peephole,
            wcf=no_peephole, wco=no_peephole, b=b, forget_bias=0.0, cell_clip=-1.0, use_peephole=False)
        return cs, outputs

    sizes = _slice_sizes(sequences.shape[0], fused_lstm_parts(sequences.shape[0]))
    if len(sizes) == 1:
        cs, outputs = kernel(time_major, h, c)
    else:
        slices = zip(tf.split(time_major, sizes, axis=1), tf.split(h, sizes), tf.split(c, sizes))
        cs, outputs = (tf.concat(parts, axis=1) for parts in zip(*(kernel(*part) for part in slices)))
    last_h, last_c = outputs[-1], cs[-1]
    batch_major = tf.transpose(outputs, (1, 0, 2)) if layer.return_sequences else last_h[:, None]
    return last_h, batch_major, [last_h, last_c]


FUSED_ROWS_PER_PART = 16  # fewer rows than this per kernel and the slices' own overhead outweighs the gain


def fused_lstm_parts(batch: int | None) -> int:
    """Into how many slices `fused_lstm` cuts a batch of `batch` rows: one per core TensorFlow may run ops on at
    once, each of at least `FUSED_ROWS_PER_PART` rows; 1 where the batch size is not known when tracing."""
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    side_by_side = (tf.config.threading.get_inter_op_parallelism_threads()
                    or int(os.environ.get("TF_NUM_INTEROP_THREADS", "0") or 0) or cores)
    return max(1, min(cores, side_by_side, (batch or 0) // FUSED_ROWS_PER_PART))


def _slice_sizes(batch: int | None, parts: int) -> list[int]:
    """`parts` slice sizes as even as they go that add up to `batch` ([batch] for one part or an unknown size)."""
    if not batch or parts <= 1:
        return [batch or 0]
    return [batch // parts + (1 if index < batch % parts else 0) for index in range(parts)]


def _tensorflow_gpus() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


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


def gradient_function(function):
    """Compile `function(*constants, *inputs) -> value` (written with `keras.ops`) into one that returns the
    value and the gradients of its sum with respect to `inputs`: `(constants, inputs) -> (float, [numpy arrays])`,
    or a numpy array for a value that is a vector (its terms' sum differentiated: e.g. objectives of disjoint rows).

    Keras 3 has no backend-neutral autodiff, so this is the one place that calls TensorFlow's tape, `jax.grad`
    or `torch.autograd`. On TensorFlow the step is traced once into a graph (variables are read when it runs,
    so it sees the weights as training changes them); JAX and PyTorch run eagerly, because a `jax.jit` trace
    would bake the Keras variables' current values in. Inputs the value does not depend on get zero gradients.
    """
    import keras

    name = keras.backend.backend()
    try:
        differentiate = _GRADIENTS[name](function)
    except KeyError:
        raise ValueError(f"Gradient probes support the backends {', '.join(_GRADIENTS)}; got {name!r}.") from None

    def value_and_gradients(constants, inputs):
        value, grads = differentiate([keras.ops.convert_to_tensor(c) for c in constants],
                                     [np.asarray(a, np.float32) for a in inputs])
        value = np.asarray(keras.ops.convert_to_numpy(value))
        return (float(value) if value.ndim == 0 else value), [np.asarray(keras.ops.convert_to_numpy(g)) for g in grads]

    return value_and_gradients


def _tensorflow_gradients(function):
    import tensorflow as tf

    # A partial, not a closure: TensorFlow counts the traces of every `tf.function` made from one code object
    # together, so a probe's functions, each traced once, would read as one function "retraced" again and again.
    # No AutoGraph: the probes' loops are over layers and rows, fixed when traced, and their scans are
    # `keras.ops.scan` (a while loop already), so converting their source to graph code (1.6 s of a first
    # probe's 2.5 s) would change nothing in the graph (as Keras's own train step, `do_not_convert`).
    differentiate = tf.function(functools.partial(_tape_gradients, function), reduce_retracing=True,
                                autograph=False)
    return lambda constants, inputs: differentiate(constants, [tf.convert_to_tensor(a) for a in inputs])


def _tape_gradients(function, constants, inputs):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(inputs)
        value = function(*constants, *inputs)
    return value, tape.gradient(value, inputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _jax_gradients(function):
    import jax

    def differentiate(constants, inputs):
        def summed(*args):
            value = function(*constants, *args)
            return jax.numpy.sum(value), value

        (_, value), grads = jax.value_and_grad(summed, argnums=tuple(range(len(inputs))), has_aux=True)(
            *[jax.numpy.asarray(a) for a in inputs])
        return value, grads

    return differentiate


def _torch_gradients(function):
    import keras
    import torch

    def differentiate(constants, inputs):
        tensors = [keras.ops.convert_to_tensor(a).requires_grad_(True) for a in inputs]
        value = function(*constants, *tensors)
        grads = torch.autograd.grad(value.sum(), tensors, allow_unused=True)
        return value.detach(), [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]

    return differentiate


_GRADIENTS = {"tensorflow": _tensorflow_gradients, "jax": _jax_gradients, "torch": _torch_gradients}
