"""The only package that imports mlflow: where runs go (`store`), how a run is logged (`run_logger`, with what it
used of the machine: `system`), queries that read them back (`queries`), and portable bundles of whole runs
(`bundles`). Its API loads on first use, so a worker that logs through its parent never imports mlflow.

Run schema (what the dashboard and outside tools may rely on):

- experiment: one MLflow experiment per YAML experiment (its `name`). A sweep is a parent run (tag
  `rnnlib.run_kind=sweep`) with one child run per grid point (`mlflow.parentRunId`, `rnnlib.run_kind=trial`);
  a YAML without a grid gives one run of kind `single`.
- params: the flattened config with dotted keys (`rnnlib.core.config.flatten_params`): `task.name`, `task.length`,
  `model.kind` (recurrent, ar, ar_mlp), `model.cell_type` (empty for an AR model), `model.label` (the cell, or
  the AR kind), `model.units`, `training.truncation` (full, 20, 10/20, rand20),
  `training.truncation.mode/k1/k2/mean`, `training.clipnorm`, `seed`, ...
- metrics, with step = epoch (1-based): `epoch`, `train_loss`, `val_loss`, `val_<m>` for each of the task's metrics
  (`Task.metrics`: `val_mae` and `val_rmse` for forecasts), `grad_norm` (mean pre-clip global norm over the epoch's
  updates), `grad_norm_max`, `sequences_per_second`, `epoch_seconds`, `updates`, and at each epoch that probed
  gradient flow `trunc_cosine`, `trunc_error`, `trunc_bias`, `trunc_variance` (the truncation-bias meter); at step 0:
  `baseline` (the task's trivial-predictor loss); at the end: `best_val_loss`. Every validation metric and baseline is
  computed on the task's whole validation set, each sequence once (`Task.validation_size`). NaN and +-inf are logged
  as they are and read back as they are (MLflow stores them as `is_nan` / +-1.797e308); a run whose loss became one is
  diverged (`rnnlib.core.divergence`): training stopped there, it carries the tag `rnnlib.diverged_epoch`, and its
  `best_val_loss` is NaN.
- tags: `rnnlib.backend`, `rnnlib.device`, `mlflow.source.git.commit`, `rnnlib.task`, `rnnlib.metric`,
  `rnnlib.baseline_name`, `rnnlib.metric_baselines` (JSON `{predictor: {metric: value}}`, e.g. persistence and
  seasonal-naive MAE), `rnnlib.num_parameters`, `rnnlib.grid_point` (JSON), `rnnlib.schema_version` (of its
  config), `rnnlib.error` on failure, `rnnlib.diverged_epoch`, `rnnlib.job_id` (the dashboard job that
  started it), `rnnlib.worker` (JSON host, pid and start time of the process training it) and
  `rnnlib.heartbeat` (unix seconds, refreshed every 30 s while it trains; see `reconcile`).
- artifacts: `config.yaml` (the resolved single-run config, with its `schema_version`; read back leniently by
  `rnnlib.core.config.read_logged_config`, so runs logged by older and newer versions stay readable),
  `model/model.keras`, `model/weights.npz`,
  `model/predictions.npz` (the task's `prediction_arrays`: validation predictions next to the truth, forecasts
  and k-step rollouts), `data/<file>` (a user's CSV the run trained on, so it can be reproduced), and
  `gradient_flow.npz` (`rnnlib.core.records.GradientFlow`: per probe, layer and timestep the norms of ∂L_T/∂h_t,
  ∂L_T/∂c_t and ∂h_T/∂h_t; rewritten at the end of each epoch that probed, absent when `probe_every`
  is 0).

A run that raises ends FAILED, one interrupted (Ctrl-C, SIGTERM) ends KILLED; one whose worker died without
ending it (kill -9, out of memory, a store that stopped taking writes) is ended FAILED by `reconcile`, which the
dashboard runs as it opens. None stays RUNNING.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the package's API, for type checkers; at run time `__getattr__` loads it on first use
    from rnnlib.tracking.queries import (  # noqa: F401 - the package's API
        HISTORY_COLUMNS,
        RUN_COLUMNS,
        list_experiments,
        load_artifact_text,
        load_config,
        load_gradient_flow,
        load_predictions,
        load_weights,
        metric_histories,
        recent_pace,
        restore_infinities,
        run_artifact,
        runs_frame,
    )
    from rnnlib.tracking.store import (  # noqa: F401 - the package's API
        DEFAULT_TRACKING_URI,
        ENV_TRACKING_URI,
        GRADIENT_FLOW_ARTIFACT,
        HEARTBEAT_SECONDS,
        HEARTBEAT_TAG,
        HTTP_POLICIES,
        JOB_TAG,
        NAMED_AXES,
        PREDICTIONS_ARTIFACT,
        PROJECT_DIR,
        SQLITE_HEADER,
        STALE_SECONDS,
        STORE_SCHEMES,
        WORKER_TAG,
        RunLogger,
        Store,
        apply_http_policy,
        artifact_folder,
        artifact_root,
        check_store,
        git_commit,
        open_client,
        reconcile,
        resolve_tracking_uri,
        run_name,
        sqlite_path,
        store_status,
        worker_environment,
        writes,
    )


# The package's API, loaded by `__getattr__` on first use: the names imported above, kept equal to them by a test.
__all__ = [
    "HISTORY_COLUMNS", "RUN_COLUMNS", "list_experiments", "load_artifact_text", "load_config", "load_gradient_flow",
    "load_predictions", "load_weights", "metric_histories", "recent_pace", "restore_infinities", "run_artifact",
    "runs_frame",  # from queries
    "DEFAULT_TRACKING_URI", "ENV_TRACKING_URI", "GRADIENT_FLOW_ARTIFACT", "HEARTBEAT_SECONDS", "HEARTBEAT_TAG",
    "HTTP_POLICIES", "JOB_TAG", "NAMED_AXES", "PREDICTIONS_ARTIFACT", "PROJECT_DIR", "SQLITE_HEADER",
    "STALE_SECONDS", "STORE_SCHEMES", "WORKER_TAG", "RunLogger", "Store", "apply_http_policy", "artifact_folder",
    "artifact_root", "check_store", "git_commit", "open_client", "reconcile", "resolve_tracking_uri", "run_name",
    "sqlite_path", "store_status", "worker_environment", "writes",  # from store
]


def __getattr__(name: str):
    """A name of the package's API (`__all__`), from `queries` or `store`: importing them imports mlflow (0.9 s on
    2 cores), which a process that only trains never needs (a worker logging through its parent imports
    `run_logger` and `system` alone). Any other name is not the package's, even one those modules hold."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rnnlib.tracking import queries, store

    value = vars(queries)[name] if name in vars(queries) else vars(store)[name]
    globals()[name] = value
    return value
