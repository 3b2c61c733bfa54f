"""Teaching pictures as pure functions: `rnnlib.analysis.lessons` frames in, `plotly.graph_objects.Figure` out.

Like `rnnlib.viz.plots`: no Streamlit, no template (Streamlit themes the chart). Diagrams are drawn with a fixed
number of traces plus layout shapes, so an unrolled graph of 60 steps stays a handful of traces.
"""

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from rnnlib.analysis.lessons import IO_FORM_INFO
from rnnlib.core.registry import lookup
from rnnlib.viz.colors import PALETTE, rgba

GRADIENT = "#d62728"  # what the followed loss reaches
FORWARD = "#9aa0a6"  # the forward graph
MUTED = "#d0d4d9"
STOPPED = "#111111"
ROLE_COLORS = {"input": "#ef9a9a", "cell": "#a5d6a7", "context": "#ffe082", "output": "#90caf9"}



def _segments(pairs) -> tuple[list, list]:
    """Line segments ((x0, y0), (x1, y1)) as one trace's x / y with None between segments."""
    xs, ys = [], []
    for (x0, y0), (x1, y1) in pairs:
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    return xs, ys


# --- Unrolled BPTT ---------------------------------------------------------------------------------------------

INPUT_ROW, HIDDEN_ROW, LOSS_ROW = 0, 1, 2


def _node_trace(frame: pd.DataFrame, row: int, name: str, color: str, symbol: str, size: float,
                label: str) -> go.Scatter:
    return go.Scatter(
        x=frame["t"], y=np.full(len(frame), row), mode="markers", name=name,
        marker={"color": color, "symbol": symbol, "size": size, "line": {"color": "white", "width": 1}},
        hovertext=[f"{label}<sub>{t}</sub>" for t in frame["t"]], hoverinfo="text",
    )


def _update_shapes(reach: pd.DataFrame) -> list[dict]:
    """Per update: its unrolled span around the hidden row (staggered, so overlapping k2 > k1 updates show)
    and its scored span on the loss row; the followed update outlined in the gradient colour."""
    shapes = []
    followed_update = int(reach.loc[reach["followed"], "update"].iloc[0])
    spans = reach.groupby("update")[["update_start", "loss_start", "update_stop"]].first()
    for update, (start, loss_start, stop) in spans.iterrows():
        color = PALETTE[update % 2]
        pad = 0.36 if update % 2 == 0 else 0.28
        followed = update == followed_update
        line = {"color": GRADIENT, "width": 2, "dash": "dot"} if followed else {"width": 0}
        shapes.append({"type": "rect", "name": f"update {update} unrolled", "layer": "below",
                       "x0": start - 0.42, "x1": stop - 0.58, "y0": HIDDEN_ROW - pad, "y1": HIDDEN_ROW + pad,
                       "fillcolor": rgba(color, 0.14), "line": line})
        shapes.append({"type": "rect", "name": f"update {update} scored", "layer": "below",
                       "x0": loss_start - 0.42, "x1": stop - 0.58, "y0": LOSS_ROW - 0.3, "y1": LOSS_ROW + 0.3,
                       "fillcolor": rgba(color, 0.14), "line": line})
    return shapes


