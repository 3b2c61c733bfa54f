import streamlit as st

from rnnlib import tasks
from rnnlib.analysis import probes
from rnnlib.core import cells
from rnnlib.viz import plots
from ui import data, scope
from ui.permalink import Permalink

# Longest stretch of a sequence drawn as heatmaps; longer sequences are traced in full and shown from the start.
MAX_STEPS_SHOWN = 1000
# Sequences the memory-unit ranking and the saturation statistics are computed over.
NUM_STATISTICS_SEQUENCES = 128

st.title("Gates, cell state and hidden state")
st.caption("A trained network's own weights, run on one input sequence with the textbook cell equations (the "
           "same numbers as Keras', checked to 1e-5): every gate, the candidate, the LSTM's cell state c and the "
           "hidden state h, unit by unit and step by step.")
uri = data.tracking_uri()
link = Permalink("gates_")

left, right = st.columns([1, 2])
experiment, runs = scope.experiment_runs(
    link, uri, "No runs yet. Train something first.",
    lambda frame: scope.with_param(scope.finished_runs(frame), "model.kind", "recurrent"),
    "No finished run of a recurrent cell in this experiment: a run logs its weights when it ends (AR(τ) "
    "baselines have no gates or state to show).", widget=left.selectbox)
run_id = link.choice("Run", "run", runs["run_id"].tolist(), widget=right.selectbox, format_func=scope.run_label(runs))
run_config = data.run_config(uri, run_id, scope.run_label(runs))
weights = data.weights(uri, run_id, scope.run_label(runs)) if run_config else None
if weights is None:
    link.stop("Pick another run: this one cannot be traced.")
task = tasks.build(run_config.task)
cell_type, num_layers = run_config.model.cell_type, run_config.model.num_layers

left, middle, right = st.columns([2, 1, 1])
source = link.choice("Input sequence", "source", ["task", "edit"], widget=left.radio, horizontal=True,
                     format_func={"task": "a sequence of the task", "edit": "edit the values"}.get)
seed = link.number("Sequence seed", "seed", 0, 0, 10**6, widget=middle.number_input,
                   help="Which sequence of the task to trace; change it to see another.")
layer = link.choice("Layer", "layer", list(range(num_layers)), widget=right.selectbox, disabled=num_layers == 1)
x, y = probes.example_sequences(task, seed)
if source == "edit":
    edited = st.data_editor(task.to_table(x[0]), num_rows="dynamic", height=240, key=f"gates_editor_{run_id}_{seed}",
                            width="stretch")
    try:
        x = task.from_table(edited)[None]
    except ValueError as error:
        link.stop(f"{error}", show=st.error, icon=":material/edit_off:")
if x.shape[1] > MAX_STEPS_SHOWN:
    st.warning(f"The sequence has {x.shape[1]} steps; the first {MAX_STEPS_SHOWN} are shown.")
    x = x[:, :MAX_STEPS_SHOWN]

traces = cells.model_traces(weights, cell_type, num_layers, x)
output = probes.predictions(weights, traces, task)
if task.target_form == "final" and source == "task":
    st.markdown(f"This {cell_type.upper()} ({run_config.model.units} units) answers "
                f"**{task.format_answer(output[0])}**; the target is **{task.format_target(y[0])}**.")
cell = cells.get_cell(cell_type)
quantities = [q for q in ("pre_activation", *cell.gates, "candidate", *cell.states[::-1]) if q in traces[layer]]
tidy = probes.tidy_traces({layer: traces[layer]})
st.plotly_chart(plots.gates_figure(tidy, task.to_table(x[0]), quantities,
                                   f"Layer {layer} of {cell_type.upper()} × {num_layers}: units × time"),
                width="stretch", key="gates_heatmaps")

batch, _ = probes.example_sequences(task, seed + 1, NUM_STATISTICS_SEQUENCES)
batch = batch[:, :MAX_STEPS_SHOWN]
batch_traces = cells.model_traces(weights, cell_type, num_layers, batch)
signal = task.memory_signal(batch)
memory_state = cell.memory_state
if signal is not None:
    ranking = probes.memory_units(batch_traces[layer], signal, memory_state)
    default_units = ranking["unit"].head(3).tolist()
else:
    ranking, default_units = None, probes.most_active_units(batch_traces[layer], memory_state)

st.subheader("Units over time")
guidance = task.inspection_guidance(memory_state, NUM_STATISTICS_SEQUENCES)
if guidance:
    st.info(guidance, icon=":material/lightbulb:")
left, right = st.columns([3, 1])
with left:
    units = link.choices("Units", "units", list(range(run_config.model.units)), default=default_units,
                         placeholder="pick units")
if ranking is not None:
    with right:
        st.dataframe(ranking.head(8), hide_index=True, width="stretch",
                     column_config={"correlation": st.column_config.NumberColumn("corr. with memory", format="%.2f")})
if units:
    with left:
        st.plotly_chart(plots.unit_lines_figure(tidy, units, quantities), width="stretch", key="gates_unit_lines")

st.subheader("The state's path")
path, explained = probes.state_trajectory(traces[layer][memory_state][0], fit_on=batch_traces[layer][memory_state])
sequence_signal = task.memory_signal(x)
marked = probes.memory_steps(sequence_signal[0] if sequence_signal is not None else None)
st.plotly_chart(plots.state_trajectory_figure(
    path, explained, marked, f"{memory_state}_t of this sequence on the first two principal components",
    state=memory_state),
    width="stretch", key="gates_trajectory")
st.caption(f"The {run_config.model.units}-dimensional state {memory_state}_t step by step, projected on the two "
           f"directions along which it varies most over {NUM_STATISTICS_SEQUENCES} sequences of the task (PCA, "
           "numpy, from the run's logged weights). "
           + ("Stars mark the steps where what the task needs remembered changes: a network that has learned "
              "it jumps there and holds still in between." if marked else "")
           + f" The two components explain {explained.sum():.0%} of the variance.")

st.subheader("Gate saturation")
saturation = probes.gate_saturation({layer: batch_traces[layer]}, cell_type)
if saturation.empty:
    st.info("The tanh RNN has no gates: all it can do is overwrite h_t = tanh(W_hh h_{t-1} + W_xh x_t + b) at "
            "every step. Its pre-activation is shown above; where |pre-activation| > 2, tanh' < 0.08 and the "
            "gradient through that unit all but stops.")
else:
    st.plotly_chart(plots.saturation_figure(saturation), width="stretch", key="gates_saturation")
    st.caption(f"Over {NUM_STATISTICS_SEQUENCES} sequences of the task. A forget (LSTM) or update (GRU) gate that "
               "is mostly open keeps the state, and so the gradient, nearly unchanged from step to step; a gate "
               "that is mostly closed resets it.")
link.save()
