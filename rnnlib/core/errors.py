"""The project's own error types: everything a user can fix raises one of these."""


class RnnLabError(Exception):
    """Base class for errors that carry a message meant for the user, never a traceback."""


class ConfigError(RnnLabError, ValueError):
    """An experiment YAML (or a `--set` override) is not valid.

    Args:
        problems: one line per problem, each naming the key, the value received and what is allowed.
        source: where the config came from (a path or "<string>"), shown in the message.
    """

    MAX_SHOWN = 20  # a config with 100,000 unknown keys gets a short message, not 10 MB of text

    def __init__(self, problems, source=None):
        problems = list(dict.fromkeys(problems))
        if len(problems) > self.MAX_SHOWN:
            problems = [*problems[: self.MAX_SHOWN], f"... and {len(problems) - self.MAX_SHOWN} more problems"]
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"Invalid experiment config{where}:\n{lines}")


class TrackingError(RnnLabError):
    """The MLflow tracking store cannot be reached or used."""


class RunDataError(RnnLabError):
    """One run's logged data (an artifact, its config) cannot be read; the other runs still can.

    Args:
        run_id: the run.
        problem: what is wrong, e.g. "its weights (model/weights.npz) cannot be read (...)".
    """

    def __init__(self, run_id: str, problem: str):
        self.run_id, self.problem = run_id, problem
        super().__init__(f"Run {run_id[:8]}: {problem}")

    def __reduce__(self):  # picklable, so cached reads can return it
        return (type(self), (self.run_id, self.problem))
