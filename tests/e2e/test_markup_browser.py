"""Issue 10, point 2 in a real browser: a name written as Markdown (a link, bold text, a bare URL, an emoji
shortcode, LaTeX) is shown as the literal text in the sidebar and on the Account page, and nothing on the
page links to the attacker's site."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import running_app, settle, shot

pytestmark = pytest.mark.e2e

PASSWORD = "analyst-password-1"
NAME = "[Verify your bank details](http://evil.example) **URGENT** www.evil.example :warning: $x^2$"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    analyst = dict(email="ana@example.com", name=NAME, role="analyst", password=PASSWORD)
    with running_app(tmp_path_factory, "_e2e_markup", users=[analyst]) as base:
        yield base


def test_a_markdown_name_is_shown_as_typed_and_links_nowhere(app_url, browser):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(app_url)
    settle(page)
    page.get_by_role("textbox", name="Email", exact=True).fill("ana@example.com")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    settle(page)
    page.locator("[data-testid='stSidebarNav'] a", has_text="Account").first.click()
    settle(page)
    expect(page.get_by_role("heading", name="Account", exact=True)).to_be_visible()
    shot(page, "markup-account")
    visible = page.inner_text("body").replace("\u2060", "")
    assert visible.count(NAME) >= 2  # the sidebar and the page, character for character
    assert page.locator("a[href*='evil.example']").count() == 0
    bold = [t.replace("\u2060", "").strip() for t in page.locator("strong").all_inner_texts()]
    assert "URGENT" not in bold and NAME in bold  # the page bolds the whole name, as typed; nothing inside it
    assert page.locator(".katex").count() == 0
    assert "\u26a0" not in visible  # :warning: stayed a shortcode
    context.close()