def unrolled_bptt_figure(reach: pd.DataFrame, title: str | None = None) -> go.Figure:
    """The unrolled graph of one sequence: inputs x_t, hidden states h_t, losses L_t, one column per step.

    Args:
        reach: `rnnlib.analysis.lessons.unrolled_gradient_reach` (one row per timestep).
        title: defaults to a sentence about how far the followed loss reaches.

    Hidden states that receive gradient from the followed loss are red, the path it flows along is drawn in
    red, each update's unrolled span is a shaded band around the hidden row (its scored steps a band on
    the loss row) and a black bar marks where an update stops the gradient on the carried state.
    """
    length = len(reach)
    t = reach["t"].to_numpy()
    reached = reach["reached"].to_numpy()
    step = int(t[reach["followed"].to_numpy()][0])
    reach_start = int(t[reached].min())
    size = float(np.clip(360 / length, 7, 22))
    fig = go.Figure()

    forward = [((i, INPUT_ROW), (i, HIDDEN_ROW)) for i in t] + [((i, HIDDEN_ROW), (i, LOSS_ROW)) for i in t]
    forward += [((i - 1, HIDDEN_ROW), (i, HIDDEN_ROW)) for i in t[1:]]
    xs, ys = _segments(forward)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="forward pass", hoverinfo="skip",
                             line={"color": MUTED, "width": 1.5}))
    backward = [((i, INPUT_ROW), (i, HIDDEN_ROW)) for i in t[reached]]
    backward += [((i - 1, HIDDEN_ROW), (i, HIDDEN_ROW)) for i in t[reached] if i > reach_start]
    backward += [((step, HIDDEN_ROW), (step, LOSS_ROW))]
    xs, ys = _segments(backward)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="gradient path (backward)", hoverinfo="skip",
                             line={"color": rgba(GRADIENT, 0.75), "width": 3}))
    heads_x = [*(t[1:] - 0.5), *t, *t]  # arrowheads mid-edge, pointing the forward way
    heads_y = [HIDDEN_ROW] * (length - 1) + [0.5] * length + [1.5] * length
    symbols = ["triangle-right"] * (length - 1) + ["triangle-up"] * (2 * length)
    fig.add_trace(go.Scatter(x=heads_x, y=heads_y, mode="markers", name="forward direction", hoverinfo="skip",
                             showlegend=False, marker={"symbol": symbols, "size": size * 0.45, "color": FORWARD}))

    fig.add_trace(_node_trace(reach, INPUT_ROW, "input x_t", "#7f8c99", "square", size * 0.8, "x"))
    fig.add_trace(_node_trace(reach[~reach["reached"]], HIDDEN_ROW, "h_t: no gradient from this loss", MUTED,
                              "circle", size, "h"))
    fig.add_trace(_node_trace(reach[reach["reached"]], HIDDEN_ROW, "h_t: receives gradient", GRADIENT, "circle",
                              size, "h"))
    others = reach[~reach["followed"]]
    fig.add_trace(_node_trace(others[others["scored_with_step"]], LOSS_ROW, "loss in the same update",
                              rgba(GRADIENT, 0.45), "diamond", size * 0.8, "L"))
    fig.add_trace(_node_trace(others[~others["scored_with_step"]], LOSS_ROW, "loss of another update", MUTED,
                              "diamond", size * 0.8, "L"))
    fig.add_trace(_node_trace(reach[reach["followed"]], LOSS_ROW, f"followed loss L_{step}", GRADIENT, "star",
                              size * 1.4, "L"))

    starts = reach.groupby("update")["update_start"].first()
    cuts = starts[starts > 0].drop_duplicates()
    fig.add_trace(go.Scatter(
        x=cuts - 0.5, y=np.full(len(cuts), HIDDEN_ROW), mode="markers", name="gradient stopped (state carried)",
        marker={"symbol": "line-ns", "size": size * 1.6, "line": {"color": STOPPED, "width": 3}},
        hovertext=[f"update {u} starts at h<sub>{s}</sub>: no gradient into h<sub>{s - 1}</sub>"
                   for u, s in cuts.items()], hoverinfo="text",
    ))

    weights = reach[reach["reached"] & (reach["weight"] != 1.0)]
    if len(weights):  # the unbiased mode's compensation factors, beside the edge into each state they scale
        fig.add_trace(go.Scatter(
            x=weights["t"], y=np.full(len(weights), INPUT_ROW + 0.28), mode="text", name="gradient × factor",
            textposition="middle right",
            text=[f"×{w:.2g}" for w in weights["weight"]], textfont={"size": 9, "color": GRADIENT},
            hovertext=[f"h<sub>{t}</sub> gets the gradient × {w:.4g}" for t, w in zip(weights["t"], weights["weight"])],
            hoverinfo="text",
        ))

    for text, x, y in (("W<sub>hh</sub>", 0.5, HIDDEN_ROW + 0.12), ("W<sub>xh</sub>", 0.18, 0.5),
                       ("W<sub>hy</sub>", 0.18, 1.5)):
        if length > 1 or text != "W<sub>hh</sub>":
            fig.add_annotation(x=x, y=y, text=text, showarrow=False, font={"size": 11}, xanchor="left",
                               yanchor="bottom")
    fig.add_annotation(x=0, y=-0.55, xref="paper", yref="y", showarrow=False, xanchor="left", font={"size": 11},
                       text="The same W<sub>hh</sub>, W<sub>xh</sub>, W<sub>hy</sub> at every step: "
                            "h<sub>t</sub> = tanh(W<sub>hh</sub> h<sub>t-1</sub> + W<sub>xh</sub> x<sub>t</sub>)")
    fig.update_layout(
        title=title or f"The loss at t={step} sends gradient back to t={reach_start} "
                       f"({int(reached.sum())} hidden states)",
        shapes=_update_shapes(reach), height=380, hovermode="closest",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
        margin={"l": 90, "r": 20, "t": 60, "b": 40},
    )
    fig.update_xaxes(title="timestep t", range=[-0.8, length - 0.2], showgrid=False, zeroline=False)
    fig.update_yaxes(range=[-0.75, 2.5], tickvals=[INPUT_ROW, HIDDEN_ROW, LOSS_ROW], showgrid=False,
                     ticktext=["input x<sub>t</sub>", "hidden h<sub>t</sub>", "loss L<sub>t</sub>"], zeroline=False,
                     fixedrange=True)
    return fig


