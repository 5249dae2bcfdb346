"""What the browser tests share: a fresh PostgreSQL database, the app started on a free port,
Debian's chromium driven by Playwright, and waiting for the app to settle."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import missing, new_postgres_database

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
QUIET_MS = 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fresh_database(suffix: str) -> str:
    """A new, migrated database named after the test database, for one app."""
    return new_postgres_database(os.environ.get("POOLDESK_TEST_PG_DB", "pooldesk_test") + suffix)


def create_user(env: dict, *, email: str, name: str, role: str, password: str | None,
                totp_secret: str | None = None) -> None:
    """A user made through the service before anyone can invite, as `pooldesk` would; with ``totp_secret``,
    already enrolled in two-step sign-in with that secret (as if they had scanned it)."""
    script = [
        "from core.db.session import get_database",
        "from core.services import users",
        "db = get_database()",
        "system = users.system_actor(db)",
        f"users.create_user(db, actor=system, email={email!r}, name={name!r}, role={role!r}, password={password!r})",
    ]
    if totp_secret is not None:
        script += [
            "from sqlalchemy import select",
            "from core.db.models import User, utcnow",
            "with db.transaction() as session:",
            f"    user = session.scalar(select(User).where(User.email == {email!r}))",
            f"    user.mfa_secret, user.mfa_enabled_at = {totp_secret!r}, utcnow()",
        ]
    subprocess.run([sys.executable, "-c", "\n".join(script)], env=env, cwd=ROOT, check=True)


class Authenticator:
    """The phone app: the current code, or the next step's when the current one was used (each is
    accepted once, one step either way)."""

    def __init__(self, secret: str):
        import pyotp

        self.totp = pyotp.TOTP(secret)
        self.last_step = -1

    def code(self) -> str:
        while True:
            current = int(time.time()) // self.totp.interval
            step = max(current, self.last_step + 1)
            if step <= current + 1:
                break
            time.sleep(1)
        self.last_step = step
        return self.totp.at(step * self.totp.interval)


def give_code(page, code: str, *, wait: bool = True) -> None:
    """The second step of signing in: the code from the app, or a recovery code."""
    page.get_by_role("textbox", name="Code", exact=True).fill(code)
    page.get_by_role("button", name="Verify").click()
    if wait:
        settle(page)


@contextmanager
def running_app(tmp_path_factory, database_suffix: str, *, users: list[dict], args: list[str] = (),
                port: int | None = None):
    """The app on ``port`` (a free one by default) against a fresh database holding ``users``;
    yields its base URL."""
    if not os.path.exists(CHROMIUM):
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    url = fresh_database(database_suffix)
    data_dir = tmp_path_factory.mktemp("e2e-data")
    port = port or free_port()
    env = dict(os.environ, POOLDESK_DATABASE_URL=url, POOLDESK_DATA_DIR=str(data_dir), POOLDESK_ENV="test",
               POOLDESK_SECRET_KEY="e2e-" + "x" * 40, POOLDESK_BCRYPT_ROUNDS="4",
               POOLDESK_BASE_URL=f"http://127.0.0.1:{port}", POOLDESK_APP_JOBS="on")
    for name in ("POOLDESK_REDIS_URL", "POOLDESK_SMTP_HOST"):
        env.pop(name, None)
    for user in users:
        create_user(env, **user)
    log = open(data_dir / "streamlit.log", "w")
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "streamlit"), "run", "app/main.py", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", *args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/_stcore/health", b"ok", lambda: (data_dir / "streamlit.log").read_text()[-2000:])
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def wait_until_up(url: str, body: bytes | None, log) -> None:
    for _ in range(120):
        try:
            answer = urllib.request.urlopen(url, timeout=1).read()
            if body is None or answer == body:
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"{url} did not come up: {log()}")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield chromium
        chromium.close()


def settle(page, timeout: float = 30_000) -> None:
    """Wait until the app is idle and stays idle for a moment.

    The cookie components answer once their frames have loaded, and each answer starts
    one more run; a click landing in such a run can be lost, so a step starts only once
    no run has been seen for QUIET_MS."""
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout)
    deadline = time.monotonic() + timeout / 1000
    idle = "[data-testid='stApp'][data-test-script-state='notRunning']"
    while True:
        page.wait_for_selector(idle, timeout=timeout)
        quiet = page.evaluate(
            """(quietMs) => new Promise((resolve) => {
                const app = document.querySelector("[data-testid='stApp']");
                const observer = new MutationObserver(() => {
                    if (app.getAttribute("data-test-script-state") !== "notRunning") {
                        observer.disconnect(); resolve(false);
                    }
                });
                observer.observe(app, {attributes: true, attributeFilter: ["data-test-script-state"]});
                setTimeout(() => { observer.disconnect(); resolve(true); }, quietMs);
            })""", QUIET_MS)
        if quiet and page.locator(idle).count() == 1:
            break
        if time.monotonic() > deadline:
            raise AssertionError("the app did not settle")
    page.wait_for_function("document.querySelectorAll('[data-stale=\"true\"]').length === 0", timeout=timeout)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
