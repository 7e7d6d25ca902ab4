"""The status page in a real headless Chromium (Debian's `chromium`, driven by Playwright), served by
real gunicorn, with a real `jira-mirror worker` syncing from the bundled Jira simulator: log in,
see the project, press "Full backfill" and confirm it, watch it queue and succeed; read the run
history and the refused deliveries; type in the track field while the page refreshes its data
(nothing typed is lost); track a second project with the form; see a webhook delivery counted;
read it all on a phone-sized screen.

Screenshots land in `artifacts/` (gitignored): `status-page.png` (desktop) and
`status-page-phone.png`. `docs/status-page.png` is a copy of a good desktop one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from pathlib import Path

import pytest

from mirror import store
from mirror.issues import to_row, utc_now
import requests

from tests import factories, procs
from tests.conftest import SECRET

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = procs.ROOT / "artifacts"
TOKEN = "browser-admin-token-long-enough-for-start"


@pytest.fixture
def jira_site():
    """A small simulated site (overrides conftest's): a full sync takes a moment."""
    from simulator import Site

    return Site.generate({"DEMO": 40, "OPS": 12}, seed=7)


@pytest.fixture
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _jira_env(settings) -> dict[str, str]:
    return {
        "ADMIN_TOKEN": TOKEN,
        "JIRA_BASE_URL": settings.jira_base_url,
        "JIRA_EMAIL": settings.jira_email,
        "JIRA_API_TOKEN": settings.jira_api_token,
    }


def _cell(page, key: str, label: str) -> str:
    return page.locator(f'#project-{key} td[data-label="{label}"]').inner_text().strip()


def _wait_for_full_sync(page, key: str, worker, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page.reload()
        last_full = _cell(page, key, "Last full")
        if "succeeded" in last_full or "failed" in last_full:
            break
        time.sleep(0.3)
    assert "succeeded" in _cell(page, key, "Last full"), worker.output()[-3000:]


def test_log_in_backfill_and_watch_it_succeed(jira_settings, jira_site, jira, redis_conn, tmp_path, chromium):
    settings = dataclasses.replace(jira_settings, admin_token=TOKEN)
    site = settings.site
    # A few rows already mirrored (as webhooks would have written them); Jira does not know them,
    # so the full sync's reconciliation marks them deleted.
    now = utc_now()
    store.upsert_issues(
        [
            to_row(
                site,
                factories.issue(str(990000 + i), f"DEMO-{900 + i}", updated=now - dt.timedelta(minutes=7)),
                source="webhook",
                event_ts=i,
                synced_at=now,
            )
            for i in range(3)
        ]
    )
    ARTIFACTS.mkdir(exist_ok=True)

    web, url = procs.start_web(settings, tmp_path, workers=2, **_jira_env(settings))
    worker = None
    context = chromium.new_context(viewport={"width": 1366, "height": 900})
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)

        # Not logged in: the page sends the browser to the login form.
        page.goto(url + "/")
        assert page.url == url + "/login"
        page.fill("#token", "wrong-token")
        page.click("text=Log in")
        assert "Wrong token" in page.inner_text("body")
        page.fill("#token", TOKEN)
        page.click("text=Log in")
        assert page.url == url + "/"

        # The tracked project with its mirrored issues; Jira answers through the simulator.
        assert _cell(page, "DEMO", "Issues") == "3"
        assert "connected" in page.inner_text("#jira") and "America/Los_Angeles" in page.inner_text("#jira")
        assert page.locator("#queue-backfill .queued").inner_text() == "0"

        # Full backfill: queued (no backfill worker yet), the page says so and refreshes fast.
        # It asks for a confirmation first.
        page.locator("#project-DEMO").get_by_role("button", name="Full backfill").click()
        assert "Full backfill of DEMO?" in page.inner_text("body")
        page.get_by_role("button", name="Yes, run a full backfill").click()
        assert "Full backfill of DEMO queued" in page.inner_text("body")
        assert page.locator("#project-DEMO .state").inner_text() == "queued"
        assert page.locator("#queue-backfill .queued").inner_text() == "1"
        assert page.locator("#live-root").get_attribute("data-refresh") == "5"

        # A worker takes the job; the page shows the run's outcome.
        worker = procs.start_worker(
            settings, tmp_path, "--queue", "backfill", "--queue", "issues", name="worker", **_jira_env(settings)
        )
        _wait_for_full_sync(page, "DEMO", worker)
        assert page.locator("#project-DEMO .state").inner_text() == "idle"
        assert _cell(page, "DEMO", "Issues") == "40" and _cell(page, "DEMO", "Deleted") == "3"
        assert page.locator("#queue-backfill .queued").inner_text() == "0"
        assert "backfill" in page.inner_text("#workers")

        # The run history shows the run; a delivery with a wrong signature shows among the refused.
        history = page.inner_text("#history-DEMO")
        assert "full" in history and "succeeded" in history and "40" in history
        assert "None in the last hour" in page.inner_text("#refused")
        raw, wrong = factories.signed(factories.delivery(the_issue=factories.issue()), "not-the-secret")
        assert requests.post(url + "/webhooks/jira", data=raw, headers=wrong, timeout=10).status_code == 401

        # Refreshing never wipes what the operator is typing: while the field holds text (or has
        # focus) the data waits; once it is empty and left, the data is refreshed in place.
        page.click("#track-key")
        page.keyboard.type("OP")
        page.evaluate("document.getElementById('live-root').setAttribute('data-refresh', '1')")  # rounds every 1 s
        assert page.evaluate("window.jiraMirrorRefresh()") is False
        time.sleep(2.5)  # the automatic rounds come, see the typing, and wait
        assert int(page.locator("#live-root").get_attribute("data-paused")) >= 3
        assert page.input_value("#track-key") == "OP" and "None in the last hour" in page.inner_text("#refused")
        page.fill("#track-key", "")
        page.locator("h1").click()  # focus leaves the field
        url_before = page.url
        assert page.evaluate("window.jiraMirrorRefresh()") is True
        assert page.url == url_before  # parts replaced in place, not a reload
        refused = page.inner_text("#refused")
        assert "unauthorized" in refused and "JIRA_WEBHOOK_SECRET" in refused

        # Track another project with the form: it is backfilled in full.
        page.fill("#track-key", "ops")
        page.get_by_role("button", name="Track and backfill").click()
        assert "OPS is now tracked; a full backfill is queued" in page.inner_text("body")
        _wait_for_full_sync(page, "OPS", worker)
        assert _cell(page, "OPS", "Issues") == "12"

        # A webhook delivery through gunicorn shows in the webhook card.
        from simulator.webhooks import issue_payload

        event = jira_site.create_issue("DEMO", summary="Created while the page watched")
        body, headers = factories.signed(issue_payload(event, jira_site, jira.url), SECRET)
        assert requests.post(url + "/webhooks/jira", data=body, headers=headers, timeout=10).status_code == 202
        deadline = time.monotonic() + 10
        while _cell(page, "DEMO", "Issues") != "41" and time.monotonic() < deadline:
            time.sleep(0.2)
            page.reload()
        assert _cell(page, "DEMO", "Issues") == "41"
        # The web process sends its delivery counts within FLUSH_INTERVAL (0.5 s).
        deadline = time.monotonic() + 5
        while "just now" not in page.inner_text("#webhooks") and time.monotonic() < deadline:
            time.sleep(0.2)
            page.reload()
        assert "just now" in page.inner_text("#webhooks")
        page.screenshot(path=str(ARTIFACTS / "status-page.png"), full_page=True)

        # On a phone: the same page, no sideways scrolling, buttons within reach.
        phone = context.browser.new_context(
            viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
        )
        try:
            small = phone.new_page()
            small.goto(url + "/login")
            small.fill("#token", TOKEN)
            small.click("text=Log in")
            small.wait_for_selector("#project-DEMO")  # the login's redirect has landed
            small.wait_for_load_state("load")
            assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
            assert small.locator("#project-DEMO").get_by_role("button", name="Full backfill").is_visible()
            small.screenshot(path=str(ARTIFACTS / "status-page-phone.png"), full_page=True)
        finally:
            phone.close()

        # Log out: the page is closed again.
        page.get_by_role("button", name="Log out").click()
        assert page.url == url + "/login"
        page.goto(url + "/")
        assert page.url == url + "/login"
    finally:
        context.close()
        if worker is not None:
            worker.terminate()
        web.terminate()
