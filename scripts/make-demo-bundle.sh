#!/usr/bin/env bash
# Rebuilds the committed hosted-demo bundle, demo/bundle, from the project's own experiment YAMLs with the
# project's own CLI: train each into a fresh store, then export them. About 8 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
RNNLAB_REQUIREMENTS=requirements.txt source scripts/env.sh
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
uri="sqlite:///$store/mlflow.db"
for experiment in demo exploding stocks waveform; do
  .venv/bin/rnnlab run "experiments/$experiment.yaml" --tracking-uri "$uri" --quiet
done
rm -rf demo/bundle
.venv/bin/rnnlab export --tracking-uri "$uri" --out demo/bundle \
  --experiment demo --experiment exploding --experiment stocks --experiment waveform
du -sh demo/bundle
