"""Streamlit helpers shared by the pages: cached store queries, the sidebar, widgets that keep view state in
the URL. Everything with numbers or figures lives in `rnnlib`; this package only draws and reads widgets."""
