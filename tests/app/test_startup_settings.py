"""The app in production mode with unsafe settings shows what to fix, one line each, and nothing else."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from core.config import reset_settings_cache
from tests.app.conftest import MAIN


def test_the_app_refuses_to_start_on_unsafe_production_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name, value in {"POOLDESK_ENV": "production", "POOLDESK_SECRET_KEY": "short",
                        "POOLDESK_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}"}.items():
        monkeypatch.setenv(name, value)
    for name in ("POOLDESK_ENCRYPTION_KEYS", "POOLDESK_PAYMENT_GATEWAY"):
        monkeypatch.delenv(name, raising=False)
    reset_settings_cache()
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    assert not at.exception
    assert [e.value.split(":")[0] for e in at.error] == [
        "POOLDESK_SECRET_KEY is 5 characters long", "POOLDESK_ENCRYPTION_KEYS is missing",
        "POOLDESK_DATABASE_URL is a SQLite database", "POOLDESK_PAYMENT_GATEWAY is not set"]
    assert not at.text_input  # no sign-in form
