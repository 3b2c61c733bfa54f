"""RNN Lab dashboard: `streamlit run app.py`. Pages are in app_pages/, the shared sidebar is drawn here.

(Not `pages/`: Streamlit 1.67 still runs a folder named `pages` as a v1 multipage app on the first request to
a fresh server, skipping this file, its navigation and its sidebar.)"""

import streamlit as st

from ui import data, mode, sidebar

st.set_page_config(page_title="RNN Lab", page_icon=":material/replay:", layout="wide")
page = st.navigation({
    "Lab": [
        st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
        st.Page("app_pages/train.py", title="Reproduce" if mode.read_only() else "Train",
                icon=":material/model_training:"),
        st.Page("app_pages/compare.py", title="Compare", icon=":material/monitoring:"),
        st.Page("app_pages/predictions.py", title="Predictions", icon=":material/query_stats:"),
    ],
    "Inside the network": [
        st.Page("app_pages/gradients.py", title="Gradient flow", icon=":material/trending_down:"),
        st.Page("app_pages/gates.py", title="Gates and states", icon=":material/grid_on:"),
    ],
    "How RNNs learn": [
        st.Page("app_pages/unrolled.py", title="Unrolled BPTT", icon=":material/account_tree:"),
        st.Page("app_pages/products.py", title="Vanishing & exploding", icon=":material/functions:"),
        st.Page("app_pages/forms.py", title="Sequence forms", icon=":material/swap_horiz:"),
    ],
})
sidebar.render(data.tracking_uri())
if not mode.read_only():
    data.reconcile(data.tracking_uri())  # runs whose worker died (kill -9, out of memory) end FAILED, not RUNNING
page.run()
