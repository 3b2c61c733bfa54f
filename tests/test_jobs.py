"""Dashboard jobs own their runs, say how far along they are, and no run outlives its worker as RUNNING."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import streamlit as st
from mlflow.tracking import MlflowClient
from streamlit.testing.v1 import AppTest

from conftest import EXPERIMENTS_DIR, PROJECT_DIR
from rnnlib import tracking
from rnnlib.core import config as cfg
from rnnlib.core import workers
from rnnlib.core.errors import ConfigError
from rnnlib.run import jobs

pytestmark = pytest.mark.slow
TINY = {"training.steps_per_epoch": 2, "training.batch_size": 8, "training.num_validation_sequences": 8,
        "model.units": 4, "training.probe_every": 0}


@pytest.fixture(autouse=True)
def jobs_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNLAB_JOBS_DIR", str(tmp_path / "jobs"))
    yield tmp_path / "jobs"
    for job in jobs.list_jobs():
        if job.running:
            os.killpg(job.pid, signal.SIGKILL)


def smoke(**overrides):
    values = {**TINY, **overrides}
    return cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", [f"{k}={v}" for k, v in values.items()])


def wait(condition, timeout=180, every=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    raise AssertionError("timed out waiting")


def trained_epochs(uri, experiment, job):
    runs = tracking.runs_frame(uri, experiment)
    if runs.empty or f"tags.{tracking.JOB_TAG}" not in runs or "metrics.epoch" not in runs:
        return 0
    mine = runs[runs[f"tags.{tracking.JOB_TAG}"] == job.job_id]
    return float(mine["metrics.epoch"].fillna(0).sum())


def test_two_overlapping_jobs_on_one_experiment_each_count_only_their_own_runs(sqlite_uri):
    short = jobs.launch(smoke(**{"grid": "{seed: [0, 1]}", "training.epochs": 3}), sqlite_uri)
    long = jobs.launch(smoke(**{"grid": "{seed: [7]}", "training.epochs": 4000}), sqlite_uri)
    assert (short.num_runs, short.num_epochs, long.num_runs, long.num_epochs) == (2, 6, 1, 4000)
    wait(lambda: not short.running)
    wait(lambda: trained_epochs(sqlite_uri, "smoke", long) >= 2)
    runs = tracking.runs_frame(sqlite_uri, "smoke")
    table, fraction, eta = jobs.progress(short, runs)
    assert sorted(table["run"]) == ["lstm-full-s0", "lstm-full-s1"]  # not the other job's run
    assert fraction == 1.0 and eta is None and table["eta_s"].isna().all()
    assert set(table["status"]) == {"finished"}

    table, fraction, eta = jobs.progress(long, runs)
    assert table["run"].tolist() == ["lstm-full-s7"] and 0 < fraction < 1
    assert eta is not None and eta > 0 and table["eta_s"].iloc[0] > 0  # an estimate from the first epoch on

    assert jobs.cancel(long)
    wait(lambda: not long.running, timeout=60)
    (cancelled,) = [job for job in jobs.list_jobs(sqlite_uri) if job.job_id == long.job_id]
    assert cancelled.cancelled is not None
    table, fraction, eta = jobs.progress(cancelled, tracking.runs_frame(sqlite_uri, "smoke"))
    trained = int(table["epoch"].iloc[0])
    assert table["status"].iloc[0] == "killed" and fraction == pytest.approx(trained / 4000)  # not 100% done
    assert eta is None


def test_the_estimate_is_wall_time_per_epoch_times_the_epochs_left():
    me = jobs.Job("j1", os.getpid(), "e", "sqlite:///x", started=1000.0, num_runs=2, config_path="",
                  log_path="", num_epochs=40, process_started=workers.start_time(os.getpid()))
    runs = pd.DataFrame({"run_id": ["a", "b"], "run_name": ["a", "b"], "status": ["FINISHED", "RUNNING"],
                         "kind": "trial", "start_time": pd.to_datetime([1000, 1050], unit="s"),
                         "params.training.epochs": ["20", "20"], "metrics.epoch": [20.0, 5.0],
                         "metrics.val_loss": [0.1, 0.2], f"tags.{tracking.JOB_TAG}": ["j1", "j1"]})
    table, fraction, eta = jobs.progress(me, runs, now=1250.0)
    assert fraction == pytest.approx(25 / 40)
    assert eta == pytest.approx(15 * 250 / 25)  # 10 s per epoch so far, 15 epochs left
    assert table["eta_s"].tolist()[1] == pytest.approx(150) and pd.isna(table["eta_s"].tolist()[0])
    before = runs.assign(**{"metrics.epoch": [float("nan")] * 2, "status": ["RUNNING", "RUNNING"]})
    assert jobs.progress(me, before, now=1010.0)[2] is None  # nothing to estimate from yet: "starting..."


def test_a_reused_pid_is_not_mistaken_for_the_job():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        started = workers.start_time(sleeper.pid)
        assert workers.alive(sleeper.pid, started)
        assert not workers.alive(sleeper.pid, started - 100)  # another process now holds the job's old pid
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not workers.alive(sleeper.pid, started)


def start_cli(uri, config, folder):
    """`python -m rnnlib run` of `config` in its own process group, as a user's terminal would start it."""
    path = folder / "experiment.yaml"
    path.write_text(config.to_yaml())
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.Popen([sys.executable, "-m", "rnnlib", "run", str(path), "--tracking-uri", uri, "--quiet"],
                            cwd=PROJECT_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_a_run_whose_worker_was_killed_hard_ends_failed_with_its_sweep(sqlite_uri, tmp_path):
    process = start_cli(sqlite_uri, smoke(**{"grid": "{seed: [0, 1]}", "training.epochs": 500}), tmp_path)
    wait(lambda: (tracking.runs_frame(sqlite_uri, "smoke").get("metrics.epoch", pd.Series()).fillna(0) > 0).any())
    os.killpg(process.pid, signal.SIGKILL)  # no chance to end its runs
    process.wait(timeout=30)
    runs = tracking.runs_frame(sqlite_uri, "smoke")
    assert set(runs["status"]) == {"RUNNING"}  # what kill -9 leaves behind
    ended = tracking.reconcile(sqlite_uri)
    assert len(ended) == 2 and {e["status"] for e in ended} == {"FAILED"}  # the trial and its sweep
    runs = tracking.runs_frame(sqlite_uri, "smoke")
    assert set(runs["status"]) == {"FAILED"}
    assert all("ended without closing the run" in reason for reason in runs["tags.rnnlib.error"])
    assert tracking.reconcile(sqlite_uri) == []  # nothing left to end


def test_a_cancelled_job_whose_worker_died_hard_ends_killed(sqlite_uri):
    job = jobs.launch(smoke(**{"grid": "{}", "training.epochs": 500}), sqlite_uri)
    wait(lambda: trained_epochs(sqlite_uri, "smoke", job) > 0)
    os.kill(job.pid, signal.SIGSTOP)  # it cannot react to the cancel ...
    jobs.cancel(job)
    os.killpg(job.pid, signal.SIGKILL)  # ... and is then killed outright
    wait(lambda: not job.running, timeout=30)
    assert [e["status"] for e in jobs.reconcile(sqlite_uri)] == ["KILLED"]
    assert tracking.runs_frame(sqlite_uri, "smoke")["status"].tolist() == ["KILLED"]


def test_a_worker_on_another_machine_is_gone_after_its_heartbeat_goes_stale(sqlite_uri):
    client = tracking.open_client(sqlite_uri)
    experiment = client.create_experiment("remote")
    now = time.time()
    for name, beat in (("stale", now - tracking.STALE_SECONDS - 60), ("fresh", now - 30)):
        client.create_run(experiment, run_name=name, tags={
            tracking.WORKER_TAG: json.dumps({"host": "gpu-node-7", "pid": 4242, "started": 1.0}),
            tracking.HEARTBEAT_TAG: f"{beat:.0f}"})
    ended = tracking.reconcile(sqlite_uri, now=now)
    assert [(e["run_name"], e["status"]) for e in ended] == [("stale", "FAILED")]
    assert "no heartbeat from its worker on gpu-node-7" in ended[0]["reason"]
    statuses = dict(zip(*[tracking.runs_frame(sqlite_uri, "remote")[c] for c in ("run_name", "status")]))
    assert statuses == {"stale": "FAILED", "fresh": "RUNNING"}


def test_every_running_job_gets_its_cancel_button(tmp_path, monkeypatch, jobs_folder):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs_folder.mkdir(parents=True)
    sleepers = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(6)]
    for index, sleeper in enumerate(sleepers):
        job = jobs.Job(f"2026120{index}-000000-abcdef", sleeper.pid, f"experiment{index}", uri, time.time(), 1,
                       "", "", num_epochs=10, process_started=workers.start_time(sleeper.pid))
        (jobs_folder / f"{job.job_id}.json").write_text(json.dumps(job.__dict__))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    st.cache_data.clear()
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=60)
    at.run()
    try:
        assert not at.exception, [e.value for e in at.exception]
        assert sum(b.label == "Cancel" for b in at.button) == 6  # all six, not the five newest
        texts = [p.proto.text for p in at.get("progress")]  # none has its slot: a queue, oldest first
        assert [t.split(",")[0] for t in texts] == [f"queued: place {6 - i} of 6" for i in range(6)]
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_opening_the_dashboard_ends_the_runs_of_a_dead_worker(sqlite_uri, monkeypatch):
    job = jobs.launch(smoke(**{"grid": "{}", "training.epochs": 500}), sqlite_uri)
    wait(lambda: trained_epochs(sqlite_uri, "smoke", job) > 0)
    os.killpg(job.pid, signal.SIGKILL)
    wait(lambda: not job.running, timeout=30)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    st.cache_data.clear()
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert MlflowClient(sqlite_uri).search_runs([MlflowClient(sqlite_uri).get_experiment_by_name(
        "smoke").experiment_id])[0].info.status == "FAILED"
    assert any(f"job `{job.job_id}`" in m.value and "stopped" in m.value for m in at.markdown)
    (table,) = [d.value for d in at.dataframe]
    assert table["status"].tolist() == ["failed"]


