"""`train(config, callbacks)`: the one training seam used by the CLI, sweeps and the dashboard's jobs.

Every batch of sequences is cut into updates by the truncation schedule (`rnnlib.core.truncation`). Recurrent
layers are stateful: an update starts from the state the previous one left, read from a variable, so no
gradient crosses the boundary between updates; states are reset between batches of sequences. Each update is Keras'
own compiled train step (`train_on_batch`), so every backend trains and nothing here calls `tf.*`.
"""

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rnnlib import tasks, worker
from rnnlib.core import divergence, truncation
from rnnlib.core.config import ExperimentConfig
from rnnlib.core.records import GradientFlow
from rnnlib.worker import backends

if TYPE_CHECKING:  # imported where training starts: `rnnlab validate` and the sweep's setup need no keras
    import keras

# Longest stretch of timesteps run forward in one call when no gradient is needed (advancing the carried state,
# evaluating): bounds activation memory independently of the sequence length.
FORWARD_CHUNK = 1000


@dataclasses.dataclass
class TrainResult:
    config: ExperimentConfig
    task: tasks.Task
    model: "keras.Model"
    history: list[dict[str, float]]
    gradient_flow: GradientFlow | None = None

    @property
    def diverged_epoch(self) -> int | None:
        """The epoch whose loss stopped being a finite number (training stopped there), or None."""
        return divergence.diverged_epoch(self.history)

    def save(self, directory: str | Path) -> list[Path]:
        """Write `model.keras` (batch-size-free, stateless), `weights.npz` (plain arrays) and `predictions.npz`
        (the task's `prediction_arrays`, what the Predictions page shows) into `directory`."""
        from rnnlib.worker import models

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        portable = models.portable_copy(self.model, self.config.model, self.task)
        paths = [directory / "model.keras", directory / "weights.npz", directory / PREDICTIONS_FILE]
        portable.save(paths[0])
        weights: dict[str, Any] = models.export_weights(portable)  # Any: numpy's stub types ** as allow_pickle
        predictions: dict[str, Any] = self.task.prediction_arrays(_batched_predict(portable))
        np.savez_compressed(paths[1], **weights)
        np.savez_compressed(paths[2], **predictions)
        return paths


PREDICTIONS_FILE = "predictions.npz"
PREDICT_BATCH = 256


def _batched_predict(model):
    """`model` as a numpy function, run `PREDICT_BATCH` sequences at a time."""

    def predict(x):
        x = np.asarray(x, np.float32)
        return np.concatenate([np.asarray(model.predict_on_batch(x[i : i + PREDICT_BATCH]))
                               for i in range(0, len(x), PREDICT_BATCH)])

    return predict


def train(config: ExperimentConfig, callbacks=()) -> TrainResult:
    """Train one configuration (no grid) and return the trained model and its per-epoch history.

    Training stops after the first epoch whose loss is NaN or infinite (`rnnlib.core.divergence`): the run has
    diverged, and its weights will not come back.

    Raises:
        ValueError: when `config` still holds a sweep grid (expand it with `config.expand_grid` first).
    """
    if config.grid:
        raise ValueError("train() takes a single configuration; expand the sweep grid first (rnnlib.run.sweep).")
    import keras

    from rnnlib.worker import models

    keras.utils.set_random_seed(config.seed)
    task = tasks.build(config.task)
    batch_size = config.training.batch_size
    model = models.build_model(config.model, task, batch_size=batch_size, stateful=True,
                               gradient_scale=truncation.gradient_scale(config.training.truncation))
    models.compile_model(model, task, config.training)
    x_val, y_val = task.validation_data(task.validation_size(config.training.num_validation_sequences))
    rng = np.random.default_rng(config.seed)
    warmup = max(models.warmup_steps(config.model), task.unscored_steps)
    stepper = _UpdateStepper(model, task, warmup, config.training.truncation)

    device = backends.device_name()
    info = {
        "backend": keras.backend.backend(),
        "backend_reason": worker.BACKEND_REASON,
        "device": device,
        "cudnn": backends.uses_cudnn(keras.backend.backend(), device, config.model.cell_type, True,
                                     truncation.gradient_scale(config.training.truncation)),
        "num_parameters": int(model.count_params()),
        "baseline": task.baseline,
        "baseline_name": task.baseline_name,
        "metric_baselines": task.metric_baselines,
        "data_files": task.data_files,
        "metric": task.metric,
    }
    for callback in callbacks:
        callback.on_train_begin(info)
    probe = _Prober(model, task, config, callbacks)
    probe.maybe(step=0)
    history = []
    for epoch in range(1, config.training.epochs + 1):
        logs = _train_epoch(config, task, stepper, rng, callbacks, epoch, probe)
        logs.update(probe.new_bias())
        val_loss, val_metrics = evaluate(model, task, x_val, y_val, batch_size, warmup)
        logs.update({"epoch": float(epoch), "val_loss": val_loss, **{f"val_{k}": v for k, v in val_metrics.items()}})
        history.append(logs)
        for callback in callbacks:
            callback.on_epoch_end(epoch, logs)
        if divergence.diverged(logs):
            break
    result = TrainResult(config, task, model, history, probe.flow)
    for callback in callbacks:
        callback.on_train_end(result)
    return result


