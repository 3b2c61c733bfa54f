"""Training jobs launched from the dashboard: subprocesses of the CLI, recorded on disk so that every browser
tab and every rerun sees the same jobs.

A job is `python -m rnnlib run <resolved yaml> --tracking-uri <uri> --quiet` in its own process group; its
record (`<jobs dir>/<id>.json`), config (`<id>.yaml`) and output (`<id>.log`) sit in `.rnnlab/jobs/` (or
$RNNLAB_JOBS_DIR). Cancelling sends SIGTERM, which the CLI turns into KILLED runs.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

from rnnlib.config import ExperimentConfig, expand_grid

PROJECT_DIR = Path(__file__).resolve().parent.parent


def jobs_dir() -> Path:
    return Path(os.environ.get("RNNLAB_JOBS_DIR", PROJECT_DIR / ".rnnlab" / "jobs"))


@dataclasses.dataclass(frozen=True)
class Job:
    job_id: str
    pid: int
    experiment: str
    tracking_uri: str
    started: float  # unix seconds
    num_runs: int
    config_path: str
    log_path: str

    @property
    def running(self) -> bool:
        return _alive(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = Path(self.log_path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.replace("\r", "\n").splitlines()[-lines:])


def launch(config: ExperimentConfig, tracking_uri: str) -> Job:
    """Start training `config` (every grid point) in a background process; returns at once."""
    folder = jobs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    config_path, log_path = folder / f"{job_id}.yaml", folder / f"{job_id}.log"
    config_path.write_text(config.to_yaml(), encoding="utf-8")
    command = [sys.executable, "-m", "rnnlib", "run", str(config_path), "--tracking-uri", tracking_uri, "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_DIR), os.environ.get("PYTHONPATH")])))
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    job = Job(job_id, process.pid, config.name, tracking_uri, time.time(), len(expand_grid(config)),
              str(config_path), str(log_path))
    (folder / f"{job_id}.json").write_text(json.dumps(dataclasses.asdict(job)), encoding="utf-8")
    return job


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
    try:
        os.killpg(job.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def forget(job: Job) -> None:
    """Remove a finished job's record, config and log."""
    for suffix in (".json", ".yaml", ".log"):
        (jobs_dir() / f"{job.job_id}{suffix}").unlink(missing_ok=True)


def progress(job: Job, runs: pd.DataFrame) -> tuple[pd.DataFrame, float, float | None]:
    """Where a job stands, read from its experiment's runs (`rnnlib.tracking.runs_frame`).

    Returns a table (run, status, epoch, of, val_loss, eta_s) of the runs the job started, the fraction of all
    its epochs done, and the estimated seconds left (None before the first epoch is logged).
    """
    columns = ["run", "status", "epoch", "of", "val_loss", "eta_s"]
    if runs.empty or "params.training.epochs" not in runs:
        return pd.DataFrame(columns=columns), 0.0, None
    mine = runs[(runs["kind"] != "sweep") & (runs["start_time"] >= pd.to_datetime(job.started - 2, unit="s"))]
    mine = mine.sort_values("start_time")
    metric = lambda name: mine[f"metrics.{name}"] if f"metrics.{name}" in mine else pd.Series(float("nan"), mine.index)  # noqa: E731
    epochs = pd.to_numeric(mine["params.training.epochs"], errors="coerce")
    epoch = metric("epoch").fillna(0.0)
    seconds = metric("epoch_seconds")
    done = (mine["status"] != "RUNNING").astype(float).where(mine["status"] != "RUNNING", epoch / epochs)
    table = pd.DataFrame({
        "run": mine["run_name"], "status": mine["status"], "epoch": epoch.astype(int), "of": epochs,
        "val_loss": metric("val_loss"), "eta_s": ((epochs - epoch) * seconds).where(mine["status"] == "RUNNING"),
    })
    fraction = float(done.sum() / max(job.num_runs, 1))
    per_run = float((epochs * seconds).dropna().mean()) if seconds.notna().any() else None
    if per_run is None:
        return table.reset_index(drop=True), min(fraction, 1.0), None
    waiting = max(job.num_runs - len(mine), 0)
    eta = float(table["eta_s"].fillna(0).sum()) + waiting * per_run
    return table.reset_index(drop=True), min(fraction, 1.0), eta


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)  # reaps our own child once it exits
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # started by another process (another server, an earlier session): ask the OS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True
