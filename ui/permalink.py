"""A page's settings in its URL, so that a copied link reopens the same view: the one permalink system of every page.

A page makes one `Permalink(prefix)` and draws each setting through it (`choice`, `choices`, `number`,
`fraction`, `flag`). Each value lives in session state under `<prefix><field>`; the first time a session opens
the page it is seeded from the URL (`st.query_params`), and when the user comes back from another page (which
drops widget state) from the view the page showed last. Values that are no longer valid (a run deleted, an
experiment renamed, a param that no longer varies) fall back to the default with a notice, never an error.
`save()`, after the page has drawn its widgets, writes the settings back to the URL (leaving out those at a
default that does not depend on the data).

In the URL a list is one key per value (`?group_by=model.label&group_by=seed`). Links written before this
module joined them with commas (`?group_by=model.label,seed`, the Compare page's old form); both read the same.
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import streamlit as st

from ui import safe

TRUE_WORDS = ("1", "true", "yes", "on")


# ---- The URL encoding, pure -----------------------------------------------------------------------------------

def shown(value: Any, limit: int = 60) -> str:
    """A value from a link, quoted for a notice: cut to `limit` characters and shown as text, never Markdown."""
    text = repr(value) if len(repr(value)) <= limit else repr(value)[: limit - 4] + "…'"
    return safe.text(text)


def matching_option(value: Any, options: Iterable) -> Any:
    """`value` as the matching option (URL values arrive as text: `"1"` matches the option `1`), or None."""
    for option in options:
        if option == value or str(option) == str(value):
            return option
    return None


def list_values(raw: Iterable, options: list) -> tuple[list, list[str]]:
    """(the options that `raw` URL values name, in their order, each once; the values that name none).

    A value that is not an option itself is read as the older comma-joined form, `a,b`."""
    chosen, unknown = [], []
    for value in raw:
        pieces = [value] if matching_option(value, options) is not None else str(value).split(",")
        for piece in (p.strip() for p in pieces):
            option = matching_option(piece, options)
            if option is None:
                if piece:
                    unknown.append(piece)
            elif option not in chosen:
                chosen.append(option)
    return chosen, unknown


def encode(value: Any) -> list[str]:
    """A setting as URL values: a list gives one value per item, a flag `1` / `0`, a float its shortest form."""
    if isinstance(value, bool):
        return ["1" if value else "0"]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, float):
        return [f"{value:g}"]
    return [str(value)]


def query_of(settings: Mapping[str, Any], constant_defaults: Mapping[str, Any]) -> dict[str, list[str]]:
    """The URL query for `settings`, leaving out the ones at a default that does not depend on the data (links
    stay short; a default that does, like the first experiment of a store, is always written) and None. An empty
    list is one empty value (`?group_by=`), so that "none" reopens as none, not as the default."""
    query = {}
    for field, value in settings.items():
        if value is None:
            continue
        default = constant_defaults.get(field, object())
        if field in constant_defaults and (value == default or encode(value) == encode(default)):
            continue
        query[field] = encode(value) or [""]
    return query


# ---- The Streamlit side ---------------------------------------------------------------------------------------

class Permalink:
    """The settings of one page, kept in session state under `prefix` and in the URL.

    Args:
        prefix: the page's session-state prefix (`compare_`, `gates_`), unique per page.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.drawn: list[str] = []  # every field drawn in this script run
        self.constant_defaults: dict[str, Any] = {}  # the defaults of those that do not depend on the data
        state = st.session_state
        if not state.get(self._meta("seeded")):
            state[self._meta("seeded")] = True
            state[self._meta("pending")] = {k: st.query_params.get_all(k) for k in st.query_params}
            state[self._meta("notices")] = []
        for text in state.get(self._meta("notices"), []):
            st.warning(text, icon=":material/link:")

    def _meta(self, name: str) -> str:
        return f"{self.prefix}_link_{name}"

    def key(self, field: str) -> str:
        """The session-state key of `field`'s widget."""
        return self.prefix + field

    def notice(self, text: str) -> None:
        """Say that something in the link could not be used; the notice stays for the rest of the session."""
        st.session_state.setdefault(self._meta("notices"), []).append(text)
        st.warning(text, icon=":material/link:")

    def pending(self, field_prefix: str = "") -> dict[str, list[str]]:
        """URL values of fields not drawn yet (from the link, or the page's last view) whose names start with
        `field_prefix`."""
        return {k: v for k, v in self._seeds().items()
                if k.startswith(field_prefix) and self.key(k) not in st.session_state}

    def forget(self, field_prefix: str) -> None:
        """Drop every value of fields starting with `field_prefix`: widget state, link seeds and last view (e.g.
        the filters of an experiment the user has left)."""
        for key in [k for k in st.session_state if str(k).startswith(self.key(field_prefix))]:
            del st.session_state[key]
        for name in ("pending", "saved"):
            seeds = st.session_state.get(self._meta(name)) or {}
            st.session_state[self._meta(name)] = {k: v for k, v in seeds.items() if not k.startswith(field_prefix)}

    def reseed(self, field: str, values: list[str]) -> None:
        """Start `field`, not drawn yet, from `values` as if the link had held them (a link's older form, read
        into the current one)."""
        st.session_state.setdefault(self._meta("pending"), {})[field] = list(values)

    def _seeds(self) -> dict[str, list[str]]:
        state = st.session_state
        return {**(state.get(self._meta("saved")) or {}), **(state.get(self._meta("pending")) or {})}

    def _seed(self, field: str) -> list[str] | None:
        """The URL values `field` starts from when its widget has no state: the link's, else the last view's."""
        pending = st.session_state.get(self._meta("pending")) or {}
        if field in pending:
            return pending.pop(field)
        return (st.session_state.get(self._meta("saved")) or {}).get(field)

    def _start(self, field: str, default: Any, read: Callable[[list[str]], Any], constant: bool = True) -> None:
        """Put `field`'s starting value in session state (from its seed through `read`, else `default`).
        `constant`: the default does not depend on the data, so the URL may leave it out."""
        self.drawn.append(field)
        if constant:
            self.constant_defaults[field] = default
        key = self.key(field)
        if key in st.session_state:
            return
        seed = self._seed(field)
        st.session_state[key] = default if seed is None else read(seed)

    def choice(self, label: str, field: str, options: list, default: Any = None, widget=None, **kwargs):
        """A selectbox (or `widget`, e.g. `st.radio`) whose value is kept valid before it is drawn."""
        options = list(options)
        fallback = default if default in options else options[0]

        def read(seed):
            option = matching_option(seed[0], options)
            if option is None:
                self.notice(f"{label} {shown(seed[0])} from the link is not available here; showing {shown(fallback)} "
                            "instead.")
                return fallback
            return option

        self._start(field, fallback, read, constant=fallback in ("", None))
        key = self.key(field)
        current = matching_option(st.session_state[key], options)
        st.session_state[key] = fallback if current is None else current  # None: the options changed under it
        return (widget or st.selectbox)(label, options, key=key, **kwargs)

    def choices(self, label: str, field: str, options: list, default: list, widget=None, **kwargs) -> list:
        """A multiselect (or `widget`, e.g. a column's multiselect) kept to valid options."""
        options = list(options)
        fallback = [d for d in default if d in options]

        def read(seed):
            chosen, unknown = list_values(seed, options)
            if unknown:
                self.notice(f"Ignored {label.lower()} {', '.join(map(shown, unknown[:5]))} from the link: not among "
                            f"the choices here.")
            return chosen

        self._start(field, fallback, read, constant=not fallback)
        key = self.key(field)
        st.session_state[key] = [v for v in st.session_state[key] if v in options]
        return (widget or st.multiselect)(label, options, key=key, **kwargs)

    def number(self, label: str, field: str, default: int, low: int, high: int, widget=None, **kwargs) -> int:
        """A whole-number input kept within [low, high]."""
        self._start(field, default, lambda seed: self._parsed(label, seed[0], int, default))
        key = self.key(field)
        st.session_state[key] = min(max(int(st.session_state[key]), low), high)
        return int((widget or st.number_input)(label, low, high, step=1, key=key, **kwargs))

    def fraction(self, label: str, field: str, default: float, low: float, high: float, widget=None,
                 **kwargs) -> float:
        """A number slider (or `widget`) kept within [low, high]."""
        self._start(field, default, lambda seed: self._parsed(label, seed[0], float, default))
        key = self.key(field)
        st.session_state[key] = min(max(float(st.session_state[key]), low), high)
        return float((widget or st.slider)(label, low, high, key=key, **kwargs))

    def flag(self, label: str, field: str, default: bool = False, widget=None, **kwargs) -> bool:
        """A toggle (or `widget`, e.g. `st.checkbox`)."""
        self._start(field, default, lambda seed: str(seed[0]).strip().lower() in TRUE_WORDS)
        return bool((widget or st.toggle)(label, key=self.key(field), **kwargs))

    def _parsed(self, label: str, text: str, convert, default):
        try:
            return convert(str(text).strip())
        except ValueError:
            self.notice(f"Ignored {label.lower()} {shown(text)} from the link: not a number.")
            return default

    def save(self) -> None:
        """Write the page's settings to the URL (only when they changed, so the browser history stays short) and
        keep them as its last view. Settings from the link that this run did not draw (the page stopped early)
        stay in it."""
        settings = {field: st.session_state.get(self.key(field)) for field in self.drawn}
        query = {**{k: v for k, v in self.pending().items() if k not in settings},
                 **query_of(settings, self.constant_defaults)}
        st.session_state[self._meta("saved")] = query
        if {k: st.query_params.get_all(k) for k in st.query_params} != query:
            st.query_params.from_dict(query)

    def stop(self, message: str, show=st.info, **kwargs) -> None:
        """End the page early with `message` (an info box, or `show`, e.g. `st.error`), keeping the link."""
        show(message, **kwargs)
        self.save()
        st.stop()
