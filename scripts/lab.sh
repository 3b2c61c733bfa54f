#!/usr/bin/env bash
# Starts the lab on the embedded store (sqlite:///<project>/mlflow.db), creating .venv first if needed.
# Until the dashboard lands this trains the default experiment and prints where its runs went.
source "$(dirname "$0")/env.sh"
exec .venv/bin/python -m rnnlib run experiments/adding_cells.yaml "$@"
