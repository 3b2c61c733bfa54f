"""Where runs go: resolving and checking a store, opening it, the `Store` writer, the `RunLogger` callback that
logs a training run, and `reconcile`, which ends runs whose worker vanished. The run schema is in
`rnnlib.tracking`'s docstring."""


import contextlib
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from rnnlib.core import workers
from rnnlib.core.config import ExperimentConfig, flatten_params
from rnnlib.core.errors import TrackingError
from rnnlib.core.paths import PROJECT_DIR
from rnnlib.tracking.run_logger import GRADIENT_FLOW_ARTIFACT, RunLogger  # noqa: F401 - the package's API

DEFAULT_TRACKING_URI = f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
PREDICTIONS_ARTIFACT = "predictions.npz"


# How long MLflow waits for a tracking server. Training (the CLI and the dashboard's jobs alike) rides out a
# server restart of about half a minute (4 retries, 2-16 s apart), then stops with a message; the dashboard's own
# page reads fail within seconds. Variables a user set explicitly win.
HTTP_POLICIES = {
    "training": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"},
    "dashboard": {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"},
}
_POLICY_SET: set[str] = set()  # the variables this process set itself, which its workers must not inherit

# A server killed while it answers (a restart) breaks the response after urllib3 has it, so MLflow's retries never
# see that failure ("Connection broken: IncompleteRead"). A write that is safe to repeat is sent once more after
# `RESEND_SECONDS`, through those retries: MLflow drops a metric point it already has, and params, tags,
# artifacts and a run's end are written again with the same values. Creating a run is not repeated (it would
# make two).
RESEND_SECONDS = 1.0


def apply_http_policy(kind: str) -> None:
    """Set the `HTTP_POLICIES[kind]` MLflow variables that the environment does not set already."""
    for key, value in HTTP_POLICIES[kind].items():
        if key not in os.environ:
            os.environ[key] = value
            _POLICY_SET.add(key)


def worker_environment() -> dict[str, str]:
    """This process's environment without the HTTP policy it applied to itself, for a worker it starts."""
    return {k: v for k, v in os.environ.items() if k not in _POLICY_SET}


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`uri` if given, else $MLFLOW_TRACKING_URI, else the embedded store `sqlite:///<project>/mlflow.db`."""
    return uri or os.environ.get(ENV_TRACKING_URI) or DEFAULT_TRACKING_URI


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite store URI, plain (`sqlite:///path/mlflow.db`) or in SQLite's URI form
    (`sqlite:///file:/abs/mlflow.db?mode=ro&uri=true`, e.g. read-only); None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path.removeprefix("file:") if path.startswith("file:") else path)


def artifact_root(uri: str) -> Path | None:
    """Where runs of a sqlite store keep their artifacts: `mlartifacts/` beside the database file."""
    database = sqlite_path(uri)
    return database.parent / "mlartifacts" if database else None


STORE_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql")
SQLITE_HEADER = b"SQLite format 3\x00"


def check_store(uri: str, timeout: float = 3.0) -> None:
    """Raise `TrackingError` with what to do when the store at `uri` cannot be used. Answers within `timeout`
    seconds, before MLflow would spend minutes retrying."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if ":" in uri else ""
    if scheme not in STORE_SCHEMES:
        raise TrackingError(
            f"{uri!r} is not a tracking store this lab can use: give a sqlite file (sqlite:///path/mlflow.db), a "
            f"tracking server (http://host:port) or a database ({', '.join(STORE_SCHEMES[3:])}), or unset "
            f"{ENV_TRACKING_URI} / drop --tracking-uri to use the embedded store.")
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status == 200:
                    return
                problem = f"answered HTTP {response.status}"
        except (urllib.error.URLError, OSError, ValueError) as error:
            problem = str(getattr(error, "reason", error))
        raise TrackingError(
            f"The MLflow tracking server at {uri} is not reachable ({problem}). Start it "
            f"(`mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`), or unset "
            f"{ENV_TRACKING_URI} / drop --tracking-uri to use the embedded store."
        )
    if scheme == "sqlite":
        _check_sqlite(uri)


def _check_sqlite(uri: str) -> None:
    database = sqlite_path(uri)
    if database is None or not database.name:
        raise TrackingError(f"{uri!r} names no database file; use sqlite:///path/to/mlflow.db.")
    read_only = "mode=ro" in uri
    folder = database.parent
    if not folder.is_dir():
        raise TrackingError(f"The folder of the sqlite store {uri} does not exist: create {folder} first.")
    if database.is_dir():
        raise TrackingError(f"The sqlite store {uri} is a folder, not a database file: point at a file inside "
                            "it, e.g. sqlite:///" + str(database / "mlflow.db"))
    if not database.exists():
        if read_only:
            raise TrackingError(f"The read-only sqlite store {uri} does not exist: check the path.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingError(f"Cannot create the sqlite store {database}: the folder {folder} is not writable. "
                                "Choose another folder or fix its permissions.")
        return
    try:
        with open(database, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as error:
        raise TrackingError(f"Cannot open the sqlite store {database} ({error.strerror}); fix its permissions "
                            "or point at another file.") from None
    if header and header != SQLITE_HEADER:
        raise TrackingError(f"{database} is not an SQLite database (its first bytes are not SQLite's header): "
                            "point at an MLflow store, or at a new file to start one.")
    if not read_only and not os.access(database, os.W_OK):
        raise TrackingError(f"The sqlite store {database} is read-only for this user: training needs to write "
                            "to it. Fix its permissions, or open it read-only with "
                            f"sqlite:///file:{database}?mode=ro&uri=true to browse.")


@contextlib.contextmanager
def _schema_lock(uri: str):
    """Hold an exclusive lock on a sqlite store's folder while MLflow creates or upgrades its tables, so that two
    processes opening a fresh store at once do not both create them ("table ... already exists"). A lock on the
    folder itself leaves no file behind."""
    database = sqlite_path(uri)
    if database is None or not database.parent.is_dir():
        yield
        return
    import fcntl

    descriptor = os.open(database.parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


_OPENED: set[str] = set()


def open_client(uri: str | None) -> MlflowClient:
    """An `MlflowClient` for the store at `uri` (resolved), whose tables were created safely (`_schema_lock`)
    the first time this process opened it."""
    resolved = resolve_tracking_uri(uri)
    if resolved not in _OPENED:
        from mlflow.tracking._tracking_service.utils import _get_store

        with _schema_lock(resolved):
            _get_store(resolved)  # MLflow caches the store per URI: tables are created here, once
        _OPENED.add(resolved)
    return MlflowClient(resolved)


# Written on every run so that a run whose worker vanished (kill -9, out of memory, a lost machine) can be told
# from one that is still training, and ended instead of staying RUNNING forever (`reconcile`).
WORKER_TAG = "rnnlib.worker"
HEARTBEAT_TAG = "rnnlib.heartbeat"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 15 * 60.0  # a worker on another host is gone after this long without a heartbeat


class Store:
    """A tracking store: experiments, runs and their logging, over one `MlflowClient`.

    Args:
        run_tags: tags every run opened through this store carries (e.g. the dashboard job's id).
    """

    def __init__(self, uri: str | None = None, run_tags: dict[str, str] | None = None):
        self.uri = resolve_tracking_uri(uri)
        check_store(self.uri)
        try:
            self.client = open_client(self.uri)
        except Exception as error:  # a broken database file, a server that answers garbage
            raise TrackingError(f"Cannot open the tracking store {self.uri}: {_short(error)}") from None
        self.run_tags = dict(run_tags or {})
        self.worker = workers.Worker.current()
        self._open: list[str] = []  # runs this process has open, the innermost last
        self._last_heartbeat = 0.0
        self._failure: TrackingError | None = None

    @contextlib.contextmanager
    def _writes(self):
        """`writes`, and once a tracking server has failed, fail at once: after a write the server did not take
        (its retries spent, about 30 s), ending the open runs would wait as long again for each of them;
        `reconcile` ends them when the server is back. A database file is tried every time: a write that
        failed there (a full disk) may still let the runs be ended, at no wait."""
        if self._failure is not None:
            raise self._failure
        try:
            with writes(self.uri):
                yield
        except TrackingError as error:
            if self.uri.split(":", 1)[0].lower() in ("http", "https"):
                self._failure = error
            raise

    def _resending(self, write):
        """`write()` inside `_writes`, sent once more when the server broke its response off (see
        `RESEND_SECONDS`); only for writes that are safe to repeat."""
        with self._writes():
            try:
                return write()
            except Exception as error:  # MLflow's own exception, the broken response as its context
                if not isinstance(error.__context__, requests.exceptions.ChunkedEncodingError):
                    raise
            time.sleep(RESEND_SECONDS)
            return write()

    def experiment_id(self, name: str) -> str:
        """The id of experiment `name`, created (with artifacts beside a sqlite store) when missing."""
        with self._writes():
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    self.client.restore_experiment(experiment.experiment_id)
                return experiment.experiment_id
            root = artifact_root(self.uri)
            location = (root / artifact_folder(name)).as_uri() if root else None
            return self.client.create_experiment(name, artifact_location=location)

    @contextlib.contextmanager
    def run(self, experiment_id: str, run_name: str, tags: dict | None = None, parent_run_id: str | None = None):
        """Open a run; it ends FINISHED, FAILED (an exception) or KILLED (KeyboardInterrupt / SIGTERM).

        When the store itself fails (a full disk, a stopped server) and the run cannot even be ended, a
        `TrackingError` says so; the run is then ended FAILED by the next `reconcile`, as its worker is gone."""
        run_id = self.open_run(experiment_id, run_name, tags, parent_run_id)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.end_run(run_id, "KILLED", "interrupted (Ctrl-C or SIGTERM)")
            raise
        except BaseException as error:
            self.end_run(run_id, "FAILED", f"{type(error).__name__}: {error}")
            raise
        else:
            self.end_run(run_id, "FINISHED")

    def open_run(self, experiment_id: str, run_name: str, tags: dict | None = None,
                 parent_run_id: str | None = None) -> str:
        """Create a run, kept alive by this process's heartbeat until `end_run` (`run` does both around a
        block; an executor that keeps several trials open at once calls them itself)."""
        all_tags = {"mlflow.source.git.commit": git_commit(), WORKER_TAG: self.worker.to_json(),
                    HEARTBEAT_TAG: f"{time.time():.0f}", **self.run_tags, **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        with self._writes():
            run_id = self.client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        self._open.append(run_id)
        return run_id

    def end_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        """End an open run FINISHED, FAILED or KILLED, with the reason as its `rnnlib.error` tag."""
        def end():
            if reason:
                self.client.set_tag(run_id, "rnnlib.error", reason[:5000])
            self.client.set_terminated(run_id, status)

        try:
            self._resending(end)
        finally:
            if run_id in self._open:
                self._open.remove(run_id)

    def heartbeat(self, force: bool = False) -> None:
        """Mark this process's open runs alive (at most every `HEARTBEAT_SECONDS`)."""
        now = time.time()
        if not self._open or (not force and now - self._last_heartbeat < HEARTBEAT_SECONDS):
            return
        self._last_heartbeat = now
        def beat():
            for run_id in self._open:
                self.client.set_tag(run_id, HEARTBEAT_TAG, f"{now:.0f}")

        self._resending(beat)

    def finished_params(self, experiment_id: str) -> list[dict[str, str]]:
        """The params of every trial or single run of the experiment that ended FINISHED (diverged included: a
        diverged run is a result), for `rnnlab run --only-failed`."""
        found, token = [], None
        with self._writes():
            while True:
                page = self.client.search_runs(
                    [experiment_id], "attributes.status = 'FINISHED' and tags.`rnnlib.run_kind` != 'sweep'",
                    max_results=5000, page_token=token)
                found += [dict(run.data.params) for run in page]
                token = page.token
                if not token:
                    return found

    def log_config(self, run_id: str, config: ExperimentConfig, tags: dict | None = None) -> None:
        """Params (flattened config) and tags in one batch, and the resolved YAML as `config.yaml`."""
        params = [Param(k, v) for k, v in flatten_params(config).items()]
        run_tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        def log():
            self.client.log_batch(run_id, params=params, tags=run_tags)
            self.client.log_text(run_id, config.to_yaml(), "config.yaml")

        self._resending(log)

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]  # the same points if resent
        self._resending(lambda: self.client.log_batch(run_id, metrics=batch))

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._resending(lambda: self.client.set_tag(run_id, key, value))

    def log_artifacts(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        """A file, or every file in a folder, as artifacts of the run (under `artifact_path`)."""
        if Path(path).is_dir():
            self._resending(lambda: self.client.log_artifacts(run_id, str(path), artifact_path=artifact_path))
        else:
            self._resending(lambda: self.client.log_artifact(run_id, str(path), artifact_path=artifact_path))


@contextlib.contextmanager
def writes(uri: str):
    """Store calls inside raise `TrackingError`, with what to do, when the store fails (a full disk, a stopped
    server, a locked or broken database) instead of MLflow's own exception and traceback."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as error:
        raise TrackingError(
            f"The tracking store {uri} failed while writing ({_short(error)}). Nothing more was written. Check "
            "that the disk has room and the server runs, then start the experiment again; a run it left open "
            "is ended FAILED when the dashboard next opens (its worker is gone)."
        ) from error


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


JOB_TAG = "rnnlib.job_id"  # the dashboard job that started a run (`rnnlib.run.jobs`)


def reconcile(uri: str | None, cancelled_jobs: frozenset[str] = frozenset(), now: float | None = None) -> list[dict]:
    """End the runs left RUNNING by a worker that is gone, so that no run stays RUNNING forever.

    A worker on this host is gone when its process (pid and start time, `WORKER_TAG`) no longer runs: killed
    with `kill -9`, out of memory, or it failed while the store could not be written. A worker on another host
    is gone after `STALE_SECONDS` without a heartbeat. Such a run ends KILLED when its job had been cancelled
    (`cancelled_jobs`), FAILED otherwise, at the time of its last heartbeat, with the reason in `rnnlib.error`.
    Runs logged before workers were recorded are left as they are.

    Returns one `{run_id, run_name, status, reason}` per run ended.
    """
    store = open_client(uri)
    now = time.time() if now is None else now
    experiment_ids = [e.experiment_id for e in store.search_experiments()]
    if not experiment_ids:
        return []
    ended = []
    for run in store.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=10_000):
        tags = run.data.tags
        worker = workers.Worker.from_json(tags.get(WORKER_TAG, ""))
        if worker is None:
            continue
        try:
            heartbeat = float(tags.get(HEARTBEAT_TAG, "0"))
        except ValueError:
            heartbeat = 0.0
        if worker.local and worker.alive or not worker.local and now - heartbeat < STALE_SECONDS:
            continue
        status = "KILLED" if tags.get(JOB_TAG) in cancelled_jobs else "FAILED"
        reason = (f"its worker (pid {worker.pid} on {worker.host}) ended without closing the run: it was killed "
                  "(kill -9, out of memory) or could not write to the store" if worker.local else
                  f"no heartbeat from its worker on {worker.host} for {(now - heartbeat) / 60:.0f} minutes")
        with writes(store.tracking_uri):
            store.set_tag(run.info.run_id, "rnnlib.error", reason)
            store.set_terminated(run.info.run_id, status, end_time=int(1000 * (heartbeat or now)))
        ended.append({"run_id": run.info.run_id, "run_name": run.info.run_name, "status": status, "reason": reason})
    return ended


# Grid axes every run name carries; other axes of a sweep are appended as `name=value`.
NAMED_AXES = ("model.kind", "model.cell_type", "training.truncation", "seed")


def run_name(config: ExperimentConfig, grid_point: dict | None = None) -> str:
    """`lstm-full-s0`, `gru-10/20-s2`, `ar-full-s0`: the model's label (its cell, or its kind for an AR(τ) model),
    truncation and seed, the axes runs are usually told apart by, then the sweep's other axes:
    `rnn-full-s0-clipnorm=None-recurrent_gain=1.5`."""
    extra = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in (grid_point or {}).items() if key not in NAMED_AXES]
    return "-".join([config.model.label, config.training.truncation.label, f"s{config.seed}", *extra])



def store_status(uri: str | None) -> tuple[bool, str]:
    """(reachable, a one-line description) of the tracking store, for the dashboard's sidebar."""
    resolved = resolve_tracking_uri(uri)
    try:
        check_store(resolved, timeout=2.0)
    except TrackingError as error:
        return False, str(error)
    if resolved == DEFAULT_TRACKING_URI:
        return True, "embedded sqlite store (mlflow.db in the project)"
    return True, resolved


def git_commit() -> str:
    """The project's git commit (with `-dirty` when it has uncommitted changes), or `unknown`."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


def artifact_folder(name: str) -> str:
    """A safe folder name for an experiment's artifacts: one path part of letters, digits, `_`, `-` and inner
    dots, so no name (`..`, `a/../../b`, `/etc`) reaches outside the store's artifact root."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    slug = re.sub(r"\.{2,}", "_", slug).strip("._")
    return slug or "experiment"
