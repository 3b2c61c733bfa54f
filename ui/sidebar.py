"""The sidebar every page shares: which store, reachable or not, which backend and device."""

import streamlit as st

from rnnlib import tracking
from rnnlib.core import machine
from ui import mode


@st.cache_data(ttl=60, show_spinner=False)
def _machine() -> tuple[str, str]:
    """The Keras backend a worker would pick and the device it would train on (asking `nvidia-smi` once)."""
    device = machine.device_without_framework()
    return machine.pick_backend(has_gpu=device != "cpu")[0], device


def render(uri: str) -> None:
    with st.sidebar:
        st.markdown("### Tracking store")
        ok, description = tracking.store_status(uri)
        if ok:
            st.success(description, icon=":material/check_circle:")
        else:
            st.error(description, icon=":material/warning:")
        if description != uri:
            st.caption(f"`{uri}`")
        if mode.read_only():
            st.info("Read-only: this lab shows its runs; nothing can be trained or changed here.",
                    icon=":material/visibility:")
        st.markdown("### Training")
        backend, device = _machine()
        st.markdown(f"Keras backend: **{backend}**  \nDevice: **{device}**")
        st.caption("Training runs in worker processes; this dashboard never loads Keras.")
