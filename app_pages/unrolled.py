import streamlit as st

from rnnlib.analysis import lessons
from rnnlib.core import truncation as truncation_schedules
from rnnlib.viz import diagrams

MODES = {"full": "Full BPTT", "tbptt": "Truncated (TBPTT)", "random_length": "Random-length TBPTT",
         "unbiased": "Unbiased random truncation"}

st.title("Unrolled backpropagation through time")
st.markdown(
    "An RNN applies the same step at every timestep, $h_t = \\tanh(W_{hh} h_{t-1} + W_{xh} x_t)$: unrolled over "
    "a sequence it is a deep feed-forward network whose layers all share $W_{hh}$ and $W_{xh}$. Training "
    "backpropagates each loss $L_t$ down this graph, and every step it passes adds its contribution to the "
    "gradient of the shared weights. Truncation decides how far down it goes."
)

left, middle, right = st.columns(3)
length = left.slider("Sequence length T", 8, 60, 24, key="unrolled_length")
mode = middle.radio("Truncation", list(MODES), format_func=MODES.get, key="unrolled_mode")
k1 = k2 = mean = None
seed = 0
if mode == "tbptt":
    k1 = right.slider("k1: update every k1 steps", 1, 60, 4, key="unrolled_k1")
    k2 = right.slider("k2: backpropagate k2 steps", 1, 60, 8, key="unrolled_k2")
elif mode in ("random_length", "unbiased"):
    mean = right.slider("Mean chunk length", 1.0 if mode == "random_length" else 1.5, 20.0, 6.0, step=0.5,
                        key=f"unrolled_mean_{mode}")
    seed = right.number_input("Seed of the random lengths", 0, 10_000, 0, key="unrolled_seed")

# Follow the last loss by default, also when T changes; keep another choice while it exists. The slider's
# range changes with T, which would reset it, so its value is set here on every run.
step = st.session_state.get("unrolled_step")
if step is None or step >= length or step == st.session_state.get("unrolled_last_step"):
    step = length - 1
st.session_state["unrolled_step"] = step
st.session_state["unrolled_last_step"] = length - 1
step = st.slider("Follow the loss at step t", 0, length - 1, key="unrolled_step")

try:
    truncation = lessons.make_truncation(mode, k1=k1, k2=k2, mean=mean)
except ValueError as error:
    st.error(f"Cannot draw this truncation: {error}.", icon=":material/error:")
    st.stop()
updates = lessons.truncation_updates(length, truncation, seed)
scale = truncation_schedules.gradient_scale(truncation)
reach = lessons.unrolled_gradient_reach(length, updates, step, scale)
summary = lessons.reach_summary(reach)

st.plotly_chart(diagrams.unrolled_bptt_figure(reach), width="stretch", key="unrolled_graph")
columns = st.columns(4)
columns[0].metric("Parameter updates", summary["num_updates"])
columns[1].metric(f"Loss at t={step} reaches back to", f"t={summary['reach']}")
columns[2].metric("Hidden states reached", summary["num_reached"])
columns[3].metric("Steps unrolled by its update", summary["backprop_steps"])

EXPLANATIONS = {
    "full": "One update at the end of the sequence: the loss at t sends gradient through every earlier hidden "
            "state, down to $h_0$. Memory grows with T, and the signal from a distant step has been "
            "multiplied by one Jacobian per step on the way (next page: why that vanishes or explodes).",
    "tbptt": f"An update every k1 = {k1} steps, each backpropagating k2 = {k2} steps. The state is carried "
             "forward, so the forward pass still sees the whole past, but the gradient is stopped at each "
             "update's start (black bar): the loss at the update's last step sends no gradient beyond t − k2. "
             "Losses early in an update reach less far, only k2 − k1 + 1 steps at its first scored step; with "
             "k2 > k1 the updates overlap (darker bands), so every loss gets at least that much history.",
    "random_length": f"Updates of random length (geometric, mean {mean}; k1 = k2 = the update's length), so "
                     "where the gradient is cut changes from sequence to sequence and no dependency length is "
                     "always cut at the same place. Each update is the plain mean loss of its steps, so this is "
                     "still a biased estimate of the full gradient, like fixed TBPTT: long dependencies are cut "
                     "more often than short ones and nothing makes up for it. (Tallec & Ollivier's 2017 unbiased "
                     "truncation, d2l §9.7, reweights the gradient by the truncation probabilities; this mode does "
                     "not; the next mode does.) Change the seed to draw another schedule.",
    "unbiased": f"The same random chunks (each step's incoming state is cut with probability p = 1/{mean or 0:g}, "
                "independently), with Tallec & Ollivier's (2017) compensation, d2l §9.7's ξ_t: wherever the "
                f"gradient is not cut, each step it passes back multiplies it by 1/(1 − p) = {scale:.3g} (the "
                "factors above the red states). A path of n steps survives with probability (1 − p)^n and is "
                "then weighted (1 − p)^-n, so on average every path counts exactly once: the expected gradient "
                "is full BPTT's. Every step's loss weighs the same, whatever its chunk's length. The price is "
                "variance: rare long chunks carry large factors (Gradient flow measures it: bias ≈ 0, variance "
                "> 0). Change the seed to draw another schedule.",
}
st.markdown(
    f"**Highlighted in red**: the hidden states that receive gradient from the loss at t={step} (the star) and "
    "the edges it flows along; each shaded band is one update's unrolled span, with the steps it scores on "
    f"the loss row. {EXPLANATIONS[mode]}"
)
with st.expander(f"The {summary['num_updates']} update{'' if summary['num_updates'] == 1 else 's'} of this schedule"):
    st.dataframe(lessons.updates_table(updates), hide_index=True, width="stretch")
