"""Figures as pure functions: DataFrame -> plotly Figure, no Streamlit calls."""
