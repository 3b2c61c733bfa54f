#!/usr/bin/env bash
# The hosted demo: the committed bundle (demo/bundle) loaded into a fresh store, served read-only to anyone.
# Needs only the dashboard's packages (requirements-dashboard.txt: no tensorflow, keras, jax or torch).
# Other arguments go to `streamlit run`: bash scripts/demo.sh --server.port 8080 --server.address 0.0.0.0
set -euo pipefail
cd "$(dirname "$0")/.."
RNNLAB_REQUIREMENTS=${RNNLAB_REQUIREMENTS:-requirements-dashboard.txt} source scripts/env.sh
store=${RNNLAB_DEMO_STORE:-$(mktemp -d)}
uri="sqlite:///$store/mlflow.db"
.venv/bin/rnnlab import demo/bundle --tracking-uri "$uri" >&2
exec .venv/bin/rnnlab lab --read-only --tracking-uri "$uri" "$@"
