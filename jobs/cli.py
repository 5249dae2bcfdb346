"""`pooldesk worker`, `pooldesk relay` and `pooldesk webhooks serve` (registered on the main group in app/cli.py).

Also runnable on their own: `python -m jobs.cli worker|relay|webhooks serve`.
"""
from __future__ import annotations

import logging

import click

from jobs.settings import QUEUES


@click.group("worker", invoke_without_command=True)
@click.option("--queues", default=",".join(QUEUES), show_default=True, help="Comma-separated queues to work on.")
@click.option("--burst", is_flag=True, help="Stop when there is nothing left to do.")
@click.option("--name", default=None, help="Worker name, shown on the Operations page (default: host.pid).")
@click.pass_context
def worker(ctx, queues: str, burst: bool, name: str | None) -> None:
    """Run background jobs: the outbox relay and an RQ worker (or the embedded loop without Redis).

    A Redis outage pauses the worker (it reconnects with backoff); it never ends it."""
    if ctx.invoked_subcommand is not None:
        return
    from jobs.worker import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    raise SystemExit(run_worker([q.strip() for q in queues.split(",") if q.strip()], burst=burst, name=name))


@worker.command("status")
@click.option("--name", default=None, help="Check this worker only (default: any worker).")
def worker_status(name: str | None) -> None:
    """Exit 0 if the worker (or any) has a fresh heartbeat, 1 if none has, 2 if Redis cannot be asked."""
    from jobs.worker import worker_status as check

    code, beats = check(name)
    if code == 2:
        click.echo("Redis is not configured or not reachable (POOLDESK_REDIS_URL): worker liveness unknown.",
                   err=True)
        raise SystemExit(2)
    for beat in beats:
        click.echo(f"{beat['name']}: {beat['state']}, pid {beat['pid']} on {beat['host']}, queues "
                   f"{','.join(beat['queues'])}, heartbeat {beat['at']}, reconnected {beat['restarts']} time(s)")
    if code != 0:
        click.echo(f"No live worker{' named ' + name if name else ''}: no heartbeat in the last "
                   f"{3 * _heartbeat_seconds():g} s.", err=True)
    raise SystemExit(code)


def _heartbeat_seconds() -> float:
    from jobs.settings import job_settings

    return job_settings().worker_heartbeat_seconds


@click.command("relay")
@click.option("--once", is_flag=True, help="Dispatch what is waiting now, then stop.")
def relay(once: bool) -> None:
    """Move outbox rows to the job queues (and re-dispatch lost jobs) without running jobs."""
    from jobs.backend import get_backend
    from jobs.outbox import relay_once, run_relay, sweep_once
    from jobs.runner import database

    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(levelname)s %(message)s")
    db, backend = database(), get_backend()
    if backend.name == "embedded":
        raise click.ClickException("POOLDESK_REDIS_URL is not set: the embedded dispatcher relays inside the app "
                                   "(or run `pooldesk worker`).")
    if once:
        moved = relay_once(db, backend)
        swept = sweep_once(db, backend)
        click.echo(f"dispatched {moved} outbox row(s), re-dispatched {swept} lost job(s)")
        return
    try:
        run_relay(db, backend)
    except KeyboardInterrupt:
        pass


@click.group("webhooks")
def webhooks() -> None:
    """Receive webhooks from the payment gateway (Stripe)."""


@webhooks.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8502, show_default=True, type=int, help="Port to listen on.")
def serve(host: str, port: int) -> None:
    """Accept POST /stripe/webhook (signature checked with POOLDESK_STRIPE_WEBHOOK_SECRET) and GET /health."""
    from jobs.webhook_server import serve as run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s webhooks %(levelname)s %(message)s")
    try:
        run(host, port)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            raise click.ClickException(exc.code) from None
        raise


def _one_line_group():
    from app.cli_errors import OneLineGroup

    return OneLineGroup


@click.group(cls=_one_line_group())
@click.option("--debug", is_flag=True, envvar="POOLDESK_DEBUG", help="Show the traceback of a failure.")
def main(debug: bool) -> None:
    """Pooldesk background commands."""


main.add_command(worker)
main.add_command(relay)
main.add_command(webhooks)


if __name__ == "__main__":
    main(prog_name="python -m jobs.cli")
