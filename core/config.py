"""Settings shared by the app, the `pooldesk` command and the workers.

Everything comes from environment variables prefixed ``POOLDESK_`` (or a ``.env``
file). With nothing set, Pooldesk runs on its embedded defaults: a SQLite file and
an in-process job dispatcher under ``data/``. The per-install secret is generated
on first use and kept in ``data/secret.key`` with owner-only permissions. In production
mode start-up stops, with one line per problem, unless the secret is long enough, the
encryption keys are given (never derived from the secret), the database is PostgreSQL
and a real payment gateway is chosen.
"""
from __future__ import annotations

import base64
import functools
import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


MIN_SECRET_LENGTH = 32
NEW_KEY_HINT = "make one with `pooldesk new-key`"


class ConfigurationError(RuntimeError):
    """The installation is not configured well enough to start."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POOLDESK_", env_file=".env", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = PROJECT_ROOT / "data"
    database_url: str = ""
    migration_database_url: str = Field(
        default="", description="`pooldesk migrate` connects with this (the tables' owner) when the app's own "
                                "URL is a least-privilege role; default: database_url.")
    redis_url: str = ""
    secret_key: SecretStr | None = None
    encryption_keys: SecretStr | None = Field(
        default=None, description="Comma-separated Fernet keys; the first encrypts, all decrypt."
    )
    base_url: str = "http://localhost:8501"
    audit_key: SecretStr | None = Field(
        default=None, description="Key of the audit log's HMAC chain; default: derived from the secret key.")

    session_idle_minutes: int = 30
    session_max_hours: int = 12
    lockout_attempts: int = 5
    lockout_minutes: int = 15
    # Second factor (TOTP) for admins and managers; may be switched off only outside production.
    require_mfa: bool = True
    # Sensitive operations need the password or a code confirmed within this many minutes.
    reauth_minutes: int = 5
    reauth_withdrawal_threshold: Decimal = Decimal("10000")  # in the pool's currency

    payment_gateway: Literal["sandbox", "stripe"] = "sandbox"
    stripe_api_key: SecretStr | None = None
    stripe_api_base: str = ""
    stripe_webhook_secret: SecretStr | None = None

    smtp_host: str = ""
    smtp_port: int = 587
    smtp_tls: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_user: str = ""
    smtp_password: SecretStr | None = None
    smtp_from: str = "pooldesk@localhost"

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_from: str = ""

    risk_free_rate: Decimal = Decimal("0.02")
    large_flow_threshold: Decimal = Decimal("100000")
    _audit_chain_key: bytes | None = PrivateAttr(default=None)

    @field_validator("database_url", "migration_database_url", mode="before")
    @classmethod
    def _normalise_db_url(cls, value: str | None) -> str:
        value = (value or "").strip()
        # Accept the URLs people paste from hosting dashboards.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix):]
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> "Settings":
        """Production starts only with what keeps money and personal data safe; each problem is one line."""
        key_problem = self.fernet_key_problem()
        if self.env != "production":
            if key_problem:  # a malformed key stops start-up in every mode
                raise ConfigurationError(key_problem)
            return self
        problems = [key_problem] if key_problem else []
        secret = self.secret_key.get_secret_value() if self.secret_key is not None else ""
        if not secret:
            problems.append(f"POOLDESK_SECRET_KEY is missing: set a random secret of at least {MIN_SECRET_LENGTH} "
                            "characters.")
        elif len(secret) < MIN_SECRET_LENGTH:
            problems.append(f"POOLDESK_SECRET_KEY is {len(secret)} characters long: production needs at least "
                            f"{MIN_SECRET_LENGTH}.")
        if not self.fernet_keys_given():
            problems.append("POOLDESK_ENCRYPTION_KEYS is missing: production does not derive the encryption key "
                            "from the secret; set one or more Fernet keys (" + NEW_KEY_HINT + ").")
        if not self.database_url:
            problems.append("POOLDESK_DATABASE_URL is missing: production needs PostgreSQL (postgresql+psycopg://...).")
        elif self.database_url.startswith("sqlite"):
            problems.append("POOLDESK_DATABASE_URL is a SQLite database: production needs PostgreSQL "
                            "(postgresql+psycopg://...).")
        elif not self.database_url.startswith("postgresql"):
            problems.append("POOLDESK_DATABASE_URL is not a PostgreSQL URL: production needs PostgreSQL "
                            "(postgresql+psycopg://...).")
        if "payment_gateway" not in self.model_fields_set:
            problems.append("POOLDESK_PAYMENT_GATEWAY is not set: production must name its gateway (stripe); "
                            "the sandbox is for development and tests.")
        elif self.payment_gateway == "sandbox":
            problems.append("POOLDESK_PAYMENT_GATEWAY is sandbox: the sandbox gateway moves no money and is for "
                            "development and tests; production needs stripe.")
        elif self.payment_gateway == "stripe" and not self.stripe_api_key:
            problems.append("POOLDESK_STRIPE_API_KEY is missing: the stripe gateway needs it.")
        if not self.require_mfa:
            problems.append("POOLDESK_REQUIRE_MFA=false is refused in production mode: admins and managers sign in with two steps.")
        if problems:
            raise ConfigurationError("\n".join(problems))
        return self

    # Derived values -----------------------------------------------------------------
    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'pooldesk.db'}"

    @property
    def is_sqlite(self) -> bool:
        return self.effective_database_url.startswith("sqlite")

    @property
    def redis_enabled(self) -> bool:
        return bool(self.redis_url)

    @property
    def emails_enabled(self) -> bool:
        return bool(self.smtp_host)

    @property
    def sms_enabled(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    def secret(self) -> str:
        """The per-install secret: from settings, or created once under data/."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        if self.env == "production":
            raise ConfigurationError("POOLDESK_SECRET_KEY is required in production mode")
        return _load_or_create_secret(self.data_dir / "secret.key")

    def fernet_keys_given(self) -> list[bytes]:
        """The keys of POOLDESK_ENCRYPTION_KEYS, in order (the first encrypts)."""
        if self.encryption_keys is None:
            return []
        return [k.strip().encode() for k in self.encryption_keys.get_secret_value().split(",") if k.strip()]

    def fernet_key_problem(self) -> str | None:
        """What is wrong with POOLDESK_ENCRYPTION_KEYS, in one line, or None."""
        from cryptography.fernet import Fernet

        keys = self.fernet_keys_given()
        for position, key in enumerate(keys, start=1):
            try:
                Fernet(key)
            except (ValueError, TypeError):
                return (f"POOLDESK_ENCRYPTION_KEYS: key {position} of {len(keys)} is not a valid Fernet key "
                        f"(32 bytes in url-safe base64, 44 characters; {NEW_KEY_HINT}).")
        return None

    def fernet_keys(self) -> list[bytes]:
        keys = self.fernet_keys_given()
        if keys:
            return keys
        if self.env == "production":  # never derived from the secret: a leaked secret would open every field
            raise ConfigurationError("POOLDESK_ENCRYPTION_KEYS is required in production mode.")
        return [_derive_fernet_key(self.secret())]

    def audit_chain_key(self) -> bytes:
        """The 32-byte HMAC key of the audit chain. It lives outside the database (setting or secret), so
        someone who can write to the database cannot recompute the chain after editing a row. Derived
        once per Settings: every audit row and every settled flow asks for it."""
        if self._audit_chain_key is None:
            source = self.audit_key.get_secret_value() if self.audit_key is not None else self.secret()
            self._audit_chain_key = _hkdf(source, b"pooldesk-audit-chain")
        return self._audit_chain_key


def _derive_fernet_key(secret: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pooldesk-fernet").derive(secret.encode())
    return base64.urlsafe_b64encode(raw)


def _hkdf(secret: str, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())


def _load_or_create_secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    # O_EXCL: two processes starting at once agree on one secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reset_settings_cache() -> None:
    get_settings.cache_clear()
