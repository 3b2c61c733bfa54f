"""What rnnlib relies on from Keras, through its public API only: carried RNN states tracked as model variables
(`models.track_rnn_states`), the pre-clip gradient norm read in `Optimizer.apply` (`models._RecordsGradientNorm`),
and no reaching into Keras internals. Each failure says which Keras behaviour changed and what to update."""

import ast
from pathlib import Path

import keras
import numpy as np
import pytest

from rnnlib import tasks
from rnnlib.core import config as cfg
from rnnlib.worker import models

pytestmark = pytest.mark.filterwarnings("ignore")

WORKER_DIR = Path(models.__file__).resolve().parent
KERAS_CLASSES = (keras.Model, keras.layers.Layer, keras.layers.RNN, keras.optimizers.Optimizer)


def tiny(batch_size=None, stateful=False, num_layers=2):
    config = cfg.validate({"task": {"name": "sine", "window": 8},
                           "model": {"cell_type": "lstm", "units": 3, "num_layers": num_layers}})
    task = tasks.build(config.task)
    keras.utils.set_random_seed(0)
    return config, task, models.build_model(config.model, task, batch_size=batch_size, stateful=stateful)


def test_track_rnn_states_makes_every_carried_state_a_non_trainable_model_variable():
    """What JAX's compiled steps need (`backends.tracks_rnn_state`); called directly, so it runs on any backend."""
    _, _, model = tiny(batch_size=2, stateful=True)
    states = [v for layer in models.recurrent_layers(model) for v in layer.states]
    assert len(states) == 2 * 2  # two LSTM layers, h and c each
    try:
        models.track_rnn_states(model)
    except ValueError as error:
        pytest.fail("Keras no longer lets a built functional model track variables assigned to its attributes "
                    f"({error}); update rnnlib.worker.models.track_rnn_states.")
    tracked = {id(v) for v in model.non_trainable_variables}
    assert all(id(v) in tracked for v in states), (
        "A variable assigned to a functional model's attribute is no longer in `model.non_trainable_variables`; "
        "update rnnlib.worker.models.track_rnn_states.")
    assert not {id(v) for v in model.trainable_variables} & {id(v) for v in states}


def test_portable_copy_leaves_the_tracked_states_behind():
    config, task, model = tiny(batch_size=2, stateful=True)
    models.track_rnn_states(model)
    portable = models.portable_copy(model, config.model, task)
    assert len(portable.weights) == len(model.weights) - 4


def update_norm(model, task, optimizer, x, y):
    """(recorded pre-clip norm, global norm of the change SGD made to the trainable weights) for one update."""
    model.compile(optimizer=optimizer, loss=task.loss)
    before = [np.array(keras.ops.convert_to_numpy(v.value), np.float64) for v in model.trainable_variables]
    model.train_on_batch(x, y)
    after = [np.array(keras.ops.convert_to_numpy(v.value), np.float64) for v in model.trainable_variables]
    change = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before)))
    return float(keras.ops.convert_to_numpy(optimizer.gradient_norm.value)), float(change)


def test_recorded_gradient_norm_is_the_global_norm_before_clipping():
    """Plain SGD with learning rate 1 moves the weights by exactly the gradient, so the change is an independent
    measure of its global norm; with clipping the change shrinks to the clip norm, the record does not."""
    _, task, model = tiny()
    x, y = task.sample_batch(np.random.default_rng(0), 4)
    initial = model.get_weights()
    recorded, change = update_norm(model, task, models.make_optimizer("sgd", 1.0, None), x, y)
    assert recorded > 0.0, ("The optimizer's `apply` saw no gradients: Keras' train step no longer passes them "
                            "through `Optimizer.apply`; update rnnlib.worker.models._RecordsGradientNorm.")
    assert recorded == pytest.approx(change, rel=1e-4)
    model.set_weights(initial)
    clipnorm = recorded / 10
    clipped, clipped_change = update_norm(model, task, models.make_optimizer("sgd", 1.0, clipnorm), x, y)
    assert clipped_change == pytest.approx(clipnorm, rel=1e-3), "Keras no longer clips the global norm in `apply`"
    assert clipped == pytest.approx(recorded, rel=1e-5), (
        "The recorded norm is no longer the pre-clip one: Keras now clips before `Optimizer.apply`; update "
        "rnnlib.worker.models._RecordsGradientNorm.")


def private_uses(path: Path) -> list[str]:
    """`obj._name` on anything but `self` / `cls`, and methods overriding a private name of a Keras class."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                name = getattr(item, "name", "")
                if (isinstance(item, ast.FunctionDef) and name.startswith("_") and not name.startswith("__")
                        and any(hasattr(c, name) for c in KERAS_CLASSES)):
                    found.append(f"{path.name}:{item.lineno} {node.name}.{name} overrides a private Keras method")
    return found


def test_the_keras_boundary_uses_no_private_keras_api():
    found = [use for path in sorted(WORKER_DIR.glob("*.py")) for use in private_uses(path)]
    assert not found, f"rnnlib/worker reaches into private (Keras) attributes; use a public way: {found}"
