"""Registry of sequence tasks: `TASKS[name]` is a `Task` class; `get(name)` and `build(params)` look them up."""

from rnnlib.core.registry import lookup
from rnnlib.tasks.base import IO_FORMS, Task, TaskParams
from rnnlib.tasks.classification import DigitsTask
from rnnlib.tasks.dates import DatesTask
from rnnlib.tasks.forecast import ForecastTask
from rnnlib.tasks.series import SineTask, SunspotsTask
from rnnlib.tasks.synthetic import AddingTask, CopyMemoryTask
from rnnlib.tasks.text import TextTask
from rnnlib.tasks.waveform import WaveformTask

TASKS: dict[str, type[Task]] = {
    "adding": AddingTask,
    "copy_memory": CopyMemoryTask,
    "sine": SineTask,
    "sunspots": SunspotsTask,
    "forecast": ForecastTask,
    "digits": DigitsTask,
    "text": TextTask,
    "waveform": WaveformTask,
    "dates": DatesTask,
}


def get(name: str) -> type[Task]:
    """The task class registered as `name`."""
    return lookup(TASKS, name, "task")


def build(params: TaskParams) -> Task:
    """The task instance for validated parameters (a config's `task`)."""
    return get(params.name)(params)


__all__ = ["IO_FORMS", "TASKS", "Task", "TaskParams", "build", "get"]
