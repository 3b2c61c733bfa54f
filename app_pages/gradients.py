import dataclasses

import streamlit as st

from rnnlib.analysis import compare
from rnnlib.core import records
from rnnlib.viz import plots, views
from ui import data, report_button, scope
from ui.permalink import Permalink

st.title("Gradient flow over time")
st.caption("How much the loss at the last step T depends on the state at each earlier step t, probed on fixed "
           "sequences during training and logged with every run. This is where a tanh RNN forgets, where "
           "LSTM and GRU keep a path open, and where truncation cuts the gradient off.")
uri = data.tracking_uri()
link = Permalink("gradients_")

names = scope.experiment_names(uri, "No runs yet. Train something first: every run logs its gradient flow.")

left, right = st.columns([1, 2])
experiment = link.choice("Experiment", "experiment", names, widget=left.selectbox)
runs = scope.training_runs(data.runs(uri, experiment))
flows = data.gradient_flows(uri, tuple(runs["run_id"]), scope.run_label(runs))
runs = runs[runs["run_id"].map(lambda run_id: flows.get(run_id) is not None)]
if runs.empty:
    link.stop("No run of this experiment has a gradient-flow record yet: runs log one at their first epoch "
              "unless `training.probe_every` is 0. Pick another experiment or train this one again.",
              icon=":material/info:")
with right:
    group_by = link.choices("Group by", "group_by", compare.param_names(runs),
                            default=views.default_gradient_group_by(runs), placeholder="no grouping: one group")

quantities = [q for q in records.GRADIENT_QUANTITIES if any(q in flows[r].norms for r in runs["run_id"])]
num_layers = max(flows[r].num_layers for r in runs["run_id"])
left, middle, right = st.columns([3, 1, 2])
quantity = link.choice("Quantity", "quantity", quantities, widget=left.radio, horizontal=True,
                       format_func=records.GRADIENT_QUANTITIES.get,
                       help="‖∂L_T/∂h_t‖ and ‖∂L_T/∂c_t‖: what the training update receives from the loss at the "
                            "last step, truncation included. ‖∂h_T/∂h_t‖₂: how strongly the final state depends on "
                            "the state t steps earlier (the product of step Jacobians, no truncation). "
                            "‖∂y_T/∂x_t‖: connectivity, how much the last output depends on the input t steps "
                            "earlier, through the whole network (the same for every layer).")
layer = link.choice("Layer", "layer", list(range(num_layers)), widget=middle.selectbox, disabled=num_layers == 1)
label = records.GRADIENT_QUANTITIES[quantity]
curves = views.flow_curves(flows, runs, views.GradientSettings(group_by=tuple(group_by), quantity=quantity,
                                                               layer=layer))
if curves.empty:
    link.stop(f"{label} is not recorded for these runs (∂L/∂c exists for LSTMs only).")
epochs = sorted(curves["epoch"].unique())
epoch = link.choice("Training epoch", "epoch", epochs, default=epochs[-1], widget=right.select_slider,
                    format_func=lambda e: "initialisation" if e == 0 else f"{e:g}")

st.subheader(f"{label} vs lag")
band_column, panels_column, init_column, runs_column = st.columns([2, 2, 2, 1.4])
band = link.choice("Band", "band", list(compare.BANDS), default=compare.default_band(runs, group_by),
                   widget=band_column.selectbox, format_func=compare.BANDS.__getitem__,
                   help="The spread of each group's runs around its geometric mean, taken in log10.")
panels = link.choice("Panels", "panels", ["", *group_by], default=views.default_panels(runs, group_by),
                     widget=panels_column.selectbox, format_func=lambda p: f"one per {p}" if p else "one chart",
                     help=f"Above {views.MANY_GROUPS} curves the chart is split into one panel per model.")
show_init = link.flag("Initialisation", "show_init", default=True, widget=init_column.toggle,
                      disabled=epoch == 0, help="The same groups before training, dashed.")
show_runs = link.flag("Show runs", "show_runs", widget=runs_column.toggle, help="Every run under the means.")
settings = views.GradientSettings(group_by=tuple(group_by), quantity=quantity, layer=layer, epoch=epoch, band=band,
                                  panels=panels, show_init=show_init, show_runs=show_runs)
run_ids = runs["run_id"].tolist()
histories = data.histories(uri, tuple(run_ids), views.GRADIENT_HISTORIES)
view = views.gradient_view(runs, flows, histories, settings)
st.plotly_chart(view.lag, width="stretch", key="gradients_lag")
st.markdown(
    "**What to look for.** A straight falling line on this log scale is exponential decay: the tanh RNN's "
    "gradient typically drops by orders of magnitude within a few dozen steps, so it cannot learn what happened "
    "earlier. An LSTM's cell-state path (∂L/∂c) and a GRU whose update gate learned to keep its state decay far "
    "more slowly. Under TBPTT(k) the curve stops at lag k − 1: nothing beyond its reach gets to the update, "
    "however well the network could carry it. Curves rising with lag are exponential growth: exploding gradients."
)

st.subheader("Where the gradient vanishes")
st.caption(f"Lag T − t at which {label} first falls below 10⁻³ of its value at the last step (median over "
           "runs), at initialisation and after training.")
st.dataframe(view.vanishing, hide_index=True, width="stretch", column_config=views.VANISHING_COLUMNS)
with st.expander(f"Per run ({len(view.per_run)})"):
    st.dataframe(view.per_run, hide_index=True, width="stretch", column_config=views.VANISHING_COLUMNS)

st.subheader("What truncation does to the gradient")
bias_statistic = link.choice("Statistic", "bias_statistic", list(records.TRUNCATION_BIAS), widget=st.radio,
                             horizontal=True, format_func=records.TRUNCATION_BIAS.get)
settings = dataclasses.replace(settings, bias_statistic=bias_statistic)
bias = views.bias_figure(runs, flows, settings, show_init=show_init)
if bias is None:
    st.info("These runs were logged before the truncation-bias meter existed: train them again to see it.")
else:
    st.plotly_chart(bias, width="stretch", key="gradients_bias")
    st.caption(views.BIAS_CAPTION)

st.subheader("One run over training")
run_id = link.choice("Run", "run", run_ids, format_func=scope.run_label(runs))
st.plotly_chart(plots.gradient_heatmap_figure(curves[curves["run_id"] == run_id], label), width="stretch",
                key="gradients_heatmap")

st.subheader("Exploding gradients and clipping")
if view.norms is None:
    st.info("These runs logged no gradient norms yet.")
else:
    st.plotly_chart(view.norms, width="stretch", key="gradients_norms")
    st.caption(views.NORMS_CAPTION)
report_button.gradients(st, experiment, runs, flows, histories, settings)
link.save()
