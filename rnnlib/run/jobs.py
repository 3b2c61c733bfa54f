"""Training jobs launched from the dashboard: subprocesses of the CLI, recorded on disk so that every browser
tab and every rerun sees the same jobs.

A job is `python -m rnnlib run <resolved yaml> --tracking-uri <uri> --quiet` in its own process group; its
record (`<jobs dir>/<id>.json`), config (`<id>.yaml`) and output (`<id>.log`) sit in `.rnnlab/jobs/` (or
$RNNLAB_JOBS_DIR). A job trains on the `processes` executor (one worker unless its YAML asks for more), so that
Cancel (SIGTERM to the job) kills its worker within about a second, even inside a long batch, and ends its open
runs KILLED.

At most `max_jobs()` jobs train at once ($RNNLAB_MAX_JOBS, default 1: a sweep already uses the cores it is
given): a job's process first waits for a free slot (`wait_for_slot`), in the order the jobs were started, and
only then opens runs. A slot is an exclusive lock on a file under `<jobs dir>/slots/`, so the system frees it
when the process ends, however it ends; `<id>.started` records that a job has its slot.
"""

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from rnnlib import tracking
from rnnlib.core import divergence, workers
from rnnlib.core.config import ExperimentConfig, expand_grid
from rnnlib.core.errors import ConfigError
from rnnlib.core.paths import PROJECT_DIR
from rnnlib.tracking import JOB_TAG


def jobs_dir() -> Path:
    return Path(os.environ.get("RNNLAB_JOBS_DIR", PROJECT_DIR / ".rnnlab" / "jobs"))


@dataclasses.dataclass(frozen=True)
class Job:
    """A recorded job. Every run it starts carries its id as the tag `rnnlib.job_id`, so its progress is read
    from exactly its own runs, however many other jobs log to the same experiment."""

    job_id: str
    pid: int
    experiment: str
    tracking_uri: str
    started: float  # unix seconds
    num_runs: int
    config_path: str
    log_path: str
    num_epochs: int = 0  # planned, over all its runs
    process_started: float | None = None  # the process's start time, so a reused pid is not mistaken for it
    cancelled: float | None = None  # when a stop was requested
    estimate: str = ""  # what it will cost (`Estimate.describe`), shown while it waits

    @property
    def running(self) -> bool:
        return workers.alive(self.pid, self.process_started)

    @property
    def has_slot(self) -> bool:
        """Whether the job got its slot and started training (else it is queued, or ended while queued)."""
        return (jobs_dir() / f"{self.job_id}.started").exists()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


# What one job started from the browser may ask for (the command line has only the config's own limits): a stranger's
# or a slip's launch must not take the machine for days. Each: (what, largest, how to read it from a trial config).
DASHBOARD_LIMITS = (
    ("runs", 200, None),
    ("units per layer", 1024, lambda c: c.model.units),
    ("layers", 4, lambda c: c.model.num_layers),
    ("batch size", 4096, lambda c: c.training.batch_size),
    ("epochs", 2000, lambda c: c.training.epochs),
    ("batches per epoch", 10_000, lambda c: c.training.steps_per_epoch),
    ("updates in all", 2_000_000, None),
    # a probe spectral-norms T matrices of units x units per probe sequence: one per epoch of the most epochs
    ("gradient-flow probes per run", 2_001, lambda c: c.training.num_probes() if c.model.kind == "recurrent" else 0),
)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """What a job will train: its runs, epochs and updates, and (from finished runs of the same model on this
    store) about how long that takes, or None when no such run exists yet."""

    runs: int
    epochs: int
    updates: int
    sequences: int
    seconds: float | None

    def describe(self) -> str:
        pace = ("no time estimate yet (no finished run of this model here)" if self.seconds is None
                else f"about {describe_duration(self.seconds)} at this machine's recent pace")
        return (f"{self.runs:,} run{'s' if self.runs != 1 else ''}, {self.epochs:,} epochs, {self.updates:,} "
                f"batches of sequences ({self.sequences:,} sequences), {pace}")


