"""The pieces every other package builds on: config, errors, truncation schedules, the numpy cell equations,
records and training hooks. numpy, pandas, pydantic and yaml only: no keras, no mlflow, no streamlit."""
