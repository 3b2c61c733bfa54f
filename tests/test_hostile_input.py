"""Hostile YAML, unusable stores and unsafe names: one clear message (exit 2 or 3), nothing written, no hang."""

import multiprocessing
import os
import time

import pytest

from conftest import EXPERIMENTS_DIR, run_cli
from rnnlib import tracking
from rnnlib.core import config as cfg
from rnnlib.core.errors import ConfigError, TrackingError

MINIMAL = "task: {name: adding, length: 20}\n"
LAUGHS = "".join(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 9 if i else ['"lol"'] * 9) + "]\n"
                 for i in range(9)) + MINIMAL  # 453 bytes that expand to 9^9 = 387 million strings


def problems(text):
    with pytest.raises(ConfigError) as info:
        cfg.parse_config(text)
    return info.value.problems


def test_an_alias_bomb_is_refused_before_it_is_expanded():
    start = time.perf_counter()
    (problem,) = problems(LAUGHS)
    assert "more than 20,000 values once its aliases (*name) are expanded" in problem
    assert time.perf_counter() - start < 5  # it took 82 s and 3.2 GB before (a generous bound, not a benchmark)


@pytest.mark.parametrize("depth", [25, 1000, 300_000])
def test_deep_nesting_is_refused_with_one_line(depth):
    (problem,) = problems(MINIMAL + "grid: {seed: " + "[" * depth + "]" * depth + "}\n")
    assert problem == "the YAML nests deeper than 20 levels"


def test_a_hundred_thousand_unknown_keys_give_a_short_message():
    with pytest.raises(ConfigError) as info:
        cfg.parse_config(MINIMAL + "".join(f"key{i}: 1\n" for i in range(100_000)))
    assert len(str(info.value)) < 500
    with pytest.raises(ConfigError) as info:  # fewer, but still far too many to list
        cfg.parse_config(MINIMAL + "".join(f"key{i}: 1\n" for i in range(5_000)))
    assert len(info.value.problems) == 21 and info.value.problems[-1] == "... and 4980 more problems"


def test_an_oversized_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(MINIMAL + "# " + "x" * 2_000_000 + "\n")
    with pytest.raises(ConfigError, match="more than the 1,000,000 an experiment may have"):
        cfg.load_config(path)


def test_a_key_given_twice_is_an_error_not_the_last_one_wins():
    (problem,) = problems(MINIMAL + "model: {units: 8}\nmodel: {units: 16}\n")
    assert "duplicate key 'model' (first on line 2)" in problem


@pytest.mark.parametrize(("text", "expected"), [
    (MINIMAL + "model: {units: true}\n", "model.units: expected a number, not a switch (true/false) (got True)"),
    ("task: {name: adding, length: yes}\n", "task.length: expected a number, not a switch (true/false) (got True)"),
    ("task: {name: waveform, max_amplitude: .inf}\n", "task.max_amplitude: Input should be a finite number"),
    ("task: {name: sine, noise: .nan}\n", "task.noise: Input should be a finite number"),
])
def test_numbers_are_numbers_finite_and_not_switches(text, expected):
    assert any(p.startswith(expected) for p in problems(text)), problems(text)


def test_switches_still_take_booleans():
    assert cfg.parse_config("task: {name: digits, permuted: true}\n").task.permuted is True


