"""RNN Lab dashboard: `streamlit run app.py`. Pages are in app_pages/, the shared sidebar is drawn here.

(Not `pages/`: Streamlit 1.67 still runs a folder named `pages` as a v1 multipage app on the first request to
a fresh server, skipping this file, its navigation and its sidebar.)"""

import streamlit as st

from ui import data, mode, scope, sidebar

st.set_page_config(page_title="RNN Lab", page_icon=":material/replay:", layout="wide")
page = st.navigation({
    "Lab": [
        st.Page(scope.page("home"), title="Home", icon=":material/home:", default=True),
        st.Page(scope.page("train"), title="Reproduce" if mode.read_only() else "Train",
                icon=":material/model_training:"),
        st.Page(scope.page("compare"), title="Compare", icon=":material/monitoring:"),
        st.Page(scope.page("predictions"), title="Predictions", icon=":material/query_stats:"),
    ],
    "Inside the network": [
        st.Page(scope.page("gradients"), title="Gradient flow", icon=":material/trending_down:"),
        st.Page(scope.page("gates"), title="Gates and states", icon=":material/grid_on:"),
    ],
    "How RNNs learn": [
        st.Page(scope.page("unrolled"), title="Unrolled BPTT", icon=":material/account_tree:"),
        st.Page(scope.page("products"), title="Vanishing & exploding", icon=":material/functions:"),
        st.Page(scope.page("forms"), title="Sequence forms", icon=":material/swap_horiz:"),
    ],
})
sidebar.render(data.tracking_uri())
if not mode.read_only():
    data.reconcile(data.tracking_uri())  # runs whose worker died (kill -9, out of memory) end FAILED, not RUNNING
page.run()
