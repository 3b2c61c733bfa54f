"""The house rules of shared/STYLE.md and DESIGN.md, checked on the source.

The Keras boundary is a folder: only `rnnlib/worker/` may import keras, tensorflow, jax or torch, at any level
(inside functions too), and only modules that run training import `rnnlib.worker`.
"""

import ast
import subprocess
import sys

import pytest

from conftest import PROJECT_DIR

HEAVY = ("keras", "tensorflow", "jax", "torch")
# The modules outside the worker package that may import it: the sweep is what a training process runs.
WORKER_IMPORTERS = {"rnnlib/run/sweep.py", "rnnlib/run/trial_worker.py"}


def imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):  # every level: module top, functions, methods
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def library_files():
    return sorted((PROJECT_DIR / "rnnlib").rglob("*.py"))


def dashboard_files():
    return [PROJECT_DIR / "app.py", *sorted((PROJECT_DIR / "app_pages").glob("*.py")),
            *sorted((PROJECT_DIR / "ui").rglob("*.py"))]


def relative(path):
    return path.relative_to(PROJECT_DIR).as_posix()


def is_worker(path):
    return relative(path).startswith("rnnlib/worker/")


def test_rnnlib_never_imports_streamlit():
    offenders = [relative(p) for p in library_files()
                 if any(m.split(".")[0] == "streamlit" for m in imported_modules(p))]
    assert offenders == []


def test_only_the_tracking_package_imports_mlflow():
    importers = {relative(p) for p in library_files() if any(m.split(".")[0] == "mlflow" for m in imported_modules(p))}
    assert importers and all(p.startswith("rnnlib/tracking/") for p in importers), importers


def test_no_module_outside_the_worker_package_imports_a_framework_at_any_level():
    offenders = {relative(p): m for p in [*library_files(), *dashboard_files()] if not is_worker(p)
                 for m in imported_modules(p) if m.split(".")[0] in HEAVY}
    assert offenders == {}


def test_the_worker_package_is_imported_only_where_training_runs():
    importers = {relative(p) for p in [*library_files(), *dashboard_files()] if not is_worker(p)
                 and any(m.startswith("rnnlib.worker") for m in imported_modules(p))}
    assert importers <= WORKER_IMPORTERS, importers - WORKER_IMPORTERS


def test_training_code_is_written_against_keras_not_tf():
    for path in (PROJECT_DIR / "rnnlib" / "worker").glob("*.py"):
        if path.name == "backends.py":  # the one module that talks to each backend directly
            continue
        assert not any(m.split(".")[0] in ("tensorflow", "jax", "torch") for m in imported_modules(path)), path.name


def test_dashboard_files_never_import_mlflow():
    offenders = {relative(p): m for p in dashboard_files() for m in imported_modules(p) if m.split(".")[0] == "mlflow"}
    assert offenders == {}


def light_modules():
    """Every module outside the worker package and the worker's importers, by dotted name."""
    names = []
    for path in [*library_files(), *sorted((PROJECT_DIR / "ui").rglob("*.py"))]:
        if is_worker(path) or relative(path) in WORKER_IMPORTERS or path.name == "__main__.py":
            continue
        parts = path.relative_to(PROJECT_DIR).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_light_module_is_listed():
    assert {"rnnlib.analysis.predictions", "rnnlib.core.rollouts", "ui.prediction_views", "rnnlib.run.jobs",
            "rnnlib.run.cli", "rnnlib.tracking.bundles"} <= set(light_modules())


def test_light_modules_do_not_import_a_framework():
    """Import all of them in one fresh interpreter: none may pull keras, tensorflow, jax or torch in."""
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {light_modules()!r}];"
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_shipped_streamlit_config_shows_no_tracebacks_and_watches_no_files():
    import tomllib

    settings = tomllib.loads((PROJECT_DIR / ".streamlit" / "config.toml").read_text())
    assert settings["client"]["showErrorDetails"] in ("type", "none")  # "full" put server tracebacks in the page
    assert settings["server"]["fileWatcherType"] == "none"  # the watcher flooded the log while jobs wrote
    assert settings["client"]["toolbarMode"] == "viewer"


def test_process_identity_and_machine_readings_each_live_in_one_module():
    importers = {relative(p) for p in library_files() if any(m.split(".")[0] == "psutil" for m in imported_modules(p))}
    assert importers == {"rnnlib/core/workers.py", "rnnlib/tracking/system.py"}  # who a process is; what it used


@pytest.mark.parametrize("folder", ["core", "tasks", "analysis", "viz"])
def test_pure_packages_import_neither_tracking_nor_run(folder):
    """core, tasks, analysis and viz are numpy/pandas/plotly only: they never reach for the store or the jobs."""
    offenders = {relative(p): m for p in (PROJECT_DIR / "rnnlib" / folder).rglob("*.py") for m in imported_modules(p)
                 if m.startswith(("rnnlib.tracking", "rnnlib.run", "mlflow"))}
    assert offenders == {}


def test_the_dashboard_only_requirements_are_the_runtime_ones_without_the_worker():
    def pins(name):
        lines = (PROJECT_DIR / name).read_text().splitlines()
        return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}

    full, dashboard = pins("requirements.txt"), pins("requirements-dashboard.txt")
    # the frameworks, the GPU reader only a training process uses (`rnnlib.tracking.system`), Ray (the ray
    # executor) and the PostgreSQL driver (`rnnlab store up`): a hosted demo trains nothing and serves a bundle
    worker = {pin for pin in full if pin.split("==")[0] in ("tensorflow", "keras", "jax", "torch", "nvidia-ml-py",
                                                            "ray", "psycopg2-binary")}
    assert worker and dashboard == full - worker  # the same versions, and no framework


def test_the_tracking_packages_api_is_the_names_it_imports_for_type_checkers_each_its_modules_own_object():
    """`rnnlib.tracking` loads its API on first use (`__getattr__`, so that a worker never imports mlflow): its
    `__all__`, the names under `TYPE_CHECKING` and what an attribute lookup answers must be the same names."""
    source = PROJECT_DIR / "rnnlib" / "tracking" / "__init__.py"
    checked = {alias.name: node.module for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
               if isinstance(node, ast.ImportFrom)
               and node.module in ("rnnlib.tracking.queries", "rnnlib.tracking.store") for alias in node.names}
    code = ("import importlib, sys, rnnlib.tracking as t\n"
            "assert 'mlflow' not in sys.modules\n"
            "print(sorted(t.__all__))\n"
            f"print(all(getattr(t, n) is getattr(importlib.import_module(m), n) for n, m in {checked!r}.items()))\n"
            "print(hasattr(t, 'TrackingError'), hasattr(t, 'mlflow'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PROJECT_DIR).stdout.splitlines()
    assert out == [str(sorted(checked)), "True", "False False"]  # store's own imports are not the package's
