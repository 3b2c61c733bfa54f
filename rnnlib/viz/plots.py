"""Figures as pure functions: DataFrames in, `plotly.graph_objects.Figure` out. No Streamlit here."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from rnnlib.analysis.compare import FLOAT32_FLOOR, group_runs, group_sort_key, natural_key, value_label
from rnnlib.core import records
from rnnlib.viz.colors import PALETTE, rgba

BASELINE_STYLE = {"color": "#555555", "dash": "dash", "width": 1.5}


def group_colors(groups) -> dict[str, str]:
    """A stable color per group label, in sorted order, so every chart of a page agrees."""
    ordered = sorted(set(groups), key=group_sort_key)
    return {group: PALETTE[i % len(PALETTE)] for i, group in enumerate(ordered)}



def _run_lines(runs: pd.DataFrame, x: str, y: str, group: str, color: str) -> go.Scatter:
    """Every run of a group as one thin trace (runs separated by gaps), drawn under the group's mean."""
    xs, ys = [], []
    for _, run in runs.groupby("run_id", sort=False):
        xs += [*run[x], None]
        ys += [*run[y], None]
    return go.Scatter(x=xs, y=ys, mode="lines", line={"color": color, "width": 1}, legendgroup=group,
                      showlegend=False, hoverinfo="skip", name=f"{group} runs")


# A log axis ticks every decade up to this many decades; beyond, plotly spaces the ticks (one per decade over
# 1e-3 .. 1e40 would pile 43 labels on top of each other).
MAX_DECADE_TICKS = 12


def plain(text: Any) -> Any:
    """`text` as plotly shows it literally: plotly reads `<a href>`, `<b>`, `<br>` ... in names, categories and
    text as markup (a run named `<a href=...>` would be a link in every visitor's chart), entities it turns back
    into the characters. Non-text values pass through."""
    if not isinstance(text, str):
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain_labels(fig: go.Figure) -> go.Figure:
    """Every label that comes from the data (trace names, category values, texts, parallel-coordinate labels and
    ticks) made `plain`; the figure's own titles and templates keep their markup."""
    for trace in fig.data:
        for field in ("name", "x", "y", "text", "labels"):
            value = getattr(trace, field, None) if field in trace else None
            if isinstance(value, str):
                trace[field] = plain(value)
            elif isinstance(value, np.ndarray) and value.dtype.kind not in "OUS":
                continue  # numbers
            elif value is not None and len(value) and any(isinstance(v, str) for v in value):
                trace[field] = [plain(v) for v in value]
        for dimension in getattr(trace, "dimensions", None) or ():
            dimension.label = plain(dimension.label)
            if dimension.ticktext is not None:
                dimension.ticktext = [plain(v) for v in dimension.ticktext]
    for axis in (fig.layout.xaxis, fig.layout.yaxis):
        if axis.categoryarray is not None:
            axis.categoryarray = [plain(v) for v in axis.categoryarray]
        if axis.ticktext is not None:
            axis.ticktext = [plain(v) for v in axis.ticktext]
    return fig


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, log_y: bool = False) -> go.Figure:
    plain_labels(fig)
    fig.update_layout(  # no template: Streamlit themes the chart, and building one costs ~0.2 s per figure
        title=title, hovermode="x unified", height=460,
        legend={"orientation": "v", "yanchor": "top", "y": 1, "xanchor": "left", "x": 1.01},
        margin={"l": 60, "r": 20, "t": 60, "b": 50},
    )
    fig.update_xaxes(title=x_title)
    fig.update_yaxes(title=y_title, type="log" if log_y else "linear",
                     dtick=1 if log_y and _decades(fig) <= MAX_DECADE_TICKS else None)
    return fig


def _decades(fig: go.Figure) -> float:
    """How many decades the positive, finite y values of the figure's traces span."""
    arrays = [np.asarray(trace.y, dtype=float) for trace in fig.data if getattr(trace, "y", None) is not None]
    values = np.concatenate(arrays) if arrays else np.array([])
    positive = values[np.isfinite(values) & (values > 0)]
    return float(np.log10(positive.max() / positive.min())) if len(positive) else 0.0


def legend_name(group: str, runs: int, diverged: int = 0) -> str:
    """`lstm · 5 (n=3)`, or `rnn · full (n=3, 1 diverged)`: how many runs a group holds and how many of them
    diverged (those are left out of its mean: `rnnlib.core.divergence`)."""
    return f"{group} (n={runs}, {diverged} diverged)" if diverged else f"{group} (n={runs})"


