"""The hosted demo on a host that runs only `streamlit run` (Streamlit Community Cloud): the committed bundle
`demo/bundle` loaded once per server process into a store of its own, served read-only. `scripts/demo.sh` does
the same from a shell."""

import hashlib
import tempfile
import threading
from pathlib import Path

from rnnlib.core.paths import PROJECT_DIR

BUNDLE = PROJECT_DIR / "demo" / "bundle"
_lock = threading.Lock()  # every browser session runs the entrypoint: one of them imports, the others wait


def demo_store(bundle: Path = BUNDLE, folder: Path | None = None) -> str:
    """The tracking URI of a store holding `bundle`, imported the first time it is asked for (a folder named by
    the bundle's manifest hash under the temp folder, so a new bundle gets a new store); later calls, from any
    session or a restarted server, reuse it."""
    digest = hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()[:12]
    folder = folder or Path(tempfile.gettempdir()) / f"rnnlab-demo-{digest}"
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    done = folder / "imported"
    with _lock:
        if not done.exists():
            from rnnlib.tracking import bundles

            folder.mkdir(parents=True, exist_ok=True)
            bundles.import_bundle(bundle, uri)  # adds nothing a half-finished import already added
            done.touch()
    return uri
