import streamlit as st

from rnnlib.analysis import compare, lessons
from rnnlib.viz import diagrams
from ui import data

# The measured products take ~0.15 s per activation at 32 units; cache them across slider moves.
product_norms = st.cache_data(max_entries=64, show_spinner=False)(lessons.jacobian_product_norms)

st.title("Vanishing and exploding gradients")
st.markdown(
    "The gradient that reaches $h_{T-k}$ from a loss at $T$ is multiplied by one Jacobian per step: "
    "$\\partial h_T / \\partial h_{T-k} = J_T J_{T-1} \\cdots J_{T-k+1}$ with "
    "$J_t = \\mathrm{diag}(f'(a_t))\\, W_{hh}$. Each factor has norm at most $\\max f' \\cdot \\|W_{hh}\\|$, so "
    "the product is bounded by $(\\max f' \\cdot \\|W_{hh}\\|)^k$ (Pascanu, Mikolov & Bengio 2013). Below, "
    "$W_{hh}$ is a random orthogonal matrix scaled to the chosen spectral radius (so its norm is the radius "
    "too), and the measured curves multiply the Jacobians of an actual forward run with small random inputs."
)

left, right = st.columns(2)
radius = left.slider("Spectral radius of W_hh", 0.5, 2.0, 1.0, step=0.05, key="products_radius")
activations = left.multiselect("Activation", list(lessons.ACTIVATIONS), default=["tanh", "sigmoid"],
                               key="products_activations")
units = right.select_slider("Units", [8, 16, 32, 64], value=32, key="products_units")
max_lag = right.slider("Steps back (lag)", 10, 150, 100, step=10, key="products_max_lag")
if not activations:
    st.info("Pick at least one activation.")
    st.stop()

bounds = {name: lessons.derivative_bound_curve(radius, lessons.ACTIVATION_DERIVATIVE_BOUNDS[name], max_lag)
          for name in activations}
measured = {name: product_norms(radius, name, units, max_lag, rng=0) for name in activations}

# Measured gradient flow of real runs: ‖∂h_T/∂h_t‖₂ of trained networks, logged with every run.
uri = data.tracking_uri()
names = data.experiments(uri)["name"].tolist()
overlay = None
with st.expander("Overlay real runs: ‖∂h_T/∂h_t‖₂ measured on networks logged in this store", expanded=True):
    left, right = st.columns(2)
    experiment = left.selectbox("Experiment", ["(none)", *names], index=1 if names else 0, key="products_experiment")
    moment = right.radio("Weights", ["initialisation", "after training"], horizontal=True, key="products_moment")
    if experiment != "(none)":
        runs = data.runs(uri, experiment)
        runs = runs[runs["kind"] != "sweep"]
        curves = compare.flow_curves(data.gradient_flows(uri, tuple(runs["run_id"])), runs, ["model.label"],
                                     "jacobian")
        if curves.empty:
            st.caption("These runs logged no gradient flow.")
        else:
            overlay = compare.lag_overlay(compare.at_epoch(curves, 0.0 if moment == "initialisation" else None),
                                          suffix=moment)
            st.caption("Geometric mean over each cell type's runs, one curve per cell type (solid). A real RNN's "
                       "curve sits where its recurrent weights put it on the radius slider; an LSTM or GRU decays "
                       "by its gates, not by a power of ρ.")
st.plotly_chart(diagrams.products_figure(bounds, measured, runs=overlay), width="stretch", key="products_figure")

columns = st.columns(len(activations))
for column, name in zip(columns, activations):
    column.metric(f"{name}: measured norm after {max_lag} steps", f"{measured[name]['median'].iloc[-1]:.3g}",
                  help=f"The bound is {bounds[name]['bound'].iloc[-1]:.3g}; the band spans the 10% to 90% "
                       "quantiles over 16 random networks.")

st.markdown(r"""
- **Below 1 the product vanishes geometrically.** With spectral radius $\rho < 1$ every step shrinks the
  gradient by up to $\rho$, so a loss can hardly teach the network about inputs more than a few dozen steps
  back: their contribution to the weight gradient is swamped by that of the nearby steps.
- **Above 1 it can explode, until tanh saturates.** With $\rho > 1$ the state grows, pre-activations leave
  tanh's linear range, $f'$ drops and the product grows far slower than the bound $\rho^k$. Even at
  $\rho = 1$ the measured product decays: every $f' < 1$ takes its share.
- **Sigmoid's derivative is at most 0.25**, so its bound shrinks 4x faster per step: $(0.25\,\rho)^k$ instead
  of $\rho^k$. Below $\rho = 4$ a sigmoid RNN's gradient is certain to vanish.
- **Gradient clipping** rescales an update whose norm is too large: it tames explosions, but it cannot restore
  a vanished signal, because it scales the whole gradient, not the part that came from far-away steps.
- **LSTM and GRU** keep a path that is not multiplied by $W_{hh}$ and a squashing derivative at every step.
  The LSTM's cell state is updated additively, $c_t = f_t \odot c_{t-1} + i_t \odot \tilde c_t$, so along
  this path $\partial c_t / \partial c_{t-1}$ is the forget gate $f_t$: near 1 while the gate stays open. The
  GRU's update gate $z_t$ mixes $h_t = z_t \odot h_{t-1} + (1 - z_t) \odot \tilde h_t$, a derivative near 1
  when it chooses to keep the state.
""")
