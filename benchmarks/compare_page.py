"""How fast the Compare page opens over many runs: 100 / 1,000 / 10,000 runs of 200 logged epochs, on a sqlite file
and on the shared store (`rnnlab store up`: PostgreSQL behind `mlflow server`, `rnnlib.run.shared_store`).

    .venv/bin/python benchmarks/compare_page.py [--runs 100 1000 10000] [--stores sqlite server postgresql]
                                                [--steps 200] [--repeats 3] [--no-page] [--smoke]

Stores: `sqlite` (a file), `server` (the dashboard reads the shared store through its tracking server, as a team
does) and `postgresql` (the same database read directly, `MLFLOW_TRACKING_URI=postgresql://...`: what the SQL
readers give on PostgreSQL, without the server).

Each store holds one experiment per size (`bench-<runs>`) of runs that look like a sweep: 3 cells x 5 truncations x
seeds, 4 metrics per epoch and a baseline; every `DIVERGE_EVERY`-th run diverged (its losses NaN at a random epoch,
where it stopped, tagged `rnnlib.diverged_epoch`). Logging one run with MLflow's client costs about 0.1 s on sqlite
and 0.2 s through the server (one row object per metric point), hours at 10,000 runs; so the first `API_RUNS` runs
of each experiment are logged with the client and the others are written in bulk into MLflow's own tables, copying
the client-made run's row (for the shared store into its database, with COPY). The build then checks that both
kinds read back alike and that every point is there; its time is printed apart (`build s`).

Then, per store and size, the best of `--repeats`:
  - runs table: `tracking.runs_frame`, the runs the page lists and filters;
  - histories: `tracking.metric_histories` of the keys the page reads (`views.history_keys`);
  - stats+figures: `views.compare_view`, everything the page computes from those two frames;
  - page cold: the Compare page under AppTest after every Streamlit cache was cleared (as when the page is first
    opened on a running dashboard, whose process already holds the store's connection), and page warm: it again.
--smoke: 15 runs x 10 epochs, once, on every store (the server and postgresql skipped, saying so, where PostgreSQL
is not installed).
"""

import argparse
import contextlib
import dataclasses
import io
import itertools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Param

from rnnlib import tracking
from rnnlib.core import divergence
from rnnlib.core.errors import TrackingError
from rnnlib.core.paths import PROJECT_DIR
from rnnlib.run import shared_store
from rnnlib.viz import views

METRICS = ("train_loss", "val_loss", "val_mae", "grad_norm")
CELLS = ("rnn", "lstm", "gru")
TRUNCATIONS = ("5", "10", "25", "50", "full")
API_RUNS = 3  # runs per experiment logged with MLflow's client: the reference the bulk-written ones must match
DIVERGE_EVERY = 50
CHUNK_RUNS = 200  # runs written per bulk insert
STORES = ("sqlite", "server", "postgresql")  # postgresql: the server's own database, read directly


@dataclasses.dataclass(frozen=True)
class BenchStore:
    """A store to measure: `tracking_uri` is what the dashboard reads, `database_uri` the SQLAlchemy URL of the
    database beneath it, which the bulk writer fills."""

    kind: str
    tracking_uri: str
    database_uri: str


@dataclasses.dataclass(frozen=True)
class SyntheticRun:
    """One run of the synthetic sweep: its name, params, tags and metric history (`key -> (steps, values)`)."""

    name: str
    params: tuple[tuple[str, str], ...]
    tags: tuple[tuple[str, str], ...]
    history: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def num_points(self) -> int:
        return sum(len(steps) for steps, _ in self.history.values())


