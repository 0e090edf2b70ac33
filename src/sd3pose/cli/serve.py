"""`sd3pose serve`, `sd3pose demo` and `sd3pose keys ...`: run the HTTP service and manage its API keys."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import typer

from sd3pose.cli.options import fail, settings_options
from sd3pose.errors import Sd3PoseError
from sd3pose.settings import ENV_PREFIX, MAX_RATE_LIMIT, EngineSettings, ServiceSettings

if TYPE_CHECKING:
    from sd3pose.service.keys import KeyStore

log = logging.getLogger("sd3pose.serve")

keys_app = typer.Typer(help="Manage API keys (stored as hashes in <data-dir>/sd3pose.db).", no_args_is_help=True)
# Where the keys live: <data-dir>/sd3pose.db, or Redis with --broker.
key_store_options = settings_options(ServiceSettings, into="where", only=("data_dir", "broker"))
# serve's own: the model-independent service options (devices come from the repeatable --device).
service_options = settings_options(
    ServiceSettings, into="service", exclude=("devices", "max_body_bytes", "cleanup_interval_s", "broker_queue")
)


def _key_store(where: ServiceSettings) -> KeyStore:
    if where.broker:
        from sd3pose.distributed.service import key_store

        return key_store(where.broker)  # type: ignore[return-value]  # the same interface, on Redis
    from sd3pose.service.keys import KeyStore
    from sd3pose.service.store import Database

    return KeyStore(Database(where.db_path))


def _credits_text(credits: float | None) -> str:
    from sd3pose.service.credits import format_credits

    return format_credits(credits)


@keys_app.command("create")
@key_store_options
def keys_create(
    where: ServiceSettings,
    name: str = typer.Option(..., "--name", help="Who or what the key is for (shown in logs)."),
    credits: float = typer.Option(None, "--credits", help="Starting credits (one image costs --price of serve)."),
    unlimited: bool = typer.Option(False, "--unlimited", help="No credit limit."),
    scope: list[str] = typer.Option(None, "--scope", help="Allowed: generate, async, pose (repeat; default all)."),
    rate_limit: int = typer.Option(
        None, "--rate-limit", min=0, max=MAX_RATE_LIMIT, help="Requests/minute (default: the server's)."
    ),
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    if (credits is None) == (not unlimited):
        fail("give exactly one of --credits C or --unlimited")
    try:
        key, secret = _key_store(where).create(
            name, credits=None if unlimited else credits, scopes=scope, rate_limit=rate_limit
        )
    except Sd3PoseError as exc:
        fail(exc.message)
    typer.echo(secret)
    typer.secho(
        f"created key {key.id} ({key.name}, credits {_credits_text(key.credits)}, scopes "
        f"{','.join(key.scopes)}); store it now: it cannot be shown again",
        err=True,
    )


@keys_app.command("list")
@key_store_options
def keys_list(where: ServiceSettings) -> None:
    """List keys (never the secrets)."""
    try:
        keys = _key_store(where).list()
    except Sd3PoseError as exc:
        fail(exc.message)
    if not keys:
        typer.echo("no keys; create one with `sd3pose keys create --name NAME --credits 100`")
        return
    typer.echo(f"{'id':<14}{'name':<20}{'credits':>12}  {'scopes':<20}{'rate/min':>9}  {'created':<17}status")
    for key in keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(key.created_at))
        status = "active" if key.active else "revoked"
        rate = "default" if key.rate_limit is None else str(key.rate_limit)
        typer.echo(
            f"{key.id:<14}{key.name[:19]:<20}{_credits_text(key.credits):>12}  {','.join(key.scopes):<20}"
            f"{rate:>9}  {created:<17}{status}"
        )


@keys_app.command("revoke")
@key_store_options
def keys_revoke(where: ServiceSettings, key: str = typer.Argument(..., help="Key id or name.")) -> None:
    """Revoke a key: it stops working at once."""
    try:
        store = _key_store(where)
        found = store.find(key)
        store.revoke(found.id)
    except Sd3PoseError as exc:
        fail(exc.message)
    typer.echo(f"revoked key {found.id} ({found.name})")


# ignore_unknown_options: so a negative amount ("-100") is read as the amount, not as an option
@keys_app.command("add-credits", context_settings={"ignore_unknown_options": True})
@key_store_options
def keys_add_credits(
    where: ServiceSettings,
    key: str = typer.Argument(..., help="Key id or name."),
    amount: float = typer.Argument(..., help="Credits to add (negative to remove)."),
) -> None:
    """Add credits to a key."""
    try:
        store = _key_store(where)
        updated = store.add_credits(store.find(key).id, amount)
    except Sd3PoseError as exc:
        fail(exc.message)
    typer.echo(f"key {updated.id} ({updated.name}) now has {_credits_text(updated.credits)} credits")


def check_bind_safety(settings: ServiceSettings, active_keys: int) -> None:
    """Refuse to serve an open API on a reachable address (raises Sd3PoseError)."""
    if not settings.loopback_only and active_keys == 0 and not settings.insecure_no_auth:
        raise Sd3PoseError(
            f"refusing to listen on {settings.host} without API keys: anyone who can reach it could use your "
            "GPUs; create a key (`sd3pose keys create --name NAME --credits 100`), bind 127.0.0.1, or pass "
            "--insecure-no-auth if an authenticating proxy sits in front"
        )


@settings_options(EngineSettings, into="engine", exclude=("device", "data_dir"))
@service_options
def serve_command(
    service: ServiceSettings,
    engine: EngineSettings,
    device: list[str] = typer.Option(
        None,
        "--device",
        envvar=ENV_PREFIX + "DEVICE",
        help="One in-process worker per device, each with its own copy of the models: --device cuda:0 "
        "--device cuda:1 (in the variable: separated by spaces). Default: one, on the best available.",
    ),
) -> None:
    """Run the HTTP API (and the web playground at /)."""
    service = service.model_copy(update={"devices": list(device) if device else [None]})
    run_server(service, engine.model_copy(update={"data_dir": service.data_dir}))


@settings_options(ServiceSettings, into="service", only=("host", "port", "data_dir"))
def demo_command(service: ServiceSettings) -> None:
    """Serve the built-in demo model (random weights, no download): `make serve` runs this."""
    run_server(service, EngineSettings(model=None, controlnet=None, data_dir=service.data_dir))


def run_server(service: ServiceSettings, engine: EngineSettings) -> None:
    """Serve until interrupted; the models load in the background (GET /ready says when).

    With --broker, the API is a stateless replica: keys, credits, rate limits and jobs live in Redis,
    and `sd3pose worker` processes run the jobs; nothing is opened under --data-dir.
    """
    import uvicorn

    from sd3pose.service.app import create_app

    try:
        if service.broker:
            from sd3pose.distributed.config import queue_name
            from sd3pose.distributed.service import distributed_backend

            service.broker_queue = queue_name(engine.model, engine.controlnet, engine.use_t5)
            keys, limiter, queue = distributed_backend(service)
            check_bind_safety(service, keys.active_count())
            app = create_app(service, queue=queue, keys=keys, limiter=limiter)
        else:
            from sd3pose.cli.loading import load_generator

            check_bind_safety(service, _key_store(service).active_count())

            def factory(device: str | None):
                return load_generator(engine.model_copy(update={"device": device}), warm_up=True)

            app = create_app(service, generator_factory=factory)
    except Sd3PoseError as exc:
        fail(exc.message)
    log.info("serving on http://%s:%d (docs at /docs)", service.host, service.port)
    uvicorn.run(app, host=service.host, port=service.port, access_log=False, log_config=None)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    app.command("demo")(demo_command)
    app.add_typer(keys_app, name="keys")
