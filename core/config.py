"""Settings shared by the app, the `pooldesk` command and the workers.

Everything comes from environment variables prefixed ``POOLDESK_`` (or a ``.env``
file). With nothing set, Pooldesk runs on its embedded defaults: a SQLite file and
an in-process job dispatcher under ``data/``. The per-install secret is generated
on first use and kept in ``data/secret.key`` with owner-only permissions; in
production mode a missing secret stops start-up instead.
"""
from __future__ import annotations

import base64
import functools
import os
import secrets
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigurationError(RuntimeError):
    """The installation is not configured well enough to start."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POOLDESK_", env_file=".env", extra="ignore")

    env: Literal["development", "production", "test"] = "development"
    data_dir: Path = PROJECT_ROOT / "data"
    database_url: str = ""
    redis_url: str = ""
    secret_key: SecretStr | None = None
    encryption_keys: SecretStr | None = Field(
        default=None, description="Comma-separated Fernet keys; the first encrypts, all decrypt."
    )
    base_url: str = "http://localhost:8501"

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

    @field_validator("database_url", mode="before")
    @classmethod
    def _normalise_db_url(cls, value: str | None) -> str:
        value = (value or "").strip()
        # Accept the URLs people paste from hosting dashboards.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix):]
        return value

    @model_validator(mode="after")
    def _require_secrets_in_production(self) -> "Settings":
        if self.env == "production":
            missing = [
                name
                for name, value in (
                    ("POOLDESK_SECRET_KEY", self.secret_key),
                    ("POOLDESK_DATABASE_URL", self.database_url or None),
                )
                if not value
            ]
            if self.payment_gateway == "stripe" and not self.stripe_api_key:
                missing.append("POOLDESK_STRIPE_API_KEY")
            if missing:
                raise ConfigurationError(
                    "Production mode needs these settings, which are missing: " + ", ".join(missing)
                )
            if not self.require_mfa:
                raise ConfigurationError("POOLDESK_REQUIRE_MFA=false is refused in production mode.")
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

    def fernet_keys(self) -> list[bytes]:
        if self.encryption_keys is not None:
            return [k.strip().encode() for k in self.encryption_keys.get_secret_value().split(",") if k.strip()]
        return [_derive_fernet_key(self.secret())]


def _derive_fernet_key(secret: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"pooldesk-fernet").derive(secret.encode())
    return base64.urlsafe_b64encode(raw)


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
