"""The dashboard in a real browser (Debian's chromium), against the app started on a free port.

One scenario, as people use it: a manager signs in, creates a pool, invites an
investor, records a contribution collected through the payment gateway and
watches it settle in the live feed, then signs out; the investor sees the holding's
value on My portfolio and downloads statements (CSV and PDF); five wrong passwords lock the account; a cookie kept from
before sign-out no longer gets in. Screenshots of each step go to test-artifacts/e2e/.
"""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from pypdf import PdfReader

from tests.conftest import PG_ADMIN_URL, missing, pg_url

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
E2E_DB = os.environ.get("POOLDESK_TEST_PG_DB", "pooldesk_test") + "_e2e"
PASSWORD = "manager-password-1"
QUIET_MS = 1000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fresh_database() -> str:
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{E2E_DB}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{E2E_DB}"'))
        admin.dispose()
    except Exception as exc:  # noqa: BLE001
        missing(f"PostgreSQL not reachable: {type(exc).__name__}")
    from core.db.migrate import migrate

    url = pg_url(E2E_DB)
    migrate(url)
    return url


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    url = _fresh_database()
    data_dir = tmp_path_factory.mktemp("e2e-data")
    port = _free_port()
    env = dict(os.environ, POOLDESK_DATABASE_URL=url, POOLDESK_DATA_DIR=str(data_dir), POOLDESK_ENV="test",
               POOLDESK_SECRET_KEY="e2e-" + "x" * 40, POOLDESK_BCRYPT_ROUNDS="4",
               POOLDESK_BASE_URL=f"http://127.0.0.1:{port}", POOLDESK_APP_JOBS="on")
    for name in ("POOLDESK_REDIS_URL", "POOLDESK_SMTP_HOST"):
        env.pop(name, None)
    # The first manager exists before anyone can invite: made here through the service, as `pooldesk` would.
    subprocess.run([sys.executable, "-c", (
        "from core.db.session import get_database; from core.services import users;"
        "db = get_database(); system = users.system_actor(db);"
        f"users.create_user(db, actor=system, email='manager@example.com', name='Maya Manager', role='manager', password='{PASSWORD}')"
    )], env=env, cwd=ROOT, check=True)
    log = open(data_dir / "streamlit.log", "w")
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "streamlit"), "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(base + "/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the app did not start: " + (data_dir / "streamlit.log").read_text()[-2000:])
    yield base
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield chromium
        chromium.close()


def settle(page, timeout: float = 30_000) -> None:
    """Wait until the app is idle and stays idle for a moment.

    The cookie components answer once their frames have loaded, and each answer starts
    one more run; a click landing in such a run can be lost, so a step starts only once
    no run has been seen for QUIET_MS."""
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout)
    deadline = time.monotonic() + timeout / 1000
    idle = "[data-testid='stApp'][data-test-script-state='notRunning']"
    while True:
        page.wait_for_selector(idle, timeout=timeout)
        quiet = page.evaluate(
            """(quietMs) => new Promise((resolve) => {
                const app = document.querySelector("[data-testid='stApp']");
                const observer = new MutationObserver(() => {
                    if (app.getAttribute("data-test-script-state") !== "notRunning") {
                        observer.disconnect(); resolve(false);
                    }
                });
                observer.observe(app, {attributes: true, attributeFilter: ["data-test-script-state"]});
                setTimeout(() => { observer.disconnect(); resolve(true); }, quietMs);
            })""", QUIET_MS)
        if quiet and page.locator(idle).count() == 1:
            break
        if time.monotonic() > deadline:
            raise AssertionError("the app did not settle")
    page.wait_for_function("document.querySelectorAll('[data-stale=\"true\"]').length === 0", timeout=timeout)


