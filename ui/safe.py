"""Showing strangers' text safely: names, descriptions, param values and CSV cells come from whoever made the runs
or the file, so they are shown as text, never as Markdown or HTML, and never exported as spreadsheet formulas."""

import re

import pandas as pd

# Every ASCII punctuation mark may be backslash-escaped in Markdown; these are the ones Streamlit's Markdown gives a
# meaning to inside a line (emphasis, code, links and images need `[`, HTML `<` and `&`, math `$`, tables `|`),
# and a colon before a non-space (`:red[...]` directives, `:emoji:`, `https://` autolinks; "a: b" stays). The text
# is always placed mid-line, so line-start marks (`#`, `-`, `1.`) mean nothing there.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>~$|&]|:(?=\S))")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def text(value) -> str:
    """`value` as literal text inside Markdown: every character that could start a link, image, emphasis, HTML,
    directive or formula is escaped, and line breaks become spaces."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(value).splitlines()))


def _cell(value):
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)  # a number written as text (-0.5) is not a formula
        return value
    except ValueError:
        return "'" + value  # spreadsheets show the text instead of running it (OWASP: CSV injection)


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell (and column name) that a spreadsheet would run as a formula
    (`=HYPERLINK(...)`, `@SUM(...)`, `=cmd|...`) prefixed with a quote, so that opening the CSV shows it."""
    safe = frame.rename(columns=lambda name: _cell(str(name)))
    for column in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(_cell)
    return safe
