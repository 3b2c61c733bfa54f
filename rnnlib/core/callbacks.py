"""The hooks of training (`rnnlib.worker.training.train`), outside the worker package so that what attaches to
them (MLflow logging, progress bars, job heartbeats) needs no keras."""

from rnnlib.core.records import GradientFlow


class Callback:
    """Hooks into `train`. Override what you need; every method is a no-op by default."""

    def on_train_begin(self, info: dict) -> None:
        """`info`: backend, device, num_parameters, baseline, ..."""

    def on_batch_end(self, epoch: int, batch: int) -> None:
        """After each batch of sequences (all its truncation updates); `batch` counts from 1 within the epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """`logs`: train_loss, val_loss, val_<metric>, grad_norm, grad_norm_max, sequences_per_second, ..."""

    def on_gradient_flow(self, flow: GradientFlow) -> None:
        """After each gradient-flow probe (`rnnlib.worker.gradients`), with the record of every probe so far."""

    def on_train_end(self, result) -> None:
        """After the last epoch, with the `rnnlib.worker.training.TrainResult` (the trained model)."""
