"""View state <-> URL query parameters, so that a copied link reopens exactly the same comparison.

Pure python: the pages read `st.query_params` into a view with `from_query`, check each value against what the
store holds as they draw the widget for it (unknown or stale values are dropped with a notice), and write
`to_query` back.
"""

import dataclasses

from rnnlib.analysis import compare

FILTER_PREFIX = "f."


@dataclasses.dataclass(frozen=True)
class CompareView:
    experiment: str = ""
    sweep: str = ""  # parent run id of one sweep, or "" for every run of the experiment
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()
    group_by: tuple[str, ...] = compare.DEFAULT_GROUP_BY
    metric: str = "val_loss"
    statistic: str = "best"
    step: int = 1
    smoothing: float = 0.0
    log_y: bool = False
    show_runs: bool = False
    selected: tuple[str, ...] = ()  # run ids; empty = all runs that pass the filters
    x_param: str = ""  # "" = truncation if it varies, else the first param that varies
    line_param: str = "model.label"

    @classmethod
    def from_query(cls, query: dict[str, str]) -> tuple["CompareView", list[str]]:
        """Parse query parameters; malformed values fall back to defaults with a notice."""
        notices, fields = [], {}
        default = cls()
        text = lambda key: str(query.get(key, "")).strip()  # noqa: E731
        listed = lambda key: tuple(v for v in text(key).split(",") if v)  # noqa: E731
        for key in ("experiment", "sweep", "metric", "x_param", "line_param"):
            if text(key):
                fields[key] = text(key)
        if "group_by" in query:
            fields["group_by"] = listed("group_by")
        if text("selected"):
            fields["selected"] = listed("selected")
        if text("statistic"):
            if text("statistic") in compare.STATISTICS:
                fields["statistic"] = text("statistic")
            else:
                notices.append(f"Unknown statistic {text('statistic')!r} in the link; showing `best`.")
        for key, convert, low, high in (("step", int, 0, 10**9), ("smoothing", float, 0.0, 0.99)):
            if text(key):
                try:
                    fields[key] = min(max(convert(text(key)), low), high)
                except ValueError:
                    notices.append(f"Ignored {key}={text(key)!r} in the link: not a number.")
        for key in ("log_y", "show_runs"):
            if text(key):
                fields[key] = text(key) in ("1", "true", "yes")
        filters = [(k.removeprefix(FILTER_PREFIX), listed(k)) for k in sorted(query) if k.startswith(FILTER_PREFIX)]
        if filters:
            fields["filters"] = tuple(filters)
        return dataclasses.replace(default, **fields), notices

    def to_query(self) -> dict[str, str]:
        """Only what differs from the defaults, so links stay short."""
        default, query = CompareView(), {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value == getattr(default, field.name) or field.name == "filters":
                continue
            if isinstance(value, bool):
                query[field.name] = "1" if value else "0"
            elif isinstance(value, tuple):
                query[field.name] = ",".join(value)
            else:
                query[field.name] = str(value)
        for name, values in self.filters:
            if values:
                query[FILTER_PREFIX + name] = ",".join(values)
        return query
