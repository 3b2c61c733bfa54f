from urllib.parse import quote

import streamlit as st

from rnnlib.core import config, paths
from rnnlib.run import jobs
from ui import data, jobs_panel, mode, safe, scope

st.title("RNN Lab")
st.markdown(
    "Train **Elman RNNs, LSTMs and GRUs** with full backpropagation through time or **truncated BPTT**, and "
    "compare them side by side. Every run is logged to MLflow; every chart shows the mean over seeds with a "
    "confidence band and the task's trivial baseline, so you can see which cell remembers and what truncation "
    "costs."
)
uri = data.tracking_uri()
experiments = data.experiments(uri)

left, right = st.columns(2)
train_label = "**Reproduce** a run: its exact YAML and command" if mode.read_only() else \
    "**Train**: launch an experiment or sweep"
left.page_link(scope.page("train"), label=train_label, icon=":material/model_training:")
right.page_link(scope.page("compare"), label="**Compare**: curves, summaries, metric vs hyperparameter",
                icon=":material/monitoring:")

if experiments.empty and mode.read_only():
    st.info("This store has no runs yet, and this lab is read-only.", icon=":material/science:")
elif experiments.empty:
    st.info("This store has no runs yet. Start the demo sweep (about 2 minutes on a laptop CPU): the adding "
            "problem with RNN, LSTM and GRU, full BPTT vs TBPTT(10), two seeds each.", icon=":material/science:")
    if st.button("Run the demo sweep", type="primary"):
        jobs.launch(config.load_config(paths.EXPERIMENTS_DIR / "demo.yaml"), uri)
        data.refresh()
else:
    st.subheader("Experiments in this store")
    for _, row in experiments.iterrows():
        link = f"compare?experiment={quote(row['name'])}"
        st.markdown(f"- [{safe.text(row['name'])}]({link}) · updated {row['last_update']:%Y-%m-%d %H:%M}")

if not mode.read_only():
    st.subheader("Training jobs")
    jobs_panel.show(uri)
