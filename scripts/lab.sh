#!/usr/bin/env bash
# Starts the dashboard on the embedded store (sqlite:///<project>/mlflow.db; MLFLOW_TRACKING_URI overrides),
# creating .venv first if needed. On an empty store it also starts the demo sweep, so the first page has
# something to show. Extra arguments go to `streamlit run` (e.g. --server.port 8502).
source "$(dirname "$0")/env.sh"
exec .venv/bin/rnnlab lab "$@"
