#!/usr/bin/env bash
# Runs the whole test suite, creating .venv with requirements-dev.txt first if needed. Extra args go to pytest.
RNNLAB_REQUIREMENTS=requirements-dev.txt source "$(dirname "$0")/env.sh"
exec .venv/bin/python -m pytest "$@"