def curves_figure(curve: pd.DataFrame, band: pd.DataFrame, metric: str, baselines: dict[str, float] | None = None,
                  log_y: bool = False, show_runs: bool = False, raw_band: pd.DataFrame | None = None,
                  band_name: str = "95% confidence band") -> go.Figure:
    """Learning curves: per group the mean (smoothed) with a band over its runs. The y axis fits the curves, the
    runs when shown and the baselines, never the band: a wide band runs off the chart instead of flattening it.

    Args:
        curve: per-run curves (`rnnlib.analysis.compare.curves`): group, run_name, step, value, smoothed.
        band: `rnnlib.analysis.compare.band` of the smoothed values; `band_name` says which (its `BANDS` text).
        raw_band: the same of the raw values; drawn as a faint shadow when smoothing is on.
        show_runs: draw every run's smoothed curve, thin, under the means.
        baselines: dashed reference lines by label (`rnnlib.analysis.compare.baselines`: the trivial predictors).
    """
    fig = go.Figure()
    colors = group_colors(band["group"])
    counts = compare_group_runs(curve)
    positive = band["mean"][band["mean"] > 0]
    floor = float(positive.min()) / 2 if log_y and len(positive) else None  # a log axis cannot show a band <= 0
    for group in colors:  # in natural order, so the legend reads 5, 10, 25, full
        rows = band[band["group"] == group]
        color = colors[group]
        lower = rows["lower"].clip(lower=floor) if floor else rows["lower"]
        fig.add_trace(go.Scatter(
            x=np.concatenate([rows["step"], rows["step"][::-1]]),
            y=np.concatenate([rows["upper"], lower[::-1]]),
            fill="toself", mode="lines", fillcolor=rgba(color, 0.18), line={"width": 0}, hoverinfo="skip",
            legendgroup=group, showlegend=False, name=f"{group} {band_name}",
        ))
        if show_runs:
            fig.add_trace(_run_lines(curve[curve["group"] == group], "step", "smoothed", group, rgba(color, 0.45)))
        if raw_band is not None:
            raw = raw_band[raw_band["group"] == group]
            fig.add_trace(go.Scatter(x=raw["step"], y=raw["mean"], mode="lines", hoverinfo="skip",
                                     line={"color": rgba(color, 0.3), "width": 1}, legendgroup=group,
                                     showlegend=False, name=f"{group} raw"))
        runs, diverged = counts.get(group, (int(rows["n"].max()), 0))
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["mean"], mode="lines", line={"color": color, "width": 2.5},
                                 legendgroup=group, name=legend_name(group, runs, diverged)))
    _baseline_lines(fig, baselines)
    shown = [band["mean"], *([curve["smoothed"]] if show_runs else []), pd.Series(list((baselines or {}).values()))]
    _layout(fig, f"{metric}: mean over runs, {band_name}", "epoch", metric, log_y)
    fig.update_yaxes(range=fitted_range(np.concatenate([np.asarray(v, float) for v in shown]), log_y))
    return fig


def fitted_range(values: np.ndarray, log_y: bool = False, pad: float = 0.06) -> list[float] | None:
    """A y range around the finite `values` (log10 units on a log axis, positive values only), padded by `pad`
    of its span; None (plotly's own) when there is nothing to fit."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values) & ((values > 0) if log_y else True)]
    if not len(values):
        return None
    low, high = (np.log10(values.min()), np.log10(values.max())) if log_y else (values.min(), values.max())
    span = high - low or (0.5 if log_y else max(abs(high), 1e-12) * 0.1)
    return [float(low - pad * span), float(high + pad * span)]


def compare_group_runs(curve: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """{group: (runs, diverged)} of a `rnnlib.analysis.compare.curves` frame."""
    if "diverged_at" not in curve:
        return {}
    table = group_runs(curve)
    return {row.group: (int(row.runs), int(row.diverged)) for row in table.itertuples()}


def _baseline_lines(fig: go.Figure, baselines: dict[str, float] | None) -> None:
    """Dashed horizontal lines, labelled `name = value`, alternating sides so two close lines stay readable."""
    for index, (name, value) in enumerate((baselines or {}).items()):
        if np.isfinite(value):
            fig.add_hline(y=value, line=BASELINE_STYLE, annotation_text=f"{name} = {value:.4g}",
                          annotation_position="top right" if index % 2 == 0 else "bottom right")


def metric_vs_param_figure(table: pd.DataFrame, metric: str, x_param: str, line_param: str | None,
                           baselines: dict[str, float] | None = None, log_y: bool = False,
                           band_name: str | None = None) -> go.Figure:
    """A per-run statistic against a hyperparameter (`rnnlib.analysis.compare.metric_vs_param`): one line per value
    of `line_param`, error bars = the table's band (`lower` .. `upper`, the band chosen for the curves)."""
    fig = go.Figure()
    colors = group_colors(table["line"])
    for line in colors:
        rows = table[table["line"] == line].sort_values("x_order")
        fig.add_trace(go.Scatter(
            x=rows["x"], y=rows["mean"], mode="lines+markers",
            name=value_label(line_param, line) if line_param else line,
            line={"color": colors[line], "width": 2.5}, marker={"size": 9},
            error_y={"type": "data", "array": rows["upper"] - rows["mean"], "arrayminus": rows["mean"] - rows["lower"],
                     "symmetric": False, "visible": True, "thickness": 1.5},
            customdata=np.stack([rows["n"], rows["diverged"]], axis=-1),
            hovertemplate="%{x}: %{y:.4g} (n=%{customdata[0]}, %{customdata[1]} diverged)<extra></extra>",
        ))
    order = table.sort_values("x_order")["x"].drop_duplicates().tolist()
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order)
    _baseline_lines(fig, baselines)
    title = f"{metric} vs {x_param}" + (f" (bars: {band_name})" if band_name else "")
    return _layout(fig, title, x_param, metric, log_y)


