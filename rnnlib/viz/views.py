"""The views a page shows and a static report repeats: settings in, figures and tables out, no Streamlit.

Compare and Gradient flow draw what `compare_view` / `gradient_view` return, and `rnnlib.viz.report` writes the
same objects into one HTML file, so an exported view is the page's view by construction. A view's settings are
the page's permalink fields (`query`), so a report says how to reopen it in a dashboard.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from rnnlib.analysis import compare, verdicts
from rnnlib.core import records
from rnnlib.viz import plots

# ---- Compare --------------------------------------------------------------------------------------------------

STATISTICS = {"best": "best", "last": "last", "at_step": "at epoch N"}


VERDICT_COLUMNS = {"n_better": "n (better)", "n_worse": "n (worse)", "difference": "difference (better − worse)",
                   "lower": "95% lower", "upper": "95% upper", "effect_size": "Hedges' g", "p": "p (Welch)",
                   "p_holm": "p (Holm)", "seeds_needed": "seeds for that width"}


def group_columns(settings: "CompareSettings") -> dict[str, str]:
    """The group summary's column headings."""
    return {"mean": f"{settings.metric} ({settings.statistic_name}) mean", "n": "runs in the mean",
            "diverged": "runs diverged", "ci": "95% CI ±"}


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """What the Compare page shows: its permalink fields after the run selection (`query` writes them)."""

    metric: str = "val_loss"
    group_by: tuple[str, ...] = ()
    band: str = "range"
    smoothing: float = 0.0
    log_y: bool = False
    show_runs: bool = False
    statistic: str = "best"
    step: int | None = None
    x_param: str = ""
    line_param: str | None = "model.label"
    interval: str = "welch"  # the verdicts' interval (`rnnlib.analysis.verdicts.METHODS`)
    width: float = 0.0  # the interval width the verdicts' seed counts aim at; 0: half the largest difference

    @property
    def statistic_name(self) -> str:
        return f"epoch {self.step}" if self.statistic == "at_step" else STATISTICS[self.statistic]


def default_x_param(params: list[str], varying: list[str]) -> str:
    """Compare's x axis until picked: truncation if it varies, else the first varying param (not the seed)."""
    candidates = [p for p in ["training.truncation", *varying] if p in varying and p != "seed"]
    return (candidates or params or [""])[0]


def default_compare_settings(runs: pd.DataFrame) -> CompareSettings:
    """The settings the Compare page opens with on `runs` (training runs)."""
    metrics = compare.metric_keys(runs)
    group_by = compare.default_group_by(runs)
    return CompareSettings(
        metric=(metrics or ["val_loss"])[0], group_by=tuple(group_by),
        band=compare.default_band(runs, group_by),
        x_param=default_x_param(compare.param_names(runs), compare.varying_params(runs)),
    )


@dataclasses.dataclass(frozen=True)
class CompareView:
    notice: str | None  # which runs diverged, or None
    curves: go.Figure
    groups: pd.DataFrame  # the group summary of the chosen metric and statistic, best first (`group_columns`)
    per_run: pd.DataFrame  # per run: name, group, status, the statistic of each summary metric, and what it used
    #                        of its machine (`compare.machine_table`: seconds, sequences/s, peak memory, GPU %, ...)
    vs_param: go.Figure
    differences: pd.DataFrame  # the params that differ between runs
    parallel: go.Figure
    verdicts: pd.DataFrame  # each pair of groups: difference, interval, effect size, Holm p, verdict (`verdicts.pairs`)

    @property
    def table(self) -> pd.DataFrame:
        """Params that differ and the per-run summary, one row per run: the page's CSV download."""
        return self.differences.merge(self.per_run, on=["run_id", "run_name"])


def history_keys(runs: pd.DataFrame, settings: CompareSettings) -> list[str]:
    """The metric histories `compare_view` reads for `settings`."""
    return compare.summary_metrics(compare.metric_keys(runs), settings.metric)


