"""How a sweep's trials run (`execution.executor`): the seam `rnnlib.run.sweep.run_experiment` calls.

`processes`: `workers` local worker processes (`rnnlib.run.trial_worker`, started with `spawn`, each importing
Keras once and training trial after trial), fed by this process, which opens and ends every run and applies
everything the workers log: one writer, whatever the store. A worker that dies (a crash, `kill -9`) ends its
trial FAILED, with its exit code, and a new worker takes the remaining trials. Ctrl-C or SIGTERM (the
dashboard's Stop) kills every worker at once, even inside a long batch, and ends their runs KILLED.

Every trial run carries `rnnlib.executor` and `rnnlib.executor_worker` (worker slot and pid) as tags, beside the
job id a dashboard job adds.
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
from rnnlib.core.errors import TrackingError
from rnnlib.run import trial_worker

EXECUTOR_TAG = "rnnlib.executor"
EXECUTOR_WORKER_TAG = "rnnlib.executor_worker"
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
    results: list = [None] * len(points)
    callbacks: dict[int, list] = {}
    slots = [_start(context, number) for number in range(count)]
    kind = "trial" if parent_id else "single"

    def finish(slot, status, baseline=math.nan, history=(), error=""):
        index = slot.trial
        store.end_run(slot.run_id, status, error or None)
        point, config = points[index]
        results[index] = TrialResult(slot.run_id, config, point, status, baseline, list(history), error)
        slot.trial, slot.run_id = None, ""

    try:
        while pending or any(slot.trial is not None for slot in slots):
            for slot in slots:
                if slot.trial is None and pending:
                    index = pending.popleft()
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
                        slots[slots.index(slot)] = _start(context, slot.number)
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
        for slot in slots:
            slot.process.kill()
        for slot in slots:
            slot.process.join(timeout=10)
            if slot.trial is not None:
                status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
                reason = "stopped (Ctrl-C or SIGTERM)" if status == "KILLED" else f"{type(error).__name__}: {error}"
                try:
                    finish(slot, status, error=reason)
                except TrackingError:
                    pass  # the store is gone too: `reconcile` ends the run when the dashboard opens
        raise
    for slot in slots:
        slot.connection.send(("stop",))
    for slot in slots:
        slot.process.join(timeout=30)
    return results


def _start(context, number: int) -> _Slot:
    parent_end, child_end = context.Pipe()
    process = context.Process(target=trial_worker.serve, args=(child_end,), name=f"rnnlab-worker-{number}",
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