def truncation_bias_figure(table: pd.DataFrame, statistic: str, line_param: str | None,
                           reference: pd.DataFrame | None = None, band_name: str | None = None) -> go.Figure:
    """The truncation-bias meter against the truncation (`metric_vs_param` tables of one meter statistic): one
    line per model at the chosen probe, the same at initialisation dashed (`reference`), and full BPTT's value
    (cosine 1, every error 0) as a dotted line."""
    label = records.TRUNCATION_BIAS[statistic]
    fig = metric_vs_param_figure(table, label, "training.truncation", line_param, band_name=band_name)
    if reference is not None and not reference.empty:
        colors = group_colors(table["line"])
        for line, rows in reference.groupby("line", sort=False):
            rows = rows.sort_values("x_order")
            fig.add_trace(go.Scatter(
                x=rows["x"], y=rows["mean"], mode="lines+markers",
                name=f"{value_label(line_param, line) if line_param else line} at initialisation",
                line={"color": colors.get(line, "#888888"), "width": 1.5, "dash": "dash"}, marker={"size": 6},
                hovertemplate="%{x}: %{y:.4g} at initialisation<extra></extra>",
            ))
    fig.add_hline(y=1.0 if statistic == "cosine" else 0.0, line={"dash": "dot", "color": "#555555"},
                  annotation_text="full BPTT", annotation_position="bottom right")
    fig = _layout(fig, f"{label} vs truncation" + (f" (bars: {band_name})" if band_name else ""),
                  "training.truncation", label)
    fig.update_layout(hovermode="closest")
    return fig


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