def sign_out(page) -> None:
    """Sign out and wait until the browser no longer holds the sign-in cookie."""
    page.get_by_role("button", name="Sign out").click()
    settle(page)
    for _ in range(100):
        if not session_cookie(page.context):
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError("the sign-in cookie was not deleted")
    settle(page)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page, email: str, password: str, *, wait: bool = True) -> None:
    """Sign in; with ``wait=False`` the next step starts at once, as a quick user's would."""
    page.get_by_role("textbox", name="Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    if wait:
        settle(page)


def open_page(page, title: str) -> None:
    page.locator("[data-testid='stSidebarNav'] a", has_text=title).first.click()
    settle(page)


def session_cookie(context):
    return [c for c in context.cookies() if c["name"] == "pooldesk_session"]


def test_manager_and_investor_whole_journey(app_url, browser):
    from playwright.sync_api import expect

    manager_context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = manager_context.new_page()
    page.goto(app_url)
    settle(page)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    shot(page, "01-sign-in")

    sign_in(page, "manager@example.com", PASSWORD)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    shot(page, "02-manager-overview")
    sign_out(page)

    # sign in and go straight on to another page: the sign-in cookie is still written, so a reload keeps
    # the user on that page
    sign_in(page, "manager@example.com", PASSWORD, wait=False)
    open_page(page, "Pools")
    deadline = time.monotonic() + 15  # written by the browser a moment later, whichever page is open
    while not session_cookie(manager_context):
        assert time.monotonic() < deadline, "the sign-in cookie was never written"
        page.wait_for_timeout(100)
    settle(page)
    pools_heading = page.get_by_role("heading", name="Pools", level=1)
    if not pools_heading.is_visible():
        # The cookie writer's answer starts a run of the page the browser showed when it answered; when it
        # lands between the click and the new page's run, Streamlit runs Overview again. A user clicks again.
        open_page(page, "Pools")
    expect(pools_heading).to_be_visible()
    assert page.url.rstrip("/").endswith("/pools"), page.url
    page.reload()
    settle(page)
    expect(pools_heading).to_be_visible()
    assert page.url.rstrip("/").endswith("/pools"), page.url

    # create a pool
    create_form = page.locator("[data-testid='stForm']").first
    create_form.get_by_role("textbox", name="Code", exact=True).fill("E2E-GROWTH")
    create_form.get_by_role("textbox", name="Name", exact=True).fill("Browser Growth Fund")
    create_form.get_by_role("button", name="Create pool").click()
    settle(page)
    expect(page.get_by_text("Pool E2E-GROWTH created.")).to_be_visible()
    shot(page, "03-pool-created")

    # invite the investor to it; email is not configured, so the link is shown
    open_page(page, "Transactions")
    page.get_by_role("tab", name="Investors").click()
    invite_form = page.locator("[data-testid='stForm']").filter(has=page.get_by_role("button", name="Invite to E2E-GROWTH"))
    invite_form.get_by_role("textbox", name="Name", exact=True).fill("Ivan Investor")
    invite_form.get_by_role("textbox", name="Email", exact=True).fill("ivan@example.com")
    invite_form.get_by_role("button", name="Invite to E2E-GROWTH").click()
    settle(page)
    link = page.locator("[data-testid='stCode'] code").first.inner_text().strip()
    assert link.startswith(app_url + "/?invite=")
    shot(page, "04-invitation-link")

    investor_context = browser.new_context(viewport={"width": 1400, "height": 1000})
    investor = investor_context.new_page()
    investor.goto(link)
    settle(investor)
    investor.get_by_label("Password", exact=True).fill("investor-password-1")
    investor.get_by_role("textbox", name="Repeat the password").fill("investor-password-1")
    investor.get_by_role("button", name="Create my account").click()
    settle(investor)
    expect(investor.get_by_text("Your account is ready")).to_be_visible()
    shot(investor, "05-invitation-accepted")

    # record a contribution collected through the payment gateway; the live feed shows it settle
    page.reload()
    settle(page)
    page.get_by_role("tab", name="Record a flow").click()
    flow_form = page.locator("[data-testid='stForm']").filter(has=page.get_by_role("button", name="Record contribution"))
    expect(flow_form.get_by_role("combobox", name="Investor")).to_have_value("Ivan Investor <ivan@example.com>")
    flow_form.get_by_role("textbox", name="Amount (USD)").fill("1,500.00")
    flow_form.get_by_text("Collect through the payment gateway").click()
    flow_form.get_by_role("button", name="Record contribution").click()
    settle(page)
    shot(page, "06-contribution-recorded")
    expect(flow_form.get_by_role("textbox", name="Amount (USD)")).to_have_value("")  # ready for the next one
    feed = page.get_by_text("Latest: #1 contribution of USD 1,500.00 for Ivan Investor <ivan@example.com>")
    expect(feed).to_be_visible()
    expect(page.get_by_text("Latest: #1 contribution of USD 1,500.00 for Ivan Investor <ivan@example.com>: settled")
           ).to_be_visible(timeout=30_000)  # the fragment refreshes by itself; no reload
    page.get_by_text("Latest: #1").scroll_into_view_if_needed()
    page.wait_for_timeout(500)  # the table is drawn on a canvas: let it paint before the screenshot
    shot(page, "07-settled-in-live-feed")

    # the cookie signs in another browser while the session lives...
    cookie = session_cookie(manager_context)
    assert cookie, "the sign-in cookie was not set"
    probe = browser.new_context()
    probe.add_cookies(cookie)
    probe_page = probe.new_page()
    probe_page.goto(app_url)
    settle(probe_page)
    expect(probe_page.get_by_role("heading", name="Overview")).to_be_visible()
    probe.close()

    sign_out(page)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    shot(page, "08-signed-out")

    # ...and no longer once the user signed out
    replay = browser.new_context()
    replay.add_cookies(cookie)
    replay_page = replay.new_page()
    replay_page.goto(app_url)
    settle(replay_page)
    expect(replay_page.get_by_role("button", name="Sign in")).to_be_visible()
    expect(replay_page.get_by_role("heading", name="Overview")).to_have_count(0)
    shot(replay_page, "09-old-cookie-refused")
    replay.close()

    # the investor sees the holding's value
    investor.reload()
    settle(investor)
    sign_in(investor, "ivan@example.com", "investor-password-1")
    open_page(investor, "My portfolio")
    metric = investor.locator("[data-testid='stMetric']").filter(has_text="Value (USD)")
    expect(metric).to_contain_text("USD 1,500.00")
    shot(investor, "10-investor-portfolio")

    # the investor downloads statements: the CSV on My portfolio, the PDF on Reports
    with investor.expect_download() as csv_download:
        investor.get_by_role("button", name="Download statement (CSV)").click()
    with open(csv_download.value.path(), newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:6] == ["date", "pool", "currency", "type", "status", "amount"]
    assert [r[1:6] for r in rows[1:]] == [["E2E-GROWTH", "USD", "contribution", "settled", "1500.00"]]
    open_page(investor, "Reports")
    investor.get_by_role("button", name="Build statement").click()
    settle(investor)
    with investor.expect_download() as pdf_download:
        investor.get_by_role("button", name="Download statement", exact=True).click()
    text = " ".join(page.extract_text() for page in PdfReader(pdf_download.value.path()).pages)
    assert "Statement for Ivan Investor" in text
    assert "E2E-GROWTH" in text and "USD 1,500.00" in text
    shot(investor, "10b-investor-statement")
    sign_out(investor)

    # five wrong passwords lock the account: then even the right one is refused
    for attempt in range(5):
        sign_in(investor, "ivan@example.com", f"wrong-password-{attempt}")
        expect(investor.get_by_text("Incorrect email or password, or the account is locked.")).to_be_visible()
    fresh = browser.new_context()  # a new browser does not reset the count
    again = fresh.new_page()
    again.goto(app_url)
    settle(again)
    sign_in(again, "ivan@example.com", "investor-password-1")
    expect(again.get_by_text("Incorrect email or password, or the account is locked.")).to_be_visible()
    expect(again.get_by_role("heading", name="My portfolio")).to_have_count(0)
    shot(again, "11-locked")
    fresh.close()
    investor_context.close()
    manager_context.close()
