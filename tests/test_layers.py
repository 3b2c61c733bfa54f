"""The house rules of shared/STYLE.md and DESIGN.md, checked on the source."""

import ast
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR

LIGHT_MODULES = ["rnnlib.config", "rnnlib.tasks", "rnnlib.truncation", "rnnlib.probes", "rnnlib.tracking",
                 "rnnlib.sweep", "rnnlib.cli", "rnnlib.training", "rnnlib.compare", "rnnlib.plots", "rnnlib.views",
                 "rnnlib.jobs", "rnnlib.lessons", "rnnlib.diagrams", "rnnlib.backend", "rnnlib.divergence",
                 "rnnlib.workers", "rnnlib.bundles", "rnnlib.predictions", "rnnlib.rollouts", "ui.prediction_views",
                 "ui.data", "ui.sidebar", "ui.compare_controls", "ui.jobs_panel", "ui.train_form", "ui.scope"]


def imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def library_files():
    return sorted((PROJECT_DIR / "rnnlib").rglob("*.py"))


def test_rnnlib_never_imports_streamlit():
    offenders = [p.name for p in library_files() if any(m.split(".")[0] == "streamlit" for m in imported_modules(p))]
    assert offenders == []


def test_only_tracking_imports_mlflow():
    importers = {p.relative_to(PROJECT_DIR).as_posix() for p in library_files()
                 if any(m.split(".")[0] == "mlflow" for m in imported_modules(p))}
    assert importers == {"rnnlib/tracking.py"}


def test_training_code_is_written_against_keras_not_tf():
    for name in ("training.py", "models.py"):
        modules = set(imported_modules(PROJECT_DIR / "rnnlib" / name))
        assert not any(m.split(".")[0] == "tensorflow" for m in modules), name


def test_dashboard_files_never_import_keras_tensorflow_or_mlflow():
    files = [PROJECT_DIR / "app.py", *sorted((PROJECT_DIR / "app_pages").glob("*.py")),
             *sorted((PROJECT_DIR / "ui").glob("*.py"))]
    offenders = {p.name: m for p in files for m in imported_modules(p)
                 if m.split(".")[0] in ("keras", "tensorflow", "mlflow", "jax", "torch")}
    assert offenders == {}


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_light_modules_do_not_import_keras_or_tensorflow(module):
    code = (f"import sys, {module}; heavy = [m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules];"
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_shipped_streamlit_config_shows_no_tracebacks_and_watches_no_files():
    import tomllib

    settings = tomllib.loads((PROJECT_DIR / ".streamlit" / "config.toml").read_text())
    assert settings["client"]["showErrorDetails"] in ("type", "none")  # "full" put server tracebacks in the page
    assert settings["server"]["fileWatcherType"] == "none"  # the watcher flooded the log while jobs wrote
    assert settings["client"]["toolbarMode"] == "viewer"


def test_process_identity_lives_in_one_module():
    importers = {p.relative_to(PROJECT_DIR).as_posix() for p in library_files()
                 if any(m.split(".")[0] == "psutil" for m in imported_modules(p))}
    assert importers == {"rnnlib/workers.py"}  # process identity lives in one place
