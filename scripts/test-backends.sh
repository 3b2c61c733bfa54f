#!/usr/bin/env bash
# Runs the backend-sensitive tests (cells vs reference equations, truncated BPTT semantics) on the JAX and
# PyTorch backends too. Installs requirements-backends.txt into .venv first.
RNNLAB_REQUIREMENTS=requirements-dev.txt source "$(dirname "$0")/env.sh"
.venv/bin/python -m pip install --quiet -r requirements-backends.txt
status=0
for backend in jax torch; do
  echo "== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q tests/test_cells.py tests/test_truncation.py "$@" || status=1
done
exit $status
