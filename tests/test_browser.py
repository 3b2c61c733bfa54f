"""The real thing: `streamlit run app.py` on a loopback port, driven by Debian's chromium through Playwright.

Screenshots land in test-artifacts/. CI installs chromium with apt-get and sets RNNLAB_REQUIRE_BROWSER=1, so
there a missing browser fails instead of skipping.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import PROJECT_DIR

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = PROJECT_DIR / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("RNNLAB_REQUIRE_BROWSER"):
            pytest.fail(f"chromium not found at {CHROMIUM}: apt-get install chromium")
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(fixture_store, tmp_path_factory):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, MLFLOW_TRACKING_URI=fixture_store,
               RNNLAB_JOBS_DIR=str(tmp_path_factory.mktemp("browser-jobs")))
    log = open(tmp_path_factory.mktemp("streamlit") / "server.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true", f"--server.port={port}",
         "--server.address=127.0.0.1", "--browser.gatherUsageStats=false"],
        cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("streamlit did not start") from None
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(timeout=30)


def visit(browser, url, name):
    page = browser.new_page(viewport={"width": 1400, "height": 3000})
    page.goto(url)
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    page.wait_for_selector('[data-test-script-state="notRunning"]', timeout=90_000)
    page.wait_for_timeout(1500)  # let plotly finish drawing before the screenshot
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))
    return page


def test_a_compare_permalink_opened_first_renders_its_charts(browser, server):
    page = visit(browser, f"{server}/compare?experiment=smoke&smoothing=0.3&show_runs=1", "compare")
    assert page.locator('[data-testid="stException"]').count() == 0
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('.st-key-compare_curves .legendtext').length >= 6",
                           timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SCREENSHOTS / "compare.png"))  # now with the curves drawn
    assert page.locator(".js-plotly-plot").count() == 3
    legend = page.locator(".js-plotly-plot").first.inner_text()
    assert "gru · full (n=2)" in legend and "rnn · 5 (n=2)" in legend
    assert "smoothing=0.3" in page.url  # the view kept its link
    assert page.locator('[data-testid="stSidebarNav"]').get_by_text("Compare").count() == 1


def test_every_page_renders_in_a_real_browser(browser, server):
    home = visit(browser, server, "home")
    assert home.get_by_text("RNN Lab").first.is_visible()
    assert home.locator("a", has_text="smoke").count() == 1
    assert home.locator('[data-testid="stException"]').count() == 0
    train = visit(browser, f"{server}/train", "train")
    assert train.get_by_text("Start training").first.is_visible()
    assert train.get_by_text("Start launches 12 runs").first.is_visible()
    assert train.locator('[data-testid="stException"]').count() == 0


@pytest.mark.parametrize("path, name, charts, text", [
    ("gradients?experiment=smoke&quantity=loss_hidden", "gradients", 4, "Where the gradient vanishes"),
    ("gates?experiment=smoke&seed=3", "gates", 4, "What to look for (adding problem)"),
    ("unrolled", "unrolled", 1, "shared"),
    ("products", "products", 1, "Overlay real runs"),
    ("forms", "forms", 4, "Sequence to vector"),
])
def test_inside_the_network_and_lesson_pages_render_their_charts(browser, server, path, name, charts, text):
    page = visit(browser, f"{server}/{path}", name)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=30_000)
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {charts}",
                           timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))  # now with every chart drawn
    assert page.locator(".js-plotly-plot").count() == charts
    assert page.get_by_text(text).count() >= 1


def test_predictions_page_renders_the_answers_of_a_run_next_to_the_targets(browser, server):
    page = visit(browser, f"{server}/predictions?experiment=smoke", "predictions")
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("Validation sequences").count() == 1
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=30_000)
    assert page.locator('[data-testid="stDataFrame"]').count() == 1


def legend_texts(chart) -> list[str]:
    return chart.locator(".legendtext").evaluate_all("nodes => nodes.map(node => node.textContent)")


def open_offline(browser, path, name):
    """`path` from file:// in a context with the network cut; returns the page and every request it made."""
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, offline=True)
    page = context.new_page()
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_function("document.querySelectorAll('.chart .main-svg').length >= 2", timeout=30_000)
    page.wait_for_timeout(500)
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    return page, requests


def test_an_exported_compare_view_opens_offline_with_the_pages_legend_and_numbers(browser, server, tmp_path):
    page = visit(browser, f"{server}/compare?experiment=smoke&group_by=model.label&band=std", "compare-export")
    # all three charts drawn before reading the first (the curves); until then `.first` may be another chart
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 3", timeout=60_000)
    # and the curves' legend drawn: on a loaded machine their svg can be there before its entries (read: [])
    page.wait_for_function("document.querySelectorAll('.st-key-compare_curves .legendtext').length >= 3",
                           timeout=60_000)
    page_legend = legend_texts(page.locator(".st-key-compare_curves .js-plotly-plot"))  # the curves, by their key
    page_charts = page.locator(".js-plotly-plot").count()  # before the click: its rerun redraws the charts
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Export this view (HTML)").click()
    assert download.value.suggested_filename == "compare-smoke.html"
    path = tmp_path / "compare-smoke.html"
    download.value.save_as(path)
    assert page.locator('[data-testid="stException"]').count() == 0

    report, requests = open_offline(browser, path, "report-compare")
    assert [url for url in requests if not url.startswith("file:")] == []
    assert report.locator(".chart").count() == page_charts == 3
    assert report.get_by_text("WebGL is not supported").count() == 0  # parallel coordinates drew too
    assert legend_texts(report.locator(".chart").first) == page_legend
    assert sorted(page_legend) == ["gru (n=4)", "lstm (n=4)", "rnn (n=4)"]
    assert "± 1 standard deviation" in report.locator(".chart").first.inner_text()
    summary = report.locator("table").first.inner_text()
    assert "val_loss (best) mean" in summary and "gru" in summary
    assert "compare?experiment=smoke" in report.locator("code").first.inner_text()


def test_an_exported_gradient_flow_view_opens_offline(browser, server, tmp_path):
    page = visit(browser, f"{server}/gradients?experiment=smoke", "gradients-export")
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="Export this view (HTML)").click()
    path = tmp_path / "gradients.html"
    download.value.save_as(path)
    report, requests = open_offline(browser, path, "report-gradients")
    assert [url for url in requests if not url.startswith("file:")] == []
    assert "Where the gradient vanishes" in report.inner_text("body")
    assert report.locator(".chart .main-svg").count() >= 2