class _Prober:
    """Probes gradient flow (`rnnlib.worker.gradients`) on the schedule `training.probe_every` asks for
    (`TrainingConfig.probe_due`)."""

    def __init__(self, model, task, config, callbacks):
        self.training = config.training
        self.callbacks = callbacks
        self.recorder = None
        self.last_step = None  # of the latest probe
        self.reported_step = None  # of the latest probe whose meter went into an epoch's metrics
        self.seconds = 0.0  # spent probing, kept out of the training throughput
        if self.training.probe_every != 0 and config.model.kind == "recurrent":  # an AR(τ) model has no state
            from rnnlib.worker import gradients

            self.recorder = gradients.FlowRecorder(model, task, config)

    @property
    def flow(self):
        return self.recorder.flow if self.recorder else None

    def new_bias(self) -> dict[str, float]:
        """The truncation-bias meter of the latest probe since the last call as epoch metrics (`trunc_cosine`,
        ...); {} when no probe ran since (an epoch's metrics hold only what was measured in it)."""
        if self.recorder is None or self.last_step in (None, 0, self.reported_step):
            return {}
        self.reported_step = self.last_step
        return self.recorder.flow.latest_bias()

    def maybe(self, step: int) -> None:
        """Probe after `step` batches when the schedule says so (always at step 0, unless never)."""
        if self.recorder is None or not self.training.probe_due(step, self.last_step or 0):
            return
        start = time.perf_counter()
        flow = self.recorder.record(step, step / self.training.steps_per_epoch)
        self.seconds += time.perf_counter() - start
        self.last_step = step
        for callback in self.callbacks:
            callback.on_gradient_flow(flow)


def _train_epoch(config, task, stepper, rng, callbacks, epoch, probe) -> dict[str, float]:
    losses, weights, norms = [], [], []
    start, probe_seconds = time.perf_counter(), probe.seconds
    for batch in range(1, config.training.steps_per_epoch + 1):
        x, y = task.sample_batch(rng, config.training.batch_size)
        updates = truncation.schedule(task.sequence_length, config.training.truncation, rng)
        for loss, num_scored, norm in stepper.train_on_sequences(x, y, updates):
            losses.append(loss)
            weights.append(num_scored)
            norms.append(norm)
        step = (epoch - 1) * config.training.steps_per_epoch + batch
        probe.maybe(step)
        for callback in callbacks:
            callback.on_batch_end(epoch, batch)
    elapsed = time.perf_counter() - start - (probe.seconds - probe_seconds)
    sequences = config.training.steps_per_epoch * config.training.batch_size
    return {
        "train_loss": float(np.average(losses, weights=weights)),
        "grad_norm": float(np.mean(norms)),
        "grad_norm_max": float(np.max(norms)),
        "updates": float(len(norms)),
        "sequences_per_second": sequences / elapsed,
        "epoch_seconds": elapsed,
    }


class _UpdateStepper:
    """Runs one batch of sequences through a truncation schedule on a stateful model."""

    def __init__(self, model, task, warmup: int = 0, truncation_config=None):
        from rnnlib.worker import models

        self.model = model
        self.task = task
        self.truncation = truncation_config  # its `truncation.loss_scale` weighs each update (None: 1)
        self.warmup = warmup  # leading steps never scored (`models.warmup_steps`, `Task.unscored_steps`)
        self.layers = models.recurrent_layers(model)

    def train_on_sequences(self, x, y, updates):
        """Yield `(loss, num_scored_steps, pre_clip_gradient_norm)` for each parameter update.

        Args:
            x: `[batch, time, features]`; y: `[batch, 1]` (final target) or `[batch, time, 1]` (per step).
            updates: the truncation schedule for this batch (`rnnlib.core.truncation.schedule`).
        """
        length = x.shape[1]
        self._reset()
        position = 0  # the recurrent layers' states hold the state after `position` steps
        final = self.task.target_form == "final"
        # an update with no scored step only carries the state forward (advanced to by the next update)
        scored = [u for u in updates if (u.stop == length if final else u.stop > self.warmup)]
        for update, following in zip(scored, scored[1:] + [None]):
            position = self._advance(x, position, update.start)
            overlaps = following is not None and following.start < update.stop
            saved = self._read_states() if overlaps else None
            target, sample_weight = self._targets(y, update, final)
            logs = self.model.train_on_batch(
                x[:, update.start : update.stop], target, sample_weight=sample_weight, return_dict=True
            )
            position = update.stop
            if overlaps:  # k2 > k1: the next update starts before this one ended; rewind to its start
                self._write_states(saved)
                position = update.start
            num_scored = 1 if final else update.stop - max(update.loss_start, self.warmup)
            yield float(logs["loss"]), num_scored, float(self.model.optimizer.gradient_norm.numpy())

    def _targets(self, y, update, final):
        if final:
            return y, None
        target = y[:, update.start : update.stop]
        loss_start = max(update.loss_start, self.warmup)
        scale = 1.0 if self.truncation is None else truncation.loss_scale(
            self.truncation, truncation.Update(update.start, loss_start, update.stop))
        if loss_start == update.start and scale == 1.0:
            return target, None
        # Keras averages weighted losses over all steps of the update: scale so the loss is the mean over the
        # scored steps only (times the mode's `loss_scale`).
        span, scored = update.stop - update.start, update.stop - loss_start
        weight = np.zeros(target.shape[:2], np.float32)
        weight[:, loss_start - update.start :] = span / scored * scale
        return target, weight

    def _advance(self, x, position, to):
        """Run forward (no gradient, no update) from `position` to `to`, carrying the state, in chunks so memory
        does not grow with the distance."""
        assert to >= position, (position, to)
        for start in range(position, to, FORWARD_CHUNK):
            self.model.predict_on_batch(x[:, start : min(to, start + FORWARD_CHUNK)])
        return to

    def _reset(self):
        from rnnlib.worker import models

        models.reset_states(self.layers)

    def _read_states(self):
        return [[np.array(v.numpy()) for v in layer.states] for layer in self.layers]

    def _write_states(self, saved):
        for layer, values in zip(self.layers, saved):
            for variable, value in zip(layer.states, values):
                variable.assign(value)


