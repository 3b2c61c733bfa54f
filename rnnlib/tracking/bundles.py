"""Portable run bundles: experiments written to a plain folder that opens from any path, on any machine, with any
later MLflow, and loaded back into a store (`export_bundle`, `import_bundle`).

MLflow's own store is tied to its database schema version and records artifact locations as absolute paths, so
a copied `mlflow.db` breaks when it moves or MLflow upgrades. A bundle holds the same runs as plain files:

    bundle.json                      {"format": "rnnlab-bundle", "version": 1, "created": <unix s>,
                                      "experiments": [{"name": ..., "runs": [<run id>, ...]}, ...]}
    runs/<run id>/run.json           run_id, experiment, run_name, status, start_time, end_time (unix ms),
                                     params {key: text}, tags {key: text}
    runs/<run id>/metrics.csv        key,step,timestamp,value: every logged point (`nan`, `inf`, `-inf` as such)
    runs/<run id>/artifacts/...      the run's artifacts: config.yaml, model/weights.npz, model/predictions.npz,
                                     gradient_flow.npz, data/... (model/model.keras only when asked for)

Run ids inside a bundle are the ids of the store it was exported from; an import gives the runs new ids, links
each child to its parent's new id, and keeps the original as the tag `rnnlib.imported_from`, so importing the
same bundle twice adds nothing the second time.
"""

import csv
import json
import shutil
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param

from rnnlib import tracking
from rnnlib.core.errors import RnnLabError
from rnnlib.tracking.queries import restore_infinities, runs_frame
from rnnlib.tracking.store import Store, open_client, writes

FORMAT, VERSION = "rnnlab-bundle", 1
MODEL_FILE = "model/model.keras"  # what only Keras reads; the pages read the plain .npz files
METRIC_COLUMNS = ["key", "step", "timestamp", "value"]
VOLATILE_TAGS = ("rnnlib.worker",)  # the process that trained a run means nothing in another store


class BundleError(RnnLabError):
    """A folder that is not a bundle this version can read, or an export that cannot be made."""


def export_bundle(uri: str | None, experiments: list[str], out: Path, with_models: bool = False) -> dict:
    """Write the finished runs of `experiments` in the store at `uri` into the new folder `out`.

    Runs still RUNNING are left out (they would never end in the store they are imported into). Returns a
    summary: `{experiment: number of runs}` and `skipped` (names of the runs left out).

    Raises:
        BundleError: when `out` exists and is not empty, or an experiment does not exist.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out} exists and is not empty: give a new folder for the bundle.")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))  # beside `out`: renamed, never copied
    try:
        summary, listed, skipped = {}, [], []
        for name in experiments:
            records = run_records(uri, name)
            if not records:
                raise BundleError(f"The store {tracking.resolve_tracking_uri(uri)} has no experiment {name!r} "
                                  "with runs.")
            kept = [r for r in records if r["status"] != "RUNNING"]
            skipped += [r["run_name"] for r in records if r["status"] == "RUNNING"]
            for record in kept:
                _write_run(partial / "runs" / record["run_id"], uri, name, record, with_models)
            listed.append({"name": name, "runs": [r["run_id"] for r in kept]})
            summary[name] = len(kept)
        manifest = {"format": FORMAT, "version": VERSION, "created": int(time.time()), "experiments": listed}
        (partial / "bundle.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        if out.exists():
            out.rmdir()
        partial.rename(out)  # the bundle appears whole or not at all
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {**summary, "skipped": skipped}


def _write_run(folder: Path, uri, experiment: str, record: dict, with_models: bool) -> None:
    folder.mkdir(parents=True)
    info = {k: record[k] for k in ("run_id", "run_name", "status", "start_time", "end_time", "params")}
    info["tags"] = {k: v for k, v in record["tags"].items() if k not in VOLATILE_TAGS}
    (folder / "run.json").write_text(json.dumps({**info, "experiment": experiment}, indent=1), encoding="utf-8")
    with open(folder / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(METRIC_COLUMNS)
        for point in record["metrics"]:
            writer.writerow([point["key"], point["step"], point["timestamp"], repr(float(point["value"]))])
    artifacts = download_run_artifacts(uri, record["run_id"], folder / "artifacts")
    model = artifacts / MODEL_FILE
    if model.exists() and not with_models:
        model.unlink()


def read_manifest(folder: Path) -> dict:
    """The bundle's `bundle.json`, checked.

    Raises:
        BundleError: when `folder` holds no bundle, or one of a later format version.
    """
    path = Path(folder) / "bundle.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BundleError(f"{folder} is not a run bundle: {path.name} cannot be read ({error}).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{folder} is not a run bundle (its bundle.json does not say format {FORMAT!r}).")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise BundleError(f"{folder} is a bundle of format version {manifest.get('version')}; this version of "
                          f"the lab reads up to {VERSION}. Update rnnlib.")
    return manifest


def read_run(folder: Path) -> dict:
    """One run of a bundle as a `run_records` record."""
    info = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    with open(folder / "metrics.csv", newline="", encoding="utf-8") as handle:
        info["metrics"] = [{"key": row["key"], "step": int(row["step"]), "timestamp": int(row["timestamp"]),
                            "value": float(row["value"])} for row in csv.DictReader(handle)]
    return info


def import_bundle(folder: Path, uri: str | None) -> dict:
    """Load every run of the bundle in `folder` into the store at `uri`: `{experiment: runs added}`. Runs the
    store already holds from this bundle (`rnnlib.imported_from`) are not added again.

    Raises:
        BundleError: when `folder` is not a readable bundle.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    store = tracking.Store(uri)
    added = {}
    for experiment in manifest["experiments"]:
        name = experiment["name"]
        known = imported_runs(store.uri, name)  # original id -> id in this store
        count = 0
        for run_id in experiment["runs"]:
            if run_id in known:
                continue
            try:
                record = read_run(folder / "runs" / run_id)
            except (OSError, ValueError, KeyError) as error:
                raise BundleError(f"Run {run_id} of {folder} cannot be read ({error}); the bundle is damaged.") \
                    from None
            parent = record["tags"].get("mlflow.parentRunId")
            known[run_id] = write_run(store, name, record, folder / "runs" / run_id / "artifacts",
                                               parent_run_id=known.get(parent) if parent else None)
            count += 1
        added[name] = count
    return added


