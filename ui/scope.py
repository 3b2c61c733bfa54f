"""Which experiment and runs a page looks at, with its settings in the URL so a link reopens the same view.

A page names its settings once (`Permalink(prefix, fields)`); each value lives in session state under
`<prefix><field>`, is seeded from `st.query_params` the first time the page opens in a session, and is written
back with `save()` after the page has drawn its widgets. Values that are no longer valid (a run deleted, an
experiment renamed) fall back to the default with a notice instead of an error.
"""

import pandas as pd
import streamlit as st


class Permalink:
    """`fields` hold one value each, `list_fields` several (repeated in the URL: `?group_by=a&group_by=b`)."""

    def __init__(self, prefix: str, fields: tuple[str, ...], list_fields: tuple[str, ...] = ()):
        self.prefix, self.fields, self.list_fields = prefix, fields + list_fields, list_fields
        seeded = prefix + "seeded"
        if not st.session_state.get(seeded):
            st.session_state[seeded] = True
            for field in self.fields:
                if field in st.query_params:
                    values = st.query_params.get_all(field)
                    st.session_state[self.key(field)] = values if field in list_fields else values[0]

    def key(self, field: str) -> str:
        return self.prefix + field

    def choice(self, label: str, field: str, options: list, default=None, widget=None, **kwargs):
        """A selectbox (or `widget`, e.g. `st.radio`) whose value is kept valid before it is drawn."""
        key = self.key(field)
        options = list(options)
        if key in st.session_state and _as_option(st.session_state[key], options) is None:
            st.warning(f"{label} {st.session_state[key]!r} from the link is not available here; showing "
                       f"{default if default in options else options[0]!r} instead.", icon=":material/link:")
            del st.session_state[key]
        elif key in st.session_state:
            st.session_state[key] = _as_option(st.session_state[key], options)
        if key not in st.session_state:
            st.session_state[key] = default if default in options else options[0]
        return (widget or st.selectbox)(label, options, key=key, **kwargs)

    def number(self, label: str, field: str, default: int, low: int, high: int, widget=None, **kwargs) -> int:
        """A whole-number input kept within [low, high]."""
        key = self.key(field)
        try:
            value = int(st.session_state.get(key, default))
        except (TypeError, ValueError):
            value = default
        st.session_state[key] = min(max(value, low), high)
        return int((widget or st.number_input)(label, low, high, step=1, key=key, **kwargs))

    def choices(self, label: str, field: str, options: list, default: list, widget=None, **kwargs) -> list:
        """A multiselect (or `widget`, e.g. a column's multiselect) kept to valid options."""
        key = self.key(field)
        options = list(options)
        current = st.session_state.get(key, [d for d in default if d in options])
        st.session_state[key] = [v for v in current if v in options]
        return (widget or st.multiselect)(label, options, key=key, **kwargs)

    def save(self) -> None:
        """Write the page's settings to the URL (only when they changed, so the browser history stays short)."""
        query = {}
        for field in self.fields:
            value = st.session_state.get(self.key(field))
            if value is not None and not (isinstance(value, list) and not value):
                query[field] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if {k: st.query_params.get_all(k) for k in st.query_params} != query:
            st.query_params.from_dict(query)

    def stop(self, message: str, show=st.info, **kwargs) -> None:
        """End the page early with `message` (an info box, or `show`, e.g. `st.error`), keeping the link."""
        show(message, **kwargs)
        self.save()
        st.stop()


def _as_option(value, options):
    """`value` as the matching option (URL values arrive as text: `"1"` matches the option `1`), or None."""
    for option in options:
        if option == value or str(option) == str(value):
            return option
    return None


def experiment_names(uri: str, empty_message: str) -> list[str]:
    """The store's experiments; with none, the page says `empty_message`, links to Train and stops."""
    from ui import data

    names = data.experiments(uri)["name"].tolist()
    if not names:
        st.info(empty_message, icon=":material/science:")
        st.page_link("app_pages/train.py", label="Train a model", icon=":material/model_training:")
        st.stop()
    return names


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that trained a model (not the sweep parents), newest first."""
    return runs[runs["kind"] != "sweep"].sort_values("start_time", ascending=False)


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The training runs that ended normally, so their weights and predictions are logged, newest first."""
    trained = training_runs(runs)
    return trained[trained["status"] == "FINISHED"]


def with_param(runs: pd.DataFrame, key: str, value: str) -> pd.DataFrame:
    """The runs whose param `key` (dotted, as logged) is `value`; none when no run has the param."""
    column = f"params.{key}"
    return runs[runs[column] == value] if column in runs else runs.iloc[:0]


def run_label(runs: pd.DataFrame):
    """Format function for run pickers: the run name and a short id."""
    names = dict(zip(runs["run_id"], runs["run_name"]))
    return lambda run_id: f"{names.get(run_id, '?')} ({run_id[:6]})"