def gradient_lag_figure(band: pd.DataFrame, quantity: str, reference: pd.DataFrame | None = None,
                        reference_name: str = "at initialisation", seeds: pd.DataFrame | None = None,
                        band_name: str = "95% confidence band (Student t)",
                        panels: dict[str, tuple[str, str]] | None = None) -> go.Figure:
    """Gradient norm vs lag T - t on a log axis, one curve per group (`rnnlib.analysis.compare.lag_band`).

    Args:
        reference: the same groups at another moment (e.g. initialisation), drawn dashed.
        seeds: per-run curves (`rnnlib.analysis.compare.flow_curves` rows of one probe), thin lines under the means.
        band_name: what the band around each curve is (`rnnlib.analysis.compare.BANDS`).
        panels: group -> (panel, label within the panel) (`rnnlib.analysis.compare.panel_of`): one panel per
            value side by side, sharing the y axis, a color per label within the panels.
    """
    from plotly.subplots import make_subplots

    groups = sorted(set(band["group"]), key=group_sort_key)
    place = panels or {}
    panel_names = sorted({place.get(g, ("", g))[0] for g in groups}, key=group_sort_key)
    labels = {g: place.get(g, ("", g))[1] for g in groups}
    colors = group_colors(labels.values())
    band = band if "diverged" in band else band.assign(diverged=0)
    runs_in = {g: int((band[band["group"] == g]["n"] + band[band["group"] == g]["diverged"]).max()) for g in groups}
    if panels:
        titles = []
        for name in panel_names:
            counts = sorted({runs_in[g] for g in groups if place[g][0] == name})
            runs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
            titles.append(plain(f"{name} (n={runs})"))
        fig = make_subplots(rows=1, cols=len(panel_names), shared_yaxes=True, horizontal_spacing=0.03,
                            subplot_titles=titles)
    else:
        fig = go.Figure()
    legend_shown = set()
    for group in groups:
        rows = band[band["group"] == group]
        diverged = rows["diverged"]
        label, color = labels[group], colors[labels[group]]
        where = {"row": 1, "col": panel_names.index(place[group][0]) + 1} if panels else {}
        fig.add_trace(go.Scatter(
            x=np.concatenate([rows["lag"], rows["lag"][::-1]]), y=np.concatenate([rows["upper"], rows["lower"][::-1]]),
            fill="toself", mode="lines", fillcolor=rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
            legendgroup=label, showlegend=False, name=f"{group} {band_name}",
        ), **where)
        if seeds is not None:
            runs = seeds[(seeds["group"] == group) & (seeds["value"] > 0)]
            fig.add_trace(_run_lines(runs, "lag", "value", label, rgba(color, 0.4)), **where)
        if reference is not None:
            before = reference[reference["group"] == group]
            fig.add_trace(go.Scatter(x=before["lag"], y=before["mean"], mode="lines", legendgroup=label,
                                     line={"color": color, "width": 1.5, "dash": "dash"},
                                     name=f"{label} {reference_name}", showlegend=label not in legend_shown),
                          **where)
        name = label if panels else legend_name(group, runs_in[group], int(diverged.max()))
        fig.add_trace(go.Scatter(x=rows["lag"], y=rows["mean"], mode="lines", line={"color": color, "width": 2.5},
                                 legendgroup=label, name=name, showlegend=label not in legend_shown,
                                 hovertemplate=f"{plain(group)}<br>lag %{{x}}: %{{y:.3g}}<extra></extra>"), **where)
        legend_shown.add(label)
    title = f"{quantity} vs lag T − t (geometric mean over runs; band: {band_name})"
    fig = _layout(fig, title, "lag T − t (steps back)", quantity, log_y=True)
    if panels:
        fig.update_yaxes(title=None, col=2)
        for col in range(3, len(panel_names) + 1):
            fig.update_yaxes(title=None, col=col)
    # Fit the axis to the means, not the bands: with few seeds a Student-t band in log space can span dozens of
    # decades and would flatten every curve.
    means = pd.concat([band["mean"], reference["mean"] if reference is not None else pd.Series(dtype=float)])
    means = np.log10(means[(means > 0) & np.isfinite(means)])
    if len(means):
        low, high = float(means.min()) - 0.5, float(means.max()) + 0.5
        fig.update_yaxes(range=[low, high], dtick=1 if high - low <= 12 else None)
    fig.update_layout(hovermode="closest")
    return fig


def gradient_heatmap_figure(run: pd.DataFrame, quantity: str) -> go.Figure:
    """One run's gradient norms over training: one row per probe (its epoch), timestep t across, colour = log10
    norm. The rows are equally tall however many epochs lie between probes (`probe_every: auto` at 50 batches
    per epoch probes after 0, 10, 20, ... epochs and the last one; `epoch` after each), labelled with their epoch.

    Steps before the truncation's reach (no gradient at all) are left blank, and the reach at each
    probe is drawn as a line, so TBPTT(k) shows as an empty band left of T - k. Norms that underflowed float32
    show at its floor (1e-45).
    """
    reached = run.assign(value=run["value"].clip(lower=FLOAT32_FLOOR)
                         .where(run["t"] >= run["reach"]))  # underflow: the floor; truncated: blank
    table = reached.pivot_table(index="epoch", columns="t", values="value", aggfunc="first", dropna=False)
    table = table.sort_index().reindex(columns=sorted(run["t"].unique()))
    rows = {epoch: "init" if epoch == 0 else f"{epoch:g}" for epoch in table.index}
    logs = np.log10(table)
    fig = go.Figure(go.Heatmap(
        x=table.columns, y=[rows[e] for e in table.index], z=logs.to_numpy(), colorscale="Viridis",
        colorbar={"title": "log10 norm"}, hovertemplate="t=%{x}, epoch %{y}: 10^%{z:.2f}<extra></extra>",
        name=quantity,
    ))
    starts = run.drop_duplicates("epoch").sort_values("epoch")
    if (starts["reach"] > 0).any():
        fig.add_trace(go.Scatter(x=starts["reach"] - 0.5, y=starts["epoch"].map(rows), mode="lines+markers",
                                 line={"color": "#d62728", "width": 2}, marker={"size": 5},
                                 name="truncation reach: no gradient to the left"))
    fig = _layout(fig, f"{quantity} over training (blank: no gradient)", "timestep t", "epoch of the probe")
    fig.update_layout(hovermode="closest", legend={"orientation": "h", "y": -0.2, "x": 0, "xanchor": "left"})
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=list(rows.values()))
    return fig