def synthetic_runs(num_runs: int, steps: int, seed: int = 0) -> Iterator[SyntheticRun]:
    """`num_runs` runs of a sweep over cells x truncations x seeds: learning curves of 4 metrics over `steps`
    epochs and a baseline at step 0; every `DIVERGE_EVERY`-th run's losses turn NaN at a random epoch (it stops
    there)."""
    rng = np.random.default_rng(seed)
    for index in range(num_runs):
        cell, trunc = CELLS[index % 3], TRUNCATIONS[(index // 3) % 5]
        run_seed = index // 15
        decay = rng.uniform(0.005, 0.05)
        epochs = np.arange(1, steps + 1)
        curve = 1 / 6 * np.exp(-decay * epochs) + rng.normal(0, 0.003, steps)
        tags = [("rnnlib.run_kind", "trial"), ("seed", str(run_seed))]
        diverged = index % DIVERGE_EVERY == DIVERGE_EVERY - 1
        if diverged:
            stop = int(rng.integers(1, steps + 1))
            epochs, curve = epochs[:stop], np.where(epochs[:stop] == stop, np.nan, curve[:stop])
            tags.append((divergence.TAG, str(stop)))
        history = {key: (epochs, curve * (1 + k * 0.1)) for k, key in enumerate(METRICS)}
        history["baseline"] = (np.array([0]), np.array([1 / 6]))
        params = (("model.cell_type", cell), ("training.truncation", trunc), ("seed", str(run_seed)),
                  ("task.name", "adding"), ("training.epochs", str(steps)))
        yield SyntheticRun(f"{cell}-{trunc}-s{run_seed}", params, tuple(tags), history)


# ---- Building a store ------------------------------------------------------------------------------------------

def build_experiment(store: BenchStore, name: str, num_runs: int, steps: int) -> int:
    """Create experiment `name` in `store` with `num_runs` synthetic runs: the first `API_RUNS` through MLflow's
    client, the rest in bulk (`write_runs`), `CHUNK_RUNS` at a time. Returns the number of metric points written."""
    import sqlalchemy

    client = tracking.open_client(store.tracking_uri)
    location = None
    if store.kind == "sqlite":
        location = (Path(tracking.sqlite_path(store.tracking_uri)).parent / "mlartifacts").as_uri()
    experiment_id = client.create_experiment(name, artifact_location=location)
    runs = synthetic_runs(num_runs, steps)
    logged = list(itertools.islice(runs, API_RUNS))
    reference = [log_with_client(client, experiment_id, run) for run in logged][0]
    points = sum(run.num_points for run in logged)
    engine = sqlalchemy.create_engine(store.database_uri)
    try:
        while chunk := list(itertools.islice(runs, CHUNK_RUNS)):
            points += write_runs(engine, reference, chunk)
    finally:
        engine.dispose()
    return points


def log_with_client(client, experiment_id: str, run: SyntheticRun) -> str:
    """Log `run` with MLflow's client (batches of 1,000 metrics, its limit) and end it FINISHED; returns its id."""
    run_id = client.create_run(experiment_id, run_name=run.name, tags=dict(run.tags)).info.run_id
    metrics = [Metric(key, float(value), 1000 * int(step), int(step)) for key, (steps, values) in run.history.items()
               for step, value in zip(steps, values)]
    params = [Param(key, value) for key, value in run.params]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else [])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def write_runs(engine, reference_id: str, runs: list[SyntheticRun]) -> int:
    """Insert `runs` straight into MLflow's tables (`runs`, `tags`, `params`, `metrics`, `latest_metrics`) of the
    database `engine` reaches, each run's row a copy of the client-made run `reference_id`'s with its own id, name
    and times. Returns the number of metric points written."""
    import sqlalchemy

    with engine.connect() as connection:
        row = connection.execute(sqlalchemy.text("SELECT * FROM runs WHERE run_uuid = :id"),
                                 {"id": reference_id}).mappings().one()
    connection = engine.raw_connection()
    try:
        for table, rows in _table_rows(dict(row), runs).items():
            _insert(connection, engine.dialect.name, table, rows)
        connection.commit()
    finally:
        connection.close()
    return sum(run.num_points for run in runs)


def _table_rows(reference: dict, runs: list[SyntheticRun]) -> dict[str, list[dict]]:
    """The rows `runs` add to each of MLflow's run tables; `reference` is a client-made run's `runs` row."""
    tables: dict[str, list[dict]] = {"runs": [], "tags": [], "params": [], "metrics": [], "latest_metrics": []}
    start = int(time.time() * 1000)
    for offset, run in enumerate(runs):
        run_id = uuid.uuid4().hex
        begin = start + offset * 10
        tables["runs"].append({**reference, "run_uuid": run_id, "name": run.name, "start_time": begin,
                               "end_time": begin + 5, "artifact_uri": reference["artifact_uri"].replace(
                                   reference["run_uuid"], run_id)})
        tables["tags"] += [{"key": k, "value": v, "run_uuid": run_id}
                           for k, v in [("mlflow.runName", run.name), *run.tags]]
        tables["params"] += [{"key": k, "value": v, "run_uuid": run_id} for k, v in run.params]
        for key, (steps, values) in run.history.items():
            points = [_metric_row(run_id, key, int(step), float(value)) for step, value in zip(steps, values)]
            tables["metrics"] += points
            tables["latest_metrics"].append(points[-1])
    return tables


def _metric_row(run_id: str, key: str, step: int, value: float) -> dict:
    """A metric point as MLflow stores it: NaN as value 0 with `is_nan` set."""
    nan = bool(np.isnan(value))
    return {"key": key, "value": 0.0 if nan else value, "timestamp": 1000 * step, "step": step, "is_nan": nan,
            "run_uuid": run_id}


def _insert(connection, dialect: str, table: str, rows: list[dict]) -> None:
    """Insert `rows` (dicts with the same keys) into `table` over a DBAPI connection: COPY on PostgreSQL (about
    10x faster than INSERTs), executemany elsewhere."""
    if not rows:
        return
    columns = list(rows[0])
    cursor = connection.cursor()
    if dialect == "postgresql":
        text = "".join("\t".join(_copy_field(row[c]) for c in columns) + "\n" for row in rows)
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", io.StringIO(text))
    else:
        marks = ", ".join("?" * len(columns))
        cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                           [tuple(row[c] for c in columns) for row in rows])
    cursor.close()


COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value) -> str:
    """One field in PostgreSQL's COPY text format: `\\N` for NULL, t/f, numbers as Python writes them."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    return repr(value) if isinstance(value, float) else str(value).translate(COPY_ESCAPES)


def check_experiment(store: BenchStore, name: str, num_runs: int, points: int) -> None:
    """Fail unless the experiment reads back from the database with `num_runs` runs, the bulk-written runs carry
    the same columns as the client-made ones, and every one of `points` metric points is there."""
    runs = tracking.runs_frame(store.database_uri, name)
    if len(runs) != num_runs:
        raise RuntimeError(f"{name} on {store.kind}: {len(runs)} runs read back, {num_runs} written")
    plain = runs[runs[f"tags.{divergence.TAG}"].isna()] if f"tags.{divergence.TAG}" in runs else runs
    filled = {frozenset(plain.columns[row.notna().to_numpy()]) for _, row in plain.iterrows()}
    if len(filled) != 1:
        raise RuntimeError(f"{name} on {store.kind}: bulk-written runs differ from the client-made ones in "
                           f"{sorted(set.union(*map(set, filled)) - set.intersection(*map(set, filled)))}")
    histories = tracking.metric_histories(store.database_uri, runs["run_id"].tolist(), [*METRICS, "baseline"])
    if len(histories) != points:
        raise RuntimeError(f"{name} on {store.kind}: {len(histories)} metric points read back, {points} written")


# ---- The stores ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def sqlite_store(folder: Path) -> Iterator[list[BenchStore]]:
    """A fresh sqlite store in `folder`."""
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    yield [BenchStore("sqlite", uri, uri)]


@contextlib.contextmanager
def server_store(folder: Path) -> Iterator[list[BenchStore]]:
    """The shared store (`rnnlab store up`) in `folder`, read through its server and, as `postgresql`, straight
    from its database; stopped after. No store when PostgreSQL is not installed."""
    try:
        shared_store.postgres_binaries()
    except TrackingError as error:
        print(f"server and postgresql: skipped ({error})", flush=True)
        yield []
        return
    folder.mkdir(mode=0o755)  # as root, PostgreSQL runs as `postgres`, who must reach the data folder
    started = shared_store.up(folder / "store", port=shared_store._free_port())
    try:
        yield [BenchStore("server", started.tracking_uri, started.database_uri),
               BenchStore("postgresql", started.database_uri, started.database_uri)]
    finally:
        shared_store.down(folder / "store")


# ---- Measuring -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Figures:
    store: str
    runs: int
    points: int
    build: float
    runs_table: float = float("nan")
    histories: float = float("nan")
    figures: float = float("nan")
    page_cold: float = float("nan")
    page_warm: float = float("nan")
    readers: str = ""  # the paths that read the runs table and the histories (`attrs["reader"]`)
    note: str = ""  # why the page has no figures


def best_time(function, repeats: int):
    """The shortest of `repeats` calls of `function` in seconds, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def measure_reads(store: BenchStore, name: str, figures: Figures, repeats: int) -> None:
    """Time the runs table, the histories and the statistics and figures the page computes from them, with the
    settings the page opens with."""
    uri = store.tracking_uri
    figures.runs_table, runs = best_time(lambda: tracking.runs_frame(uri, name), repeats)
    settings = views.default_compare_settings(runs)
    keys = views.history_keys(runs, settings)
    figures.histories, histories = best_time(
        lambda: tracking.metric_histories(uri, runs["run_id"].tolist(), keys), repeats)
    figures.figures, _ = best_time(lambda: views.compare_view(runs, histories, settings), repeats)
    figures.readers = f"{runs.attrs['reader']}, {histories.attrs['reader']}"


