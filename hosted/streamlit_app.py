"""Entrypoint of the hosted, read-only demo on Streamlit Community Cloud (or any host that runs
`streamlit run hosted/streamlit_app.py` from the repository root): the committed bundle in its own store, and
the lab's dashboard (`app.py`) over it with nothing to train, upload or change. Its packages are
`hosted/requirements.txt` (the dashboard alone: no tensorflow, keras, jax or torch)."""

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # rnnlib and ui straight from the checkout: the host installs no project

os.environ["RNNLAB_READ_ONLY"] = "1"
from rnnlib.run import hosted  # noqa: E402

os.environ.setdefault("MLFLOW_TRACKING_URI", hosted.demo_store())
runpy.run_path(str(ROOT / "app.py"), run_name="__main__")
