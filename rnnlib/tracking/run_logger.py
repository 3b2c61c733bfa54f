"""How a training run is logged: `RunLogger`, the callback that writes one run of the package's schema to a store.

No mlflow here: a training worker of the `processes` and `ray` executors logs through its parent
(`rnnlib.run.trial_worker.ForwardingStore`) and imports only this module and `system`, so it starts 0.9 s sooner
than with `rnnlib.tracking.store` (mlflow's import) on 2 cores.
"""

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from rnnlib.core import divergence
from rnnlib.core.callbacks import Callback
from rnnlib.core.config import SCHEMA_VERSION, ExperimentConfig
from rnnlib.tracking import system

if TYPE_CHECKING:
    from rnnlib.tracking.store import Store

GRADIENT_FLOW_ARTIFACT = "gradient_flow.npz"


class RunLogger(Callback):
    """Training callback that writes one run per the schema in `rnnlib.tracking`'s docstring."""

    def __init__(self, store: "Store", run_id: str, config: ExperimentConfig, grid_point: dict | None = None):
        self.store, self.run_id, self.config = store, run_id, config
        self.grid_point = grid_point or {}
        self.history: list[dict] = []
        self.gradient_flow = None  # the latest probes, written at the next epoch end
        self.system = system.SystemSampler()

    def on_train_begin(self, info):
        tags = {
            "rnnlib.backend": info["backend"],
            "rnnlib.backend_reason": info.get("backend_reason", ""),
            "rnnlib.device": info["device"],
            "rnnlib.task": self.config.task.name,
            "rnnlib.metric": info["metric"],
            "rnnlib.baseline_name": info["baseline_name"],
            "rnnlib.metric_baselines": json.dumps(info.get("metric_baselines", {})),
            "rnnlib.num_parameters": info["num_parameters"],
            "rnnlib.grid_point": json.dumps(self.grid_point, default=str),
            "rnnlib.schema_version": SCHEMA_VERSION,
            "rnnlib.cudnn": str(info.get("cudnn", False)).lower(),
        }
        gpus = system.gpu_names()
        tags["rnnlib.gpu_count"] = str(len(gpus))
        if gpus:
            tags["rnnlib.gpu_name"] = ", ".join(sorted(set(gpus)))
        self.store.log_config(self.run_id, self.config, tags)
        for path in info.get("data_files", ()):
            self.store.log_artifacts(self.run_id, path, artifact_path="data")
        self.store.log_metrics(self.run_id, {"baseline": info["baseline"]}, step=0)

    def on_epoch_end(self, epoch, logs):
        self.history.append(logs)
        self.store.log_metrics(self.run_id, {**logs, **self.system.flush()}, step=epoch)
        if divergence.diverged(logs):
            self.store.set_tag(self.run_id, divergence.TAG, str(epoch))
        self._log_gradient_flow()

    def on_batch_end(self, epoch, batch):
        self.system.maybe_sample()
        self.store.heartbeat()

    def on_gradient_flow(self, flow):
        self.gradient_flow = flow

    def on_train_end(self, result):
        self.store.log_metrics(self.run_id, {"best_val_loss": divergence.best_val_loss(self.history)},
                               step=len(result.history))
        self._log_gradient_flow()
        with tempfile.TemporaryDirectory() as directory:
            result.save(directory)
            self.store.log_artifacts(self.run_id, directory, artifact_path="model")

    def _log_gradient_flow(self):
        """Rewrite `gradient_flow.npz` with every probe so far (a few KB), so a stopped run keeps its history."""
        if self.gradient_flow is None:
            return
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / GRADIENT_FLOW_ARTIFACT
            path.write_bytes(self.gradient_flow.to_bytes())
            self.store.log_artifacts(self.run_id, path)
        self.gradient_flow = None
