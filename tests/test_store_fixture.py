"""Runs logged by an earlier version stay readable: the committed bundle `tests/fixtures/store-v2` (tiny runs of
every kind of task, config schema version 2) is imported into a fresh store and every page renders from it. A
later run's config with keys this version does not know, one run with a broken artifact and a run of a task
that no longer exists each get a notice naming the run, and the other runs still show."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from conftest import PROJECT_DIR, run_cli
from rnnlib import tracking
from rnnlib.core import config
from rnnlib.tracking import bundles

pytestmark = pytest.mark.slow
BUNDLE = Path(__file__).resolve().parent / "fixtures" / "store-v2"
EXPERIMENTS = ["fx_adding", "fx_exploding", "fx_forecast", "fx_digits", "fx_text", "fx_waveform", "fx_dates"]
PAGES = {"home": [None], "train": [None], "unrolled": [None], "products": [None], "forms": [None],
         "compare": EXPERIMENTS, "predictions": EXPERIMENTS, "gradients": EXPERIMENTS, "gates": EXPERIMENTS}


@pytest.fixture(scope="module")
def fixture_uri(tmp_path_factory):
    """The committed bundle, imported into a fresh sqlite store (from a copy at another path: bundles move)."""
    folder = tmp_path_factory.mktemp("fixture-store")
    moved = shutil.copytree(BUNDLE, folder / "moved-bundle")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert bundles.import_bundle(moved, uri) == {"fx_adding": 13, "fx_exploding": 3, "fx_forecast": 3,
                                                 "fx_digits": 1, "fx_text": 1, "fx_waveform": 1, "fx_dates": 1}
    return uri


def open_page(uri, monkeypatch, page, query=None):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    st.cache_data.clear()
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=90)
    at.run()
    if page != "home":
        if query:
            at.query_params.update(query)
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.parametrize(("page", "experiment"), [(p, e) for p, experiments in PAGES.items() for e in experiments])
def test_every_page_renders_from_the_committed_store(fixture_uri, monkeypatch, page, experiment):
    at = open_page(fixture_uri, monkeypatch, page, {"experiment": experiment} if experiment else None)
    assert not at.error, [e.value for e in at.error]
    if experiment:
        assert at.get("plotly_chart") or at.dataframe or at.code, f"{page} showed nothing for {experiment}"
    if page == "compare" and experiment == "fx_exploding":
        assert any("1 of 2 runs diverged" in w.value for w in at.warning)
        assert any("1 diverged)" in trace["name"] for trace in json.loads(
            at.get("plotly_chart")[0].proto.spec)["data"] if trace.get("name"))
        assert at.multiselect(key="compare_group_by").value == ["training.clipnorm"]  # what varies, not cell x k
        assert at.selectbox(key="compare_band").value == "range"  # one run per group: no t-interval


def test_the_imported_store_holds_exactly_what_the_bundle_does(fixture_uri):
    for experiment in EXPERIMENTS:
        runs = tracking.runs_frame(fixture_uri, experiment)
        original = {r: bundles.read_run(BUNDLE / "runs" / r) for r in runs["tags.rnnlib.imported_from"]}
        for _, run in runs.iterrows():
            record = original[run["tags.rnnlib.imported_from"]]
            assert run["status"] == record["status"] and run["run_name"] == record["run_name"]
            assert {k.removeprefix("params."): v for k, v in run.items() if k.startswith("params.")
                    and isinstance(v, str)} == config.upgrade_params(record["params"])
            if not record["metrics"]:  # a sweep's parent run logs none
                continue
            logged = pd.DataFrame(record["metrics"]).sort_values(["key", "step"]).drop_duplicates(
                ["key", "step"], keep="last")
            read = tracking.metric_histories(fixture_uri, [run["run_id"]], sorted(logged["key"].unique()))
            np.testing.assert_array_equal(read["value"].to_numpy(), logged.sort_values(["key", "step"])["value"])
        parents = runs[runs["kind"] == "sweep"]["run_id"].tolist()
        assert set(runs[runs["kind"] == "trial"]["parent_run_id"]) <= set(parents)  # children linked to new ids


def test_an_ar_baseline_logged_as_a_cell_type_reads_as_its_own_model_kind(fixture_uri, monkeypatch):
    runs = tracking.runs_frame(fixture_uri, "fx_forecast").set_index("run_name")
    assert runs.loc["ar-full-s0", "params.model.kind"] == "ar" and runs.loc["ar-full-s0", "params.model.label"] == "ar"
    assert runs.loc["ar-full-s0", "params.model.cell_type"] == ""  # logged as `ar` at schema version 2
    assert runs.loc["gru-full-s0", "params.model.kind"] == "recurrent"
    assert runs.loc["gru-full-s0", "params.model.label"] == "gru"
    read = tracking.load_config(fixture_uri, runs.loc["ar-full-s0", "run_id"])
    assert read.schema_version == 2 and read.config.model.kind == "ar" and read.config.model.cell_type is None
    at = open_page(fixture_uri, monkeypatch, "gates", {"experiment": "fx_forecast"})
    (option,) = at.selectbox(key="gates_run").options  # the AR run has no gates to show
    assert option.startswith("gru-full-s0")
    at = open_page(fixture_uri, monkeypatch, "compare", {"experiment": "fx_forecast"})
    names = {trace["name"] for trace in json.loads(at.get("plotly_chart")[0].proto.spec)["data"] if trace.get("name")}
    assert any(name.startswith("ar") for name in names) and any(name.startswith("gru") for name in names)


def test_switching_experiment_on_compare_takes_the_new_ones_group_by_and_axis(fixture_uri, monkeypatch):
    at = open_page(fixture_uri, monkeypatch, "compare", {"experiment": "fx_adding"})
    assert at.multiselect(key="compare_group_by").value == ["model.label", "training.truncation"]
    assert at.selectbox(key="compare_x_param").value == "training.truncation"
    at.selectbox(key="compare_experiment").set_value("fx_exploding").run()
    assert at.multiselect(key="compare_group_by").value == ["training.clipnorm"]
    assert at.selectbox(key="compare_x_param").value == "training.clipnorm"  # not the old, constant truncation
    assert not at.exception and not at.error


def test_importing_the_same_bundle_twice_adds_nothing(fixture_uri):
    assert set(bundles.import_bundle(BUNDLE, fixture_uri).values()) == {0}


def page_tables(uri, monkeypatch, page, experiment) -> list[pd.DataFrame]:
    """Every table a page shows, without run ids (a store gives imported runs new ones): no `run_id` columns, and
    the short ids in run labels (`lstm-full-s1 (f40601)`) written as `(id)`."""
    at = open_page(uri, monkeypatch, page, {"experiment": experiment})
    short_id = re.compile(r"\([0-9a-f]{6}\)")
    tables = []
    for element in at.dataframe:
        table = element.value
        table = table.drop(columns=[c for c in table.columns if "run_id" in str(c)]).reset_index(drop=True)
        table.columns = [short_id.sub("(id)", str(c)) for c in table.columns]
        tables.append(table.map(lambda v: short_id.sub("(id)", v) if isinstance(v, str) else v))
    return tables


def test_an_exported_bundle_moved_elsewhere_and_imported_shows_the_same_numbers_on_every_page(
        fixture_uri, tmp_path, monkeypatch, cli_env):
    """`rnnlab export` of every experiment, the folder moved, `rnnlab import` into another store: Compare, Gradient
    flow and Predictions show the same tables there, to the last digit."""
    written = run_cli(["export", *[a for e in EXPERIMENTS for a in ("--experiment", e)], "--out",
                       str(tmp_path / "bundle"), "--tracking-uri", fixture_uri], cli_env)
    assert written.returncode == 0, written.stderr
    moved = shutil.move(tmp_path / "bundle", tmp_path / "elsewhere" / "bundle")
    assert not (tmp_path / "bundle").exists()
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    loaded = run_cli(["import", str(moved), "--tracking-uri", copy], cli_env)
    assert loaded.returncode == 0, loaded.stderr
    compared = 0
    for experiment in EXPERIMENTS:
        for page in ("compare", "gradients", "predictions"):
            original, imported = (page_tables(uri, monkeypatch, page, experiment) for uri in (fixture_uri, copy))
            assert len(original) == len(imported), (page, experiment)
            for a, b in zip(original, imported):
                pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"{page} {experiment}")
                compared += a.size
    assert compared > 500  # the pages showed numbers (832 cells), not just empty tables


def artifact_folder(uri, experiment, run_name):
    runs = tracking.runs_frame(uri, experiment).set_index("run_name")
    run_id = runs.loc[run_name, "run_id"]
    location = tracking.open_client(uri).get_run(run_id).info.artifact_uri
    return run_id, Path(location.removeprefix("file://"))


@pytest.fixture
def own_copy(tmp_path):
    """A store of its own (these tests change artifacts)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bundles.import_bundle(BUNDLE, uri)
    return uri


