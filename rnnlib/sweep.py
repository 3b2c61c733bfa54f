"""Running an experiment: every point of its grid, each a tracked run, and the summary of what came out.

Trials run one after another in this process, so a sqlite store never sees two writers at once. A trial that
raises is recorded FAILED and the sweep goes on; an interrupt (Ctrl-C, SIGTERM) ends the current trial and the
sweep KILLED.
"""

import contextlib
import dataclasses
import json
import time

import numpy as np
import pandas as pd

from rnnlib import tracking, training
from rnnlib.config import ExperimentConfig, expand_grid
from rnnlib.errors import RnnLabError


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
        return min((logs["val_loss"] for logs in self.history), default=float("nan"))


def run_experiment(config: ExperimentConfig, store, make_callbacks=None) -> list[TrialResult]:
    """Train every grid point of `config`, logging each run to `store` (a `rnnlib.tracking.Store`).

    Args:
        make_callbacks: optional `(index, total, config) -> list[training.Callback]`, e.g. progress bars.

    Raises:
        SweepError: after all trials ran, when one or more of them failed.
    """
    experiment_id = store.experiment_id(config.name)
    points = expand_grid(config)
    with contextlib.ExitStack() as stack:
        parent_id = None
        if config.is_sweep:
            tags = {"rnnlib.run_kind": "sweep", "rnnlib.num_trials": str(len(points))}
            parent_id = stack.enter_context(
                store.run(experiment_id, f"sweep-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags)
            )
            store.log_config(parent_id, config, {"rnnlib.grid": json.dumps(config.grid, default=str)})
        results = []
        for index, (point, trial_config) in enumerate(points):
            callbacks = make_callbacks(index, len(points), trial_config) if make_callbacks else []
            results.append(_run_trial(store, experiment_id, trial_config, point, parent_id, callbacks))
        failed = [r for r in results if r.status == "FAILED"]
        if failed:  # raised inside the parent run, so the sweep ends FAILED
            lines = "\n".join(f"  - {tracking.run_name(r.config, r.point)}: {r.error}" for r in failed)
            raise SweepError(f"{len(failed)} of {len(results)} runs failed:\n{lines}")
    return results


def _run_trial(store, experiment_id, config, point, parent_id, callbacks) -> TrialResult:
    kind = "trial" if parent_id else "single"
    run_id = ""
    try:
        with store.run(experiment_id, tracking.run_name(config, point), {"rnnlib.run_kind": kind}, parent_id) as run_id:
            logger = tracking.RunLogger(store, run_id, config, point)
            result = training.train(config, [logger, *callbacks])
    except Exception as error:  # store.run ended the run FAILED; the sweep goes on
        return TrialResult(run_id, config, point, "FAILED", float("nan"), [], f"{type(error).__name__}: {error}")
    return TrialResult(run_id, config, point, "FINISHED", result.task.baseline, result.history)


def summary_table(results: list[TrialResult]) -> pd.DataFrame:
    """Best validation loss per cell type x truncation: mean and std over seeds, and the ratio to the baseline.

    Rows are sorted by mean best loss; `vs_baseline` below 1 means the model beat the trivial predictor.
    """
    rows = [
        {
            "cell_type": r.config.model.cell_type,
            "truncation": r.config.training.truncation.label,
            **{key: str(value) for key, value in (r.point or {}).items() if key not in tracking.NAMED_AXES},
            "seed": r.config.seed,
            "best_val_loss": r.best_val_loss,
            "baseline": r.baseline,
        }
        for r in results
        if r.status == "FINISHED"
    ]
    if not rows:
        return pd.DataFrame(columns=["cell_type", "truncation", "runs", "best_val_loss", "std", "baseline",
                                     "vs_baseline"])
    frame = pd.DataFrame(rows)
    axes = [c for c in frame.columns if c not in ("seed", "best_val_loss", "baseline")]  # cell, truncation, others
    table = (
        frame.groupby(axes, sort=False)
        .agg(runs=("seed", "size"), best_val_loss=("best_val_loss", "mean"),
             std=("best_val_loss", lambda s: float(np.std(s, ddof=1)) if len(s) > 1 else 0.0),
             baseline=("baseline", "first"))
        .reset_index()
    )
    table["vs_baseline"] = table["best_val_loss"] / table["baseline"]
    return table.sort_values("best_val_loss", ignore_index=True)
