"""The hosted demo under load: start time, memory, and concurrent browser sessions that each see their own view.

    .venv/bin/python benchmarks/demo_server.py [--python /path/to/dashboard-venv/bin/python] [--sessions 20]
                                               [--smoke]

Loads the committed bundle `demo/bundle` into a fresh store with the dashboard's own `rnnlab` (the one next to
`--python`: a dashboard-only install, `requirements-dashboard.txt`, measures what a host needs) and starts it
read-only, as `scripts/demo.sh` does. Then it reports
  - seconds from the command to the server's health check, and to the first page drawn in a browser;
  - `--sessions` browser sessions at once (Debian's chromium through Playwright), each opening every page of
    every demo experiment with its own settings in the link, checking that each page drew without an error and
    kept that session's settings;
  - the server's resident memory (its whole process tree) after that.
--smoke: 2 sessions, 2 pages each (seconds, to check it still runs).
"""

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

from rnnlib.core.paths import PROJECT_DIR

EXPERIMENTS = ("demo", "exploding", "stocks", "waveform")
PAGES = ("compare", "predictions", "gradients", "gates", "train", "unrolled", "products", "forms", "")


def start_server(python: Path, store: Path) -> tuple[subprocess.Popen, str, float]:
    rnnlab = python.parent / "rnnlab"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    subprocess.run([str(rnnlab), "import", str(PROJECT_DIR / "demo" / "bundle"), "--tracking-uri", uri],
                   check=True, capture_output=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, RNNLAB_JOBS_DIR=str(store / "jobs"))
    started = time.perf_counter()
    process = subprocess.Popen([str(rnnlab), "lab", "--read-only", "--tracking-uri", uri, "--server.headless=true",
                                f"--server.port={port}"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=1)
            return process, url, time.perf_counter() - started
        except OSError:
            if process.poll() is not None or time.perf_counter() - started > 120:
                raise SystemExit("the demo server did not start") from None
            time.sleep(0.2)


def tree_rss(pid: int) -> float:
    """MiB resident in the process and its children."""
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**20


async def session(browser, url: str, index: int, pages: tuple[str, ...], problems: list[str]) -> None:
    """One visitor: every page of one experiment, with settings of its own in the link."""
    context = await browser.new_context(viewport={"width": 1300, "height": 1800})
    page = await context.new_page()
    experiment, smoothing = EXPERIMENTS[index % len(EXPERIMENTS)], f"0.{index % 9 + 1}"
    for name in pages:
        await page.goto(f"{url}/{name}?experiment={experiment}&smoothing={smoothing}" if name else url)
        await page.wait_for_selector('[data-test-script-state="notRunning"]', timeout=300_000)
        if await page.locator('[data-testid="stException"]').count():
            problems.append(f"session {index}: {name or 'home'} raised")
        if name == "compare" and f"smoothing={smoothing}" not in page.url:
            problems.append(f"session {index}: compare lost its own settings ({page.url})")
    await context.close()


async def visit(url: str, sessions: int, pages: tuple[str, ...], pid: int) -> tuple[float, float, list[str]]:
    """(seconds to the first page drawn, seconds for all sessions at once, problems), one browser for all."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium")
        clock = time.perf_counter()
        first = await browser.new_page()
        await first.goto(url)
        await first.wait_for_selector('[data-test-script-state="notRunning"]', timeout=120_000)
        first_page = time.perf_counter() - clock
        await first.close()
        print(f"first page drawn {first_page:.1f} s after the browser asked; RSS {tree_rss(pid):.0f} MiB")
        problems: list[str] = []
        clock = time.perf_counter()
        await asyncio.gather(*(session(browser, url, i, pages, problems) for i in range(sessions)))
        elapsed = time.perf_counter() - clock
        await browser.close()
    return first_page, elapsed, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", type=Path, default=Path(sys.executable),
                        help="the interpreter of the dashboard install to serve with (its rnnlab is used)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    sessions, pages = (2, ("compare", "")) if args.smoke else (args.sessions, PAGES)
    with tempfile.TemporaryDirectory() as folder:
        process, url, health = start_server(args.python, Path(folder))
        try:
            print(f"demo server ({args.python}): healthy {health:.1f} s after `rnnlab lab --read-only`; "
                  f"RSS {tree_rss(process.pid):.0f} MiB")
            _, elapsed, problems = asyncio.run(visit(url, sessions, pages, process.pid))
            print(f"{sessions} concurrent sessions x {len(pages)} pages: {elapsed:.1f} s, {len(problems)} "
                  f"problem(s); server RSS after: {tree_rss(process.pid):.0f} MiB")
            for problem in problems:
                print("  -", problem)
            if problems:
                raise SystemExit(1)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


if __name__ == "__main__":
    main()
