"""View state <-> URL query parameters, so that a copied link reopens exactly the same comparison.

Pure python: the pages read `st.query_params` into a view with `from_query`, check it against what the store
holds with `resolve` (unknown or stale values are dropped with a notice) and write `to_query` back.
"""

import dataclasses

from rnnlib import compare

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
    x_param: str = "training.truncation"
    line_param: str = "model.cell_type"

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

    def resolve(self, experiments: list[str], params: list[str], metrics: list[str],
                run_ids: list[str], sweeps: list[str]) -> tuple["CompareView", list[str]]:
        """Drop what the store does not have, saying so."""
        notices, fields = [], {}
        if self.experiment and self.experiment not in experiments:
            notices.append(f"Experiment {self.experiment!r} from the link is not in this store.")
            return dataclasses.replace(CompareView(), experiment=""), notices
        if self.sweep and self.sweep not in sweeps:
            notices.append(f"Sweep {self.sweep[:8]}… from the link is not in experiment {self.experiment!r}.")
            fields["sweep"] = ""
        unknown = [p for p in self.group_by if p not in params]
        if unknown:
            notices.append(f"Ignored unknown group-by param(s) {', '.join(unknown)}.")
            fields["group_by"] = tuple(p for p in self.group_by if p in params)
        unknown_filters = [name for name, _ in self.filters if name not in params]
        if unknown_filters:
            notices.append(f"Ignored filter(s) on unknown param(s) {', '.join(unknown_filters)}.")
            fields["filters"] = tuple((n, v) for n, v in self.filters if n in params)
        if metrics and self.metric not in metrics:
            fallback = "val_loss" if "val_loss" in metrics else metrics[0]
            notices.append(f"Metric {self.metric!r} is not logged here; showing {fallback!r}.")
            fields["metric"] = fallback
        stale = [r for r in self.selected if r not in run_ids]
        if stale:
            notices.append(f"{len(stale)} selected run(s) from the link no longer exist; they were dropped.")
            fields["selected"] = tuple(r for r in self.selected if r in run_ids)
        for key in ("x_param", "line_param"):
            if params and getattr(self, key) not in params:
                fields[key] = params[0] if key == "x_param" else ""
        return dataclasses.replace(self, **fields), notices