@pytest.mark.slow
def test_the_cli_refuses_a_bomb_with_exit_2_and_one_short_message(tmp_path, cli_env):
    path = tmp_path / "laughs.yaml"
    path.write_text(LAUGHS)
    result = run_cli(["run", str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"], cli_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr) < 400
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("make", "expected"), [
    (lambda d: "ftp://example.org/store", "is not a tracking store this lab can use"),
    (lambda d: (d / "notes.db").write_text("just text") and f"sqlite:///{d / 'notes.db'}", "is not an SQLite database"),
    (lambda d: (d / "folder.db").mkdir() or f"sqlite:///{d / 'folder.db'}", "is a folder, not a database file"),
    (lambda d: f"sqlite:///{d / 'missing' / 'mlflow.db'}", "does not exist: create"),
    (lambda d: f"sqlite:///file:{d / 'gone.db'}?mode=ro&uri=true", "read-only sqlite store"),
])
def test_unusable_stores_are_refused_at_once_with_what_to_do(tmp_path, make, expected):
    uri = make(tmp_path)
    with pytest.raises(TrackingError, match=expected):
        tracking.check_store(uri)


def test_a_read_only_sqlite_address_names_the_database_it_reads(tmp_path):
    tracking.Store(f"sqlite:///{tmp_path / 'mlflow.db'}").experiment_id("made")
    uri = f"sqlite:///file:{tmp_path / 'mlflow.db'}?mode=ro&uri=true"
    assert tracking.sqlite_path(uri) == tmp_path / "mlflow.db"
    tracking.check_store(uri)  # it exists: no error
    assert tracking.artifact_root(uri) == tmp_path / "mlartifacts"


@pytest.mark.slow
@pytest.mark.parametrize("store", ["not-a-database", "ftp", "folder"])
def test_the_cli_exits_3_within_seconds_on_an_unusable_store(tmp_path, cli_env, store):
    uri = {"not-a-database": f"sqlite:///{tmp_path / 'notes.db'}", "ftp": "ftp://127.0.0.1/x",
           "folder": f"sqlite:///{tmp_path}"}[store]
    (tmp_path / "notes.db").write_text("not a database")
    start = time.perf_counter()
    result = run_cli(["run", str(EXPERIMENTS_DIR / "smoke.yaml"), "--tracking-uri", uri], cli_env, timeout=60)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert time.perf_counter() - start < 30  # an unopenable path retried for 106 s before


def _open_fresh_store(uri, name, results):
    try:
        store = tracking.Store(uri)
        with store.run(store.experiment_id(name), "first") as run_id:
            store.log_metrics(run_id, {"loss": 1.0}, step=1)
        results.put("ok")
    except Exception as error:  # noqa: BLE001 - reported to the test
        results.put(f"{type(error).__name__}: {error}")


def test_two_processes_opening_a_fresh_store_at_once_both_succeed(tmp_path):
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        uri = f"sqlite:///{tmp_path / f'fresh{attempt}.db'}"
        results = context.Queue()
        workers = [context.Process(target=_open_fresh_store, args=(uri, f"sweep{i}", results)) for i in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert sorted(results.get(timeout=5) for _ in workers) == ["ok", "ok"]


@pytest.mark.parametrize("name", ["..", "../../escape", "/etc/passwd", "a/../../b", ".hidden", "…", ""])
def test_an_experiment_name_cannot_put_artifacts_outside_the_store(tmp_path, name):
    folder = tracking.artifact_folder(name)
    assert "/" not in folder and not folder.startswith(".") and ".." not in folder and folder
    if name:
        store = tracking.Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
        location = store.client.get_experiment(store.experiment_id(name)).artifact_location
        resolved = os.path.realpath(location.removeprefix("file://"))
        assert resolved.startswith(str(tmp_path / "mlartifacts") + os.sep)


@pytest.mark.slow
def test_the_train_pages_yaml_tab_refuses_a_bomb_with_one_message(fixture_store, monkeypatch, tmp_path):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from conftest import PROJECT_DIR
    from rnnlib.run import jobs

    monkeypatch.setenv("RNNLAB_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fixture_store)
    st.cache_data.clear()
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("app_pages/train.py").run()
    at.selectbox(key="train_yaml_file").set_value(EXPERIMENTS_DIR / "smoke.yaml").run()
    at.text_area(key="train_yaml_smoke").set_value(LAUGHS)
    next(b for b in at.button if b.proto.form_id == "train_yaml").click().run()
    assert not at.exception
    (error,) = at.error
    assert "Nothing was launched" in error.value and "aliases (*name) are expanded" in error.value
    assert jobs.list_jobs() == []


def test_a_full_disk_under_the_store_stops_the_sweep_with_one_message(tmp_path, monkeypatch):
    from rnnlib.run import sweep

    store = tracking.Store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = cfg.parse_config(MINIMAL + "model: {units: 2}\ntraining: {epochs: 1, steps_per_epoch: 1, batch_size: 4, "
                              "num_validation_sequences: 4, probe_every: 0}\ngrid: {seed: [0, 1]}\n")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.client, "log_batch", full)
    with pytest.raises(TrackingError, match="failed while writing .*No space left on device.*disk has room"):
        sweep.run_experiment(config, store)
    runs = tracking.runs_frame(store.uri, config.name)
    assert runs["kind"].tolist() == ["sweep"]  # its config could not be logged: no trial was started
    assert runs["status"].tolist() == ["FAILED"]  # ending a run needs no batch write: it is not left RUNNING


HOSTILE_NAME = "![px](https://example.invalid/x.png) :red[alarm] <b>bold</b> **loud** [link](https://example.invalid)"


def test_strangers_text_is_shown_as_text_never_as_markdown_or_html():
    from ui import safe

    shown = safe.text(HOSTILE_NAME + "\nsecond line")
    assert "![" not in shown and "](" not in shown.replace("\\](", "") and ":red[" not in shown
    assert "<b>" not in shown and "**" not in shown and "\n" not in shown
    assert shown.replace("\\", "") == HOSTILE_NAME + " second line"  # every character is still there, literally
    assert safe.text("gru-full-s0 · 1.5") == "gru-full-s0 · 1.5"  # plain names read as they are


def test_exported_csv_cells_never_run_as_spreadsheet_formulas():
    import pandas as pd

    from ui import safe

    frame = pd.DataFrame({"run_name": ["=HYPERLINK(\"http://x\",\"y\")", "@SUM(A1)", "=cmd|' /C calc'!A0", "-0.5",
                                       "gru-5-s0", "+1"], "val_loss": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    cleaned = safe.csv_safe(frame)
    assert cleaned["run_name"].tolist()[:3] == ["'=HYPERLINK(\"http://x\",\"y\")", "'@SUM(A1)", "'=cmd|' /C calc'!A0"]
    assert cleaned["run_name"].tolist()[3:] == ["-0.5", "gru-5-s0", "+1"]  # numbers and names stay as they are
    assert cleaned["val_loss"].tolist() == frame["val_loss"].tolist()


def test_home_shows_a_hostile_experiment_name_as_text(tmp_path, monkeypatch):
    import streamlit as st
    from mlflow.tracking import MlflowClient
    from streamlit.testing.v1 import AppTest

    from conftest import PROJECT_DIR

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment(HOSTILE_NAME))
    client.set_terminated(run.info.run_id)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RNNLAB_JOBS_DIR", str(tmp_path / "jobs"))
    st.cache_data.clear()
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    (line,) = [m.value for m in at.markdown if "compare?experiment=" in m.value]
    label = line[line.index("[") + 1 : line.index("](compare?")]
    assert "![" not in label and ":red[" not in label and "<b>" not in label  # escaped: shown, not rendered
