"""Figures as pure functions: DataFrames in, `plotly.graph_objects.Figure` out. No Streamlit here."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative, unlabel_rgb

from rnnlib.compare import group_sort_key, natural_key

PALETTE = qualitative.D3 + qualitative.Set2
BASELINE_STYLE = {"color": "#555555", "dash": "dash", "width": 1.5}


def group_colors(groups) -> dict[str, str]:
    """A stable color per group label, in sorted order, so every chart of a page agrees."""
    ordered = sorted(set(groups), key=group_sort_key)
    return {group: PALETTE[i % len(PALETTE)] for i, group in enumerate(ordered)}


def _rgba(color: str, alpha: float) -> str:
    """`#rrggbb` or `rgb(r, g, b)` with an alpha channel."""
    r, g, b = hex_to_rgb(color) if color.startswith("#") else unlabel_rgb(color)
    return f"rgba({int(r)},{int(g)},{int(b)},{alpha})"


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool = False) -> go.Figure:
    fig.update_layout(  # no template: Streamlit themes the chart, and building one costs ~0.2 s per figure
        title=title, hovermode="x unified", height=460,
        legend={"orientation": "v", "yanchor": "top", "y": 1, "xanchor": "left", "x": 1.01},
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title, type="log" if log_y else "linear", dtick=1 if log_y else None)
    return fig


def curves_figure(curve: pd.DataFrame, band: pd.DataFrame, metric: str, baseline: float | None = None,
                  log_y: bool = False, show_runs: bool = False, raw_band: pd.DataFrame | None = None,
                  baseline_name: str = "baseline") -> go.Figure:
    """Learning curves: per group the mean (smoothed) with its confidence band over seeds.

    Args:
        curve: per-run curves (`rnnlib.compare.curves`): group, run_name, step, value, smoothed.
        band: `rnnlib.compare.confidence_band` of the smoothed values.
        raw_band: the same of the raw values; drawn as a faint shadow when smoothing is on.
        show_runs: draw every run's smoothed curve, thin, under the means.
        baseline: the task's trivial-predictor loss, a dashed line.
    """
    fig = go.Figure()
    colors = group_colors(band["group"])
    positive = band["mean"][band["mean"] > 0]
    floor = float(positive.min()) / 2 if log_y and len(positive) else None  # a log axis cannot show a band <= 0
    for group in colors:  # in natural order, so the legend reads 5, 10, 25, full
        rows = band[band["group"] == group]
        color = colors[group]
        lower = rows["lower"].clip(lower=floor) if floor else rows["lower"]
        fig.add_trace(go.Scatter(
            x=np.concatenate([rows["step"], rows["step"][::-1]]),
            y=np.concatenate([rows["upper"], lower[::-1]]),
            fill="toself", fillcolor=_rgba(color, 0.18), line={"width": 0}, hoverinfo="skip",
            legendgroup=group, showlegend=False, name=f"{group} 95% CI",
        ))
        if show_runs:
            runs = curve[curve["group"] == group]
            xs, ys = [], []
            for _, run in runs.groupby("run_id", sort=False):
                xs += [*run["step"], None]
                ys += [*run["smoothed"], None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": _rgba(color, 0.45), "width": 1},
                                     legendgroup=group, showlegend=False, hoverinfo="skip", name=f"{group} runs"))
        if raw_band is not None:
            raw = raw_band[raw_band["group"] == group]
            fig.add_trace(go.Scatter(x=raw["step"], y=raw["mean"], mode="lines", hoverinfo="skip",
                                     line={"color": _rgba(color, 0.3), "width": 1}, legendgroup=group,
                                     showlegend=False, name=f"{group} raw"))
        runs_in_group = int(rows["n"].max())
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["mean"], mode="lines", line={"color": color, "width": 2.5},
                                 legendgroup=group, name=f"{group} (n={runs_in_group})"))
    if baseline is not None and np.isfinite(baseline):
        fig.add_hline(y=baseline, line=BASELINE_STYLE, annotation_text=f"{baseline_name} = {baseline:.4g}",
                      annotation_position="top right")
    return _layout(fig, f"{metric}: mean over seeds with 95% confidence band", "epoch", metric, log_y)


def metric_vs_param_figure(table: pd.DataFrame, metric: str, x_param: str, line_param: str | None,
                           baseline: float | None = None, log_y: bool = False) -> go.Figure:
    """A per-run statistic against a hyperparameter (`rnnlib.compare.metric_vs_param`): one line per value
    of `line_param`, error bars = 95% confidence interval over seeds."""
    fig = go.Figure()
    colors = group_colors(table["line"])
    for line in colors:
        rows = table[table["line"] == line].sort_values("x_order")
        fig.add_trace(go.Scatter(
            x=rows["x"], y=rows["mean"], mode="lines+markers", name=f"{line_param or ''}={line}" if line_param
            else line, line={"color": colors[line], "width": 2.5}, marker={"size": 9},
            error_y={"type": "data", "array": rows["ci"], "visible": True, "thickness": 1.5},
            customdata=rows["n"], hovertemplate="%{x}: %{y:.4g} (n=%{customdata})<extra></extra>",
        ))
    order = table.sort_values("x_order")["x"].drop_duplicates().tolist()
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    if baseline is not None and np.isfinite(baseline):
        fig.add_hline(y=baseline, line=BASELINE_STYLE, annotation_text=f"baseline = {baseline:.4g}",
                      annotation_position="top right")
    return _layout(fig, f"{metric} vs {x_param}", x_param, metric, log_y)


def parallel_coordinates_figure(table: pd.DataFrame, dimensions: list[str], color_by: str) -> go.Figure:
    """Parallel coordinates over params and summary metrics; text columns become categorical axes."""
    dims = []
    for name in dimensions:
        column = table[name]
        numeric = pd.to_numeric(column, errors="coerce")
        if numeric.notna().all():
            dims.append({"label": name, "values": numeric})
        else:
            categories = sorted(column.fillna("–").astype(str).unique(), key=natural_key)
            codes = column.fillna("–").astype(str).map({c: i for i, c in enumerate(categories)})
            dims.append({"label": name, "values": codes, "tickvals": list(range(len(categories))),
                         "ticktext": categories})
    color = pd.to_numeric(table[color_by], errors="coerce")
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line={"color": color, "colorscale": "Viridis_r", "showscale": True, "colorbar": {"title": color_by}},
    ))
    fig.update_layout(title="Parallel coordinates: params and summary metrics", height=460,
                      margin={"l": 80, "r": 60, "t": 80, "b": 40})
    return fig
