"""Looking a name up in one of the lab's registries (cells, tasks, data sets, optimizers, statistics, ...)."""

from collections.abc import Collection, Mapping
from typing import Any


def lookup(registry: Mapping[str, Any] | Collection[str], name: Any, what: str, extra: str = "") -> Any:
    """`registry[name]` (or `name` itself when `registry` is a plain collection of names), or a `ValueError`
    naming what was asked for and every name there is.

    Args:
        what: what the names are, for the message (`task`, `cell_type`, `optimizer`).
        extra: further accepted names that live outside `registry`, appended to the list (`csv`).
    """
    if isinstance(name, str) and name in registry:
        return registry[name] if isinstance(registry, Mapping) else name
    names = ", ".join([*registry, *([extra] if extra else [])])
    raise ValueError(f"Unknown {what} {name!r}; expected one of: {names}.")