def test_a_tracking_server_that_stops_mid_run_gives_one_message_and_the_run_ends_failed(tmp_path):
    from conftest import start_mlflow_server

    backend = f"sqlite:///{tmp_path / 'server.db'}"
    with start_mlflow_server(backend, tmp_path / "artifacts") as server:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        path = tmp_path / "long.yaml"
        path.write_text(smoke(**{"grid": "{}", "training.epochs": 5000}).to_yaml())
        process = subprocess.Popen([sys.executable, "-m", "rnnlib", "run", str(path), "--tracking-uri", server,
                                    "--quiet"], cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait(lambda: (tracking.runs_frame(server, "smoke").get("metrics.epoch", pd.Series()).fillna(0) > 0).any())
    started = time.time()  # the server is gone now
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        process.kill()
    assert process.returncode == 3 and "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "failed while writing" in errors[0]
    assert time.time() - started < 180  # retried for about half a minute, not for ever
    with start_mlflow_server(backend, tmp_path / "artifacts") as server:  # back up: the dead run is ended
        assert tracking.runs_frame(server, "smoke")["status"].tolist() == ["RUNNING"]
        assert [e["status"] for e in tracking.reconcile(server)] == ["FAILED"]
        assert tracking.runs_frame(server, "smoke")["status"].tolist() == ["FAILED"]


def test_a_second_job_waits_for_the_first_to_end_and_a_cancelled_queued_job_opens_no_run(sqlite_uri, monkeypatch):
    monkeypatch.setenv("RNNLAB_MAX_JOBS", "1")
    first = jobs.launch(smoke(**{"grid": "{}", "training.epochs": 4000}), sqlite_uri)
    second = jobs.launch(smoke(**{"grid": "{seed: [3]}", "training.epochs": 2}), sqlite_uri)
    third = jobs.launch(smoke(**{"grid": "{seed: [4]}", "training.epochs": 2}), sqlite_uri)
    wait(lambda: trained_epochs(sqlite_uri, "smoke", first) >= 1)
    assert first.has_slot and not second.has_slot
    assert [job.job_id for job in jobs.queue(jobs.list_jobs())] == [second.job_id, third.job_id]
    assert second.running and trained_epochs(sqlite_uri, "smoke", second) == 0
    assert jobs.cancel(third)  # cancelled while queued: it ends without a run
    wait(lambda: not third.running, timeout=60)
    jobs.cancel(first)
    wait(lambda: not second.running)  # then the second gets the slot and trains
    runs = tracking.runs_frame(sqlite_uri, "smoke")
    trials = runs[runs["kind"] != "sweep"]
    by_job = trials.groupby(f"tags.{tracking.JOB_TAG}")["status"].apply(sorted).to_dict()
    assert by_job[first.job_id] == ["KILLED"] and by_job[second.job_id] == ["FINISHED"]
    assert third.job_id not in by_job


def test_cancel_stops_a_job_within_seconds_even_inside_a_long_batch(sqlite_uri):
    job = jobs.launch(smoke(**{"grid": "{}", "task.length": 1000, "model.units": 1024, "training.batch_size": 64,
                               "training.epochs": 1, "training.steps_per_epoch": 100}), sqlite_uri)
    runs = lambda: tracking.runs_frame(sqlite_uri, "smoke")  # noqa: E731
    wait(lambda: not runs().empty and (runs()["status"] == "RUNNING").any())
    time.sleep(10)  # inside the first batch (one takes about 20 s on 2 cores)
    asked = time.time()
    assert jobs.cancel(job)
    wait(lambda: not job.running, timeout=90, every=0.1)
    assert time.time() - asked < 5  # not at the end of the batch
    (run,) = runs().itertuples()
    assert run.status == "KILLED"


def test_a_jobs_estimate_counts_its_runs_and_updates_and_times_them_from_past_runs_of_the_same_model():
    experiment = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml")  # 3 cells x 2 truncations, 2 epochs x 4 batches
    blind = jobs.estimate(experiment)
    assert (blind.runs, blind.epochs, blind.updates, blind.sequences, blind.seconds) == (6, 12, 48, 768, None)
    assert "no time estimate yet" in blind.describe()
    pace = pd.DataFrame([{"task.name": "adding", "model.label": label, "model.units": "8", "model.num_layers": "1",
                          "training.batch_size": "16", "seconds_per_update": seconds}
                         for label, seconds in (("rnn", 0.1), ("rnn", 0.3), ("lstm", 0.5), ("gru", 1.0))])
    timed = jobs.estimate(experiment, pace)
    assert timed.seconds == pytest.approx(2 * 8 * (0.2 + 0.5 + 1.0))  # per cell: 2 runs x 8 updates x median
    assert "about 27 s" in timed.describe()
    other_size = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", ["model.units=9"])
    assert jobs.estimate(other_size, pace).seconds is None  # no run of that model yet: no guess


def test_a_dashboard_job_larger_than_its_limits_is_refused_with_every_reason_and_the_way_out():
    jobs.check_dashboard_limits(cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml"))  # the default fits
    huge = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", ["model.units=4096", "training.batch_size=65536",
                                                            "grid.seed=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, "
                                                            "13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, "
                                                            "27, 28, 29, 30, 31, 32, 33, 34]"])
    with pytest.raises(ConfigError) as raised:
        jobs.check_dashboard_limits(huge)
    problems = raised.value.problems
    assert problems[:3] == ["runs: 210 (at most 200 here)", "units per layer: 4,096 (at most 1,024 here)",
                            "batch size: 65,536 (at most 4,096 here)"]
    assert "rnnlab run" in problems[-1]
    jobs.check_dashboard_limits(cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", [  # the most epochs, each probed
        "training.epochs=2000", "training.probe_every=epoch", "grid={}"]))
    probing = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", ["training.steps_per_epoch=1001",
                                                               "training.probe_every=1"])
    with pytest.raises(ConfigError) as raised:  # a probe after every one of 2,002 batches
        jobs.check_dashboard_limits(probing)
    assert raised.value.problems[0] == "gradient-flow probes per run: 2,003 (at most 2,001 here)"


def test_the_recent_pace_is_read_from_the_finished_runs_of_a_real_store(fixture_store):
    pace = tracking.recent_pace(fixture_store)
    assert len(pace) == 12 and set(pace["model.label"]) == {"rnn", "lstm", "gru"}  # the trials, not the sweep
    assert (pace["seconds_per_update"] > 0).all() and set(pace["training.batch_size"]) == {"16"}
    smoke = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml", ["model.units=4", "grid.seed=[0, 1]"])
    assert jobs.estimate(smoke, pace).seconds > 0