def estimate(config: ExperimentConfig, pace: pd.DataFrame | None = None) -> Estimate:
    """`config`'s cost: runs x epochs x batches, and the time it takes from `pace` (`tracking.recent_pace`):
    per run, its updates times the median seconds per update of past runs of the same task, model, size and
    batch (building and tracing included, one worker)."""
    points = [c for _, c in expand_grid(config)]
    updates = [c.training.epochs * c.training.steps_per_epoch for c in points]
    seconds: float | None = 0.0
    for trial, count in zip(points, updates):
        per_update = _seconds_per_update(trial, pace)
        seconds = None if per_update is None or seconds is None else seconds + per_update * count
    return Estimate(len(points), sum(c.training.epochs for c in points), sum(updates),
                    sum(n * c.training.batch_size for n, c in zip(updates, points)), seconds)


def _seconds_per_update(config: ExperimentConfig, pace: pd.DataFrame | None) -> float | None:
    if pace is None or pace.empty:
        return None
    wanted = {"task.name": config.task.name, "model.label": config.model.label, "model.units": str(config.model.units),
              "model.num_layers": str(config.model.num_layers), "training.batch_size": str(config.training.batch_size)}
    matches = pace
    for key, value in wanted.items():
        matches = matches[matches[key] == value]
    return float(matches["seconds_per_update"].median()) if len(matches) else None


def check_dashboard_limits(config: ExperimentConfig) -> None:
    """Raise `ConfigError` naming every `DASHBOARD_LIMITS` the experiment exceeds, and where to run it instead."""
    points = [c for _, c in expand_grid(config)]
    found = {"runs": len(points), "updates in all": sum(c.training.epochs * c.training.steps_per_epoch
                                                         for c in points)}
    problems = []
    for what, largest, read in DASHBOARD_LIMITS:
        value = found[what] if read is None else max(read(c) for c in points)
        if value > largest:
            problems.append(f"{what}: {value:,} (at most {largest:,} here)")
    if problems:
        raise ConfigError([*problems, "a job started from the dashboard may be no larger: make it smaller, or run "
                           "it from the command line (`rnnlab run FILE.yaml`), which has no such limits"])


def describe_duration(seconds: float) -> str:
    """`1 h 05 min`, `3 min 07 s`, `42 s`: a job's estimate and its time left."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def launch(config: ExperimentConfig, tracking_uri: str, estimated: Estimate | None = None) -> Job:
    """Start training `config` (every grid point) in a background process; returns at once."""
    folder = jobs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    config_path, log_path = folder / f"{job_id}.yaml", folder / f"{job_id}.log"
    config_path.write_text(config.to_yaml(), encoding="utf-8")
    command = [sys.executable, "-m", "rnnlib", "run", str(config_path), "--tracking-uri", tracking_uri, "--quiet",
               "--job-id", job_id]
    if config.execution.executor == "sequential":  # one worker process: Cancel kills it even inside a batch
        command += ["--executor", "processes", "--workers", "1"]
    env = tracking.worker_environment()  # rnnlib is installed (`pip install -e .`): no PYTHONPATH
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    points = expand_grid(config)
    job = Job(job_id, process.pid, config.name, tracking_uri, time.time(), len(points), str(config_path),
              str(log_path), num_epochs=sum(c.training.epochs for _, c in points),
              process_started=workers.start_time(process.pid),
              estimate=estimated.describe() if estimated else "")
    _write(job)
    return job


def _write(job: Job) -> None:
    path = jobs_dir() / f"{job.job_id}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(dataclasses.asdict(job)), encoding="utf-8")
    partial.replace(path)  # atomic: a reader never sees half a record


def list_jobs(tracking_uri: str | None = None) -> list[Job]:
    """Every recorded job (optionally only those logging to `tracking_uri`), newest first."""
    jobs = []
    for path in sorted(jobs_dir().glob("*.json"), reverse=True):
        try:
            job = Job(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue  # a half-written or foreign file is not a job
        if tracking_uri is None or job.tracking_uri == tracking_uri:
            jobs.append(job)
    return jobs


def cancel(job: Job) -> bool:
    """Ask the job to stop (SIGTERM to its process group): the open run ends KILLED. False if it had ended."""
    if not job.running:
        return False
    _write(dataclasses.replace(job, cancelled=time.time()))
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def max_jobs() -> int:
    """How many jobs may train at once: $RNNLAB_MAX_JOBS, default 1."""
    try:
        return max(1, int(os.environ.get("RNNLAB_MAX_JOBS", "1")))
    except ValueError:
        return 1


def queue(recorded: list[Job]) -> list[Job]:
    """The jobs waiting for a slot, first in line first."""
    return sorted((job for job in recorded if job.running and not job.has_slot), key=lambda job: job.started)


def wait_for_slot(job_id: str, check=lambda: None, poll: float = 0.5, patience: float = 10.0):
    """Block until job `job_id` is first in line and a slot is free, then hold that slot until this process
    ends; returns the open lock file (keep it). `check` is called while waiting (it raises to stop waiting,
    e.g. on a cancel). A job whose record never shows up (started by hand) queues for `patience` seconds."""
    folder = jobs_dir() / "slots"
    folder.mkdir(parents=True, exist_ok=True)
    since = time.time()
    while True:
        check()
        line = queue(list_jobs())
        first = line[0].job_id == job_id if line else True
        if first or not any(job.job_id == job_id for job in line) and time.time() - since > patience:
            for number in range(max_jobs()):
                handle = open(folder / f"{number}.lock", "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                (jobs_dir() / f"{job_id}.started").write_text(str(number), encoding="utf-8")
                return handle
        time.sleep(poll)


def forget(job: Job) -> None:
    """Remove a finished job's record, config, log and slot mark."""
    for suffix in (".json", ".yaml", ".log", ".started"):
        (jobs_dir() / f"{job.job_id}{suffix}").unlink(missing_ok=True)