def evaluate(model, task, x, y, batch_size, warmup: int = 0) -> tuple[float, dict[str, float]]:
    """Loss and every task metric (`task.metrics`) over full sequences (no truncation), state reset for every
    batch: each of the `len(x)` validation sequences counts exactly once. The model's batch size is fixed
    (it is stateful), so a last, partial batch is padded with zeros whose outputs are dropped.

    Sequences run through the stateful model in chunks of `FORWARD_CHUNK` steps and the scores are summed chunk
    by chunk, so neither the backend nor numpy ever holds the outputs of a whole long sequence.

    Args:
        warmup: leading steps left out of the loss: where the model cannot see enough history yet (an AR(τ)
            model's first τ - 1 steps; `models.warmup_steps`) or has nothing to predict (`Task.unscored_steps`).

    A task that scores free-running outputs (`Task.generate`, e.g. greedy decoding) has its metrics computed on
    those; the loss is always that of the outputs for `x` as given (teacher forcing).
    """
    from rnnlib.worker import models

    layers = models.recurrent_layers(model)
    length = x.shape[1]
    chunk = FORWARD_CHUNK if layers else length  # a stateless (AR) model needs whole sequences in one call
    final = task.target_form == "final"
    weights = task.metric_weights(1 if final else length)
    metrics = task.metrics
    loss_sum = loss_count = metric_count = 0.0
    metric_sums = dict.fromkeys(metrics, 0.0)
    for first in range(0, len(x), batch_size):
        rows = slice(first, min(len(x), first + batch_size))
        generated = task.generate(_from_fresh_state(model, layers, batch_size), x[rows])
        models.reset_states(layers)
        for t in range(0, length, chunk):
            steps = slice(t, min(length, t + chunk))
            y_pred = _predict_rows(model, x[rows, steps], batch_size)
            if final and steps.stop < length:
                continue
            y_true, step_weights = (y[rows], weights) if final else (y[rows, steps], weights[steps])
            losses = task.loss_per_step(y_true, y_pred)[:, 0 if final else max(0, warmup - t):]
            loss_sum, loss_count = loss_sum + losses.sum(), loss_count + losses.size
            scored = y_pred if generated is None else generated[:, steps]
            for name, metric in metrics.items():
                metric_sums[name] += float(np.sum(metric.per_step(y_true, scored) * step_weights))
            metric_count += float(np.sum(step_weights)) * len(y_true)
    return loss_sum / loss_count, {name: metric.value(metric_sums[name] / metric_count)
                                   for name, metric in metrics.items()}


def _predict_rows(model, x, batch_size: int) -> np.ndarray:
    """`model.predict_on_batch` on up to `batch_size` rows of `x`, zero-padded to the model's fixed batch size;
    the outputs of the padding are dropped."""
    x = np.asarray(x, np.float32)
    count = len(x)
    if count < batch_size:
        x = np.concatenate([x, np.zeros((batch_size - count, *x.shape[1:]), np.float32)])
    return np.asarray(model.predict_on_batch(x))[:count]


def _from_fresh_state(model, layers, batch_size: int):
    """`model` on whole sequences, each call from a zero state (what `Task.generate` expects)."""
    from rnnlib.worker import models

    def predict(x):
        models.reset_states(layers)
        return _predict_rows(model, x, batch_size)

    return predict
