"""Where the project's own files are: the checkout rnnlib runs from (an editable install), its experiments, and
the default places for the embedded store, dashboard jobs and uploads beside them."""

from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
EXPERIMENTS_DIR = PROJECT_DIR / "experiments"
