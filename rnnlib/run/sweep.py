"""Running an experiment: every point of its grid, each a tracked run, and the summary of what came out.

How trials run is `execution.executor` (`EXECUTORS`): `sequential`, one after another in this process,
`processes`, in local worker processes, or `ray`, as Ray tasks on a local Ray or a cluster; the last two write
through this process (`rnnlib.run.executors`), so a sqlite store never sees two writers at once. A trial that
raises, or whose worker dies, is recorded FAILED and the sweep goes on; an interrupt (Ctrl-C, SIGTERM) ends the
open trials and the sweep KILLED.
"""

import contextlib
import dataclasses
import json
import time

import numpy as np
import pandas as pd

from rnnlib import tracking
from rnnlib.core import divergence
from rnnlib.core.config import ExperimentConfig, expand_grid, flatten_params
from rnnlib.core.errors import RnnLabError, TrackingError
from rnnlib.run import executors


class SweepError(RnnLabError):
    """Some trials of a sweep failed; the others were logged."""


@dataclasses.dataclass
class TrialResult:
    run_id: str
    config: ExperimentConfig
    point: dict
    status: str  # FINISHED or FAILED
    baseline: float
    history: list[dict]
    error: str = ""

    @property
    def best_val_loss(self) -> float:
        """NaN when the run diverged (`rnnlib.core.divergence`) or failed before its first epoch."""
        return divergence.best_val_loss(self.history)

    @property
    def diverged_epoch(self) -> int | None:
        return divergence.diverged_epoch(self.history)


