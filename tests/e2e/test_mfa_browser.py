"""Two-step sign-in in a real browser: a manager sets it up at the first sign-in (the test reads the key the
page shows, as a phone would scan it), signs out, signs in again with the password and a code (a wrong
code is refused), and a recovery code works once."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import Authenticator, give_code, running_app, settle, shot

pytestmark = pytest.mark.e2e

PASSWORD = "manager-password-2"
WRONG_CODE = "That code is not right"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    manager = dict(email="mona@example.com", name="Mona Manager", role="manager", password=PASSWORD)
    with running_app(tmp_path_factory, "_e2e_mfa", users=[manager]) as base:
        yield base


def password_step(page) -> None:
    page.get_by_role("textbox", name="Email", exact=True).fill("mona@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    settle(page)


def sign_out(page) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Sign out").click()
    settle(page)
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_a_manager_enrols_then_signs_in_with_a_code_and_a_recovery_code_works_once(app_url, browser):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app_url)
    settle(page)
    password_step(page)
    expect(page.get_by_role("heading", name="Two-step sign-in")).to_be_visible()
    expect(page.get_by_role("heading", name="Overview")).to_have_count(0)  # not in yet
    expect(page.locator("[data-testid='stImage'] img")).to_be_visible()  # the QR code
    secret = page.get_by_role("textbox", name="Key").input_value()
    shot(page, "mfa-01-enrol")
    phone = Authenticator(secret)
    page.get_by_role("textbox", name="Code", exact=True).fill(phone.code())
    page.get_by_role("button", name="Confirm").click()
    settle(page)
    codes = page.locator("[data-testid='stCode'] code").first.inner_text().split()
    assert len(codes) == 10
    shot(page, "mfa-02-recovery-codes")
    page.get_by_role("button", name="I have saved them: continue").click()
    settle(page)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    sign_out(page)

    # password and a code; a wrong code first
    password_step(page)
    good = phone.code()
    give_code(page, str((int(good) + 1) % 1_000_000).zfill(6))
    expect(page.get_by_text(WRONG_CODE)).to_be_visible()
    expect(page.get_by_role("heading", name="Overview")).to_have_count(0)
    shot(page, "mfa-03-wrong-code")
    give_code(page, good)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    sign_out(page)

    # a recovery code instead of the phone, once
    password_step(page)
    give_code(page, codes[0])
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    sign_out(page)
    password_step(page)
    give_code(page, codes[0])
    expect(page.get_by_text(WRONG_CODE)).to_be_visible()
    expect(page.get_by_role("heading", name="Overview")).to_have_count(0)
    shot(page, "mfa-04-recovery-code-used")
    context.close()