# ---- Whole runs, as plain data: what `rnnlib.tracking.bundles` writes to and reads from a portable folder.

def run_records(uri: str | None, experiment: str) -> list[dict]:
    """Every run of `experiment` as plain data: `run_id`, `run_name`, `status`, `start_time`, `end_time` (ms),
    `params`, `tags` and `metrics` (every logged point: `key`, `step`, `timestamp`, `value`, NaN and inf as
    logged). Parents come before their children. Empty when the experiment does not exist."""
    client = open_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    records = []
    for run in client.search_runs([found.experiment_id], max_results=50_000):
        points = [{"key": key, "step": m.step, "timestamp": m.timestamp, "value": float(restore_infinities(m.value))}
                  for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)]
        records.append({"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
                        "start_time": run.info.start_time, "end_time": run.info.end_time,
                        "params": dict(run.data.params), "tags": dict(run.data.tags), "metrics": points})
    return sorted(records, key=lambda r: ("mlflow.parentRunId" in r["tags"], r["start_time"] or 0))


def download_run_artifacts(uri: str | None, run_id: str, destination: Path) -> Path:
    """Every artifact of a run, copied into `destination` (created)."""
    destination.mkdir(parents=True, exist_ok=True)
    client = open_client(uri)
    for item in client.list_artifacts(run_id):
        client.download_artifacts(run_id, item.path, str(destination))
    return destination


def write_run(store: Store, experiment: str, record: dict, artifacts: Path | None,
              parent_run_id: str | None = None) -> str:
    """Create a finished run in `store` from a `run_records` record (its start and end times, params, tags,
    every metric point, and the files under `artifacts`); returns its new id. Its original id is kept as the
    tag `rnnlib.imported_from`."""
    experiment_id = store.experiment_id(experiment)
    tags = {k: v for k, v in record["tags"].items() if k != "mlflow.parentRunId"}
    tags["rnnlib.imported_from"] = record["run_id"]
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    with writes(store.uri):
        run_id = store.client.create_run(experiment_id, start_time=record["start_time"], tags=tags,
                                         run_name=record["run_name"]).info.run_id
        params = [Param(k, v) for k, v in record["params"].items()]
        metrics = [Metric(m["key"], float(m["value"]), int(m["timestamp"]), int(m["step"])) for m in record["metrics"]]
        for first in range(0, len(params), 100):
            store.client.log_batch(run_id, params=params[first : first + 100])
        for first in range(0, len(metrics), 1000):
            store.client.log_batch(run_id, metrics=metrics[first : first + 1000])
        if artifacts is not None and artifacts.is_dir() and any(artifacts.iterdir()):
            store.client.log_artifacts(run_id, str(artifacts))
        store.client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    return run_id


def imported_runs(uri: str | None, experiment: str) -> dict[str, str]:
    """{original id: id here} of the runs of `experiment` that were imported (`write_run`)."""
    runs = runs_frame(uri, experiment)
    column = "tags.rnnlib.imported_from"
    if column not in runs:
        return {}
    known = runs.dropna(subset=[column])
    return dict(zip(known[column], known["run_id"]))
