"""Delivery channels: email through yagmail, SMS through Twilio, and templates for both.

Without POOLDESK_SMTP_HOST (or Twilio credentials) a message is not sent but
logged: it is kept in the ``deliveries`` table with status ``logged``, which
is what the embedded default shows instead of mail. The SMTP password is always
passed explicitly (or login skipped when there is no SMTP user), so yagmail
never falls back to an interactive prompt in a worker.
"""
from __future__ import annotations

import functools
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from jobs.errors import PermanentError, TransientError
from jobs.settings import job_settings

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


@functools.lru_cache(maxsize=1)
def _environments() -> tuple[Environment, Environment]:
    loader = FileSystemLoader(str(TEMPLATES))
    text = Environment(loader=loader, autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False)
    html = Environment(loader=loader, autoescape=select_autoescape(["html"]), undefined=StrictUndefined)
    return text, html


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES.glob("*.txt"))


def render(template: str, context: dict) -> Rendered:
    """Subject, plain text and HTML of a template (``<name>.txt`` starts with a ``Subject:`` line)."""
    if template not in template_names():
        raise PermanentError(f"There is no message template called {template!r}.")
    text_env, html_env = _environments()
    full = {"name": "", **context}
    raw = text_env.get_template(f"{template}.txt").render(full)
    first, _, body = raw.partition("\n")
    if not first.startswith("Subject:"):
        raise PermanentError(f"The template {template}.txt must start with a Subject: line.")
    from markupsafe import Markup

    inner = html_env.get_template(f"{template}.html").render(full)
    html = html_env.get_template("_layout.html").render(body=Markup(inner))
    return Rendered(first.removeprefix("Subject:").strip(), body.strip() + "\n", html)


# --- email ------------------------------------------------------------------------------

def build_email(*, to_email: str, to_name: str = "", subject: str, text: str, html: str | None = None,
                attachments=(), message_id: str | None = None) -> EmailMessage:
    from core.config import get_settings

    msg = EmailMessage()
    msg["From"] = get_settings().smtp_from
    msg["To"] = formataddr((to_name, to_email)) if to_name else to_email
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="pooldesk")
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    for filename, content, mime in attachments:
        maintype, _, subtype = (mime or "application/octet-stream").partition("/")
        msg.add_attachment(content, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
    return msg


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Mailer:
    """One SMTP connection (through yagmail) reused for a batch of messages."""

    def __init__(self):
        from core.config import get_settings

        self.settings = get_settings()
        self._client = None

    @property
    def enabled(self) -> bool:
        return self.settings.emails_enabled

    def _connect(self):
        import yagmail

        s = self.settings
        password = s.smtp_password.get_secret_value() if s.smtp_password is not None else None
        if s.smtp_user and not password:
            raise PermanentError("POOLDESK_SMTP_USER is set but POOLDESK_SMTP_PASSWORD is not; "
                                 "set both, or neither for a server without login.")
        client = yagmail.SMTP(
            user=s.smtp_user or s.smtp_from, password=password or "", host=s.smtp_host, port=s.smtp_port,
            smtp_ssl=s.smtp_tls == "ssl", smtp_starttls=s.smtp_tls == "starttls",
            smtp_skip_login=not s.smtp_user, soft_email_validation=False,
            timeout=job_settings().smtp_timeout_seconds,
        )
        client.login()
        return client

    def send(self, msg: EmailMessage) -> str:
        """Send one message; returns its Message-ID. Connection trouble is a TransientError."""
        for attempt in (1, 2):
            try:
                if self._client is None:
                    self._client = self._connect()
                self._client.smtp.send_message(msg)
                return msg["Message-ID"]
            except smtplib.SMTPRecipientsRefused as exc:
                raise PermanentError(f"The mail server refused the address: {exc.recipients}") from exc
            except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
                self.close()
                if attempt == 2:
                    raise TransientError(f"The mail server is unreachable: {exc}") from exc
            except smtplib.SMTPResponseException as exc:
                self.close()
                if 500 <= exc.smtp_code < 600:  # a permanent refusal (RFC 5321): sending again would not help
                    raise PermanentError(f"The mail server refused the message: {exc.smtp_code} "
                                         f"{_text(exc.smtp_error)}") from exc
                raise TransientError(f"The mail server did not accept the message: {exc.smtp_code} "
                                     f"{_text(exc.smtp_error)}") from exc
            except (smtplib.SMTPException, OSError) as exc:
                self.close()
                raise TransientError(f"The mail server did not accept the message: {exc}") from exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass
            self._client = None

    def __enter__(self) -> "Mailer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- SMS --------------------------------------------------------------------------------

# Tests (and a deployment behind a proxy) can give Twilio another HTTP client.
twilio_http_client = None


class Texter:
    def __init__(self):
        from core.config import get_settings

        self.settings = get_settings()
        self._client = None

    @property
    def enabled(self) -> bool:
        return self.settings.sms_enabled

    def send(self, *, to_phone: str, text: str) -> str:
        """Send one SMS; returns Twilio's message sid."""
        from twilio.base.exceptions import TwilioRestException
        from twilio.rest import Client

        s = self.settings
        if self._client is None:
            self._client = Client(s.twilio_account_sid, s.twilio_auth_token.get_secret_value(),
                                  http_client=twilio_http_client)
        try:
            message = self._client.messages.create(to=to_phone, from_=s.twilio_from, body=text[:1500])
        except TwilioRestException as exc:
            if exc.status >= 500 or exc.status == 429:
                raise TransientError(f"Twilio is unavailable ({exc.status}): {exc.msg}") from exc
            raise PermanentError(f"Twilio refused the SMS ({exc.status}): {exc.msg}") from exc
        except (ConnectionError, OSError) as exc:
            raise TransientError(f"Twilio is unreachable: {exc}") from exc
        return message.sid
