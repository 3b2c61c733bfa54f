"""Where series come from: the `SOURCES` registry of bundled multivariate series, and users' CSV files.

Every source ends as a `Series`: a numeric frame on a regular time index, checked the same way. The bundled ones
are read from installed packages (vega_datasets' local copies, statsmodels), so nothing is downloaded. A CSV is
checked before anything else happens, and each problem gets one message that says what is wrong, where, and how
to fix it (`SeriesError`).
"""

import dataclasses
import functools
import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from rnnlib.core.paths import PROJECT_DIR
from rnnlib.core.registry import lookup

ENV_DATA_DIR = "RNNLAB_DATA_DIR"
MAX_CSV_BYTES = 50 * 2**20
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
MAX_LISTED = 3  # problems of one kind quoted in a message before "and N more"


class SeriesError(ValueError):
    """A series that cannot be used, with what is wrong and how to fix it."""


@dataclasses.dataclass(frozen=True)
class Series:
    """A multivariate series on a regular time grid.

    Attributes:
        frame: float64 columns indexed by time (a DatetimeIndex, or the row number when there is no time column).
        season: steps per seasonal cycle (365 for daily weather, 52 weekly, 12 monthly), for seasonal-naive
            forecasts; None when the series has no natural season.
        default_targets: the columns forecast when a config names none.
        filled: missing values filled by interpolation, per column.
        description: one line on what the data is and where it comes from.
    """

    frame: pd.DataFrame
    season: int | None
    default_targets: tuple[str, ...]
    filled: dict[str, int]
    description: str

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.frame.columns)


def data_dir() -> Path:
    """The folder CSV files must live in (uploads go to its `uploads/`): `$RNNLAB_DATA_DIR` or `<project>/data`."""
    return Path(os.environ.get(ENV_DATA_DIR, PROJECT_DIR / "data")).resolve()


# ---- Bundled series


def _seattle_weather() -> pd.DataFrame:
    from vega_datasets import local_data

    frame = local_data.seattle_weather().set_index("date")
    return frame[["temp_max", "temp_min", "precipitation", "wind"]]


def _stocks() -> pd.DataFrame:
    from vega_datasets import local_data

    prices = local_data.stocks().pivot(index="date", columns="symbol", values="price")
    return prices[["AAPL", "AMZN", "IBM", "MSFT", "GOOG"]].rename_axis(columns=None)


def _co2() -> pd.DataFrame:
    from statsmodels.datasets import co2  # imported lazily: statsmodels takes a second to import

    return co2.load_pandas().data


@dataclasses.dataclass(frozen=True)
class BundledSource:
    load: Callable[[], pd.DataFrame]
    season: int | None
    default_targets: tuple[str, ...]
    description: str


SOURCES: dict[str, BundledSource] = {
    "seattle_weather": BundledSource(
        _seattle_weather, 365, ("temp_max",),
        "Daily Seattle weather 2012-2015 (max/min temperature °C, precipitation mm, wind m/s); vega_datasets"),
    "stocks": BundledSource(
        _stocks, 12, ("AAPL", "AMZN", "IBM", "MSFT"),
        "Monthly closing prices (USD) 2000-2010 of 5 tickers; GOOG starts in 2004; vega_datasets"),
    "co2": BundledSource(
        _co2, 52, ("co2",),
        "Weekly atmospheric CO2 at Mauna Loa (ppm) 1958-2001, 59 weeks missing; statsmodels"),
}


@functools.cache
def bundled(name: str) -> Series:
    """The bundled series registered as `name`, checked, every column kept (missing values as NaN)."""
    source = lookup(SOURCES, name, "dataset", extra="csv")
    frame = source.load().astype(np.float64)
    check_time_index(frame.index, lambda row: f"row {row}")
    return Series(frame, source.season, source.default_targets, {}, source.description)


# ---- CSV files


def resolve_csv_path(path: str | Path) -> Path:
    """The absolute path of a CSV inside the data folder; relative paths are read from the data folder.

    Raises:
        SeriesError: the path leaves the data folder, or the file does not exist.
    """
    root = data_dir()
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root):
        raise SeriesError(f"{path} is outside the data folder {root}. Copy the file into that folder (or point "
                          f"${ENV_DATA_DIR} at the folder that holds it) and give its path relative to it.")
    if not candidate.is_file():
        raise SeriesError(f"No file {path} in the data folder {root}; check the name (paths are relative to "
                          "that folder).")
    return candidate


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _read_csv_cached(path: Path, modified: float, size: int, time_column: str | None, delimiter: str) -> Series:
    return parse_csv(path.read_bytes(), time_column, delimiter)


