"""A worker process of the `processes` executor (`rnnlib.run.executors`): trains the trials its parent sends,
one at a time, and writes nothing itself.

Everything a trial logs goes back over the worker's pipe as messages that the parent applies to the real store,
so a sqlite store still has one writer and "database is locked" cannot happen. Messages, worker to parent:

- `("call", method, args)`: a `rnnlib.tracking.Store` logging call (`log_config`, `log_metrics`, `set_tag`);
- `("artifacts", run_id, files, artifact_path, is_folder)`: `log_artifacts` with the files' bytes, as the
  worker's temporary files are gone by the time the parent writes them;
- `("event", index, hook, args)`: a training callback hook (`on_batch_end`, ...), for the parent's progress
  bars and stop requests;
- `("done", index, status, baseline, history, error)`: the trial ended, FINISHED or FAILED.

Parent to worker: `("trial", index, config, point, run_id)`, or `("stop",)`, sent as soon as no trial is left for
it (it exits at once). A worker whose pipe closes (its parent is gone) exits.

The `ray` executor's tasks (`train_trial`) send the same messages through a Ray queue and return the `done`
message.
"""

import math
import os
import signal
import sys
from pathlib import Path

from rnnlib.core.callbacks import Callback

FORWARDED_CALLS = ("log_config", "log_metrics", "set_tag")
# The threads a worker's framework may use (TensorFlow's pools, OpenMP's), set before it is imported: its share
# of the cores. Each framework takes every core by default, so 2 workers on 2 cores ran 4+ busy threads that
# fought over 2 cores (`benchmarks/sweep_parallel.py`: processes 24.9 -> 23.8 s, ray 32.6 -> 30.4 s).
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
EXECUTOR_WORKER_TAG = "rnnlib.executor_worker"
FORWARDED_HOOKS = ("on_train_begin", "on_batch_end", "on_epoch_end", "on_train_end")


class ForwardingStore:
    """The part of `rnnlib.tracking.Store` a `RunLogger` uses, sent to the parent process instead of written."""

    def __init__(self, connection):
        self.connection = connection

    def log_config(self, *args):
        self.connection.send(("call", "log_config", args))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        self.connection.send(("call", "log_metrics", (run_id, metrics, step)))

    def set_tag(self, *args):
        self.connection.send(("call", "set_tag", args))

    def log_artifacts(self, run_id: str, path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            files = [(str(p.relative_to(path)), p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()]
        else:
            files = [(path.name, path.read_bytes())]
        self.connection.send(("artifacts", run_id, files, artifact_path, path.is_dir()))

    def heartbeat(self, force: bool = False) -> None:
        """The parent keeps the runs it opened alive."""


class ForwardingCallback(Callback):
    """Sends the training hooks of trial `index` to the parent (the trained model stays here)."""

    def __init__(self, connection, index: int):
        self.connection, self.index = connection, index

    def on_train_begin(self, info):
        self.connection.send(("event", self.index, "on_train_begin", (info,)))

    def on_batch_end(self, epoch, batch):
        self.connection.send(("event", self.index, "on_batch_end", (epoch, batch)))

    def on_epoch_end(self, epoch, logs):
        self.connection.send(("event", self.index, "on_epoch_end", (epoch, logs)))

    def on_train_end(self, result):
        self.connection.send(("event", self.index, "on_train_end", (None,)))


class QueueConnection:
    """A Ray task's end of the pipe: what it sends goes into a `ray.util.queue.Queue` the parent drains.

    Messages are sent in batches, at most every `FLUSH_SECONDS` (a training hook per batch would otherwise
    cost a blocking actor call each: 3x slower epochs on 2 cores), without waiting: Ray runs one caller's calls
    to an actor in order. `flush(wait=True)` at the end makes sure every message is in before the result."""

    FLUSH_SECONDS = 0.25

    def __init__(self, queue):
        self.queue, self.buffer, self.last, self.sent = queue, [], 0.0, None

    def send(self, message) -> None:
        import time

        self.buffer.append(message)
        now = time.monotonic()
        if message[0] != "event" or now - self.last >= self.FLUSH_SECONDS:
            self.last = now
            self.flush()

    def flush(self, wait: bool = False) -> None:
        if self.buffer:
            self.sent = self.queue.actor.put_nowait_batch.remote(self.buffer)
            self.buffer = []
        if wait and self.sent is not None:
            import ray

            ray.get(self.sent)


def train_trial(queue, index: int, config, point: dict, run_id: str) -> tuple:
    """A Ray task (`rnnlib.run.executors.ray_tasks`): train one trial, its logging sent through `queue`; returns
    the `done` message."""
    import socket

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    limit_threads(config.execution.num_cpus)  # the CPUs Ray reserved for it (a reused worker keeps its first)
    from rnnlib.tracking.run_logger import RunLogger
    from rnnlib.worker import training

    connection = QueueConnection(queue)
    connection.send(("call", "set_tag", (run_id, EXECUTOR_WORKER_TAG, f"{socket.gethostname()}/{os.getpid()}")))
    logger = RunLogger(ForwardingStore(connection), run_id, config, point)  # type: ignore[arg-type]
    try:
        result = training.train(config, [logger, ForwardingCallback(connection, index)])
    except Exception as error:
        connection.flush(wait=True)
        return ("done", index, "FAILED", math.nan, [], f"{type(error).__name__}: {error}")
    connection.flush(wait=True)
    return ("done", index, "FINISHED", result.task.baseline, result.history, "")


def limit_threads(threads: int) -> None:
    """Let this process's framework use `threads` threads (at least 1), unless the user set the variables."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(max(1, int(threads))))


def _exit(connection) -> None:
    """End the worker at once: everything it logged is sent and it writes no file, so the interpreter's teardown
    of TensorFlow (1.5 s of a 20 s sweep on 2 cores, with the parent waiting) is skipped."""
    connection.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def serve(connection, threads: int | None = None) -> None:
    """The worker's loop: train each trial the parent sends until told to stop or the pipe closes, its framework
    on `threads` threads (None: as many as it takes)."""
    for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and a job's Cancel reach the whole group: the parent
        signal.signal(stop, signal.SIG_IGN)           # decides, and kills its workers
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads is not None:
        limit_threads(threads)
    from rnnlib.tracking.run_logger import RunLogger  # no mlflow in a worker: its parent writes
    from rnnlib.worker import training

    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            _exit(connection)
        _, index, config, point, run_id = message
        logger = RunLogger(ForwardingStore(connection), run_id, config, point)  # type: ignore[arg-type]
        try:
            result = training.train(config, [logger, ForwardingCallback(connection, index)])
        except (BrokenPipeError, EOFError):
            return  # the parent is gone
        except Exception as error:  # the parent ends the run FAILED; the worker takes the next trial
            connection.send(("done", index, "FAILED", math.nan, [], f"{type(error).__name__}: {error}"))
            continue
        connection.send(("done", index, "FINISHED", result.task.baseline, result.history, ""))
