"""How a sweep's trials run (`execution.executor`): the seam `rnnlib.run.sweep.run_experiment` calls.

`processes`: `workers` local worker processes (`rnnlib.run.trial_worker`, started with `spawn`, each importing
Keras once and training trial after trial), fed by this process, which opens and ends every run and applies
everything the workers log: one writer, whatever the store. A worker that dies (a crash, `kill -9`) ends its
trial FAILED, with its exit code, and a new worker takes the remaining trials. Ctrl-C or SIGTERM (the
dashboard's Stop) kills every worker at once, even inside a long batch, and ends their runs KILLED.

`ray`: every trial a Ray task (`trial_worker.train_trial`) with the YAML's `num_cpus` / `num_gpus` resources, on
a local Ray started for the sweep or the cluster at `execution.address`; at most `workers` in flight, so a run
is opened only when its task is submitted. Tasks send their logging through a Ray queue that this process
drains and writes: one writer again, and a worker machine needs no access to the store. A task whose worker
dies (`kill -9`, a lost node) ends FAILED (Ray does not retry it); a stop cancels every task (force) and ends
their runs KILLED.

Every trial run carries `rnnlib.executor` and `rnnlib.executor_worker` (worker slot and pid, or host and pid
under Ray) as tags, beside the job id a dashboard job adds.
"""

import dataclasses
import math
import multiprocessing
import os
import tempfile
from collections import deque
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from rnnlib import tracking
from rnnlib.core.errors import ConfigError, TrackingError
from rnnlib.run import trial_worker

EXECUTOR_TAG = "rnnlib.executor"
EXECUTOR_WORKER_TAG = trial_worker.EXECUTOR_WORKER_TAG
POLL_SECONDS = 1.0  # how often the parent looks up from its workers' pipes to heartbeat its runs