def read_csv(path: str | Path, time_column: str | None, delimiter: str = ",") -> Series:
    """Read and check a CSV in the data folder (see `parse_csv`); cached while the file is unchanged."""
    resolved = resolve_csv_path(path)
    stat = resolved.stat()
    check_size(stat.st_size)
    return _read_csv_cached(resolved, stat.st_mtime, stat.st_size, time_column, delimiter)


def check_size(num_bytes: int) -> None:
    if num_bytes > MAX_CSV_BYTES:
        raise SeriesError(f"The file is {num_bytes / 2**20:,.0f} MB; the limit is {MAX_CSV_BYTES // 2**20} MB. "
                          "Resample it to a coarser time step or keep the columns you need.")


def parse_csv(content: bytes, time_column: str | None, delimiter: str = ",") -> Series:
    """A `Series` from CSV bytes: a header row, one row per time step, numbers in every other column.

    Args:
        time_column: the column of timestamps (dates or numbers), or None to use the row order as time.
        delimiter: the column separator (one of `DELIMITERS`).

    Empty cells are kept as NaN (the task interpolates or refuses them). Raises `SeriesError` for anything
    else: a file that is not text, a wrong delimiter, non-numeric values, duplicate, unsorted or unevenly
    spaced timestamps.
    """
    frame = _read_table(content, delimiter)
    if time_column is not None:
        if time_column not in frame:
            raise SeriesError(f"There is no column {time_column!r}; the columns are: {', '.join(frame.columns)}. "
                              "Pick the column that holds the timestamps (or none).")
        index = _parse_times(frame.pop(time_column), time_column)
    else:
        index = pd.RangeIndex(len(frame), name="step")
    if frame.shape[1] == 0:
        raise SeriesError("There are no value columns besides the time column; a series needs at least one.")
    values = pd.DataFrame({column: _parse_numbers(frame[column], column) for column in frame.columns})
    values.index = index
    check_time_index(index, lambda row: f"line {row + 2}")
    return Series(values, None, tuple(values.columns[:1]), {}, "CSV file")


# ---- Uploads

UPLOADS = "uploads"  # under the data folder; each file named by its content hash
SNIFF_ROWS = 50
TIME_NAMES = ("date", "time", "timestamp", "datetime", "day", "week", "month", "year", "period")


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SeriesError("The file is not UTF-8 text; save it as CSV (UTF-8) and upload it again.") from None


