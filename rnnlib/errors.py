"""The project's own error types: everything a user can fix raises one of these."""


class RnnLabError(Exception):
    """Base class for errors that carry a message meant for the user, never a traceback."""


class ConfigError(RnnLabError, ValueError):
    """An experiment YAML (or a `--set` override) is not valid.

    Args:
        problems: one line per problem, each naming the key, the value received and what is allowed.
        source: where the config came from (a path or "<string>"), shown in the message.
    """

    def __init__(self, problems, source=None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"Invalid experiment config{where}:\n{lines}")


class TrackingError(RnnLabError):
    """The MLflow tracking store cannot be reached or used."""
