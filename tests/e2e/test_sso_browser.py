"""Single sign-on in a real browser: the app's `[auth]` section points at a local OpenID Connect
provider (oidc-provider-mock), and Streamlit's `st.login` goes through its whole redirect.

An identity whose email is an active user's signs in as that user, with their role; any other
identity is refused on the sign-in page and nobody is signed in."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import Authenticator, free_port, give_code, running_app, settle, shot, wait_until_up

pytestmark = pytest.mark.e2e
SSO_MANAGER_TOTP = "KRUGS4ZANFZSAYJAORSXG5BAONSWG4TF"  # the manager is enrolled in two-step sign-in


@pytest.fixture(scope="module")
def provider():
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "oidc_provider_mock", "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/.well-known/openid-configuration", None, lambda: "the OIDC provider did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def sso_app(tmp_path_factory, provider):
    port = free_port()
    secrets = tmp_path_factory.mktemp("sso") / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        f'cookie_secret = "{"c" * 40}"\n'
        'client_id = "pooldesk-e2e"\n'
        'client_secret = "pooldesk-e2e-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n')
    users = [dict(email="sso.manager@example.com", name="Sam Single", role="manager", password=None,
                  totp_secret=SSO_MANAGER_TOTP)]
    with running_app(tmp_path_factory, "_e2e_sso", users=users, port=port,
                     args=["--secrets.files", str(secrets)]) as base:
        yield base


def sign_in_with_provider(browser, app: str, identity: str):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app)
    settle(page)
    page.get_by_role("button", name="Sign in with single sign-on").click()
    page.wait_for_selector("input[name='sub']")  # the provider's own page
    page.fill("input[name='sub']", identity)  # the mock gives the identity this email
    page.get_by_role("button", name="Authorize").click()
    page.wait_for_url(app + "/**")
    settle(page)
    return context, page


def end_session_at_the_provider(page, app: str) -> None:
    """Streamlit's st.logout ends the session at the provider too; its page asks, then sends the browser
    back to the app, signed out."""
    from playwright.sync_api import expect

    page.wait_for_url(re.compile(r"/oauth2/end_session"))
    page.get_by_role("button", name="End session").click()
    page.wait_for_url(re.compile("^" + re.escape(app)))
    settle(page)
    expect(page.get_by_role("button", name="Sign in with single sign-on")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)


def test_an_active_users_identity_signs_in_with_their_role(sso_app, browser):
    from playwright.sync_api import expect

    context, page = sign_in_with_provider(browser, sso_app, "sso.manager@example.com")
    # a manager gives the second factor after the identity provider too
    expect(page.get_by_role("heading", name="Two-step sign-in")).to_be_visible()
    give_code(page, Authenticator(SSO_MANAGER_TOTP).code())
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    sidebar = page.locator("[data-testid='stSidebar']")
    expect(sidebar).to_contain_text("Sam Single")
    expect(sidebar).to_contain_text("· manager")
    expect(page.locator("[data-testid='stSidebarNav'] a", has_text="Transactions")).to_be_visible()
    shot(page, "sso-01-signed-in")
    # signing out also ends the session at the provider (through its end-session endpoint) and comes back
    page.get_by_role("button", name="Sign out").click()
    end_session_at_the_provider(page, sso_app)
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    page.reload()  # and stays signed out
    settle(page)
    expect(page.get_by_role("button", name="Sign in with single sign-on")).to_be_visible()
    context.close()


def test_an_identity_that_is_not_an_active_user_is_refused(sso_app, browser):
    from playwright.sync_api import expect

    context, page = sign_in_with_provider(browser, sso_app, "stranger@example.com")
    expect(page.get_by_text("This single sign-on identity does not match an active Pooldesk user.")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
    expect(page.locator("[data-testid='stSidebarNav']")).to_have_count(0)
    shot(page, "sso-02-refused")
    page.reload()  # a new browser session is refused too
    settle(page)
    expect(page.get_by_text("This single sign-on identity does not match an active Pooldesk user.")).to_be_visible()
    # to try another account, sign out of the provider first
    page.get_by_role("button", name="Sign in with another single sign-on account").click()
    end_session_at_the_provider(page, sso_app)
    context.close()
