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

from rnnlib import tracking
from rnnlib.errors import RnnLabError

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
    partial = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent if out.parent.is_dir() else None))
    try:
        summary, listed, skipped = {}, [], []
        for name in experiments:
            records = tracking.run_records(uri, name)
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
    artifacts = tracking.download_run_artifacts(uri, record["run_id"], folder / "artifacts")
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
    """One run of a bundle as a `tracking.run_records` record."""
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
        known = tracking.imported_runs(store.uri, name)  # original id -> id in this store
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
            known[run_id] = tracking.write_run(store, name, record, folder / "runs" / run_id / "artifacts",
                                               parent_run_id=known.get(parent) if parent else None)
            count += 1
        added[name] = count
    return added

