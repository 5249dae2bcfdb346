"""Production refuses to start on settings that would put money or personal data at risk.

Each refusal is one line naming the setting and what to do; all of them are listed at
once, so one restart fixes everything. Development and test modes keep their defaults.
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from core.config import ConfigurationError, Settings, reset_settings_cache

GOOD = {
    "POOLDESK_ENV": "production",
    "POOLDESK_SECRET_KEY": "s" * 32,
    "POOLDESK_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    "POOLDESK_DATABASE_URL": "postgres://pooldesk@db.internal/pooldesk",
    "POOLDESK_PAYMENT_GATEWAY": "stripe",
    "POOLDESK_STRIPE_API_KEY": "sk_live_x",
}
UNSAFE = dict(GOOD, POOLDESK_SECRET_KEY="x", POOLDESK_DATABASE_URL="sqlite:///data/pooldesk.db",
              POOLDESK_ENCRYPTION_KEYS=None, POOLDESK_PAYMENT_GATEWAY=None)
EXPECTED = [
    "POOLDESK_SECRET_KEY is 1 characters long: production needs at least 32.",
    "POOLDESK_ENCRYPTION_KEYS is missing: production does not derive the encryption key from the secret; "
    "set one or more Fernet keys (make one with `pooldesk new-key`).",
    "POOLDESK_DATABASE_URL is a SQLite database: production needs PostgreSQL (postgresql+psycopg://...).",
    "POOLDESK_PAYMENT_GATEWAY is not set: production must name its gateway (stripe); "
    "the sandbox is for development and tests.",
]


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env file
    for name in list(GOOD) + ["POOLDESK_REDIS_URL"]:
        monkeypatch.delenv(name, raising=False)

    def set_env(values: dict) -> None:
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reset_settings_cache()

    return set_env


def refusal(values: dict, env) -> list[str]:
    env(values)
    with pytest.raises(ConfigurationError) as err:
        Settings()
    return str(err.value).splitlines()


def test_production_accepts_safe_settings(env):
    env(GOOD)
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://pooldesk@db.internal/pooldesk"
    assert settings.fernet_keys() == [GOOD["POOLDESK_ENCRYPTION_KEYS"].encode()]


def test_production_lists_every_unsafe_setting_one_line_each(env):
    assert refusal(UNSAFE, env) == EXPECTED


@pytest.mark.parametrize("change, line", [
    ({"POOLDESK_SECRET_KEY": "s" * 31}, "POOLDESK_SECRET_KEY is 31 characters long: production needs at least 32."),
    ({"POOLDESK_SECRET_KEY": None},
     "POOLDESK_SECRET_KEY is missing: set a random secret of at least 32 characters."),
    ({"POOLDESK_PAYMENT_GATEWAY": "sandbox"},
     "POOLDESK_PAYMENT_GATEWAY is sandbox: the sandbox gateway moves no money and is for development and tests; "
     "production needs stripe."),
    ({"POOLDESK_STRIPE_API_KEY": None}, "POOLDESK_STRIPE_API_KEY is missing: the stripe gateway needs it."),
    ({"POOLDESK_DATABASE_URL": None},
     "POOLDESK_DATABASE_URL is missing: production needs PostgreSQL (postgresql+psycopg://...)."),
    ({"POOLDESK_DATABASE_URL": "mysql://db/pooldesk"},
     "POOLDESK_DATABASE_URL is not a PostgreSQL URL: production needs PostgreSQL (postgresql+psycopg://...)."),
    ({"POOLDESK_ENCRYPTION_KEYS": " , "}, EXPECTED[1]),
    ({"POOLDESK_ENCRYPTION_KEYS": GOOD["POOLDESK_ENCRYPTION_KEYS"] + ",not-a-key"},
     "POOLDESK_ENCRYPTION_KEYS: key 2 of 2 is not a valid Fernet key (32 bytes in url-safe base64, 44 characters; "
     "make one with `pooldesk new-key`)."),
])
def test_each_unsafe_setting_is_refused_alone(env, change, line):
    assert refusal(dict(GOOD, **change), env) == [line]


def test_development_and_test_modes_keep_their_embedded_defaults(env, tmp_path):
    for mode in ("development", "test"):
        env({"POOLDESK_ENV": mode, "POOLDESK_DATA_DIR": str(tmp_path / mode)})
        settings = Settings()
        assert (settings.is_sqlite, settings.payment_gateway) == (True, "sandbox")
        assert len(settings.fernet_keys()) == 1  # derived from the generated install secret
    # a malformed key is refused in every mode: it would fail at the first encrypted field otherwise
    env({"POOLDESK_ENCRYPTION_KEYS": "short"})
    with pytest.raises(ConfigurationError, match="key 1 of 1 is not a valid Fernet key"):
        Settings()


def test_the_command_refuses_to_start_with_one_line_per_problem(env):
    from app.cli import cli

    env(UNSAFE)
    result = CliRunner().invoke(cli, ["migrate"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [f"Error: {line}" for line in EXPECTED]
    # new-key needs no settings, so it works to fix them
    key = CliRunner().invoke(cli, ["new-key"])
    assert key.exit_code == 0 and Fernet(key.output.strip().encode())
