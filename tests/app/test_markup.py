"""Issue 10, point 2 on screen: a name, title or body someone typed is shown as the literal text, never as a
link, bold text or any other Markdown, in the manager's Requests tab and on the Notifications page."""
from __future__ import annotations

import re
from datetime import date

from core.services import ledger, notifications, users
from tests.app.conftest import open_app, shown
from tests.factories import PASSWORD, actor, make_pool, make_user, system

PHISHING = "[Verify your bank details](http://evil.example) **URGENT**"
BARE = "Call <b>http://evil.example</b> or www.evil.example :warning: $x^2$"
# A Markdown link or image whose brackets are not escaped; a bare URL Streamlit would link by itself.
LIVE_LINK = re.compile(r"(?<!\\)\[[^\]]*(?<!\\)\]\(|https?://|www\.", re.IGNORECASE)


def _person(db, role: str, email: str, name: str):
    return actor(users.create_user(db, actor=system(db), email=email, name=name, role=role, password=PASSWORD))


def _rendered(at) -> list[str]:
    """Every Markdown source the page sent to the browser (body, sidebar, alerts, captions, labels)."""
    values = [e.value for e in [*at.markdown, *at.caption, *at.info, *at.success, *at.error, *at.warning]]
    values += [e.label for e in [*at.button, *at.checkbox, *at.expander, *at.tabs]]
    return [str(v) for v in values]


def _assert_literal(at, text: str) -> None:
    rendered = _rendered(at)
    matching = [v for v in rendered if text in shown(v)]
    assert matching, f"{text!r} is not on the page"
    for value in rendered:
        assert not LIVE_LINK.search(value), value
        assert "**URGENT**" not in value and "<b>" not in value and "$x^2$" not in value and ":warning:" not in value


def test_an_investor_name_in_the_requests_tab_is_shown_as_text(db):
    manager = make_user(db, "manager")
    investor = _person(db, "investor", "victim@example.com", PHISHING)
    pool = make_pool(db, manager, code="MKD", inception=date(2024, 1, 1))
    ledger.record_contribution(db, actor=manager, pool_id=pool.id, investor_id=investor.id, amount="100.00",
                               key="first", payment="received")
    ledger.record_contribution(db, actor=investor, pool_id=pool.id, investor_id=investor.id, amount="50", key="r1")
    at = open_app(db, manager, "transactions")
    assert not at.exception
    _assert_literal(at, f"{PHISHING} <victim@example.com> · contribution of USD 50.00")


def test_notification_titles_and_bodies_are_shown_as_text(db):
    investor = _person(db, "investor", "reader@example.com", BARE)
    with db.transaction() as session:
        notifications.add_in_app(session, user_id=investor.id, event="valuation_published", title=PHISHING,
                                 body=f"{BARE}\n\n{PHISHING}")
    at = open_app(db, investor, "notifications")
    assert not at.exception
    _assert_literal(at, PHISHING)
    _assert_literal(at, BARE)  # the body, and the name in the sidebar