# Inputs with more features than this are drawn as a heatmap rather than one line each.
MAX_INPUT_LINES = 4


def gates_figure(tidy: pd.DataFrame, inputs: pd.DataFrame, quantities: list[str], title: str) -> go.Figure:
    """The input sequence on top, then one units x time heatmap per quantity (gates, candidate, c, h), all on
    the same time axis (LSTMVis / Karpathy style).

    Args:
        tidy: one layer of `rnnlib.analysis.probes.tidy_traces`: quantity, t, unit, value.
        inputs: the sequence as `Task.to_table` gives it: a row per step, a column per feature (lines for up to
            `MAX_INPUT_LINES` features, a grey heatmap beyond).
    """
    from plotly.subplots import make_subplots

    rows = 1 + len(quantities)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.025,
                        row_heights=[0.6] + [1.0] * len(quantities),
                        subplot_titles=["input", *[q.replace("_", " ") for q in quantities]])
    numeric = all(pd.api.types.is_numeric_dtype(inputs[column]) for column in inputs.columns)
    if not numeric:  # symbols (e.g. characters): written out along the time axis
        column = inputs.columns[0]
        text = inputs[column].astype(str).str.replace("\n", "⏎").str.replace(" ", "␣")
        fig.add_trace(go.Scatter(x=inputs.index, y=np.zeros(len(inputs)), mode="text", text=text,
                                 name=f"input: {column}", textfont={"size": 13}), row=1, col=1)
        fig.update_yaxes(visible=False, row=1, col=1)
    elif len(inputs.columns) <= MAX_INPUT_LINES:
        for index, column in enumerate(inputs.columns):
            fig.add_trace(go.Scatter(x=inputs.index, y=inputs[column], mode="lines", name=f"input: {column}",
                                     line={"color": PALETTE[index % len(PALETTE)], "width": 1.5}), row=1, col=1)
    else:  # many features (e.g. a row of pixels per step): one more heatmap, features x time
        fig.add_trace(go.Heatmap(x=inputs.index, y=list(inputs.columns), z=inputs.to_numpy().T, name="input",
                                 colorscale="Greys", showscale=False,
                                 hovertemplate="t=%{x}, %{y}: %{z:.3f}<extra>input</extra>"), row=1, col=1)
    for row, quantity in enumerate(quantities, start=2):
        table = tidy[tidy["quantity"] == quantity].pivot(index="unit", columns="t", values="value")
        gate = quantity.endswith("_gate")
        fig.add_trace(go.Heatmap(
            x=table.columns, y=table.index, z=table.to_numpy(), name=quantity, coloraxis="coloraxis2" if gate
            else "coloraxis", hovertemplate=f"{quantity}<br>t=%{{x}}, unit %{{y}}: %{{z:.3f}}<extra></extra>",
        ), row=row, col=1)
        fig.update_yaxes(title="unit", row=row, col=1)
    fig.update_layout(
        title=title, height=170 + 150 * rows, margin={"l": 60, "r": 20, "t": 70, "b": 40}, hovermode="closest",
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
        coloraxis={"colorscale": "RdBu_r", "cmid": 0, "colorbar": {"title": "state", "x": 1.0, "len": 0.45,
                                                                   "y": 0.25}},
        coloraxis2={"colorscale": "Viridis", "cmin": 0, "cmax": 1,
                    "colorbar": {"title": "gate", "x": 1.07, "len": 0.45, "y": 0.25}},
    )
    fig.update_xaxes(title="timestep t", row=rows, col=1)
    return fig


