"""Command line: `rnnlab run experiments/NAME.yaml [--set key=value ...] [--tracking-uri URI]` (or `python -m rnnlib`).

`rnnlab validate FILE` checks a YAML, `rnnlab lab` starts the dashboard, `rnnlab export` / `import` move runs,
`rnnlab report` writes a page's view as one HTML file that opens offline, `rnnlab store up|down|status --dir DIR`
starts and stops a shared store (PostgreSQL and an mlflow server over it).

Exit codes: 0 all runs finished, 1 some runs failed, 2 invalid config or arguments, 3 tracking store
unusable, 130 interrupted (the open run ends KILLED).
"""

import argparse
import os
import signal
import sys

from tqdm import tqdm

from rnnlib.core.callbacks import Callback
from rnnlib.core.errors import ConfigError, RnnLabError, TrackingError

EXIT_FAILED, EXIT_CONFIG, EXIT_TRACKING, EXIT_INTERRUPTED = 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rnnlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "train an experiment (every point of its grid) and log it to MLflow"),
                            ("validate", "check an experiment YAML and list the runs it would start")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("experiment", help="path to an experiment YAML, e.g. experiments/adding_cells.yaml")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override a config key; VALUE is YAML (task.length=200, grid.seed=[0], 'grid={}')")
    demo = commands.add_parser("demo", help="start the demo sweep as a background job if the store has no runs")
    demo.add_argument("--tracking-uri", default=None)
    export = commands.add_parser("export", help="write experiments to a portable bundle folder")
    export.add_argument("--experiment", action="append", required=True, metavar="NAME",
                        help="an experiment to export; repeat for several")
    export.add_argument("--out", required=True, help="the new folder to write the bundle into")
    export.add_argument("--with-models", action="store_true", help="also copy model/model.keras (Keras files)")
    export.add_argument("--tracking-uri", default=None)
    report = commands.add_parser(
        "report", help="write a view of an experiment as one self-contained HTML file that opens offline")
    report.add_argument("--experiment", required=True, metavar="NAME")
    report.add_argument("--view", choices=["compare", "gradients"], default="compare",
                        help="the page whose view to write (default: compare)")
    report.add_argument("--link", default="", metavar="URL",
                        help="a dashboard link (or its query: 'metric=val_loss&group_by=model.label&band=se'): "
                             "the view it shows; what it leaves out takes the page's defaults")
    report.add_argument("--metric", help="Compare's metric (default: val_loss)")
    report.add_argument("--group-by", action="append", metavar="PARAM",
                        help="group runs by this param; repeat for several (default: the params that vary)")
    report.add_argument("--band", help="ci95, se, std, range or none (default: range below 5 runs per group)")
    report.add_argument("--out", required=True, help="the HTML file to write, e.g. report.html")
    report.add_argument("--tracking-uri", default=None)
    load = commands.add_parser("import", help="load a bundle folder's runs into a store")
    load.add_argument("bundle", help="a folder written by `export`")
    load.add_argument("--tracking-uri", default=None)
    shared = commands.add_parser(
        "store", help="a shared store on this machine: PostgreSQL and an mlflow server over it, on loopback")
    shared.add_argument("action", choices=["up", "down", "status"])
    shared.add_argument("--dir", required=True, metavar="DIR",
                        help="the folder for the database, the artifacts and the logs (created on first `up`)")
    shared.add_argument("--port", type=int, default=5000, help="the tracking server's port (default: 5000)")
    lab = commands.add_parser("lab",
                              help="start the dashboard (the demo sweep first on an empty store); other arguments "
                                   "go to `streamlit run`")
    lab.add_argument("--tracking-uri", default=None)
    lab.add_argument("--read-only", action="store_true",
                     help="serve the runs to strangers: nothing can be trained, uploaded or changed")
    run = commands.choices["run"]
    run.add_argument("--tracking-uri", default=None,
                     help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--executor", choices=["sequential", "processes", "ray"], default=None,
                     help="how the trials run (default: the YAML's execution.executor, else sequential)")
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="trials at once: worker processes (default: one per CPU core), or Ray tasks in flight "
                          "(default: as many as the cluster holds)")
    run.add_argument("--address", default=None, metavar="ADDRESS",
                     help="the Ray cluster of the ray executor (default: a local Ray), e.g. ray://head:10001")
    run.add_argument("--only-failed", action="store_true",
                     help="train only the grid points without a FINISHED run in the experiment (resume a sweep "
                          "whose trials failed or were stopped)")
    run.add_argument("--job-id", default=None, help=argparse.SUPPRESS)  # set by the dashboard's jobs
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.streamlit_args = extra  # `rnnlab lab --server.port 8502`
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from rnnlib.core.config import expand_grid, load_config

        if args.command in BUNDLE_COMMANDS:
            return BUNDLE_COMMANDS[args.command](args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "lab":
            return _lab(args)
        if args.command == "store":
            return _store(args)
        for key in ("executor", "workers", "address"):  # flags of `run` only, spelled as overrides of the YAML
            if getattr(args, key, None) is not None:
                args.overrides.append(f"execution.{key}={getattr(args, key)}")
        config = load_config(args.experiment, args.overrides)
        if args.command == "validate":
            points = expand_grid(config)
            print(f"{args.experiment}: valid, {len(points)} run(s) in experiment {config.name!r}")
            return 0
        return _run(config, args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except TrackingError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_TRACKING
    except KeyboardInterrupt:
        print("\ninterrupted: the open run was marked KILLED", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RnnLabError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED


def _store(args) -> int:
    from rnnlib.run import shared_store

    if args.action == "down":
        stopped = shared_store.down(args.dir)
        print(f"stopped the store in {args.dir}" if stopped else f"no store was running in {args.dir}")
        return 0
    store = shared_store.up(args.dir, args.port) if args.action == "up" else shared_store.status(args.dir)
    if store is None:
        print(f"no store is running in {args.dir}: `rnnlab store up --dir {args.dir}`", file=sys.stderr)
        return EXIT_TRACKING
    print(f"tracking server {store.tracking_uri} over PostgreSQL on 127.0.0.1:{store.database_port}, data in "
          f"{store.folder}", file=sys.stderr)
    print(f"export MLFLOW_TRACKING_URI={store.tracking_uri}")
    return 0


def _run(config, args) -> int:
    from rnnlib import tracking
    from rnnlib.run import sweep

    tracking.apply_http_policy("training")
    signal.signal(signal.SIGTERM, _request_stop)  # `kill` ends the open run KILLED, like Ctrl-C
    signal.signal(signal.SIGINT, _request_stop)
    store = tracking.Store(args.tracking_uri, run_tags={tracking.JOB_TAG: args.job_id} if args.job_id else None)
    if args.job_id:  # a dashboard job: wait for a free slot (`rnnlib.run.jobs`) before opening any run
        from rnnlib.run import jobs

        print(f"job {args.job_id}: waiting for a free slot ({jobs.max_jobs()} job(s) at once)", file=sys.stderr)
        slot = jobs.wait_for_slot(args.job_id, check=_GracefulStop.check)  # noqa: F841 - held until exit
    print(f"experiment {config.name!r} -> {store.uri}", file=sys.stderr)

    def make_callbacks(index, total, trial_config):
        _GracefulStop.check()  # a stop requested between runs starts no new one
        progress = [] if args.quiet else _progress_callbacks(index, total, trial_config)
        return [_GracefulStop(), *progress]

    results = sweep.run_experiment(config, store, make_callbacks, check=_GracefulStop.check,
                                   only_failed=args.only_failed)
    if not results:
        print(f"every grid point of {config.name!r} has a finished run in {store.uri}: nothing to re-run")
        return 0
    table = sweep.summary_table(results)
    print(f"\nBest validation loss ({results[0].config.task.name}, baseline = {results[0].baseline:.4g}):")
    print(sweep.format_summary(table))
    diverged = [r for r in results if r.diverged_epoch is not None]
    if diverged:
        names = ", ".join(f"{tracking.run_name(r.config, r.point)} (epoch {r.diverged_epoch})" for r in diverged)
        print(f"\n{len(diverged)} run(s) diverged (loss NaN or inf; left out of the means): {names}.")
    print(f"\n{len(results)} run(s) logged to {store.uri}, experiment {config.name!r}.")
    return 0


def _demo(args) -> int:
    """Give a first open something to show: the demo sweep, as a dashboard job, when the store is empty."""
    from rnnlib import tracking
    from rnnlib.core.config import load_config
    from rnnlib.core.paths import EXPERIMENTS_DIR
    from rnnlib.run import jobs

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_store(uri)
    if not tracking.list_experiments(uri).empty:
        print(f"{uri} already has runs; no demo needed.", file=sys.stderr)
        return 0
    job = jobs.launch(load_config(EXPERIMENTS_DIR / "demo.yaml"), uri)
    print(f"The store is empty: started the demo sweep ({job.num_runs} runs, about 2 minutes) as job "
          f"{job.job_id}; the Home page shows its progress.", file=sys.stderr)
    return 0


def _lab(args) -> int:
    """`streamlit run app.py` on loopback, after `_demo` gave an empty store something to show."""
    import subprocess

    from rnnlib.core.paths import PROJECT_DIR

    if args.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    if args.read_only:
        os.environ["RNNLAB_READ_ONLY"] = "1"  # ui.mode reads it in the dashboard process
    else:
        _demo(args)
    command = [sys.executable, "-m", "streamlit", "run", str(PROJECT_DIR / "app.py"), "--server.address",
               "127.0.0.1", "--browser.gatherUsageStats", "false", *args.streamlit_args]
    return subprocess.call(command, cwd=PROJECT_DIR)


def _export(args) -> int:
    from rnnlib import tracking
    from rnnlib.tracking import bundles

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_store(uri)
    summary = bundles.export_bundle(uri, args.experiment, args.out, with_models=args.with_models)
    skipped = summary.pop("skipped")
    counts = ", ".join(f"{name}: {count} run(s)" for name, count in summary.items())
    print(f"Wrote {args.out} ({counts}).", file=sys.stderr)
    if skipped:
        print(f"Left out {len(skipped)} run(s) still RUNNING: {', '.join(skipped)}.", file=sys.stderr)
    return 0


def _report(args) -> int:
    """`rnnlab report`: the view from the store, through the same functions the page draws with."""
    from pathlib import Path
    from urllib.parse import parse_qs, urlsplit

    from rnnlib import tracking
    from rnnlib.viz import report, views

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_store(uri)
    link = args.link if "?" in args.link or "=" not in args.link.split("/")[-1] else "?" + args.link
    query = {k: v for k, v in parse_qs(urlsplit(link).query, keep_blank_values=True).items()}
    for field, value in (("metric", args.metric), ("band", args.band), ("group_by", args.group_by)):
        if value:
            query[field] = value if isinstance(value, list) else [value]
    all_runs = tracking.runs_frame(uri, args.experiment)
    try:
        if all_runs.empty:
            names = ", ".join(tracking.list_experiments(uri)["name"]) or "none"
            raise ValueError(f"No runs in experiment {args.experiment!r} at {uri}; experiments there: {names}.")
        runs = views.select_runs(all_runs, query)
        if runs.empty:
            raise ValueError("No run matches the link's filters.")
        if args.view == "compare":
            settings = views.compare_settings_from(query, runs)
            histories = tracking.metric_histories(uri, runs["run_id"].tolist(), views.history_keys(runs, settings))
            selection = {k: v for k, v in query.items() if k in ("sweep", "selected") or k.startswith("f.")}
            text = report.compare_report(args.experiment, runs, histories, settings, selection, tracking.git_commit())
        else:
            flows = {run_id: tracking.load_gradient_flow(uri, run_id) for run_id in runs["run_id"]}
            runs = runs[runs["run_id"].map(lambda run_id: flows[run_id] is not None)]
            if runs.empty:
                raise ValueError("No run of this experiment has a gradient-flow record: recurrent runs log one unless "
                                 "training.probe_every is 0; AR(τ) models have no state to probe.")
            flow_settings = views.gradient_settings_from(query, runs, flows)
            histories = tracking.metric_histories(uri, runs["run_id"].tolist(), list(views.GRADIENT_HISTORIES))
            text = report.gradient_report(args.experiment, runs, flows, histories, flow_settings,
                                          tracking.git_commit())
    except ValueError as error:  # a view these runs cannot show: say which value, write nothing
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(out)  # never a half-written report under the final name
    print(f"Wrote {out} ({len(text) / 1e6:.1f} MB, {len(runs)} runs): open it in any browser, offline.",
          file=sys.stderr)
    return 0


def _import(args) -> int:
    from rnnlib import tracking
    from rnnlib.tracking import bundles

    uri = tracking.resolve_tracking_uri(args.tracking_uri)
    tracking.check_store(uri)
    added = bundles.import_bundle(args.bundle, uri)
    counts = ", ".join(f"{name}: {count} new run(s)" for name, count in added.items())
    print(f"Imported {args.bundle} into {uri} ({counts}).", file=sys.stderr)
    return 0


BUNDLE_COMMANDS = {"export": _export, "import": _import, "report": _report}


class _GracefulStop(Callback):
    """Turns SIGTERM / Ctrl-C into KeyboardInterrupt at the next batch boundary, so that no MLflow write is cut
    in half and the open run is ended KILLED cleanly. A second signal interrupts at once."""

    requested = False

    @classmethod
    def check(cls):
        if cls.requested:
            raise KeyboardInterrupt

    def on_batch_end(self, epoch, batch):
        self.check()

    def on_epoch_end(self, epoch, logs):
        self.check()


def _request_stop(signum, frame):
    if _GracefulStop.requested:
        raise KeyboardInterrupt
    _GracefulStop.requested = True


def _progress_callbacks(index, total, config):
    from rnnlib import tracking

    return [_ProgressBar(f"[{index + 1}/{total}] {tracking.run_name(config)}", config)]


class _ProgressBar(Callback):
    """One tqdm bar per run over its batches; shows the latest losses."""

    def __init__(self, description, config):
        self.description = description
        self.total = config.training.epochs * config.training.steps_per_epoch
        self.bar = None

    def on_train_begin(self, info):
        self.bar = tqdm(total=self.total, desc=self.description, unit="batch", file=sys.stderr,
                                        dynamic_ncols=True, leave=True)

    def on_batch_end(self, epoch, batch):
        assert self.bar is not None, "on_train_begin makes the bar"
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs):
        assert self.bar is not None, "on_train_begin makes the bar"
        self.bar.set_postfix(epoch=epoch, loss=f"{logs['train_loss']:.4f}", val=f"{logs['val_loss']:.4f}")

    def on_train_end(self, result):
        assert self.bar is not None, "on_train_begin makes the bar"
        self.bar.close()
