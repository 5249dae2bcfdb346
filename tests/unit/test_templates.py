"""Every message the jobs send exists as text and HTML, renders, and says what it is given."""
from __future__ import annotations

import re

import pytest
from jinja2 import meta

from jobs.channels import TEMPLATES, _environments, render, template_names

REQUIRED = ("invitation", "password_reset", "contribution_received", "contribution_settled", "contribution_failed",
            "withdrawal_paid", "distribution_declared", "distribution_paid", "valuation_published", "large_flow",
            "payment_failure")


def _variables(env, name: str) -> set[str]:
    return meta.find_undeclared_variables(env.parse((TEMPLATES / name).read_text()))


def test_every_event_the_issue_names_has_a_template():
    assert set(REQUIRED) <= set(template_names())


@pytest.mark.parametrize("template", template_names())
def test_each_template_has_text_and_html_and_shows_every_value_it_is_given(template):
    text_env, html_env = _environments()
    assert (TEMPLATES / f"{template}.html").exists(), f"{template} has no HTML version"
    names = _variables(text_env, f"{template}.txt") | _variables(html_env, f"{template}.html")
    text_source = (TEMPLATES / f"{template}.txt").read_text()
    html_source = (TEMPLATES / f"{template}.html").read_text()
    # A marker for each value; a list (e.g. the failed payouts) gets one row whose every field is a marker.
    context = {n: f"<{n}-value>" for n in names}
    for n in names:
        if re.search(r"for \w+ in " + n + r"\b", text_source + html_source):
            context[n] = [Row()]
        elif n in ("count", "reinvested"):  # numbers and flags that choose the wording
            context[n] = 2 if n == "count" else False
    rendered = render(template, context)
    assert rendered.subject and "{{" not in rendered.subject + rendered.text + rendered.html
    for n in _shown(text_source):
        assert f"<{n}-value>" in rendered.subject + rendered.text, f"{template}.txt does not show {n}"
    for n in _shown(html_source):
        assert f"&lt;{n}-value&gt;" in rendered.html, f"{template}.html does not show {n} (escaped)"
    # Both versions tell the same: what the text's body shows, the HTML shows too.
    body = text_source.partition("\n")[2]
    missing = {n for n in _shown(body) if f"&lt;{n}-value&gt;" not in rendered.html}
    assert not missing, f"{template}.html leaves out {sorted(missing)}"


class Row(dict):
    def __missing__(self, key):
        return f"<row-{key}>"


def _shown(source: str) -> set[str]:
    """Names printed as they are: ``{{ name }}`` or ``{{ name | filter }}``."""
    return set(re.findall(r"\{\{\s*(\w+)\s*(?:\||\}\})", source)) - {"count"}
