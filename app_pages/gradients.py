import streamlit as st

from rnnlib.analysis import compare
from rnnlib.core import records
from rnnlib.viz import plots
from ui import data, scope
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
    varying = compare.varying_params(runs)
    group_by = link.choices("Group by", "group_by", compare.param_names(runs),
                            default=[p for p in ("model.label", "training.truncation", "training.clipnorm")
                                     if p in varying] or varying[:1], placeholder="no grouping: one group")

quantities = [q for q in records.GRADIENT_QUANTITIES if any(q in flows[r].norms for r in runs["run_id"])]
num_layers = max(flows[r].num_layers for r in runs["run_id"])
left, middle, right = st.columns([3, 1, 2])
quantity = link.choice("Quantity", "quantity", quantities, widget=left.radio, horizontal=True,
                       format_func=records.GRADIENT_QUANTITIES.get,
                       help="‖∂L_T/∂h_t‖ and ‖∂L_T/∂c_t‖: what the training update receives from the loss at the "
                            "last step, truncation included. ‖∂h_T/∂h_t‖₂: how strongly the final state depends on "
                            "the state t steps earlier (the product of step Jacobians, no truncation).")
layer = link.choice("Layer", "layer", list(range(num_layers)), widget=middle.selectbox, disabled=num_layers == 1)
label = records.GRADIENT_QUANTITIES[quantity]
curves = compare.flow_curves(flows, runs, group_by, quantity, layer)
if curves.empty:
    link.stop(f"{label} is not recorded for these runs (∂L/∂c exists for LSTMs only).")
epochs = sorted(curves["epoch"].unique())
epoch = link.choice("Training epoch", "epoch", epochs, default=epochs[-1], widget=right.select_slider,
                    format_func=lambda e: "initialisation" if e == 0 else f"{e:g}")

st.subheader(f"{label} vs lag")
left, right = st.columns(2)
show_init = left.toggle("Compare with initialisation (dashed)", value=epoch > 0, key="gradients_show_init",
                        disabled=epoch == 0)
show_runs = right.toggle("Show every run", key="gradients_show_runs")
now = compare.at_epoch(curves, epoch)
st.plotly_chart(plots.gradient_lag_figure(
    compare.lag_band(now), label, reference=compare.lag_band(compare.at_epoch(curves, 0.0)) if show_init else None,
    seeds=now if show_runs else None,
), width="stretch", key="gradients_lag")
st.markdown(
    "**What to look for.** A straight falling line on this log scale is exponential decay: the tanh RNN's "
    "gradient typically drops by orders of magnitude within a few dozen steps, so it cannot learn what happened "
    "earlier. An LSTM's cell-state path (∂L/∂c) and a GRU whose update gate learned to keep its state decay far "
    "more slowly. Under TBPTT(k) the curve stops at lag k − 1: nothing beyond its reach gets to the update, "
    "however well the network could carry it. Curves rising with lag are exploding gradients."
)

st.subheader("Where the gradient vanishes")
run_ids = runs["run_id"].tolist()
histories = data.histories(uri, tuple(run_ids), ("grad_norm_max", "train_loss", "val_loss"))
diverged = compare.diverged_at(runs, histories)
table = compare.vanishing_table(curves, diverged=diverged)
st.caption(f"Lag T − t at which {label} first falls below 10⁻³ of its value at the last step (median over "
           "runs), at initialisation and after training.")
st.dataframe(compare.vanishing_summary(table), hide_index=True, width="stretch",
             column_config={"at_init": "lag at initialisation", "trained": "lag after training"})
with st.expander(f"Per run ({len(table)})"):
    st.dataframe(compare.vanishing_text(table), hide_index=True, width="stretch",
                 column_config={"at_init": "lag at initialisation", "trained": "lag after training"})

st.subheader("One run over training")
run_id = link.choice("Run", "run", run_ids, format_func=scope.run_label(runs))
st.plotly_chart(plots.gradient_heatmap_figure(curves[curves["run_id"] == run_id], label), width="stretch",
                key="gradients_heatmap")

st.subheader("Exploding gradients and clipping")
clip = compare.clip_threshold(runs)
norm_curves = compare.curves(histories, runs, "grad_norm_max", group_by, diverged=diverged)
if norm_curves.empty:
    st.info("These runs logged no gradient norms yet.")
else:
    band = compare.default_band(runs, group_by)
    st.plotly_chart(plots.curves_figure(
        norm_curves, compare.band(norm_curves, band), "grad_norm_max",
        baselines=None if clip is None else {"clipnorm": clip}, log_y=True, show_runs=show_runs,
        band_name=compare.BANDS[band],
    ), width="stretch", key="gradients_norms")
    st.caption("The largest global gradient norm of each epoch, measured before clipping. Spikes of orders of "
               "magnitude are exploding gradients; with `clipnorm` every update is rescaled to at most the "
               "dashed line, so a spike changes the weights no more than an ordinary step. Group by "
               "`training.clipnorm` to see runs with and without clipping side by side.")
link.save()