def unit_lines_figure(tidy: pd.DataFrame, units: list[int], quantities: list[str]) -> go.Figure:
    """Selected units over time, one panel per quantity, one colour per unit."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(quantities), cols=1, shared_xaxes=True, vertical_spacing=0.04,
                        subplot_titles=[q.replace("_", " ") for q in quantities])
    for row, quantity in enumerate(quantities, start=1):
        for index, unit in enumerate(units):
            rows = tidy[(tidy["quantity"] == quantity) & (tidy["unit"] == unit)]
            fig.add_trace(go.Scatter(x=rows["t"], y=rows["value"], mode="lines", name=f"unit {unit}",
                                     legendgroup=str(unit), showlegend=row == 1,
                                     line={"color": PALETTE[index % len(PALETTE)], "width": 2}), row=row, col=1)
    fig.update_layout(title="Selected units", height=120 + 170 * len(quantities), hovermode="x unified",
                      margin={"l": 60, "r": 20, "t": 70, "b": 40})
    fig.update_xaxes(title="timestep t", row=len(quantities), col=1)
    return fig


def saturation_figure(saturation: pd.DataFrame) -> go.Figure:
    """Per gate and unit, the share of steps spent nearly closed (< 0.1) and nearly open (> 0.9)
    (`rnnlib.analysis.probes.gate_saturation`), as stacked bars."""
    fig = go.Figure()
    labels = saturation["gate"].str.replace("_", " ") + " · unit " + saturation["unit"].astype(str)
    for column, name, color in (("closed", "closed (< 0.1)", "#1f77b4"), ("open", "open (> 0.9)", "#ff7f0e")):
        fig.add_trace(go.Bar(x=labels, y=saturation[column], name=name, marker_color=color))
    fig.update_layout(barmode="stack", title="Gate saturation: share of steps nearly closed or nearly open",
                      height=380, margin={"l": 60, "r": 20, "t": 60, "b": 80}, yaxis={"range": [0, 1]},
                      legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"})
    fig.update_xaxes(tickangle=-45, showticklabels=len(labels) <= 96)
    return fig


# ---- Predictions

TRUTH_STYLE = {"color": "#222222", "width": 2}
TRIVIAL_DASHES = ("dot", "dashdot", "longdash")


def forecast_figure(history: pd.DataFrame, paths: pd.DataFrame, title: str, y_title: str) -> go.Figure:
    """Forecasts from one origin against what happened.

    Args:
        history: the truth around the origin, columns time, value (the window read, then the horizon).
        paths: the forecasts, columns predictor, time, value; predictors named like a trivial forecast
            (persistence, seasonal naive ...) are drawn grey and dotted, the others (runs) in color.
    """
    fig = go.Figure(go.Scatter(x=history["time"], y=history["value"], mode="lines+markers", name="truth",
                               line=TRUTH_STYLE, marker={"size": 4}))
    trivial = [p for p in paths["predictor"].unique() if _is_trivial(p)]
    models = [p for p in paths["predictor"].unique() if not _is_trivial(p)]
    colors = group_colors(models)
    for predictor in models:
        rows = paths[paths["predictor"] == predictor]
        fig.add_trace(go.Scatter(x=rows["time"], y=rows["value"], mode="lines+markers", name=predictor,
                                 line={"color": colors[predictor], "width": 2}, marker={"size": 6}))
    for index, predictor in enumerate(trivial):
        rows = paths[paths["predictor"] == predictor]
        fig.add_trace(go.Scatter(x=rows["time"], y=rows["value"], mode="lines+markers", name=predictor,
                                 marker={"size": 6, "symbol": "x"},
                                 line={"color": "#777777", "dash": TRIVIAL_DASHES[index % 3], "width": 1.5}))
    return _layout(fig, title, "time", y_title)


def _is_trivial(predictor: str) -> bool:
    return predictor.startswith(("persistence", "seasonal naive"))


def horizon_error_figure(errors: pd.DataFrame, y_title: str) -> go.Figure:
    """MAE by horizon step k: one line per predictor (`rnnlib.analysis.predictions.horizon_errors`, runs labelled)."""
    fig = go.Figure()
    models = [p for p in errors["predictor"].unique() if not _is_trivial(p)]
    colors = group_colors(models)
    for index, (predictor, rows) in enumerate(errors.groupby("predictor", sort=False)):
        trivial = _is_trivial(predictor)
        line = ({"color": "#777777", "dash": TRIVIAL_DASHES[index % 3], "width": 1.5} if trivial
                else {"color": colors[predictor], "width": 2.5})
        fig.add_trace(go.Scatter(x=rows["k"], y=rows["mae"], mode="lines+markers", name=predictor, line=line))
    fig.update_xaxes(dtick=1 if errors["k"].max() <= 12 else None)
    return _layout(fig, "Error of the direct forecast by horizon step", "steps ahead (k)", y_title)


def rollout_error_figure(errors: pd.DataFrame, y_title: str, trivial: pd.DataFrame | None = None) -> go.Figure:
    """MAE of k-step-ahead predictions (the model fed its own forecasts) against k: the mean per group, every
    run thin underneath (`rnnlib.analysis.predictions.rollout_errors`), the trivial forecasts grey and dashed
    (`rnnlib.analysis.predictions.trivial_rollout_errors`)."""
    fig = go.Figure()
    colors = group_colors(errors["group"])
    for group in colors:
        rows = errors[errors["group"] == group]
        mean = rows.groupby("k", as_index=False)["mae"].mean()
        if rows["run_id"].nunique() > 1:
            fig.add_trace(_run_lines(rows, "k", "mae", group, rgba(colors[group], 0.4)))
        fig.add_trace(go.Scatter(x=mean["k"], y=mean["mae"], mode="lines", legendgroup=group,
                                 name=f"{group} (n={rows['run_id'].nunique()})",
                                 line={"color": colors[group], "width": 2.5}))
    for index, (predictor, rows) in enumerate(() if trivial is None else trivial.groupby("predictor", sort=False)):
        fig.add_trace(go.Scatter(x=rows["k"], y=rows["mae"], mode="lines", name=predictor,
                                 line={"color": "#777777", "dash": TRIVIAL_DASHES[index % 3], "width": 1.5}))
    ticks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= errors["k"].max()]
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[str(k) for k in ticks])
    return _layout(fig, "k-step-ahead error: each model fed its own predictions", "steps ahead (k, log scale)",
                   y_title)


def kstep_figure(truth: pd.DataFrame, predictions: pd.DataFrame, title: str, y_title: str) -> go.Figure:
    """d2l's figure: the truth, and for each k the predictions of every step made k steps before it."""
    fig = go.Figure(go.Scatter(x=truth["time"], y=truth["value"], mode="lines", name="truth", line=TRUTH_STYLE))
    colors = group_colors(predictions["k"].astype(str))
    for k, rows in predictions.groupby("k"):
        fig.add_trace(go.Scatter(x=rows["time"], y=rows["value"], mode="lines", name=f"{k}-step",
                                 line={"color": colors[str(k)], "width": 1.5}))
    return _layout(fig, title, "time", y_title)