def test_a_run_logged_by_a_later_version_is_shown_with_a_note_of_what_this_one_does_not_know(own_copy,
                                                                                              monkeypatch):
    run_id, folder = artifact_folder(own_copy, "fx_waveform", "lstm-full-s0")
    logged, _ = config.migrate(yaml.safe_load((folder / "config.yaml").read_text()))  # as this version writes it
    logged.update(schema_version=config.SCHEMA_VERSION + 1, precision="bfloat16")
    logged["model"]["bidirectional"] = True
    (folder / "config.yaml").write_text(yaml.safe_dump(logged))
    read = tracking.load_config(own_copy, run_id)
    assert read.unknown == {"precision": "bfloat16", "model.bidirectional": True}
    assert read.schema_version == config.SCHEMA_VERSION + 1 and read.config.model.cell_type == "lstm"
    at = open_page(own_copy, monkeypatch, "predictions", {"experiment": "fx_waveform"})
    notes = " ".join(i.value for i in at.info)
    assert "model.bidirectional = True" in notes and f"schema version {config.SCHEMA_VERSION + 1}" in notes
    assert at.get("plotly_chart") and not at.error


def test_one_run_with_a_broken_artifact_gets_a_notice_and_the_others_still_show(own_copy, monkeypatch):
    broken, folder = artifact_folder(own_copy, "fx_forecast", "gru-full-s0")
    (folder / "model" / "predictions.npz").write_bytes(b"not a zip file")
    runs = tracking.runs_frame(own_copy, "fx_forecast")
    trials = runs[runs["kind"] == "trial"]["run_id"].tolist()
    at = open_page(own_copy, monkeypatch, "predictions", {"experiment": "fx_forecast", "runs": trials})
    (warning,) = [w.value for w in at.warning if "left out" in w.value]
    assert "gru-full-s0" in warning and "predictions (model/predictions.npz) cannot be read" in warning
    names = {trace["name"] for trace in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert any(name.startswith("ar-full-s0") for name in names)  # the other run is still drawn
    assert not any(name.startswith("gru-") for name in names)
    assert not [e for e in at.error if "tracking store" in e.value]  # the store is fine, and not blamed


def test_a_run_of_a_task_this_version_does_not_have_is_named_as_such(own_copy, monkeypatch):
    run_id, folder = artifact_folder(own_copy, "fx_digits", "gru-full-s0")
    logged = yaml.safe_load((folder / "config.yaml").read_text())
    logged["task"] = {"name": "teleport", "distance": 3}
    (folder / "config.yaml").write_text(yaml.safe_dump(logged))
    at = open_page(own_copy, monkeypatch, "gates", {"experiment": "fx_digits"})
    (warning,) = [w.value for w in at.warning if "left out" in w.value]
    assert "unknown task; expected one of" in warning and "teleport" in warning
    assert not at.error and not at.exception


def test_each_per_run_read_keeps_a_cache_of_its_own(fixture_uri):
    from ui import data

    st.cache_data.clear()
    runs = tracking.runs_frame(fixture_uri, "fx_forecast")
    run_ids = tuple(runs[runs["kind"] == "trial"]["run_id"])
    configs, arrays = data._configs(fixture_uri, run_ids), data._predictions(fixture_uri, run_ids)
    flows = data._gradient_flows(fixture_uri, run_ids)
    assert all(isinstance(value, config.LoggedConfig) for value in configs.values())
    assert all(isinstance(value, dict) and "forecast" in value for value in arrays.values())
    assert all(value is None or hasattr(value, "norms") for value in flows.values())