def default_workers() -> int:
    """One worker per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclasses.dataclass
class _Slot:
    """One worker process and the trial it is training (None when idle)."""

    number: int
    process: Any  # a multiprocessing (spawn) Process
    connection: Connection
    trial: int | None = None
    run_id: str = ""
    traced: set[str] = dataclasses.field(default_factory=set)  # the architecture keys of its trials so far

    @property
    def name(self) -> str:
        return f"{self.number}/{self.process.pid}"


def processes(store, experiment_id: str, points: list, parent_id: str | None, make_callbacks=None,
              workers: int | None = None, check=None) -> list:
    """Train `points` (`(grid point, config)` pairs) in worker processes; returns their `TrialResult`s in order.
    `check` is called between polls of the workers (about every `POLL_SECONDS`) and raises to stop them all.

    Raises:
        TrackingError: the store failed; the workers are stopped and their runs are left to `reconcile`.
        KeyboardInterrupt: a stop was requested; every open trial run ended KILLED.
    """
    from rnnlib.run.sweep import TrialResult

    context = multiprocessing.get_context("spawn")
    count = min(workers or default_workers(), len(points))
    pending = deque(range(len(points)))
    keys = [config.architecture_key for _, config in points]
    results: list = [None] * len(points)
    callbacks: dict[int, list] = {}
    threads = max(1, default_workers() // count)  # each worker's share of the cores
    slots = [_start(context, number, threads) for number in range(count)]
    kind = "trial" if parent_id else "single"

    def finish(slot, status, baseline=math.nan, history=(), error=""):
        index = slot.trial
        store.end_run(slot.run_id, status, error or None)
        point, config = points[index]
        results[index] = TrialResult(slot.run_id, config, point, status, baseline, list(history), error)
        slot.trial, slot.run_id = None, ""

    retired: list[_Slot] = []  # told to stop: nothing was left for them
    try:
        while pending or any(slot.trial is not None for slot in slots):
            for slot in [slot for slot in slots if slot.trial is None and not pending]:
                slot.connection.send(("stop",))  # exits now, its core free for the trials still training
                slots.remove(slot)
                retired.append(slot)
            for slot in slots:
                if slot.trial is None and pending:
                    index = _take(pending, keys, slot, slots)
                    point, config = points[index]
                    callbacks[index] = make_callbacks(index, len(points), config) if make_callbacks else []
                    tags = {"rnnlib.run_kind": kind, EXECUTOR_TAG: "processes", EXECUTOR_WORKER_TAG: slot.name}
                    slot.run_id = store.open_run(experiment_id, tracking.run_name(config, point), tags, parent_id)
                    slot.trial = index
                    slot.connection.send(("trial", index, config, point, slot.run_id))
            busy = {slot.connection: slot for slot in slots if slot.trial is not None}
            for ready in wait(list(busy), timeout=POLL_SECONDS):
                slot = busy[ready]  # type: ignore[index]  # wait returns the connections it was given
                connection = slot.connection
                try:
                    message = connection.recv()
                except (EOFError, OSError):  # the worker died: its trial failed, a new worker takes the rest
                    finish(slot, "FAILED", error=_death(slot))
                    slot.connection.close()
                    if pending:
                        slots[slots.index(slot)] = _start(context, slot.number, threads)
                    else:
                        slots.remove(slot)
                    continue
                _apply(store, message, callbacks)
                if message[0] == "done":
                    _, _, status, baseline, history, error = message
                    finish(slot, status, baseline, history, error)
            store.heartbeat()
            if check is not None:
                check()
    except BaseException as error:
        for slot in slots + retired:
            slot.process.kill()
        for slot in slots + retired:
            slot.process.join(timeout=10)
            if slot.trial is not None:
                status, reason = _stopped(error)
                try:
                    finish(slot, status, error=reason)
                except TrackingError:
                    pass  # the store is gone too: `reconcile` ends the run when the dashboard opens
        raise
    for slot in slots:
        slot.connection.send(("stop",))
    for slot in slots + retired:
        slot.process.join(timeout=30)
    return results


def _take(pending: deque, keys: list[str], slot: _Slot, slots: list[_Slot]) -> int:
    """The next trial for an idle worker, taken out of `pending` (`keys`: every trial's `architecture_key`): the
    first of an architecture it has traced (its probe then needs no tracing: 0.7 s of a tiny run), else the first
    of one no other worker has, else the first. So that 2 workers on 3 cells trace 2 cells each, not 3."""
    elsewhere = set().union(*(other.traced for other in slots if other is not slot))
    index = next((i for i in pending if keys[i] in slot.traced),
                 next((i for i in pending if keys[i] not in elsewhere), pending[0]))
    pending.remove(index)
    slot.traced.add(keys[index])
    return index


def _stopped(error: BaseException) -> tuple[str, str]:
    """How the open trials end when the executor stops on `error`: KILLED on a stop request, else FAILED."""
    if isinstance(error, KeyboardInterrupt):
        return "KILLED", "stopped (Ctrl-C or SIGTERM)"
    return "FAILED", f"{type(error).__name__}: {error}"


def _start(context, number: int, threads: int) -> _Slot:
    parent_end, child_end = context.Pipe()
    process = context.Process(target=trial_worker.serve, args=(child_end, threads), name=f"rnnlab-worker-{number}",
                              daemon=True)
    process.start()
    child_end.close()  # so that the parent reads EOF when the worker dies
    return _Slot(number, process, parent_end)


def _death(slot: _Slot) -> str:
    """Why a worker's pipe closed mid-trial, for its run's `rnnlib.error`."""
    slot.process.join(timeout=10)
    code = slot.process.exitcode
    how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
    return (f"the worker process (pid {slot.process.pid}) {how} while training this run; the other trials went "
            "on. Re-run this grid point alone to see its error.")


def _apply(store, message, callbacks: dict[int, list]) -> None:
    """Write one worker message to the store, or pass a training hook to the trial's callbacks."""
    kind = message[0]
    if kind == "call" and message[1] in trial_worker.FORWARDED_CALLS:
        getattr(store, message[1])(*message[2])
    elif kind == "artifacts":
        _, run_id, files, artifact_path, is_folder = message
        with tempfile.TemporaryDirectory() as directory:
            for name, data in files:
                target = Path(directory) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            path = directory if is_folder else Path(directory) / files[0][0]
            store.log_artifacts(run_id, path, artifact_path)
    elif kind == "event" and message[2] in trial_worker.FORWARDED_HOOKS:
        _, index, hook, args = message
        for callback in callbacks.get(index, []):
            getattr(callback, hook)(*args)


def ray_tasks(store, experiment_id: str, points: list, parent_id: str | None, make_callbacks=None,
              workers: int | None = None, check=None) -> list:
    """Train `points` as Ray tasks (the resources and address are the configs' `execution`); returns their
    `TrialResult`s in order. `check` as for `processes`.

    Raises:
        TrackingError: the store failed; the tasks are cancelled and their runs left to `reconcile`.
        KeyboardInterrupt: a stop was requested; every open trial run ended KILLED.
    """
    from rnnlib.run.sweep import TrialResult

    ray, queue_type = _ray()
    execution = points[0][1].execution
    started = not ray.is_initialized()
    if started:
        _start_ray(ray, execution.address)
    queue = queue_type()
    task = ray.remote(trial_worker.train_trial).options(
        num_cpus=execution.num_cpus, num_gpus=execution.num_gpus, max_retries=0)
    limit = workers or _fits(ray.cluster_resources(), execution)
    pending = deque(range(len(points)))
    results: list = [None] * len(points)
    callbacks: dict[int, list] = {}
    flight: dict = {}  # object ref -> (trial index, run id)
    kind = "trial" if parent_id else "single"

    def finish(index, run_id, status, baseline=math.nan, history=(), error=""):
        store.end_run(run_id, status, error or None)
        point, config = points[index]
        results[index] = TrialResult(run_id, config, point, status, baseline, list(history), error)

    try:
        while pending or flight:
            while pending and len(flight) < limit:
                index = pending.popleft()
                point, config = points[index]
                callbacks[index] = make_callbacks(index, len(points), config) if make_callbacks else []
                tags = {"rnnlib.run_kind": kind, EXECUTOR_TAG: "ray"}
                run_id = store.open_run(experiment_id, tracking.run_name(config, point), tags, parent_id)
                flight[task.remote(queue, index, config, point, run_id)] = (index, run_id)
            # back as soon as one trial ends (not when all have, or the timeout), so its slot is refilled at once
            ready, _ = ray.wait(list(flight), num_returns=1, timeout=POLL_SECONDS / 2)
            _drain(store, queue, callbacks)  # a task flushes before it returns: a ready one's messages are all here
            for ref in ready:
                index, run_id = flight.pop(ref)
                try:
                    _, _, status, baseline, history, error = ray.get(ref)
                except ray.exceptions.RayError as crash:  # its worker died or the task could not run
                    finish(index, run_id, "FAILED", error=_ray_failure(crash))
                else:
                    finish(index, run_id, status, baseline, history, error)
            store.heartbeat()
            if check is not None:
                check()
    except BaseException as error:
        for ref in flight:
            ray.cancel(ref, force=True)
        status, reason = _stopped(error)
        try:
            _drain(store, queue, {})  # the logging only: the stop's hook would raise again, leaving runs open
            for index, run_id in flight.values():
                finish(index, run_id, status, error=reason)
        except TrackingError:
            pass  # the store is gone too: `reconcile` ends the runs when the dashboard opens
        raise
    finally:
        if started:
            ray.shutdown()
    return results


def _drain(store, queue, callbacks: dict[int, list]) -> None:
    """Apply every message the Ray tasks have queued (`_apply`). A hook that raises (a stop request) stops the
    hooks, not the logging: the rest of the messages are written before the error goes on."""
    messages = queue.get_nowait_batch(queue.qsize()) if queue.qsize() else []
    for position, message in enumerate(messages):
        try:
            _apply(store, message, callbacks)
        except BaseException:
            for rest in messages[position + 1 :]:
                _apply(store, rest, {})
            raise


def _ray():
    try:
        import ray
        from ray.util.queue import Queue
    except ImportError:
        raise ConfigError("The ray executor needs Ray: `.venv/bin/pip install -r requirements.txt`.") from None
    return ray, Queue


def _start_ray(ray, address: str | None) -> None:
    """A local Ray for this sweep, or the cluster at `address` (`ray://host:10001` or `host:6379`). The workers
    get this process's Keras backend and log level."""
    forwarded = {key: os.environ[key] for key in ("KERAS_BACKEND", "RNNLAB_BACKEND_REASON", "TF_CPP_MIN_LOG_LEVEL")
                 if key in os.environ}
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": forwarded}, configure_logging=True, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise ConfigError(f"Cannot reach the Ray cluster at {address}: {error}. Start it (`ray start --head`) "
                            "or drop execution.address to run on a local Ray.") from None


def _fits(resources: dict, execution) -> int:
    """How many trials the cluster's CPUs (and GPUs, when trials need them) hold at once."""
    counts = [resources.get("CPU", 1) / execution.num_cpus]
    if execution.num_gpus:
        counts.append(resources.get("GPU", 0) / execution.num_gpus)
    return max(1, int(min(counts) + 1e-9))


def _ray_failure(crash) -> str:
    name = type(crash).__name__
    if "WorkerCrashed" in name or "ActorDied" in name or "NodeDied" in name:
        return ("its Ray worker died (killed, out of memory, or its node was lost) while training this run; the "
                "other trials went on. Re-run this grid point alone (rnnlab run --only-failed) to see its error.")
    lines = str(crash).strip().splitlines()
    return f"{name}: {lines[-1][:2000] if lines else ''}"