# --- Vanishing and exploding products --------------------------------------------------------------------------


def _log_range(values: np.ndarray, floor: float = 1e-20, ceiling: float = 1e20) -> list[float]:
    """A log10 axis range around the positive `values`, clipped: below ~1e-16 a gradient is numerically gone."""
    positive = values[np.isfinite(values) & (values > 0)]
    low = max(float(positive.min()), floor) if len(positive) else 0.1
    high = min(float(positive.max()), ceiling) if len(positive) else 10.0
    return [np.log10(min(low, 0.5)) - 0.3, np.log10(max(high, 2.0)) + 0.3]


def products_figure(bounds: Mapping[str, pd.DataFrame], measured: Mapping[str, pd.DataFrame],
                    runs: pd.DataFrame | None = None, title: str | None = None) -> go.Figure:
    """||dh_T / dh_{T-lag}|| against lag on a log axis, one colour per label.

    Args:
        bounds: label -> `rnnlib.analysis.lessons.derivative_bound_curve` (lag, bound); dashed.
        measured: label -> `rnnlib.analysis.lessons.jacobian_product_norms` (lag, median, lower, upper); the median
            with the lower-upper band. A label in both mappings gets one colour.
        runs: measured gradient flow of real runs, long format: label, lag, value (normalised to 1 at lag 0);
            a solid line with markers per label.
    """
    fig = go.Figure()
    labels = list(dict.fromkeys([*bounds, *measured]))
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    values = [np.array([1.0])]
    for label, frame in measured.items():
        color = colors[label]
        fig.add_trace(go.Scatter(
            x=np.concatenate([frame["lag"], frame["lag"][::-1]]),
            y=np.concatenate([frame["upper"], frame["lower"][::-1]]), fill="toself", mode="lines", hoverinfo="skip",
            fillcolor=rgba(color, 0.2), line={"width": 0}, legendgroup=label, showlegend=False,
            name=f"{label} measured band",
        ))
        fig.add_trace(go.Scatter(x=frame["lag"], y=frame["median"], mode="lines", legendgroup=label,
                                 name=f"{label} measured (median)", line={"color": color, "width": 2.5}))
        values.append(frame[["lower", "upper"]].to_numpy().ravel())
    for label, frame in bounds.items():
        fig.add_trace(go.Scatter(x=frame["lag"], y=frame["bound"], mode="lines", legendgroup=label,
                                 name=f"{label} bound", line={"color": colors[label], "width": 2, "dash": "dash"}))
        values.append(frame["bound"].to_numpy())
    if runs is not None and not runs.empty:
        for i, (label, frame) in enumerate(runs.groupby("label", sort=False)):
            fig.add_trace(go.Scatter(x=frame["lag"], y=frame["value"], mode="lines+markers", name=f"run: {label}",
                                     line={"color": qualitative.Dark2[i % len(qualitative.Dark2)], "width": 2},
                                     marker={"size": 5}))
            values.append(frame["value"].to_numpy())
    fig.add_hline(y=1, line={"color": "#555555", "width": 1}, annotation_text="1: gradient kept",
                  annotation_position="top right")
    fig.update_layout(
        title=title or "Norm of dh<sub>T</sub>/dh<sub>T-lag</sub>: bound (dashed) and measured",
        hovermode="x unified", height=460, margin={"l": 60, "r": 20, "t": 60, "b": 50},
        legend={"orientation": "v", "yanchor": "top", "y": 1, "xanchor": "left", "x": 1.01},
    )
    fig.update_xaxes(title="lag (steps back from T)")
    fig.update_yaxes(title="norm (log)", type="log", range=_log_range(np.concatenate(values)),
                     exponentformat="power")
    return fig


