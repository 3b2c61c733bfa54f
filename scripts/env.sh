# Sourced by the other scripts: makes sure .venv exists with the requirements installed.
# Re-installs only when a requirements file changed. PYTHON picks the interpreter (default python3, 3.11+).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
requirements=${RNNLAB_REQUIREMENTS:-requirements.txt}
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv ..." >&2
  "${PYTHON:-python3}" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$requirements")"
wanted=$(cat requirements*.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "Installing $requirements into .venv (first time: a few minutes) ..." >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$requirements"
  echo "$wanted" > "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