def compare_view(runs: pd.DataFrame, histories: pd.DataFrame, settings: CompareSettings) -> CompareView:
    """Everything the Compare page shows below its run selection, for `runs` (training runs) and their metric
    `histories` (at least `history_keys`)."""
    s, group_by = settings, list(settings.group_by)
    summary_metrics = history_keys(runs, s)
    diverged = compare.diverged_at(runs, histories)
    curve = compare.curves(histories, runs, s.metric, group_by, s.smoothing, diverged)
    baselines = compare.baselines(runs, s.metric)
    band_name = compare.BANDS[s.band]
    curves = plots.curves_figure(
        curve, compare.band(curve, s.band), s.metric, baselines=baselines, log_y=s.log_y, show_runs=s.show_runs,
        raw_band=compare.band(curve, s.band, "value") if s.smoothing > 0 else None, band_name=band_name,
    )
    summary = compare.summary_table(histories, runs, summary_metrics, s.statistic, s.step, group_by, diverged)
    per_run = summary.set_index("run_id")[s.metric] if s.metric in summary else pd.Series(dtype=float)
    groups = compare.group_summary(per_run, runs, group_by)
    vs_param = plots.metric_vs_param_figure(
        compare.metric_vs_param(per_run, runs, s.x_param, s.line_param, s.band), f"{s.metric} ({s.statistic_name})",
        s.x_param, s.line_param, baselines=baselines, log_y=s.log_y, band_name=band_name,
    )
    differences = compare.diff_params(runs)
    table, dimensions = compare.parallel_table(differences, summary, summary_metrics)
    return CompareView(
        notice=compare.divergence_notice(runs, diverged), curves=curves,
        groups=groups,
        per_run=summary.merge(compare.machine_table(runs), on="run_id", how="left"), vs_param=vs_param,
        differences=differences,
        parallel=plots.parallel_coordinates_figure(table, dimensions, s.metric),
        verdicts=verdicts.pairs(per_run, runs, group_by, s.interval, s.width or None),
    )


# ---- Gradient flow --------------------------------------------------------------------------------------------

GRADIENT_HISTORIES = ("grad_norm_max", "train_loss", "val_loss")  # what `gradient_view` reads
VANISHING_COLUMNS = {"at_init": "lag at initialisation", "trained": "lag after training"}
MANY_GROUPS = 6  # above this many curves, the lag chart is split into panels


@dataclasses.dataclass(frozen=True)
class GradientSettings:
    """What the Gradient flow page shows (its permalink fields)."""

    group_by: tuple[str, ...] = ()
    quantity: str = "loss_hidden"
    layer: int = 0
    epoch: float | None = None  # None: the last probe
    band: str = "range"
    panels: str = ""  # a param of group_by: one panel per value of it, or "" for one chart
    show_init: bool = True
    show_runs: bool = False
    bias_statistic: str = "cosine"  # the truncation-bias meter's statistic (`records.TRUNCATION_BIAS`)


def default_gradient_group_by(runs: pd.DataFrame) -> list[str]:
    varying = compare.varying_params(runs)
    return [p for p in ("model.label", "training.truncation", "training.clipnorm") if p in varying] or varying[:1]


def default_panels(runs: pd.DataFrame, group_by: list[str]) -> str:
    """One panel per model when more than `MANY_GROUPS` curves would share one chart and the model is one of
    several grouping params (12 overlapping curves and bands cannot be read; 3 panels of 4 can)."""
    groups = compare.group_labels(runs, group_by).nunique()
    first = next((p for p in group_by if p in ("model.label", "model.cell_type")), group_by[0] if group_by else "")
    return first if groups > MANY_GROUPS and len(group_by) > 1 else ""


@dataclasses.dataclass(frozen=True)
class GradientView:
    lag: go.Figure
    vanishing: pd.DataFrame  # per group: the median lag where the gradient vanishes, at init and trained
    per_run: pd.DataFrame
    label: str  # the quantity's name, e.g. ‖∂L_T/∂h_t‖
    norms: go.Figure | None  # the largest gradient norm of each epoch (before clipping), None when not logged
    curves: pd.DataFrame  # `compare.flow_curves`: every probe of every run
    bias: go.Figure | None = None  # the truncation-bias meter vs truncation, None for records without it


def flow_curves(flows: Mapping[str, Any], runs: pd.DataFrame, settings: GradientSettings) -> pd.DataFrame:
    return compare.flow_curves(dict(flows), runs, list(settings.group_by), settings.quantity, settings.layer)


