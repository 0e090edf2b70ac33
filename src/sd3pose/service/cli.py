"""`sd3pose serve` and `sd3pose keys ...`: run the HTTP service and manage its API keys."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer

from sd3pose.errors import Sd3PoseError
from sd3pose.service.settings import DEFAULT_DATA_DIR, ServiceSettings

log = logging.getLogger("sd3pose.serve")

DATA_DIR_OPTION = typer.Option(
    DEFAULT_DATA_DIR,
    "--data-dir",
    envvar="SD3POSE_DATA_DIR",
    help="Where keys, jobs, results (and the demo model) live.",
)

# Requests/minute: beyond this, no limit in practice (and SQLite integers stay in range).
MAX_RATE_LIMIT = 10**6

BROKER_OPTION = typer.Option(
    None,
    "--broker",
    envvar="SD3POSE_BROKER",
    help="Redis URL of a scaled-out deployment: keys live there instead of <data-dir>/sd3pose.db.",
)

keys_app = typer.Typer(help="Manage API keys (stored as hashes in <data-dir>/sd3pose.db).", no_args_is_help=True)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _key_store(data_dir: Path, broker: str | None = None):
    if broker:
        from sd3pose.distributed.service import key_store

        return key_store(broker)
    from sd3pose.service.keys import KeyStore
    from sd3pose.store import Database

    return KeyStore(Database(Path(data_dir) / "sd3pose.db"))


def _credits_text(credits: float | None) -> str:
    from sd3pose.service.access import format_credits

    return format_credits(credits)


@keys_app.command("create")
def keys_create(
    name: str = typer.Option(..., "--name", help="Who or what the key is for (shown in logs)."),
    credits: float = typer.Option(None, "--credits", help="Starting credits (one image costs --price of serve)."),
    unlimited: bool = typer.Option(False, "--unlimited", help="No credit limit."),
    scope: list[str] = typer.Option(None, "--scope", help="Allowed: generate, async, pose (repeat; default all)."),
    rate_limit: int = typer.Option(
        None, "--rate-limit", min=0, max=MAX_RATE_LIMIT, help="Requests/minute (default: the server's)."
    ),
    data_dir: Path = DATA_DIR_OPTION,
    broker: str = BROKER_OPTION,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    if (credits is None) == (not unlimited):
        _fail("give exactly one of --credits C or --unlimited")
    try:
        key, secret = _key_store(data_dir, broker).create(
            name, credits=None if unlimited else credits, scopes=scope, rate_limit=rate_limit
        )
    except Sd3PoseError as exc:
        _fail(exc.message)
    typer.echo(secret)
    typer.secho(
        f"created key {key.id} ({key.name}, credits {_credits_text(key.credits)}, scopes "
        f"{','.join(key.scopes)}); store it now: it cannot be shown again",
        err=True,
    )


@keys_app.command("list")
def keys_list(data_dir: Path = DATA_DIR_OPTION, broker: str = BROKER_OPTION) -> None:
    """List keys (never the secrets)."""
    try:
        keys = _key_store(data_dir, broker).list()
    except Sd3PoseError as exc:
        _fail(exc.message)
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
def keys_revoke(
    key: str = typer.Argument(..., help="Key id or name."),
    data_dir: Path = DATA_DIR_OPTION,
    broker: str = BROKER_OPTION,
) -> None:
    """Revoke a key: it stops working at once."""
    try:
        store = _key_store(data_dir, broker)
        found = store.find(key)
        store.revoke(found.id)
    except Sd3PoseError as exc:
        _fail(exc.message)
    typer.echo(f"revoked key {found.id} ({found.name})")


# ignore_unknown_options: so a negative amount ("-100") is read as the amount, not as an option
@keys_app.command("add-credits", context_settings={"ignore_unknown_options": True})
def keys_add_credits(
    key: str = typer.Argument(..., help="Key id or name."),
    amount: float = typer.Argument(..., help="Credits to add (negative to remove)."),
    data_dir: Path = DATA_DIR_OPTION,
    broker: str = BROKER_OPTION,
) -> None:
    """Add credits to a key."""
    try:
        store = _key_store(data_dir, broker)
        updated = store.add_credits(store.find(key).id, amount)
    except Sd3PoseError as exc:
        _fail(exc.message)
    typer.echo(f"key {updated.id} ({updated.name}) now has {_credits_text(updated.credits)} credits")


def check_bind_safety(settings: ServiceSettings, active_keys: int) -> None:
    """Refuse to serve an open API on a reachable address (raises Sd3PoseError)."""
    if not settings.loopback_only and active_keys == 0 and not settings.insecure_no_auth:
        raise Sd3PoseError(
            f"refusing to listen on {settings.host} without API keys: anyone who can reach it could use your "
            "GPUs; create a key (`sd3pose keys create --name NAME --credits 100`), bind 127.0.0.1, or pass "
            "--insecure-no-auth if an authenticating proxy sits in front"
        )


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (another than loopback needs keys)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    model: str = typer.Option(None, "--model", help="Base model folder or hub id (default: the demo model)."),
    controlnet: str = typer.Option(None, "--controlnet", help="ControlNet folder or hub id."),
    device: list[str] = typer.Option(None, "--device", help="Device per worker: cuda:0 --device cuda:1 ..."),
    dtype: str = typer.Option(None, "--dtype", help="bf16, fp16 or fp32 (default: by device)."),
    no_t5: bool = typer.Option(False, "--no-t5", help="Skip the T5 encoder (less memory)."),
    compile_models: bool = typer.Option(
        False,
        "--compile",
        envvar="SD3POSE_COMPILE",
        help="torch.compile the models at start-up (slower start, faster steps).",
    ),
    offload: bool = typer.Option(
        False, "--offload", help="Keep models in main memory, each on the GPU only while it runs (GPUs < 16 GB)."
    ),
    price: float = typer.Option(1.0, "--price", min=0.0, help="Credits charged per delivered image."),
    rate_limit: int = typer.Option(
        60, "--rate-limit", min=0, max=MAX_RATE_LIMIT, help="Requests/minute per key (0 = none)."
    ),
    max_queue: int = typer.Option(32, "--max-queue", min=1, help="Waiting jobs before 429."),
    sync_timeout: float = typer.Option(
        300.0, "--sync-timeout", min=0.1, help="Seconds a sync request waits before 504."
    ),
    result_ttl: float = typer.Option(3600.0, "--result-ttl", min=1.0, help="Seconds async results are kept."),
    max_samples: int = typer.Option(4, "--max-samples", min=1, max=64, help="Most images per request."),
    allow_private_urls: bool = typer.Option(
        False, "--allow-private-urls", help="Let image URLs point at private/loopback hosts (trusted LANs only)."
    ),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Serve without keys on a non-loopback address."
    ),
    data_dir: Path = DATA_DIR_OPTION,
    broker: str = typer.Option(
        None,
        "--broker",
        envvar="SD3POSE_BROKER",
        help="Redis URL: a stateless API whose jobs run on `sd3pose worker` processes.",
    ),
) -> None:
    """Run the HTTP API (and the web playground at /)."""
    settings = ServiceSettings(
        host=host,
        port=port,
        data_dir=data_dir,
        price_per_image=price,
        rate_limit_per_minute=rate_limit,
        max_queue=max_queue,
        sync_timeout_s=sync_timeout,
        result_ttl_s=result_ttl,
        max_samples=max_samples,
        insecure_no_auth=insecure_no_auth,
        devices=list(device) if device else [None],
    )
    if broker:
        from sd3pose.distributed.config import queue_name

        settings.broker_url, settings.broker_queue = broker, queue_name(model, controlnet, not no_t5)
    try:
        check_bind_safety(settings, _key_store(data_dir, broker).active_count())
    except Sd3PoseError as exc:
        _fail(exc.message)
    run_server(
        settings,
        model=model,
        controlnet=controlnet,
        dtype=dtype,
        use_t5=not no_t5,
        allow_private_urls=allow_private_urls,
        compile_models=compile_models,
        offload=offload,
    )


def run_server(
    settings: ServiceSettings,
    *,
    model: str | None = None,
    controlnet: str | None = None,
    dtype: str | None = None,
    use_t5: bool = True,
    allow_private_urls: bool = False,
    compile_models: bool = False,
    offload: bool = False,
) -> None:
    """Serve until interrupted; the models load in the background (GET /ready says when)."""
    import uvicorn

    from sd3pose.service.app import create_app

    def factory(device: str | None):
        from sd3pose.images import InputLimits
        from sd3pose.pipeline import EngineSettings, Generator

        return Generator.create(
            EngineSettings(
                model=model,
                controlnet=controlnet,
                device=device,
                dtype=dtype,
                use_t5=use_t5,
                compile=compile_models,
                offload=offload,
                data_dir=Path(settings.data_dir),
                input_limits=InputLimits(allow_private_urls=allow_private_urls),
            ),
            warm_up=True,
        )

    app = create_app(settings, generator_factory=factory)
    log.info("serving on http://%s:%d (docs at /docs)", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, access_log=False, log_config=None)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    app.command("demo")(demo_command)
    app.add_typer(keys_app, name="keys")


def demo_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    data_dir: Path = DATA_DIR_OPTION,
) -> None:
    """Serve the built-in demo model (random weights, no download): `make serve` runs this."""
    serve_command(
        host=host,
        port=port,
        model=None,
        controlnet=None,
        device=None,
        dtype=None,
        no_t5=False,
        compile_models=False,
        offload=False,
        price=1.0,
        rate_limit=60,
        max_queue=32,
        sync_timeout=300.0,
        result_ttl=3600.0,
        max_samples=4,
        allow_private_urls=False,
        insecure_no_auth=False,
        data_dir=data_dir,
        broker=None,
    )
