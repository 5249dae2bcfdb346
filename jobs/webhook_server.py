"""The small HTTP server that receives Stripe's webhooks (`pooldesk webhooks serve`).

Streamlit cannot receive POSTs, so Stripe's asynchronous confirmations
(``payment_intent.succeeded`` / ``payment_failed`` / ``canceled``) come here:
``POST /stripe/webhook`` checks the ``Stripe-Signature`` header against
POOLDESK_STRIPE_WEBHOOK_SECRET and settles or fails the contribution through
``jobs.gateways.stripe_gateway.handle_webhook``. It answers 200 once the event
is handled (or knowingly ignored), 400 for a bad signature or body (Stripe does
not retry those), and 500 when handling failed for a reason worth retrying (the
database was unreachable): Stripe then sends the event again, and handling it
twice settles once. ``GET /health`` answers 200 while the database is reachable.
Standard library only (``ThreadingHTTPServer``); put it behind the same TLS
proxy as the app.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("pooldesk.webhooks")

MAX_BODY = 1024 * 1024  # Stripe events are a few KB
STRIPE_PATH = "/stripe/webhook"


class _Handler(BaseHTTPRequestHandler):
    server_version = "PooldeskWebhooks/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        log.info("%s %s", self.address_string(), format % args)

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.split("?", 1)[0] != "/health":
            return self._reply(404, {"error": "Not found."})
        from sqlalchemy import text

        try:
            with self.server.database().read() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
            return self._reply(503, {"status": "unhealthy", "error": f"database: {type(exc).__name__}"})
        return self._reply(200, {"status": "ok"})

    def do_POST(self) -> None:  # noqa: N802
        import stripe

        from jobs.errors import PermanentError
        from jobs.gateways.stripe_gateway import handle_webhook

        if self.path.split("?", 1)[0] != STRIPE_PATH:
            return self._reply(404, {"error": "Not found."})
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            return self._reply(411, {"error": "A Content-Length header is required."})
        if length < 0 or length > MAX_BODY:
            return self._reply(413, {"error": "The body is too large."})
        body = self.rfile.read(length)
        signature = self.headers.get("Stripe-Signature")
        if not signature:
            return self._reply(400, {"error": "The Stripe-Signature header is missing."})
        try:
            outcome = handle_webhook(self.server.database(), body, signature)
        except stripe.SignatureVerificationError:
            log.warning("refused a Stripe webhook with a bad signature from %s", self.address_string())
            return self._reply(400, {"error": "The signature does not match."})
        except (ValueError, KeyError, TypeError) as exc:
            return self._reply(400, {"error": f"The event could not be read: {type(exc).__name__}."})
        except PermanentError as exc:  # e.g. no webhook secret configured: fix it and let Stripe retry
            log.error("Stripe webhook not handled: %s", exc)
            return self._reply(500, {"error": str(exc)})
        except Exception:  # noqa: BLE001 - Stripe retries a 5xx, and handling twice settles once
            log.exception("Stripe webhook failed")
            return self._reply(500, {"error": "The event could not be handled now; it will be retried."})
        log.info("Stripe webhook handled: %s", outcome)
        return self._reply(200, {"received": True, "outcome": outcome})

    def do_PUT(self) -> None:  # noqa: N802
        self._reply(405, {"error": "Use POST."})

    do_DELETE = do_PATCH = do_PUT


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], database=None):
        super().__init__(address, _Handler)
        self._database = database

    def database(self):
        from jobs.runner import database

        return self._database or database()


def make_server(host: str = "127.0.0.1", port: int = 8502, database=None) -> WebhookServer:
    return WebhookServer((host, port), database)


def serve(host: str = "127.0.0.1", port: int = 8502) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    from core.config import get_settings

    if get_settings().stripe_webhook_secret is None:
        raise SystemExit("POOLDESK_STRIPE_WEBHOOK_SECRET is not set: Stripe's events could not be verified.")
    server = make_server(host, port)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    log.info("receiving Stripe webhooks on http://%s:%s%s", host, server.server_port, STRIPE_PATH)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
