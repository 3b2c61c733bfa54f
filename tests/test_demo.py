"""The hosted demo: the committed bundle `demo/bundle` (made by scripts/make-demo-bundle.sh from the project's own
YAMLs) loads into a fresh store and every page shows it read-only, with its comparisons readable."""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import PROJECT_DIR
from rnnlib import tracking
from rnnlib.tracking import bundles

pytestmark = pytest.mark.slow
BUNDLE = PROJECT_DIR / "demo" / "bundle"
EXPERIMENTS = ["demo", "exploding", "stocks", "waveform"]
MAX_BUNDLE_BYTES = 20 * 2**20


@pytest.fixture(scope="module")
def demo_uri(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('demo-store') / 'mlflow.db'}"
    counts = bundles.import_bundle(BUNDLE, uri)
    assert set(counts) == set(EXPERIMENTS) and all(counts.values())
    return uri


def open_page(uri, monkeypatch, page=None, query=None):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RNNLAB_READ_ONLY", "1")
    st.cache_data.clear()
    at = AppTest.from_file(str(PROJECT_DIR / "app.py"), default_timeout=90)
    at.run()
    if page:
        at.query_params.update(query or {})
        at.switch_page(f"app_pages/{page}.py")
        at.run()
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    return at


def test_the_committed_bundle_is_small_and_made_by_the_projects_own_script():
    size = sum(p.stat().st_size for p in BUNDLE.rglob("*") if p.is_file())
    assert 0 < size <= MAX_BUNDLE_BYTES, f"{size / 2**20:.1f} MB"
    script = (PROJECT_DIR / "scripts" / "make-demo-bundle.sh").read_text()
    assert all("experiments/$experiment.yaml" in script and name in script for name in EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("page", ["compare", "predictions", "gradients", "gates"])
def test_every_page_shows_the_demo_read_only(demo_uri, monkeypatch, page, experiment):
    at = open_page(demo_uri, monkeypatch, page, {"experiment": experiment})
    if page == "gradients" and experiment == "stocks":  # stocks.yaml sets probe_every: 0, and says why
        assert any("gradient-flow record" in i.value for i in at.info)
        return
    assert at.get("plotly_chart") or at.dataframe, f"{page} showed nothing for {experiment}"


def test_the_demo_home_lists_its_experiments_and_offers_no_training(demo_uri, monkeypatch):
    at = open_page(demo_uri, monkeypatch)
    listed = " ".join(m.value for m in at.markdown)
    assert all(f"compare?experiment={name})" in listed for name in EXPERIMENTS)
    assert not at.button


def test_the_demo_comparisons_read_well_at_first_open(demo_uri, monkeypatch):
    at = open_page(demo_uri, monkeypatch, "compare", {"experiment": "exploding"})
    assert set(at.multiselect(key="compare_group_by").value) >= {"training.clipnorm"}
    names = {t.get("name") for t in json.loads(at.get("plotly_chart")[0].proto.spec)["data"]}
    assert any(name and "diverged" in name for name in names)  # plain SGD without clipping diverges
    runs = tracking.runs_frame(demo_uri, "demo")
    assert len(runs[runs["kind"] != "sweep"]) == 12


def file_hashes(*folders) -> dict[str, str]:
    """sha256 of every file under `folders` (the demo's own log left out)."""
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for folder in folders
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != "demo.log"}


DEMO_PAGES = ["", "train", "compare", "predictions", "gradients", "gates", "unrolled", "products", "forms"]


def click_through_every_page(url: str) -> int:
    """A stranger in a real browser: every page of every demo experiment, every toggle, radio and button tried
    (downloads and reports included); returns how many controls were clicked. Fails on any exception shown."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        if os.environ.get("RNNLAB_REQUIRE_BROWSER"):
            pytest.fail("chromium not found: apt-get install chromium")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    clicked = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 2400}, accept_downloads=True)
        for path in DEMO_PAGES:
            for experiment in (EXPERIMENTS if path in ("compare", "gradients", "predictions", "gates") else [""]):
                page.goto(f"{url}/{path}" + (f"?experiment={experiment}" if experiment else ""))
                page.wait_for_selector('[data-test-script-state="notRunning"]', timeout=90_000)
                controls = page.locator('[data-testid="stCheckbox"] label, [data-testid="stRadio"] label, '
                                        'button[kind="secondary"], button[kind="primary"]')
                for index in range(min(controls.count(), 12)):
                    control = controls.nth(index)
                    if not control.is_visible() or not control.is_enabled():
                        continue
                    control.click(timeout=10_000)
                    clicked += 1
                    page.wait_for_timeout(300)
                    page.wait_for_selector('[data-test-script-state="notRunning"]', timeout=90_000)
                assert page.locator('[data-testid="stException"]').count() == 0, f"{path} {experiment}"
        browser.close()
    return clicked


def test_the_demo_script_serves_the_bundle_read_only(tmp_path):
    """`bash scripts/demo.sh` as a host runs it: the bundle in a fresh store, the dashboard answering read-only."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RNNLAB_READ_ONLY")}
    env.update(RNNLAB_DEMO_STORE=str(tmp_path), RNNLAB_JOBS_DIR=str(tmp_path / "jobs"))
    log = open(tmp_path / "demo.log", "w")
    started = time.time()
    process = subprocess.Popen(["bash", "scripts/demo.sh", "--server.headless=true", f"--server.port={port}"],
                               cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                assert time.time() < started + 240 and process.poll() is None, (tmp_path / "demo.log").read_text()
                time.sleep(0.5)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
        assert "<title>" in page or "streamlit" in page.lower()
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        assert set(tracking.list_experiments(uri)["name"]) == set(EXPERIMENTS)  # the bundle, imported
        assert "--read-only" in (PROJECT_DIR / "scripts" / "demo.sh").read_text()
        before = file_hashes(tmp_path, PROJECT_DIR / "demo" / "bundle")
        clicked = click_through_every_page(f"http://127.0.0.1:{port}")
        assert clicked >= 20  # toggles, buttons and radios, on every page
        assert file_hashes(tmp_path, PROJECT_DIR / "demo" / "bundle") == before  # not one byte written
        assert not (tmp_path / "jobs").exists()  # read-only: no demo sweep, no job was started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_the_community_cloud_entrypoint_serves_the_bundle_read_only_from_its_own_folder(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from rnnlib.run import hosted

    monkeypatch.setenv("RNNLAB_READ_ONLY", "0")  # the entrypoint switches it on; the test puts it back
    monkeypatch.setenv("MLFLOW_TRACKING_URI", hosted.demo_store(folder=tmp_path / "store"))
    at = AppTest.from_file(str(PROJECT_DIR / "hosted" / "streamlit_app.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    listed = " ".join(m.value for m in at.markdown)
    assert all(f"compare?experiment={name})" in listed for name in EXPERIMENTS)  # Home lists the bundle's
    at.switch_page(str(PROJECT_DIR / "app_pages" / "train.py")).run()
    assert not at.exception and at.title[0].value == "Reproduce a run"  # read-only, whatever the environment said
    assert hosted.demo_store(folder=tmp_path / "store") == os.environ["MLFLOW_TRACKING_URI"]  # imported once
    assert (tmp_path / "store" / "imported").exists()


def test_the_cloud_requirements_are_the_dashboards_without_the_project():
    def packages(name):
        return [line for line in (PROJECT_DIR / name).read_text().splitlines() if line and not line.startswith("#")]

    assert packages("hosted/requirements.txt") == [p for p in packages("requirements-dashboard.txt")
                                                   if not p.startswith("-e ")]