# --- Sequence input/output forms -------------------------------------------------------------------------------

# Boxes (role, column, row, label) of each form, after Karpathy's "The unreasonable effectiveness of recurrent
# neural networks" (2015): inputs at the bottom, RNN cells in the middle, outputs on top.
_FORM_BOXES = {
    "seq2seq": [("input", i, 0, f"x{i + 1}") for i in range(4)] + [("cell", i, 1, f"h{i + 1}") for i in range(4)]
    + [("output", i, 2, f"y{i + 1}") for i in range(4)],
    "seq2vec": [("input", i, 0, f"x{i + 1}") for i in range(4)] + [("cell", i, 1, f"h{i + 1}") for i in range(4)]
    + [("output", 3, 2, "y")],
    "vec2seq": [("input", 0, 0, "x")] + [("cell", i, 1, f"h{i + 1}") for i in range(4)]
    + [("output", i, 2, f"y{i + 1}") for i in range(4)],
    "encoder_decoder": [("input", i, 0, f"x{i + 1}") for i in range(3)]
    + [("cell", i, 1, f"h{i + 1}") for i in range(3)] + [("context", 3, 1, "c")]
    + [("cell", 4 + i, 1, f"s{i + 1}") for i in range(4)] + [("output", 4 + i, 2, f"y{i + 1}") for i in range(4)],
}
_BOX_WIDTH, _BOX_HEIGHT = 0.62, 0.5


def _form_arrows(boxes) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Input -> cell below-above, cell -> output, and left -> right along the middle row."""
    cells = sorted(col for role, col, row, _ in boxes if row == 1)
    arrows = [((a, 1), (b, 1)) for a, b in zip(cells, cells[1:])]
    arrows += [((col, row), (col, row + 1)) for role, col, row, _ in boxes if row == 0]
    arrows += [((col, 1), (col, 2)) for role, col, row, _ in boxes if role == "output"]
    return arrows


def io_form_figure(form: str) -> go.Figure:
    """A small picture of one of `rnnlib.tasks.IO_FORMS`: red inputs, green RNN steps, blue outputs (and the
    amber context vector of an encoder-decoder). Shapes are named by role ("input x1", "cell h1", ...)."""
    boxes = lookup(_FORM_BOXES, form, "sequence form")
    shapes, annotations = [], []  # collected and set once: add_shape / add_annotation validate per call (slow)
    for role, col, row, label in boxes:
        shapes.append({"type": "rect", "name": f"{role} {label}", "x0": col - _BOX_WIDTH / 2,
                       "x1": col + _BOX_WIDTH / 2, "y0": row - _BOX_HEIGHT / 2, "y1": row + _BOX_HEIGHT / 2,
                       "fillcolor": ROLE_COLORS[role], "line": {"color": "#555555", "width": 1}})
        annotations.append({"x": col, "y": row, "text": f"<b>{label[0]}</b><sub>{label[1:]}</sub>",
                            "showarrow": False, "font": {"size": 14, "color": "#222222"}})
    for (x0, y0), (x1, y1) in _form_arrows(boxes):
        horizontal = y0 == y1
        annotations.append({
            "x": x1 - (_BOX_WIDTH / 2 if horizontal else 0), "y": y1 - (0 if horizontal else _BOX_HEIGHT / 2),
            "ax": x0 + (_BOX_WIDTH / 2 if horizontal else 0), "ay": y0 + (0 if horizontal else _BOX_HEIGHT / 2),
            "xref": "x", "yref": "y", "axref": "x", "ayref": "y", "text": "", "showarrow": True, "arrowhead": 2,
            "arrowsize": 1.2, "arrowwidth": 1.5, "arrowcolor": "#555555",
        })
    if form == "encoder_decoder":
        annotations += [{"x": x, "y": -0.55, "text": text, "showarrow": False, "font": {"size": 12, "color": "#555555"}}
                        for text, x in (("encoder", 1), ("decoder", 5.5))]
    columns = max(col for _, col, _, _ in boxes) + 1
    fig = go.Figure(layout={"shapes": shapes, "annotations": annotations})
    fig.update_layout(title=IO_FORM_INFO[form].title, height=250, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      showlegend=False, plot_bgcolor="rgba(0,0,0,0)")
    fig.update_xaxes(visible=False, range=[-0.6, max(columns, 4) - 0.4], fixedrange=True)
    fig.update_yaxes(visible=False, range=[-0.75, 2.4], fixedrange=True)
    return fig
