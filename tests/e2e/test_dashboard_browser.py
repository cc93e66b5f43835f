"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright (never a downloaded
browser), opens the dashboard of a running server and trainer, sees its charts gain points while events
stream in, and loads the page and the API docs with every request off 127.0.0.1 refused.

Fails, never skips, when Chromium is missing: CI installs it (`.ci/run`), so must a developer
(`apt-get install -y chromium`)."""

import contextlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import sync_playwright

from freshrec.live import LiveLoop, LiveLoopConfig, records_of
from freshrec.sources.synthetic import SyntheticConfig, SyntheticStream

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Set to a path to keep the screenshot (docs/images/dashboard.png was taken so).
SCREENSHOT_VARIABLE = "FRESHREC_DASHBOARD_SCREENSHOT"


@pytest.fixture
def live(tmp_path):
    """A server and a bpr-mf trainer (its tables count admissions) fed a stream over HTTP, in chunks, with
    a few recommendations between them, until the test ends."""
    config = LiveLoopConfig(tmp_path / "live", model="bpr-mf", publish_ms=300, batch_size=128)
    stream = SyntheticStream(SyntheticConfig(n_events=200_000, n_users=2000, n_items=1000, seed=3))
    stop = threading.Event()
    with LiveLoop(config) as loop:

        def feed() -> None:
            for raw in stream.batches(200):
                if stop.is_set():
                    return
                loop.post_events(records_of(raw))
                loop.request(f"/recommend?user_id={int(raw.columns['user_id'][0])}")
                stop.wait(0.1)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        trainer_points = lambda: loop.get("/dashboard/status")["trainer"]["series"]["hr"]  # noqa: E731
        loop.wait_until(trainer_points, 90, "a trainer point")
        try:
            yield loop
        finally:
            stop.set()
            feeder.join(timeout=30)


def offline_page(browser, requested: list[str]):
    """A page whose requests off 127.0.0.1 are aborted; every URL asked for is noted in `requested`."""
    context = browser.new_context(viewport={"width": 1400, "height": 1500})

    def route(request_route) -> None:
        url = request_route.request.url
        requested.append(url)
        if urlsplit(url).hostname == "127.0.0.1":
            request_route.continue_()
        else:
            request_route.abort()

    context.route("**/*", route)
    return context.new_page()


def points(page, chart: str) -> int:
    return int(page.get_attribute(f"#{chart}", "data-points") or 0)


@pytest.fixture
def chromium() -> Path:
    """The browser, checked before anything starts: missing, the test fails and says how to install it."""
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: `apt-get install -y chromium` (the browser test needs it)"
    )
    return CHROMIUM


def test_the_dashboard_shows_live_figures_offline(chromium, live, tmp_path):
    requested: list[str] = []
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = offline_page(browser, requested)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(live.base_url + "/")
            page.wait_for_function(
                "document.getElementById('connection').textContent === 'live'", timeout=10_000
            )
            page.wait_for_function(
                "Number(document.getElementById('chart-hr').dataset.points) > 0", timeout=10_000
            )
            before = {chart: points(page, chart) for chart in ("chart-hr", "chart-rate", "chart-latency")}
            started = time.monotonic()
            # New points within 5 s: the server samples every second, the trainer decides every 0.3 s.
            page.wait_for_function(
                "([hr, rate]) => Number(document.getElementById('chart-hr').dataset.points) > hr"
                " && Number(document.getElementById('chart-rate').dataset.points) > rate",
                arg=[before["chart-hr"], before["chart-rate"]],
                timeout=5_000,
            )
            assert time.monotonic() - started < 5.0
            assert page.locator("#chart-hr canvas").count() == 1  # uPlot drew it
            assert page.locator("#table-versions tbody tr").count() > 0
            assert page.locator("#table-sizes tbody tr").count() == 2  # users and items of bpr-mf
            assert page.text_content("#tile-hr") not in ("", "–")
            screenshot = tmp_path / "dashboard.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
            if os.environ.get(SCREENSHOT_VARIABLE):
                shutil.copyfile(screenshot, os.environ[SCREENSHOT_VARIABLE])

            # The API's docs render from local assets too.
            page.goto(live.base_url + "/docs")
            page.wait_for_selector("#swagger-ui .opblock", timeout=15_000)
            assert page.locator("#swagger-ui .opblock").count() >= 5
        finally:
            browser.close()
    assert not errors, errors
    external = [url for url in requested if urlsplit(url).hostname != "127.0.0.1"]
    assert not external, f"the page asked the network for {external}"
    assert any(url.endswith("/static/uplot/uPlot.iife.min.js") for url in requested)
    assert any(url.endswith("/static/swagger-ui/swagger-ui-bundle.js") for url in requested)


def test_serve_stops_on_sigterm_while_a_dashboard_stream_is_open(tmp_path):
    """An open event stream never ends on its own; `freshrec serve` must still stop within seconds."""
    with LiveLoop(LiveLoopConfig(tmp_path)).start(trainer=False) as loop:
        opened = threading.Event()

        def hold() -> None:
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream("GET", loop.base_url + "/dashboard/stream", timeout=60) as answer,
            ):
                for _ in answer.iter_lines():
                    opened.set()

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        assert opened.wait(10), "the stream sent nothing"
        started = time.monotonic()
        loop.server.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down: the exit status is "killed by SIGTERM".
        assert loop.server.wait(timeout=15) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 10
        holder.join(timeout=10)