def gradient_view(runs: pd.DataFrame, flows: Mapping[str, Any], histories: pd.DataFrame,
                  settings: GradientSettings) -> GradientView:
    """The Gradient flow page's chart and tables for `runs` with gradient-flow records `flows` and their metric
    `histories` (for divergence)."""
    s = settings
    label = records.GRADIENT_QUANTITIES[s.quantity]
    curves = flow_curves(flows, runs, s)
    now = compare.at_epoch(curves, s.epoch)
    epoch = float(now["epoch"].max()) if not now.empty else 0.0
    show_init = s.show_init and epoch > 0
    panels = compare.panel_of(runs, list(s.group_by), s.panels) if s.panels else None
    lag = plots.gradient_lag_figure(
        compare.lag_band(now, s.band), label,
        reference=compare.lag_band(compare.at_epoch(curves, 0.0), s.band) if show_init else None,
        seeds=now if s.show_runs else None, band_name=compare.BANDS[s.band], panels=panels,
    )
    diverged = compare.diverged_at(runs, histories)
    table = compare.vanishing_table(curves, diverged=diverged)
    norm_curves = compare.curves(histories, runs, "grad_norm_max", list(s.group_by), diverged=diverged)
    clip = compare.clip_threshold(runs)
    norms = None if norm_curves.empty else plots.curves_figure(
        norm_curves, compare.band(norm_curves, s.band), "grad_norm_max",
        baselines=None if clip is None else {"clipnorm": clip}, log_y=True, show_runs=s.show_runs,
        band_name=compare.BANDS[s.band],
    )
    return GradientView(lag=lag, vanishing=compare.vanishing_summary(table), per_run=compare.vanishing_text(table),
                        label=label, norms=norms, curves=curves, bias=bias_figure(runs, flows, s, show_init))


def bias_figure(runs: pd.DataFrame, flows: Mapping[str, Any], settings: GradientSettings,
                show_init: bool = True) -> go.Figure | None:
    """The truncation-bias meter's chosen statistic against the truncation, one line per model, at the chosen
    probe and (dashed) at initialisation; None when no run logged the meter."""
    s = settings
    now = compare.bias_at(dict(flows), runs, s.bias_statistic, s.epoch)
    if now.empty:
        return None
    measured = runs[runs["run_id"].isin(now.index)]
    line = compare.bias_line_param(measured)
    table = compare.metric_vs_param(now, measured, "training.truncation", line, s.band)
    reference = (compare.metric_vs_param(compare.bias_at(dict(flows), measured, s.bias_statistic, 0.0), measured,
                                         "training.truncation", line, s.band)
                 if show_init and s.epoch != 0 else None)
    return plots.truncation_bias_figure(table, s.bias_statistic, line, reference, band_name=compare.BANDS[s.band])


BIAS_CAPTION = (
    "At every probe the run's truncated gradient of all its weights is set against full BPTT's, on the probe "
    "sequences and the same weights, through the windows its updates use (for a random mode over "
    "`training.bias_samples` drawn schedules). Cosine 1 and error 0 are full BPTT. Bias is how far the mean of "
    "the sampled gradients is from the full one, less what their own noise explains; variance how far each sample "
    "is from that mean (0 for a fixed schedule): an unbiased estimator has bias near 0 however large its "
    "variance. Each scored step counts 1/N, as in the full loss. Over training: Compare's `trunc_cosine`, "
    "`trunc_error`, `trunc_bias`, `trunc_variance`.")


# ---- Settings as a link ---------------------------------------------------------------------------------------

def query(selection: Mapping[str, Any], settings: CompareSettings | GradientSettings) -> dict[str, list[str]]:
    """The permalink query (`ui.permalink` form: one key per list value) that reopens this view: the run
    `selection` (`experiment`, `sweep`, ...) then every setting."""
    fields = {**selection, **dataclasses.asdict(settings)}
    out: dict[str, list[str]] = {}
    for field, value in fields.items():
        if value is None or value == "" and field not in ("line_param", "panels"):
            continue
        if isinstance(value, bool):
            out[field] = ["1" if value else "0"]
        elif isinstance(value, (list, tuple)):
            out[field] = [str(v) for v in value] or [""]
        else:
            out[field] = [f"{value:g}" if isinstance(value, float) else str(value)]
    return out


def select_runs(all_runs: pd.DataFrame, query: Mapping[str, list[str]]) -> pd.DataFrame:
    """The training runs a permalink selects: `sweep` (a sweep run's id), `f.<param>` filters, `selected` run ids,
    as the Compare page reads them. Raises `ValueError` for a sweep or run id the experiment does not have."""
    trials = all_runs[all_runs["kind"] != "sweep"].sort_values("start_time", ascending=False)
    sweep = (query.get("sweep") or [""])[0]
    if sweep:
        if sweep not in set(all_runs.loc[all_runs["kind"] == "sweep", "run_id"]):
            raise ValueError(f"No sweep {sweep!r} in this experiment; leave `sweep` out for all its runs.")
        trials = trials[trials["parent_run_id"] == sweep]
    filters = {k.removeprefix("f."): v for k, v in query.items() if k.startswith("f.")}
    split = {name: [part for value in values for part in str(value).split(",") if part]
             for name, values in filters.items()}
    runs = compare.filter_runs(trials, split)
    selected = [v for v in query.get("selected", []) if v]
    if selected:
        unknown = sorted(set(selected) - set(runs["run_id"]))
        if unknown:
            raise ValueError(f"Run {unknown[0]!r} is not among the runs selected here.")
        runs = runs[runs["run_id"].isin(selected)]
    return runs