PROGRESS_COLUMNS = ["run", "status", "epoch", "of", "val_loss", "eta_s"]


def progress(job: Job, runs: pd.DataFrame, now: float | None = None) -> tuple[pd.DataFrame, float, float | None]:
    """Where a job stands, read from its own runs (those tagged with its id) of its experiment
    (`rnnlib.tracking.runs_frame`).

    Returns a table (run, status, epoch, of, val_loss, eta_s) of the runs the job started, the fraction of its
    planned epochs done, and the estimated seconds left: None before its first epoch and once it has ended.
    A run that ended (finished, diverged) counts all its planned epochs; a failed or killed one the epochs it
    trained. The estimate is the job's wall time per epoch so far, times the epochs left.
    """
    tag = f"tags.{JOB_TAG}"
    if runs.empty or tag not in runs or "params.training.epochs" not in runs:
        return pd.DataFrame(columns=PROGRESS_COLUMNS), 0.0, None
    mine = runs[(runs[tag] == job.job_id) & (runs["kind"] != "sweep")].sort_values("start_time")
    column = lambda name: pd.to_numeric(mine.get(name, pd.Series(np.nan, mine.index)), errors="coerce")  # noqa: E731
    planned = column("params.training.epochs").fillna(0)
    trained = column("metrics.epoch").fillna(0.0)
    diverged = column(f"tags.{divergence.TAG}")
    done = trained.where(mine["status"] != "FINISHED", planned)
    total = job.num_epochs or int(planned.sum()) or 1
    fraction = min(float(done.sum()) / total, 1.0)
    per_epoch = None  # wall seconds per epoch so far, start-up and evaluation included
    if job.running and done.sum() > 0:
        per_epoch = ((now or time.time()) - job.started) / float(done.sum())
    eta = None if per_epoch is None else max(total - float(done.sum()), 0.0) * per_epoch
    running = mine["status"] == "RUNNING"
    table = pd.DataFrame({
        "run": mine["run_name"],
        "status": [divergence.describe(epoch) if np.isfinite(epoch) else state.lower()
                   for state, epoch in zip(mine["status"], diverged)],
        "epoch": trained.astype(int), "of": planned.astype(int),
        "val_loss": column("metrics.val_loss").where(~np.isfinite(diverged)),
        "eta_s": ((planned - trained) * (per_epoch or np.nan)).where(running),
    })
    return table.reset_index(drop=True), fraction, eta


def reconcile(tracking_uri: str) -> list[dict]:
    """End the runs of `tracking_uri` whose worker is gone (`rnnlib.tracking.reconcile`): KILLED when their job
    had been cancelled, FAILED otherwise."""
    cancelled = frozenset(job.job_id for job in list_jobs(tracking_uri) if job.cancelled)
    return tracking.reconcile(tracking_uri, cancelled)
