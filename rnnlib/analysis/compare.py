"""Statistics for comparing runs: grouping, smoothing, confidence bands over seeds, summaries. Pure pandas.

Inputs are the frames of `rnnlib.tracking`: `runs` (one row per run, `params.*` columns) and `histories`
(long: `run_id`, `key`, `step`, `value`). Diverged runs follow `rnnlib.core.divergence`: a value that is not a finite
number never enters a mean, a band or a ranking, and every group says how many of its runs diverged.
"""

import json
import re

import numpy as np
import pandas as pd
from scipy import stats

from rnnlib.core import divergence
from rnnlib.core.records import TRUNCATION_BIAS, vanishing_lag
from rnnlib.core.registry import lookup

STATISTICS = ("best", "last", "at_step")
DEFAULT_GROUP_BY = ("model.label", "training.truncation")  # the order default_group_by puts first


def param_names(runs: pd.DataFrame) -> list[str]:
    """The params logged on these runs, without the `params.` prefix."""
    return [c.removeprefix("params.") for c in runs.columns if c.startswith("params.")]


def metric_keys(runs: pd.DataFrame) -> list[str]:
    """Metrics logged per epoch on these runs (from the latest-value columns), most useful first."""
    keys = [c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")]
    keys = [k for k in keys if k not in ("baseline", "best_val_loss")]
    first = [k for k in ("val_loss", "train_loss") if k in keys]
    return first + sorted(k for k in keys if k not in first)


def summary_metrics(metrics: list[str], shown: str) -> list[str]:
    """The metrics worth a summary column: losses, validation metrics, the gradient norm, and the one shown."""
    keep = [m for m in metrics if m in ("train_loss", "grad_norm") or m.startswith("val_")]
    return keep + [shown] if shown not in keep else keep


# Params that name their parts in one word (`rnnlib.core.config.flatten_params`): where one varies, its parts
# are left out of the varying params, so that runs are told apart as `gru` and `ar`, not `gru · recurrent`.
SUMMARY_PARAMS = {
    "model.label": ("model.kind", "model.cell_type"),
    "training.truncation": tuple(f"training.truncation.{part}" for part in ("mode", "k1", "k2", "mean")),
}


def varying_params(runs: pd.DataFrame) -> list[str]:
    """Params whose value differs between the runs (missing counts as a value), a summary param standing for
    its parts (`SUMMARY_PARAMS`)."""
    varying = [name for name in param_names(runs) if runs[f"params.{name}"].fillna("").nunique() > 1]
    implied = {part for name, parts in SUMMARY_PARAMS.items() if name in varying for part in parts}
    return [name for name in varying if name not in implied]


def default_group_by(runs: pd.DataFrame) -> list[str]:
    """Group by what varies across the runs (seeds are replicates, never a group): the model and truncation
    first when they vary, then the other varying params; none when only the seed does."""
    varying = [p for p in varying_params(runs) if p != "seed"]
    return [p for p in DEFAULT_GROUP_BY if p in varying] + [p for p in varying if p not in DEFAULT_GROUP_BY]


def higher_is_better(metric: str) -> bool:
    return bool(re.search(r"accuracy|sequences_per_second|trunc_cosine", metric))


def is_loss(metric: str) -> bool:
    """Metrics measured in the task's loss units, which the baseline applies to."""
    return metric in ("val_loss", "train_loss")


def baseline(runs: pd.DataFrame) -> float | None:
    """The task's trivial-predictor loss logged on these runs (their mean, should tasks differ), or None."""
    if "metrics.baseline" not in runs or runs["metrics.baseline"].isna().all():
        return None
    return float(runs["metrics.baseline"].mean())


def baseline_name(runs: pd.DataFrame) -> str:
    column = "tags.rnnlib.baseline_name"
    names = runs[column].dropna().unique() if column in runs else []
    return f"baseline: {names[0]}" if len(names) == 1 else "baseline"


def baselines(runs: pd.DataFrame, metric: str) -> dict[str, float]:
    """The trivial predictors' scores to draw on a chart of `metric`: `{label: value}`.

    The loss baseline for `train_loss` / `val_loss`; for a validation metric `val_<m>`, the task's metric
    baselines (`Task.metric_baselines`, e.g. persistence and seasonal naive MAE), when the runs logged them; for
    the truncation-bias meter's `trunc_<statistic>`, full BPTT's value (cosine 1, every error 0).
    """
    if metric.startswith("trunc_") and metric.removeprefix("trunc_") in TRUNCATION_BIAS:
        return {"full BPTT": 1.0 if metric == "trunc_cosine" else 0.0}
    if is_loss(metric):
        value = baseline(runs)
        return {} if value is None else {baseline_name(runs): value}
    column = "tags.rnnlib.metric_baselines"
    if column not in runs or not metric.startswith("val_"):
        return {}
    found: dict[str, list[float]] = {}
    for text in runs[column].dropna().unique():
        for name, scores in json.loads(text).items():
            if metric.removeprefix("val_") in scores:
                found.setdefault(name, []).append(scores[metric.removeprefix("val_")])
    return {name: float(np.mean(values)) for name, values in found.items()}


def filter_runs(runs: pd.DataFrame, filters: dict[str, list[str]]) -> pd.DataFrame:
    """Keep runs whose param `name` is one of `values`, for each (name, values) in `filters`."""
    keep = pd.Series(True, index=runs.index)
    for name, values in filters.items():
        column = f"params.{name}"
        if column in runs and values:
            keep &= runs[column].fillna("").isin([str(v) for v in values])
    return runs[keep]


# Params whose values name themselves in a label (`gru`, `ar`, `full`, `tbptt(8)`); any other param's value is
# shown with its name (`clipnorm=1`, `length=100`), so that a legend entry `1` or `none` cannot be misread.
SELF_NAMED_PARAMS = ("model.label", "model.cell_type", "model.kind", "training.truncation")


def value_label(name: str, value: object) -> str:
    """One param's value as a label reads it: `gru` for a self-naming param, `clipnorm=1` for any other."""
    return str(value) if name in SELF_NAMED_PARAMS else f"{name.rsplit('.', 1)[-1]}={value}"


def group_labels(runs: pd.DataFrame, group_by: list[str]) -> pd.Series:
    """One label per run, e.g. `lstm · 20` for group_by = [model.cell_type, training.truncation], or
    `gru · clipnorm=1` for [model.label, training.clipnorm]."""
    names = [name for name in group_by if f"params.{name}" in runs]
    if not names:
        return pd.Series("all runs", index=runs.index)

    def text(name):  # a param logged empty means "not set" (e.g. clipnorm: null)
        values = runs[f"params.{name}"].fillna("–").astype(str).replace("", "none")
        return values if name in SELF_NAMED_PARAMS else name.rsplit(".", 1)[-1] + "=" + values

    labels = text(names[0])
    for name in names[1:]:
        labels = labels + " · " + text(name)
    return labels


def panel_of(runs: pd.DataFrame, group_by: list[str], panel_param: str) -> dict[str, tuple[str, str]]:
    """For charts split into panels by one grouping param: each group label -> (its panel, the label of the
    other params), e.g. `lstm · 5` -> (`lstm`, `5`) for panels by model.label."""
    rest = [p for p in group_by if p != panel_param]
    panels = group_labels(runs, [panel_param]) if panel_param in group_by else pd.Series("all runs", index=runs.index)
    return dict(zip(group_labels(runs, group_by), zip(panels, group_labels(runs, rest))))


def diverged_at(runs: pd.DataFrame, histories: pd.DataFrame | None = None) -> pd.Series:
    """The epoch each run diverged at (`rnnlib.core.divergence`), NaN for runs that did not, indexed by run_id.

    Read from the run's `rnnlib.diverged_epoch` tag and, where `histories` hold its losses, from the first
    epoch whose loss is not finite (runs logged before the tag existed)."""
    epochs = pd.Series(np.nan, index=pd.Index(runs["run_id"], name="run_id"), dtype=float)
    column = f"tags.{divergence.TAG}"
    if column in runs:
        epochs[:] = pd.to_numeric(runs[column], errors="coerce").to_numpy()
    if histories is not None and not histories.empty:
        losses = histories[histories["key"].isin(divergence.LOSS_KEYS) & ~np.isfinite(histories["value"])]
        first = losses.groupby("run_id", observed=True)["step"].min().reindex(epochs.index)
        epochs = epochs.fillna(first.astype(float))
    return epochs


def divergence_notice(runs: pd.DataFrame, epochs: pd.Series, limit: int = 6) -> str | None:
    """One sentence naming the runs that diverged (`diverged_at`) and what that does to the numbers, or None."""
    gone = epochs.dropna()
    if gone.empty:
        return None
    names = dict(zip(runs["run_id"], runs["run_name"]))
    listed = [f"{names.get(run_id, run_id[:8])} (epoch {int(epoch)})" for run_id, epoch in gone.items()]
    more = f" and {len(listed) - limit} more" if len(listed) > limit else ""
    return (f"{len(gone)} of {len(epochs)} runs diverged (their loss became NaN or infinite): "
            f"{', '.join(listed[:limit])}{more}. They are left out of every mean, band and ranking from the epoch "
            "they diverged at; legends and tables count them.")


def curves(histories: pd.DataFrame, runs: pd.DataFrame, metric: str, group_by: list[str],
           smoothing: float = 0.0, diverged: pd.Series | None = None) -> pd.DataFrame:
    """Per-run curves of `metric`: `run_id`, `run_name`, `group`, `step`, `value`, `smoothed`, `diverged_at`.

    A value that is not a finite number (a diverged run) becomes NaN, a gap in the curve, and is never smoothed
    into its neighbours; `diverged_at` is the run's divergence epoch (`diverged`, computed by `diverged_at`
    when not given), NaN for runs that did not."""
    data = histories[(histories["key"] == metric) & histories["run_id"].isin(runs["run_id"])]
    labels = pd.Series(group_labels(runs, group_by).to_numpy(), index=runs["run_id"])
    names = pd.Series(runs["run_name"].to_numpy(), index=runs["run_id"])
    data = data.assign(group=data["run_id"].map(labels), run_name=data["run_id"].map(names),
                       diverged_at=data["run_id"].map(diverged if diverged is not None
                                                      else diverged_at(runs, histories)),
                       value=data["value"].where(np.isfinite(data["value"])))
    data = data.sort_values(["run_id", "step"])
    if smoothing > 0:  # pandas' adjusted EWM is exactly the debiased EMA of `smooth`, vectorised over runs
        ewm = data.groupby("run_id", sort=False)["value"].ewm(alpha=1 - smoothing, adjust=True).mean()
        data["smoothed"] = ewm.reset_index(level=0, drop=True).where(data["value"].notna())
    else:
        data["smoothed"] = data["value"]
    columns = ["run_id", "run_name", "group", "step", "value", "smoothed", "diverged_at"]
    return data[columns].reset_index(drop=True)


def group_runs(curve: pd.DataFrame) -> pd.DataFrame:
    """Per group of a `curves` frame: `runs` drawn and how many of them `diverged`, for legends."""
    runs = curve.drop_duplicates("run_id")
    return runs.groupby("group", sort=False).agg(runs=("run_id", "size"),
                                                 diverged=("diverged_at", "count")).reset_index()


# How the spread of a group's runs is drawn around its mean curve (Compare's "Band"). Student-t intervals are
# wide at a few seeds (t = 12.7 at n = 2), so `default_band` picks min–max below `MIN_RUNS_FOR_CI` runs.
BANDS = {
    "ci95": "95% confidence band (Student t)",
    "se": "± 1 standard error",
    "std": "± 1 standard deviation",
    "range": "min–max over runs",
    "none": "no band",
}
MIN_RUNS_FOR_CI = 5


def default_band(runs: pd.DataFrame, group_by: list[str]) -> str:
    """`ci95` when every group of `runs` has at least `MIN_RUNS_FOR_CI` runs, else `range` (the runs themselves)."""
    sizes = group_labels(runs, group_by).value_counts()
    return "ci95" if len(sizes) and sizes.min() >= MIN_RUNS_FOR_CI else "range"


def spread(frame: pd.DataFrame, keys: list[str], column: str, kind: str = "ci95") -> pd.DataFrame:
    """Per group of `keys`, over the finite values of `column`: `mean`, the band `kind` (`BANDS`) around it as
    `lower` / `upper`, `n` and `diverged` (values that are NaN or inf). One value, or `none`, gives lower = upper
    = mean. Groups with no finite value are kept, with NaN."""
    lookup(BANDS, kind, "band")
    table = _mean_and_ci(frame, keys, column, 0.95, sort=False)
    if kind == "range":
        finite = frame[column].where(np.isfinite(frame[column]))
        extremes = finite.groupby([frame[key] for key in keys], sort=False).agg(["min", "max"]).reset_index()
        table = table.merge(extremes, on=keys, how="left")
        lower, upper = table.pop("min"), table.pop("max")
    else:
        half = {"ci95": table["ci"], "se": table["std"] / np.sqrt(table["n"].clip(lower=1)), "std": table["std"],
                "none": 0.0 * table["std"]}[kind]
        lower, upper = table["mean"] - half, table["mean"] + half
    return table.assign(lower=lower, upper=upper)


def band(curve: pd.DataFrame, kind: str = "ci95", column: str = "smoothed") -> pd.DataFrame:
    """The mean of each group at each step and the band `kind` (`BANDS`) around it: `group`, `step`, `mean`,
    `lower`, `upper`, `n`, over the runs with a finite value there (`spread`)."""
    table = spread(curve, ["group", "step"], column, kind)
    table = table[table["n"] > 0].sort_values(["group", "step"], ignore_index=True)
    return table[["group", "step", "mean", "lower", "upper", "n"]]


def summarize(histories: pd.DataFrame, runs: pd.DataFrame, metric: str, statistic: str = "best",
              step: int | None = None, diverged: pd.Series | None = None) -> pd.Series:
    """One number per run (indexed by run_id): the best, last, or value at `step` (or the last before it).

    A run that diverged has none (NaN) for a statistic that covers its divergence: best and last, or a `step`
    at or after it (`rnnlib.core.divergence`; `diverged`, the runs' divergence epochs, is `diverged_at`'s when not
    given)."""
    lookup(STATISTICS, statistic, "statistic")
    data = histories[(histories["key"] == metric) & histories["run_id"].isin(runs["run_id"])]
    data = data.sort_values(["run_id", "step"], kind="stable")
    if statistic == "best":
        values = data.groupby("run_id", observed=True)["value"].agg("max" if higher_is_better(metric) else "min")
    elif statistic == "last":
        values = data.groupby("run_id", observed=True)["value"].last()
    else:
        values = data[data["step"] <= (step if step is not None else 0)].groupby("run_id", observed=True)["value"]
        values = values.last()
    values = values.reindex(runs["run_id"]).rename(metric)
    covered = np.inf if statistic != "at_step" else (step if step is not None else 0)
    gone = (diverged if diverged is not None else diverged_at(runs, histories)).reindex(runs["run_id"]) <= covered
    return values.where(~gone.to_numpy() & np.isfinite(values))


def group_summary(per_run: pd.Series, runs: pd.DataFrame, group_by: list[str], level: float = 0.95) -> pd.DataFrame:
    """Mean, std, confidence half-width and count `n` of a per-run statistic within each group, over the runs
    that have one; `diverged` counts the others. Sorted best first; groups with no value at all come last."""
    labels = pd.Series(group_labels(runs, group_by).to_numpy(), index=runs["run_id"])
    frame = pd.DataFrame({"group": labels, "value": per_run.reindex(labels.index)})
    table = _mean_and_ci(frame, ["group"], "value", level, sort=False)
    return table.sort_values("mean", ascending=not higher_is_better(per_run.name or ""), ignore_index=True,
                             na_position="last")


def metric_vs_param(per_run: pd.Series, runs: pd.DataFrame, x_param: str, line_param: str | None,
                    band_kind: str = "ci95") -> pd.DataFrame:
    """Per-run statistic against a hyperparameter: one row per (line, x) with `mean`, the band `band_kind`
    (`BANDS`, as on the curves) as `lower` / `upper`, `n` and `diverged`.

    x values are ordered numerically when they are numbers, with non-numeric ones (e.g. `full` truncation)
    after them; `x_order` holds that order.
    """
    frame = pd.DataFrame({
        "x": runs[f"params.{x_param}"].fillna("–").astype(str).to_numpy(),
        "line": (runs[f"params.{line_param}"].fillna("–").astype(str).to_numpy()
                 if line_param else np.full(len(runs), "all runs")),
        "value": per_run.reindex(runs["run_id"]).to_numpy(),
    })
    table = spread(frame, ["line", "x"], "value", band_kind)
    order = {x: i for i, x in enumerate(sorted(table["x"].unique(), key=natural_key))}
    table["x_order"] = table["x"].map(order)
    return table.sort_values(["line", "x_order"], ignore_index=True)


def group_sort_key(label: str):
    """Orders group labels part by part, numbers numerically: `lstm · 5` < `lstm · 10` < `lstm · full`."""
    return tuple(natural_key(part) for part in str(label).split(" · "))


def _mean_and_ci(frame: pd.DataFrame, keys: list[str], column: str, level: float, sort: bool = True) -> pd.DataFrame:
    """Per group of `keys`: mean, std (0 for a single run), n and `ci`, the half-width of the Student-t interval
    of the mean, over the finite values of `column`; `diverged` counts the values that are not (NaN, inf:
    `rnnlib.core.divergence`)."""
    values = frame[column].where(np.isfinite(frame[column]))
    grouped = values.groupby([frame[key] for key in keys], sort=sort)
    table = grouped.agg(mean="mean", std="std", n="count", size="size").reset_index()
    table["diverged"] = table.pop("size") - table["n"]
    table["std"] = table["std"].where(table["n"] != 1, 0.0)
    quantile = stats.t.ppf(0.5 + level / 2, np.maximum(table["n"] - 1, 1))
    table["ci"] = np.where(table["n"] > 1, quantile * table["std"] / np.sqrt(table["n"]), 0.0)
    return table


def natural_key(text: str):
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def diff_params(runs: pd.DataFrame) -> pd.DataFrame:
    """The params table with only the keys that differ across the runs: `run_name`, `run_id`, then those keys.

    The parts of a truncation (`training.truncation.mode/k1/k2/mean`) are left out when its label already is
    (`SUMMARY_PARAMS`).
    """
    varying = varying_params(runs)
    table = runs[["run_name", "run_id"] + [f"params.{p}" for p in varying]]
    return table.rename(columns={f"params.{p}": p for p in varying}).reset_index(drop=True)


def parallel_table(
    differences: pd.DataFrame, summary: pd.DataFrame, metrics: list[str]
) -> tuple[pd.DataFrame, list[str]]:
    """Rows for parallel coordinates: the varying params, then the summary metrics; returns (table, dimensions)."""
    params = [c for c in differences.columns if c not in ("run_id", "run_name")]
    metrics = [m for m in dict.fromkeys(metrics) if m in summary]
    table = differences.merge(summary[["run_id", *metrics]], on="run_id")
    return table, [*params, *metrics]


def summary_table(histories: pd.DataFrame, runs: pd.DataFrame, metrics: list[str], statistic: str,
                  step: int | None, group_by: list[str], diverged: pd.Series | None = None) -> pd.DataFrame:
    """Per-run summary: name, group, status (`FINISHED · diverged at epoch 3` for a diverged run, whose
    statistics are then empty) and the chosen statistic of each metric."""
    diverged = diverged if diverged is not None else diverged_at(runs, histories)  # once, for every metric
    epochs = diverged.reindex(runs["run_id"]).to_numpy()
    status = [f"{state} · {divergence.describe(epoch)}" if np.isfinite(epoch) else state
              for state, epoch in zip(runs["status"], epochs)]
    table = pd.DataFrame({"run_name": runs["run_name"].to_numpy(), "group": group_labels(runs, group_by).to_numpy(),
                          "status": status}, index=runs["run_id"])
    for metric in metrics:
        table[metric] = summarize(histories, runs, metric, statistic, step, diverged)
    return table.reset_index()


# What each run used of its machine (`rnnlib.tracking.system`): (column, source in the runs frame, what it means).
# A metric's value is its last epoch's: a steady one, past the first epoch's tracing.
MACHINE_COLUMNS = (
    ("sequences/s", "metrics.sequences_per_second", "Training sequences per second in the last epoch, probes "
     "and validation left out."),
    ("peak memory (MB)", "metrics.system/process_peak_memory_megabytes", "The training process's peak resident "
     "memory."),
    ("run CPU %", "metrics.system/process_cpu_utilization_percentage", "The training process's own CPU in the "
     "last epoch: 100 is one core busy all the time, 200 two."),
    ("machine CPU %", "metrics.system/cpu_utilization_percentage", "The whole machine's CPU in the last epoch "
     "(every core, whoever used it; MLflow's metric): runs of a parallel sweep each see all of them."),
    ("GPU %", "metrics.system/gpu_0_utilization_percentage", "GPU 0's utilisation in the last epoch."),
    ("GPU memory (MB)", "metrics.system/gpu_0_memory_usage_megabytes", "GPU 0's memory in use in the last epoch."),
    ("backend", "tags.rnnlib.backend", "The Keras backend that trained the run."),
    ("device", "tags.rnnlib.device", "The device it trained on."),
    ("GPU", "tags.rnnlib.gpu_name", "The machine's GPUs."),
    ("executor", "tags.rnnlib.executor", "How its sweep ran its trials: sequential, processes or ray."),
)
MACHINE_HELP = {column: meaning for column, _, meaning in MACHINE_COLUMNS}


def machine_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per run: `run_id`, its wall `seconds` (start to end; empty while it runs) and the `MACHINE_COLUMNS` that
    any run has, for the Compare page's per-run table."""
    table = pd.DataFrame({"run_id": runs["run_id"].to_numpy()})
    if {"start_time", "end_time"} <= set(runs.columns):
        seconds = (pd.to_datetime(runs["end_time"]) - pd.to_datetime(runs["start_time"])).dt.total_seconds()
        table["seconds"] = seconds.round(1).to_numpy()
    for column, source, _ in MACHINE_COLUMNS:
        if source in runs.columns and runs[source].notna().any():
            values = runs[source]
            table[column] = (pd.to_numeric(values, errors="coerce").round(1) if source.startswith("metrics.")
                             else values.fillna("")).to_numpy()
    return table


# Gradient flow over time (`rnnlib.core.records.GradientFlow`, one per run).

# The smallest positive float32: gradient norms are computed in float32 and underflow to 0 below it.
FLOAT32_FLOOR = float(np.finfo(np.float32).smallest_subnormal)

def flow_curves(flows: dict, runs: pd.DataFrame, group_by: list[str], quantity: str, layer: int = 0) -> pd.DataFrame:
    """Every probe of every run as norm vs timestep: `run_id`, `run_name`, `group`, `probe`, `epoch`, `step`, `t`,
    `lag`, `reach`, `value`. Runs without a record (or without `quantity`, e.g. ∂L/∂c of a GRU) are
    left out."""
    labels = dict(zip(runs["run_id"], group_labels(runs, group_by)))
    names = dict(zip(runs["run_id"], runs["run_name"]))
    frames = []
    for run_id, flow in flows.items():
        if flow is None or quantity not in flow.norms or run_id not in labels or layer >= flow.num_layers:
            continue
        values = flow.norms[quantity][:, layer]  # [probes, T]
        num_probes, length = values.shape
        probe, t = np.indices(values.shape).reshape(2, -1)
        frames.append(pd.DataFrame({
            "run_id": run_id, "run_name": names[run_id], "group": labels[run_id], "probe": probe,
            "epoch": flow.epochs[probe], "step": flow.steps[probe], "t": t, "lag": length - 1 - t,
            "reach": flow.reaches[probe], "value": values.reshape(-1),
        }))
    columns = ["run_id", "run_name", "group", "probe", "epoch", "step", "t", "lag", "reach", "value"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def bias_at(flows: dict, runs: pd.DataFrame, statistic: str, epoch: float | None) -> pd.Series:
    """Each run's truncation-bias meter `statistic` (`records.TRUNCATION_BIAS`) at its probe closest to `epoch`
    (None: its last probe), indexed by run id; runs whose record has no meter (logged before it) are left out."""
    values = {}
    for run_id in runs["run_id"]:
        flow = flows.get(run_id)
        if flow is None or not len(flow.bias.get(statistic, ())):
            continue
        probe = len(flow.epochs) - 1 if epoch is None else int(np.argmin(np.abs(flow.epochs - epoch)))
        values[run_id] = float(flow.bias[statistic][probe])
    return pd.Series(values, name=statistic, dtype=float)


def bias_line_param(runs: pd.DataFrame) -> str | None:
    """What the truncation-bias chart draws one line per: the model when several are compared."""
    varying = varying_params(runs)
    return next((p for p in ("model.label", "model.cell_type") if p in varying), None)


def at_epoch(curves: pd.DataFrame, epoch: float | None) -> pd.DataFrame:
    """Each run's probe closest to `epoch` (None: its last probe, i.e. after training)."""
    if curves.empty:
        return curves
    probes = curves[["run_id", "probe", "epoch"]].drop_duplicates()
    if epoch is None:
        chosen = probes.loc[probes.groupby("run_id")["probe"].idxmax()]
    else:
        chosen = probes.assign(distance=(probes["epoch"] - epoch).abs()).sort_values(["distance", "probe"])
        chosen = chosen.drop_duplicates("run_id")
    return curves.merge(chosen[["run_id", "probe"]], on=["run_id", "probe"])


def lag_band(curves: pd.DataFrame, kind: str = "ci95") -> pd.DataFrame:
    """Geometric mean over a group's runs of the norm at each lag, with the band `kind` (`BANDS`) around it.

    Norms span many decades, so the mean and the band are taken of log10. Steps before the truncation's
    reach get no gradient at all and are left out, so a truncated group's curve ends where its gradient does;
    a norm that underflowed float32 elsewhere counts as `FLOAT32_FLOOR`, not as missing (dropping it would lift
    the mean to the runs that had not underflowed yet); a norm that is NaN or inf (a diverged network) is left
    out and counted in `diverged`. Returns `group`, `lag`, `mean`, `lower`, `upper`, `n`, `diverged`.
    """
    reached = curves[curves["t"] >= curves["reach"]]
    positive = reached.assign(log=lambda f: np.log10(f["value"].clip(lower=FLOAT32_FLOOR)))
    table = spread(positive, ["group", "lag"], "log", kind).sort_values(["group", "lag"], ignore_index=True)
    return pd.DataFrame({
        "group": table["group"], "lag": table["lag"], "mean": 10 ** table["mean"],
        "lower": 10 ** table["lower"], "upper": 10 ** table["upper"], "n": table["n"], "diverged": table["diverged"],
    })


def vanishing_table(curves: pd.DataFrame, threshold: float = 1e-3, diverged: pd.Series | None = None) -> pd.DataFrame:
    """Per run, the lag where the norm first falls below `threshold` times its value at the last step, at the
    first probe (initialisation) and the last (after training): `run_name`, `group`, `at_init`, `trained`
    (inf: it never does within the sequence; NaN: the network had diverged, its norms are not finite, or its
    loss had: `diverged`, the runs' divergence epochs from `diverged_at`)."""
    rows = []
    for run_id, run in curves.groupby("run_id", sort=False):
        first, last = run["probe"].min(), run["probe"].max()
        lags = []
        for probe in (first, last):
            norms = run[run["probe"] == probe].sort_values("t")["value"].to_numpy()
            lag = vanishing_lag(norms, threshold) if np.isfinite(norms).all() else np.nan  # NaN: diverged
            lags.append(np.inf if lag is None else lag)
        if diverged is not None and np.isfinite(diverged.get(run_id, np.nan)):
            lags[1] = np.nan  # trained into divergence: no lag to report after training
        rows.append({"run_name": run["run_name"].iloc[0], "group": run["group"].iloc[0], "at_init": lags[0],
                     "trained": lags[1], "length": int(run["t"].max()) + 1})
    table = pd.DataFrame(rows, columns=["run_name", "group", "at_init", "trained", "length"])
    return table.sort_values(["group", "run_name"], key=lambda c: c.map(group_sort_key) if c.name == "group" else c)


def vanishing_summary(table: pd.DataFrame) -> pd.DataFrame:
    """`vanishing_table` per group: the median lag over runs at initialisation and after training, as text
    (`never` when the gradient reaches the first step in most runs, `diverged` for runs whose norms are not
    finite): `group`, `runs`, `at_init`, `trained`."""
    def median_text(values: pd.Series, length: int) -> str:
        finite = values.dropna()
        diverged = f" ({len(values) - len(finite)} diverged)" if len(finite) < len(values) else ""
        return _lag_text(finite.median() if len(finite) else np.nan, length) + (diverged if len(finite) else "")

    rows = [{"group": group, "runs": len(rows), "at_init": median_text(rows["at_init"], rows["length"].max()),
             "trained": median_text(rows["trained"], rows["length"].max())}
            for group, rows in table.groupby("group", sort=False)]
    return pd.DataFrame(rows, columns=["group", "runs", "at_init", "trained"])


def vanishing_text(table: pd.DataFrame) -> pd.DataFrame:
    """`vanishing_table` as a reader sees it: lags as numbers, `never (> T-1)` and `diverged`."""
    shown = table.copy()
    for column in ("at_init", "trained"):
        shown[column] = [_lag_text(lag, length) for lag, length in zip(table[column], table["length"])]
    return shown


def _lag_text(lag: float, length: int) -> str:
    """A vanishing lag as text: the number, `never (> T-1)` (inf) or `diverged` (NaN)."""
    if np.isnan(lag):
        return "diverged"
    return f"never (> {length - 1})" if np.isinf(lag) else f"{lag:g}"


def clip_threshold(runs: pd.DataFrame) -> float | None:
    """The gradient-clipping norm shared by these runs, or None (no clipping, or several thresholds)."""
    column = "params.training.clipnorm"
    values = pd.to_numeric(runs[column], errors="coerce").dropna().unique() if column in runs else []
    return float(values[0]) if len(values) == 1 else None


def lag_overlay(curves: pd.DataFrame, suffix: str = "") -> pd.DataFrame:
    """`lag_band` means as `label`, `lag`, `value`, normalised to 1 at lag 0: curves to lay over a theory plot."""
    band = lag_band(curves)
    first = band[band["lag"] == 0].set_index("group")["mean"]
    values = band["mean"] / band["group"].map(first)
    labels = band["group"] + (f" ({suffix})" if suffix else "")
    return pd.DataFrame({"label": labels, "lag": band["lag"], "value": values}).dropna()
