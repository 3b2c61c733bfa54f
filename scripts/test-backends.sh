#!/usr/bin/env bash
# Runs the backend-sensitive tests (cells vs reference equations, truncated BPTT semantics) on the JAX and
# PyTorch backends too. Installs requirements-backends.txt (JAX) and, when its CPU wheel is available locally,
# torch 2.13.0 into .venv first.
RNNLAB_REQUIREMENTS=requirements-dev.txt source "$(dirname "$0")/env.sh"
.venv/bin/python -m pip install --quiet -r requirements-backends.txt
backends="jax"
if .venv/bin/python -m pip install --quiet --no-index --no-deps torch==2.13.0 >/dev/null 2>&1; then
  .venv/bin/python -m pip install --quiet torch==2.13.0  # its small pure-Python dependencies
  backends="jax torch"
else
  echo "No local CPU wheel of torch 2.13.0: skipping the PyTorch backend." >&2
fi
status=0
for backend in $backends; do
  echo "== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend .venv/bin/python -m pytest -q tests/test_cells.py tests/test_truncation.py tests/test_gradients.py \
    tests/test_truncation_bias.py "$@" || status=1
done
exit $status
