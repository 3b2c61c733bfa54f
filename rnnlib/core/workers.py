"""Who runs what: the identity of a worker process (host, pid, start time) and whether a recorded one is still
alive. A pid alone can be reused by an unrelated process once the first one ends; the start time cannot."""

import dataclasses
import json
import os
import socket

import psutil


@dataclasses.dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    started: float | None  # the process's start time (unix seconds), None when it could not be read

    @classmethod
    def current(cls) -> "Worker":
        return cls(socket.gethostname(), os.getpid(), start_time(os.getpid()))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Worker | None":
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError):
            return None

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    @property
    def alive(self) -> bool:
        """Whether this worker still runs; only answerable for a worker on this host."""
        return alive(self.pid, self.started)


def start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int, started: float | None = None) -> bool:
    """Whether process `pid` runs and is the one that started at `started`; a zombie is not running. Our own
    finished children are reaped on the way."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child: ask the OS
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.Error:
        return False
