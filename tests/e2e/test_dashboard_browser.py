"""The dashboard in a real browser (Debian's chromium), against the app started on a free port.

One scenario, as people use it: a manager signs in, creates a pool, invites an
investor, records a contribution collected through the payment gateway and
watches it settle in the live feed, then signs out; the investor sees the holding's
value on My portfolio and downloads statements (CSV and PDF); five wrong passwords lock the account; a cookie kept from
before sign-out no longer gets in. Screenshots of each step go to test-artifacts/e2e/.
"""
from __future__ import annotations

import csv
import re
import time

import pytest
from pypdf import PdfReader

from tests.e2e.conftest import Authenticator, give_code, running_app, settle, shot

pytestmark = pytest.mark.e2e

PASSWORD = "manager-password-1"
MANAGER_TOTP = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # the manager is enrolled in two-step sign-in


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    manager = dict(email="manager@example.com", name="Maya Manager", role="manager", password=PASSWORD,
                   totp_secret=MANAGER_TOTP)
    with running_app(tmp_path_factory, "_e2e", users=[manager]) as base:
        yield base


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


def sign_in(page, email: str, password: str, *, wait: bool = True, app: Authenticator | None = None) -> None:
    """Sign in (with the code from ``app`` when two-step sign-in is on); with ``wait=False`` the next step
    starts at once, as a quick user's would."""
    page.get_by_role("textbox", name="Email", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    if app is not None:
        settle(page)
        give_code(page, app.code(), wait=wait)
    elif wait:
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

    phone = Authenticator(MANAGER_TOTP)
    sign_in(page, "manager@example.com", PASSWORD, app=phone)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    shot(page, "02-manager-overview")
    sign_out(page)

    # sign in and go straight on to another page: the sign-in cookie is still written, so a reload keeps
    # the user on that page
    sign_in(page, "manager@example.com", PASSWORD, wait=False, app=phone)
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
    # the investor's name and email are typed text: shown literally, with an invisible word joiner before the @
    # (app.components.format.md) so that the address is not made a mailto link
    latest = r"Latest: #1 contribution of USD 1,500\.00 for Ivan Investor <ivan\u2060?@example\.com>"
    feed = page.get_by_text(re.compile(latest))
    expect(feed).to_be_visible()
    expect(page.get_by_text(re.compile(latest + ": settled"))
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