def measure_page(store: BenchStore, name: str, figures: Figures, repeats: int) -> None:
    """Time the Compare page under AppTest: cold (every Streamlit cache cleared first) and warm (run again)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ[tracking.ENV_TRACKING_URI] = store.tracking_uri
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=900)
    at.run()
    at.query_params["experiment"] = name
    at.switch_page("app_pages/compare.py")
    figures.page_cold = figures.page_warm = float("inf")
    for _ in range(repeats):
        st.cache_data.clear()
        cold, _ = best_time(at.run, 1)
        _raise_page_errors(at)
        warm, _ = best_time(at.run, 1)
        _raise_page_errors(at)
        figures.page_cold, figures.page_warm = min(figures.page_cold, cold), min(figures.page_warm, warm)


def _raise_page_errors(at) -> None:
    problems = [element.value for element in [*at.exception, *at.error]]
    if problems:
        raise RuntimeError(f"the Compare page failed: {problems}")


def measure(store: BenchStore, name: str, figures: Figures, repeats: int, page: bool) -> Figures:
    """`figures` (of the build of experiment `name`) with the timings of reading it from `store`; printed."""
    figures = dataclasses.replace(figures, store=store.kind)
    measure_reads(store, name, figures, repeats)
    if page:
        try:
            measure_page(store, name, figures, repeats)
        except RuntimeError as error:  # e.g. a server that did not answer within the dashboard's HTTP timeout
            figures.page_cold = figures.page_warm = float("nan")
            figures.note = str(error)[:400]
    print(row(figures), flush=True)
    return figures


def build(store: BenchStore, num_runs: int, steps: int) -> tuple[str, Figures]:
    """Build and check experiment `bench-<num_runs>` in `store`: its name and its build figures."""
    name = f"bench-{num_runs}"
    start = time.perf_counter()
    points = build_experiment(store, name, num_runs, steps)
    figures = Figures(store.kind, num_runs, points, time.perf_counter() - start)
    check_experiment(store, name, num_runs, points)
    return name, figures


HEADER = (f"{'store':<11} {'runs':>6} {'points':>10} {'build s':>8} | {'runs table':>10} {'histories':>9} "
          f"{'stats+figures':>13} | {'page cold':>9} {'page warm':>9} | read by")


def row(f: Figures) -> str:
    return (f"{f.store:<11} {f.runs:>6,} {f.points:>10,} {f.build:>8.1f} | {f.runs_table:>10.2f} {f.histories:>9.2f} "
            f"{f.figures:>13.2f} | {f.page_cold:>9.2f} {f.page_warm:>9.2f} | {f.readers}"
            + (f"  ({f.note})" if f.note else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="timings are the best of this many")
    parser.add_argument("--no-page", action="store_true", help="time the reads and figures, not the page")
    parser.add_argument("--smoke", action="store_true", help="15 runs x 10 epochs, once: checks it runs, in seconds")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.steps, args.repeats = [15], 10, 1
    print(f"seconds, best of {args.repeats}; build: logging the runs into the store (not timed as a read)\n{HEADER}",
          flush=True)
    table = []
    folder = Path(tempfile.mkdtemp(prefix="compare-page-", dir="/tmp"))
    folder.chmod(0o755)  # the postgres user must reach the store's folder inside it
    try:
        for opener, kinds in ((sqlite_store, {"sqlite"}), (server_store, {"server", "postgresql"})):
            if not kinds & set(args.stores):
                continue
            with opener(folder / opener.__name__) as stores:
                for num_runs in args.runs:
                    if stores:
                        name, built = build(stores[0], num_runs, args.steps)
                        table += [measure(store, name, built, args.repeats, not args.no_page) for store in stores
                                  if store.kind in args.stores]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n{HEADER}\n" + "\n".join(row(f) for f in table))
    if any(f.note for f in table):
        raise SystemExit("the Compare page failed on some store (see its row)")


if __name__ == "__main__":
    main()