def confusion_figure(matrix: np.ndarray, labels: list[str], title: str) -> go.Figure:
    """Counts of true (rows) vs predicted (columns) classes; the diagonal is right."""
    fig = go.Figure(go.Heatmap(z=matrix, x=labels, y=labels, colorscale="Blues", text=matrix, texttemplate="%{text}",
                               hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>", showscale=False))
    fig.update_yaxes(autorange="reversed", type="category", title="true class")
    fig.update_xaxes(type="category", title="predicted class")
    fig.update_layout(title=title, height=440, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def sequence_prediction_figure(frame: pd.DataFrame, title: str) -> go.Figure:
    """One validation sequence: columns step, series (target, and one per run), value."""
    fig = go.Figure()
    runs = [s for s in frame["series"].unique() if s != "target"]
    colors = group_colors(runs)
    for series, rows in frame.groupby("series", sort=False):
        line = TRUTH_STYLE if series == "target" else {"color": colors[series], "width": 1.5}
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["value"], mode="lines", name=series, line=line))
    return _layout(fig, title, "step", "value")


def generated_figure(frame: pd.DataFrame, titles: dict[int, str], columns: int = 3) -> go.Figure:
    """Sequences generated from one vector each, a panel per vector, against their targets.

    Args:
        frame: columns sequence, step, series ("target", or a run's label), value.
        titles: each sequence's panel title (e.g. the vector it was generated from).
    """
    from plotly.subplots import make_subplots

    sequences = list(titles)
    rows = -(-len(sequences) // columns)
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=[titles[s] for s in sequences], shared_xaxes=True,
                        vertical_spacing=0.12, horizontal_spacing=0.05)
    runs = [s for s in frame["series"].unique() if s != "target"]
    colors = group_colors(runs)
    for index, sequence in enumerate(sequences):
        panel = frame[frame["sequence"] == sequence]
        for series, points in panel.groupby("series", sort=False):
            line = TRUTH_STYLE if series == "target" else {"color": colors[series], "width": 1.5}
            fig.add_trace(go.Scatter(x=points["step"], y=points["value"], mode="lines", name=series, line=line,
                                     legendgroup=series, showlegend=index == 0),
                          row=index // columns + 1, col=index % columns + 1)
    fig.update_layout(height=260 * rows + 60, margin={"l": 40, "r": 20, "t": 60, "b": 40},
                      legend={"orientation": "h", "y": -0.08})
    fig.update_annotations(font_size=12)
    return fig


def decoder_figure(probabilities: np.ndarray, alphabet: str, decoded: Sequence[str], title: str) -> go.Figure:
    """What a decoder believed at each step: probabilities `[steps, alphabet]` as a heatmap, a column per step
    (labelled with the character it chose), a row per character it gave at least 1% somewhere."""
    probabilities = np.asarray(probabilities, np.float64)
    shown = [i for i in range(probabilities.shape[1]) if probabilities[:, i].max() >= 0.01]
    steps = [f"{step + 1}: {char}" for step, char in enumerate(decoded)]
    fig = go.Figure(go.Heatmap(z=probabilities[:, shown].T, x=steps, y=[repr(alphabet[i])[1:-1] for i in shown],
                               colorscale="Blues", zmin=0.0, zmax=1.0, colorbar={"title": "p"},
                               hovertemplate="step %{x}, character %{y}: p = %{z:.3f}<extra></extra>"))
    fig.update_yaxes(type="category", title="character", autorange="reversed")
    fig.update_xaxes(type="category", title="decoding step: the character chosen")
    fig.update_layout(title=title, height=max(300, 18 * len(shown) + 120), margin={"l": 60, "r": 20, "t": 50, "b": 60})
    return fig


def state_trajectory_figure(path: pd.DataFrame, explained: np.ndarray, marked: Sequence[int], title: str,
                            state: str = "h", reference: pd.DataFrame | None = None) -> go.Figure:
    """A state path in the plane of its first two principal components (`rnnlib.analysis.probes.state_trajectory`),
    colored by time, the steps in `marked` starred and numbered; `reference` (e.g. the same sequence at
    initialisation) drawn faint."""
    fig = go.Figure()
    if reference is not None:
        fig.add_trace(go.Scatter(x=reference["pc1"], y=reference["pc2"], mode="lines", name="at initialisation",
                                 line={"color": "#bbbbbb", "width": 1.5, "dash": "dot"}))
    fig.add_trace(go.Scatter(
        x=path["pc1"], y=path["pc2"], mode="lines+markers", name=f"state {state}_t",
        line={"color": "#999999", "width": 1},
        marker={"color": path["t"], "colorscale": "Viridis", "size": 6, "showscale": True,
                "colorbar": {"title": "t"}},
        hovertemplate="t=%{marker.color}: (%{x:.3f}, %{y:.3f})<extra></extra>",
    ))
    stars = path[path["t"].isin(list(marked))]
    if len(stars):
        fig.add_trace(go.Scatter(x=stars["pc1"], y=stars["pc2"], mode="markers+text", name="marked steps",
                                 text=[f"t={t}" for t in stars["t"]], textposition="top center",
                                 marker={"symbol": "star", "size": 16, "color": "#d62728",
                                         "line": {"color": "white", "width": 1}}))
    ends = path.iloc[[0, -1]]
    fig.add_trace(go.Scatter(x=ends["pc1"], y=ends["pc2"], mode="text", text=["start", "end"],
                             textposition=["bottom left", "bottom right"], showlegend=False, hoverinfo="skip"))
    fig = _layout(fig, title, f"PC 1 ({explained[0]:.0%} of variance)",
                  f"PC 2 ({explained[1]:.0%} of variance)" if len(explained) > 1 else "PC 2")
    fig.update_layout(hovermode="closest", height=520,  # the legend above: the time colorbar takes the right
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0})
    return fig


PREVIEW_COLUMNS = 12  # columns a series preview draws at most (5,000 traces took the browser 52 s)
PREVIEW_POINTS = 2_000  # points per column it draws at most (a 49 MB file drew 82 MB of chart data)


def preview_sample(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(what `series_preview_figure` draws of `frame`: its first `PREVIEW_COLUMNS` columns at every k-th step,
    k) with k chosen so that at most `PREVIEW_POINTS` steps are drawn."""
    stride = max(1, -(-len(frame) // PREVIEW_POINTS))
    return frame.iloc[::stride, :PREVIEW_COLUMNS], stride


def series_preview_figure(frame: pd.DataFrame) -> go.Figure:
    """The columns of a series against its time index (`preview_sample` of them), each in its own units (one y
    axis per column would clutter: columns are standardised for the picture, the hover shows the raw value)."""
    frame, _ = preview_sample(frame)
    fig = go.Figure()
    colors = group_colors(list(frame.columns))
    spread = frame.std().replace(0.0, 1.0).fillna(1.0)
    for column in frame.columns:
        values = frame[column]
        fig.add_trace(go.Scatter(x=frame.index, y=(values - values.mean()) / spread[column], mode="lines",
                                 name=str(column), line={"color": colors[column], "width": 1},
                                 customdata=values, hovertemplate="%{x}: %{customdata:.4g}<extra>"
                                 + plain(str(column)) + "</extra>"))
    return _layout(fig, "", str(frame.index.name or "step"), "standardised value")