def run_experiment(config: ExperimentConfig, store, make_callbacks=None, check=None,
                   only_failed: bool = False) -> list[TrialResult]:
    """Train every grid point of `config`, logging each run to `store` (a `rnnlib.tracking.Store`).

    Args:
        make_callbacks: optional `(index, total, config) -> list[callbacks.Callback]`, e.g. progress bars.
        check: optional `() -> None` that raises KeyboardInterrupt when a stop was requested; the `processes`
            executor calls it about every second, so a stop kills its workers even inside a long batch.
        only_failed: train only the grid points that have no FINISHED run in the experiment yet (`pending`):
            after a sweep whose trials failed, were killed or never started. Returns [] when none is left.

    Raises:
        SweepError: after all trials ran, when one or more of them failed.
    """
    experiment_id = store.experiment_id(config.name)
    points = expand_grid(config)
    if only_failed:
        points = pending(points, store.finished_params(experiment_id))
        if not points:
            return []
    with contextlib.ExitStack() as stack:
        parent_id = None
        if config.is_sweep:
            tags = {"rnnlib.run_kind": "sweep", "rnnlib.num_trials": str(len(points))}
            parent_id = stack.enter_context(
                store.run(experiment_id, f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
            )
            store.log_config(parent_id, config, {"rnnlib.grid": json.dumps(config.grid, default=str)})
        execution = config.execution
        if parent_id:
            store.set_tag(parent_id, executors.EXECUTOR_TAG, execution.executor)
        results = EXECUTORS[execution.executor](store, experiment_id, points, parent_id, make_callbacks,
                                                execution.workers, check)
        failed = [r for r in results if r.status == "FAILED"]
        if failed:  # raised inside the parent run, so the sweep ends FAILED
            lines = "\n".join(f"  - {tracking.run_name(r.config, r.point)}: {r.error}" for r in failed)
            raise SweepError(f"{len(failed)} of {len(results)} runs failed:\n{lines}")
    return results


def pending(points: list, finished: list[dict[str, str]]) -> list:
    """The `(grid point, config)` pairs no finished run matches: one whose params hold every param of the
    point's config with the same value (older runs may lack newer keys' defaults, so keys the run lacks count
    as matching only when the config has them at their empty value)."""
    def done(config) -> bool:
        wanted = flatten_params(config)
        return any(all(run.get(key, "") == value for key, value in wanted.items()) for run in finished)

    return [(point, config) for point, config in points if not done(config)]


def sequential(store, experiment_id: str, points: list, parent_id: str | None, make_callbacks=None,
               workers: int | None = None, check=None) -> list[TrialResult]:
    """Train `points` (`(grid point, config)` pairs) one after another in this process (`workers` unused; a
    stop is seen by the trials' callbacks, between batches)."""
    results = []
    for index, (point, trial_config) in enumerate(points):
        callbacks = make_callbacks(index, len(points), trial_config) if make_callbacks else []
        results.append(_run_trial(store, experiment_id, trial_config, point, parent_id, callbacks))
    return results


EXECUTORS = {"sequential": sequential, "processes": executors.processes, "ray": executors.ray_tasks}


def _run_trial(store, experiment_id, config, point, parent_id, callbacks) -> TrialResult:
    from rnnlib.worker import training

    kind = "trial" if parent_id else "single"
    tags = {"rnnlib.run_kind": kind, executors.EXECUTOR_TAG: "sequential"}
    run_id = ""
    try:
        with store.run(experiment_id, tracking.run_name(config, point), tags, parent_id) as run_id:
            logger = tracking.RunLogger(store, run_id, config, point)
            result = training.train(config, [logger, *callbacks])
    except TrackingError:  # the store itself failed: no later trial could be logged either
        raise
    except Exception as error:  # store.run ended the run FAILED; the sweep goes on
        return TrialResult(run_id, config, point, "FAILED", float("nan"), [], f"{type(error).__name__}: {error}")
    return TrialResult(run_id, config, point, "FINISHED", result.task.baseline, result.history)


def summary_table(results: list[TrialResult]) -> pd.DataFrame:
    """Best validation loss per cell type x truncation (and the sweep's other axes): mean and std over the
    seeds that did not diverge, how many did (`rnnlib.core.divergence`), and the ratio to the baseline.

    Rows are sorted by mean best loss, groups whose runs all diverged last; `vs_baseline` below 1 means the
    model beat the trivial predictor.
    """
    rows = [
        {
            "cell_type": r.config.model.cell_type,
            "truncation": r.config.training.truncation.label,
            **{key: str(value) for key, value in (r.point or {}).items() if key not in tracking.NAMED_AXES},
            "seed": r.config.seed,
            "best_val_loss": r.best_val_loss,
            "diverged": r.diverged_epoch is not None,
            "baseline": r.baseline,
        }
        for r in results
        if r.status == "FINISHED"
    ]
    columns = ["cell_type", "truncation", "runs", "diverged", "best_val_loss", "std", "baseline", "vs_baseline"]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    axes = [c for c in frame.columns if c not in ("seed", "best_val_loss", "diverged", "baseline")]
    table = (
        frame.groupby(axes, sort=False)
        .agg(runs=("seed", "size"), diverged=("diverged", "sum"), best_val_loss=("best_val_loss", "mean"),
             std=("best_val_loss", _spread),
             baseline=("baseline", "first"))
        .reset_index()
    )
    table["vs_baseline"] = table["best_val_loss"] / table["baseline"]
    return table.sort_values("best_val_loss", ignore_index=True, na_position="last")


def _spread(values: pd.Series) -> float:
    """Sample std of the values that are numbers: 0 for one, NaN for none."""
    finite = values.dropna()
    return float(np.std(finite, ddof=1)) if len(finite) > 1 else (0.0 if len(finite) else float("nan"))


def format_summary(table: pd.DataFrame) -> str:
    """The summary as the CLI prints it: a group whose runs all diverged reads `diverged`, not NaN."""
    shown = table.astype({"best_val_loss": object, "std": object, "vs_baseline": object})
    for column in ("best_val_loss", "std", "vs_baseline"):
        shown[column] = [f"{v:.4g}" if divergence.is_finite(v) else "diverged" for v in table[column]]
    return shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