def _pick(query: Mapping[str, list[str]], field: str, options: list, default: Any) -> Any:
    values = query.get(field)
    if not values:
        return default
    for option in options:
        if str(option) == values[0]:
            return option
    raise ValueError(f"Unknown {field} {values[0]!r}; expected one of: {', '.join(map(str, options))}.")


def _picks(query: Mapping[str, list[str]], field: str, options: list[str], default: list[str]) -> tuple[str, ...]:
    if field not in query:
        return tuple(default)
    chosen = [p for v in query[field] for p in str(v).split(",") if p]
    for value in chosen:
        _pick({field: [value]}, field, options, None)
    return tuple(dict.fromkeys(chosen))


def _number(query: Mapping[str, list[str]], field: str, default, convert):
    values = query.get(field) or []
    try:
        return convert(values[0]) if values else default
    except ValueError:
        raise ValueError(f"{field} must be a number, not {values[0]!r}.") from None


def _flag(query: Mapping[str, list[str]], field: str, default: bool) -> bool:
    values = query.get(field)
    return str(values[0]).strip().lower() in ("1", "true", "yes", "on") if values else default


def compare_settings_from(query: Mapping[str, list[str]], runs: pd.DataFrame) -> CompareSettings:
    """The Compare settings a permalink query gives on `runs`, the page's defaults for what it leaves out.
    Raises `ValueError` naming the choices for a value that does not fit these runs."""
    default = default_compare_settings(runs)
    params = compare.param_names(runs)
    group_by = _picks(query, "group_by", params, list(default.group_by))
    band_default = compare.default_band(runs, list(group_by))
    statistic = _pick(query, "statistic", list(STATISTICS), "best")
    return CompareSettings(
        metric=_pick(query, "metric", compare.metric_keys(runs), default.metric), group_by=group_by,
        band=_pick(query, "band", list(compare.BANDS), band_default),
        smoothing=min(max(_number(query, "smoothing", 0.0, float), 0.0), 0.99),
        log_y=_flag(query, "log_y", False), show_runs=_flag(query, "show_runs", False), statistic=statistic,
        step=_number(query, "step", 1, int) if statistic == "at_step" else None,
        x_param=_pick(query, "x_param", params, default.x_param),
        line_param=_pick(query, "line_param", ["", *params], "model.label" if "model.label" in params else "") or None,
        interval=_pick(query, "interval", list(verdicts.METHODS), "welch"),
        width=max(_number(query, "width", 0.0, float), 0.0),
    )


def gradient_settings_from(query: Mapping[str, list[str]], runs: pd.DataFrame,
                           flows: Mapping[str, Any]) -> GradientSettings:
    """The Gradient flow settings a permalink query gives on `runs` with records `flows`."""
    params = compare.param_names(runs)
    group_by = _picks(query, "group_by", params, default_gradient_group_by(runs))
    quantities = [q for q in records.GRADIENT_QUANTITIES if any(q in flows[r].norms for r in runs["run_id"])]
    epoch = query.get("epoch")
    return GradientSettings(
        group_by=group_by, quantity=_pick(query, "quantity", quantities, quantities[0] if quantities else ""),
        layer=_number(query, "layer", 0, int), epoch=_number(query, "epoch", None, float) if epoch else None,
        band=_pick(query, "band", list(compare.BANDS), compare.default_band(runs, list(group_by))),
        panels=_pick(query, "panels", ["", *group_by], default_panels(runs, list(group_by))),
        show_init=_flag(query, "show_init", True), show_runs=_flag(query, "show_runs", False),
        bias_statistic=_pick(query, "bias_statistic", list(records.TRUNCATION_BIAS), "cosine"),
    )


NORMS_CAPTION = ("The largest global gradient norm of each epoch, measured before clipping. Spikes of orders of "
                 "magnitude are exploding gradients; with `clipnorm` every update is rescaled to at most the dashed "
                 "line, so a spike changes the weights no more than an ordinary step. Group by `training.clipnorm` "
                 "to see runs with and without clipping side by side.")