def guess_delimiter(content: bytes) -> str:
    """The delimiter (one of `DELIMITERS`) that splits the header into the most columns; a comma when none does."""
    first_line = content[:65536].decode("utf-8-sig", errors="replace").splitlines()[:1] or [""]
    counts = {delimiter: first_line[0].count(delimiter) for delimiter in DELIMITERS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def sniff(content: bytes, delimiter: str) -> tuple[list[str], str | None]:
    """The column names of CSV bytes and the likeliest time column (a column named like a time, else the first
    column whose values read as dates), from the first rows only.

    Raises:
        SeriesError: the file is not text, is empty, or the delimiter is wrong.
    """
    frame = _read_table(content, delimiter, nrows=SNIFF_ROWS)
    named = [c for c in frame.columns if c.lower() in TIME_NAMES]
    dated = [c for c in frame.columns
             if pd.to_numeric(frame[c], errors="coerce").isna().all()
             and pd.to_datetime(frame[c], errors="coerce", format="mixed").notna().all()]
    return list(frame.columns), (named or dated or [None])[0]


@dataclasses.dataclass(frozen=True)
class Upload:
    """An uploaded file kept under the data folder's `uploads/`, named by its sha256 (the same file uploaded
    twice is kept once). `path` is relative to the data folder, as a config gives it; `new` says whether this
    upload created the file (so a launch that fails can take it back)."""

    path: str
    sha256: str
    new: bool

    def discard(self) -> None:
        """Remove the file if this upload created it."""
        if self.new:
            (data_dir() / self.path).unlink(missing_ok=True)


def save_upload(content: bytes) -> Upload:
    digest = hashlib.sha256(content).hexdigest()
    relative = f"{UPLOADS}/{digest}.csv"
    path = data_dir() / relative
    if path.is_file():
        return Upload(relative, digest, new=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(content)
    partial.replace(path)  # atomic: a reader never sees half a file
    return Upload(relative, digest, new=True)


def _read_table(content: bytes, delimiter: str, nrows: int | None = None) -> pd.DataFrame:
    """CSV bytes as a frame of text cells (the first `nrows` rows, or all), header names stripped; `SeriesError`
    for a file too big, not text, empty, or not split by `delimiter`."""
    check_size(len(content))
    text = _decode(content)
    if not text.strip():
        raise SeriesError("The file is empty; it needs a header row and one row per time step.")
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, index_col=False,
                            nrows=nrows)
    except (pd.errors.ParserError, ValueError) as error:
        raise SeriesError(f"Cannot read the rows as {DELIMITERS.get(delimiter, repr(delimiter))}-separated "
                          f"values: {str(error).strip()}. Check the delimiter and that every row has as many "
                          "fields as the header.") from None
    _check_delimiter(frame, delimiter)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _check_delimiter(frame: pd.DataFrame, delimiter: str) -> None:
    if frame.shape[1] != 1:
        return
    header = str(frame.columns[0])
    for other, name in DELIMITERS.items():
        if other != delimiter and other in header:
            raise SeriesError(f"The file has one column, {header!r}: its values look {name}-separated, not "
                              f"{DELIMITERS.get(delimiter, repr(delimiter))}-separated. Choose the {name} "
                              "delimiter.")


def _parse_times(column: pd.Series, name: str) -> pd.Index:
    text = column.str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all():
        return pd.Index(numbers.to_numpy(), name=name)
    times = pd.to_datetime(text, errors="coerce", format="mixed")
    bad = times.isna()
    if bad.any():
        raise SeriesError(f"Column {name!r} has values that are not dates or numbers: "
                          f"{_quote_rows(text, bad)}. Fix or remove those rows.")
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert(None)
    return pd.DatetimeIndex(times, name=name)


def _parse_numbers(column: pd.Series, name: str) -> pd.Series:
    text = column.str.strip()
    numbers = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = numbers.isna() & (text != "")
    if bad.any():
        raise SeriesError(f"Column {name!r} has values that are not numbers: {_quote_rows(text, bad)}. "
                          "Use plain numbers with a dot as decimal point (leave a cell empty if it is missing), "
                          "or do not select this column.")
    return numbers.astype(np.float64)


def _quote_rows(text: pd.Series, bad: pd.Series) -> str:
    rows = np.flatnonzero(bad.to_numpy())
    quoted = ", ".join(f"{text.iloc[row]!r} on line {row + 2}" for row in rows[:MAX_LISTED])
    more = len(rows) - MAX_LISTED
    return quoted + (f" and {more} more" if more > 0 else "")


def check_time_index(index: pd.Index, where: Callable[[int], str]) -> None:
    """Timestamps must be unique, increasing and evenly spaced (calendar months count as even).

    Args:
        where: names a row position for messages (`line 12` in a CSV).
    """
    if isinstance(index, pd.RangeIndex) or len(index) < 2:
        return
    values = pd.Series(index)
    duplicated = values.duplicated(keep=False).to_numpy()
    if duplicated.any():
        first = np.flatnonzero(duplicated)[:2]
        raise SeriesError(f"Timestamp {values.iloc[first[0]]} appears more than once ({where(first[0])} and "
                          f"{where(first[1])}); a series needs one row per time step. Aggregate or remove the "
                          "duplicates.")
    steps = values.diff().iloc[1:]
    backwards = np.flatnonzero((steps <= steps.iloc[0] * 0).to_numpy())
    if len(backwards):
        row = backwards[0] + 1
        raise SeriesError(f"Timestamps go backwards at {where(row)} ({values.iloc[row]} after "
                          f"{values.iloc[row - 1]}); sort the rows by time.")
    _check_even_steps(values, steps, where)


def _check_even_steps(values: pd.Series, steps: pd.Series, where) -> None:
    if isinstance(values.dtype, pd.DatetimeTZDtype) or np.issubdtype(values.dtype, np.datetime64):
        month_starts = values.dt.is_month_start.all() or values.dt.is_month_end.all()
        months = values.dt.year * 12 + values.dt.month
        if month_starts and (months.diff().iloc[1:] == 1).all():
            return  # monthly: 28-31 days apart is one step
    usual = steps.mode().iloc[0]
    uneven = np.flatnonzero((steps != usual).to_numpy())
    if len(uneven):
        row = uneven[0] + 1
        raise SeriesError(f"The series steps by {_duration(usual)} but jumps by {_duration(steps.iloc[row - 1])} "
                          f"between {where(row - 1)} ({values.iloc[row - 1]}) and {where(row)} ({values.iloc[row]})"
                          f"{f', and {len(uneven) - 1} more gaps' if len(uneven) > 1 else ''}. Add the missing rows "
                          "with empty values (they are interpolated) or resample the series to one step.")


def _duration(step) -> str:
    """`1 day`, `7 days`, `2 days 06:00:00`, or a number of rows."""
    if not isinstance(step, pd.Timedelta):
        return f"{step:g}"
    if step == pd.Timedelta(days=step.days):
        return f"{step.days} day" + ("" if step.days == 1 else "s")
    return str(step)
