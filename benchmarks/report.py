"""Static reports: how long `rnnlab report` takes and how big its file is, for every demo experiment and view.

    .venv/bin/python benchmarks/report.py [--smoke]

Imports the committed bundle `demo/bundle` into a fresh store, then writes a Compare and a Gradient flow report of
each experiment (`--smoke`: one experiment, Compare only) through the CLI, as a user would, and prints the wall
time of each command (Python start-up included) and the file size. About 4.7 MB of every file is plotly.js itself.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rnnlib.core.paths import PROJECT_DIR

EXPERIMENTS = ("demo", "exploding", "stocks", "waveform")


def rnnlab(*args: str) -> tuple[float, str]:
    """(seconds, the error it printed or ""): exit code 2 is a view the runs cannot show; anything else fails."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "rnnlib", *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"})
    if result.returncode not in (0, 2):
        raise SystemExit(f"rnnlab {' '.join(args)} failed:\n{result.stderr}")
    return time.perf_counter() - start, result.stderr.strip() if result.returncode else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one experiment, Compare only (seconds)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        seconds, _ = rnnlab("import", str(PROJECT_DIR / "demo" / "bundle"), "--tracking-uri", uri)
        print(f"import demo/bundle: {seconds:.1f} s")
        views = ("compare",) if args.smoke else ("compare", "gradients")
        for experiment in EXPERIMENTS[:1] if args.smoke else EXPERIMENTS:
            for view in views:
                out = Path(folder) / f"{view}-{experiment}.html"
                seconds, error = rnnlab("report", "--experiment", experiment, "--view", view, "--out", str(out),
                                        "--tracking-uri", uri)
                if error:
                    print(f"  {view:9s} {experiment:10s} none: {error}")
                    continue
                assert out.stat().st_size > 1e6 and "Plotly.newPlot" in out.read_text()
                print(f"  {view:9s} {experiment:10s} {seconds:5.1f} s  {out.stat().st_size / 1e6:4.1f} MB")


if __name__ == "__main__":
    main()
