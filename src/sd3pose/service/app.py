"""The FastAPI app factory: wires settings, the key store, the job queue and the routes together."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sd3pose import __version__
from sd3pose.images import InputLimits
from sd3pose.jobs.contract import GeneratorLike, JobInfo, JobNotRecordedError, JobQueue
from sd3pose.request import GenerationRequest
from sd3pose.results import GenerationResult
from sd3pose.service.access import AccessMiddleware
from sd3pose.service.auth import Principal
from sd3pose.service.credits import format_credits, from_micro, to_micro
from sd3pose.service.docs import install_docs
from sd3pose.service.embedded_queue import EmbeddedJobQueue
from sd3pose.service.errors import InsufficientCreditsError, install_error_handlers
from sd3pose.service.headers import SecurityHeadersMiddleware
from sd3pose.service.inputs import KeyFetchSlots
from sd3pose.service.keys import KeyStore
from sd3pose.service.local_only import LocalOnlyMiddleware
from sd3pose.service.metrics import Metrics
from sd3pose.service.ratelimit import RateLimiter
from sd3pose.service.schemas import ImagesResponse, PoseRequest
from sd3pose.service.store import Database
from sd3pose.settings import ServiceSettings

log = logging.getLogger(__name__)


PREVIEW_THREADS = 8
# Image URLs download in threads of their own (each cut off at --fetch-timeout), so slow hosts cannot
# take the shared pool that auth, body parsing and sync waits need.
FETCH_THREADS = 16


class Services:
    """Everything the routes share; one per app."""

    queue: JobQueue  # set by create_app: the embedded queue reports to this object's job_finished

    def __init__(
        self, settings: ServiceSettings, keys: KeyStore, limiter: RateLimiter, db: Database | None = None
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.limiter = limiter
        self.db = db  # the SQLite database of the embedded backend; None on a replica handed its backend
        # Pose previews wait for a worker (up to a minute with Redis) in threads of their own: a burst of
        # them must not take the shared thread pool that sync waits, auth and job lookups need.
        self.preview_limiter = anyio.CapacityLimiter(PREVIEW_THREADS)
        self.fetch_limiter = anyio.CapacityLimiter(FETCH_THREADS)
        self.key_fetch_slots = KeyFetchSlots()
        self.input_limits = InputLimits(
            allow_private_urls=settings.allow_private_urls, total_timeout=settings.fetch_timeout_s
        )
        self.max_disk_bytes = int(settings.max_disk_gb * 2**30)
        self.metrics = Metrics(lambda: self.queue.depth(), lambda: self.queue.storage_used(), self.max_disk_bytes)
        # Open (no keys) only if this server started so; once a key has been seen, auth stays on for good.
        self._auth_on = True
        self._said_no_keys = False

    def decide_auth(self) -> None:
        """Fix the auth mode at start: open only on an address the operator allowed (loopback by default)
        with no active key. Logs the mode either way."""
        allowed = self.settings.loopback_only or self.settings.insecure_no_auth
        self._auth_on = not allowed or self.keys.active_count() > 0
        if self._auth_on:
            log.info("auth on: every request needs an API key")
        else:
            # The loopback rules (sd3pose.service.local_only); on another address a proxy answers for them.
            limits = "JSON bodies and loopback Host names only" if self.settings.loopback_only else "--insecure-no-auth"
            log.warning(
                "auth off: no API keys exist, so this server answers anyone who reaches %s without a key (%s); "
                "the first key created (`sd3pose keys create`) turns auth on for as long as this server runs",
                self.settings.host,
                limits,
            )

    @property
    def auth_on_for_good(self) -> bool:
        """Auth is on and nothing can turn it off while this server runs."""
        return self._auth_on

    def open_access(self) -> bool:
        """True while the server runs open (see decide_auth). The first key created switches auth on, and
        nothing switches it off again, revoking every key included."""
        if not self._auth_on and self.keys.active_count() > 0:
            self._auth_on = True
            log.warning("an API key was created: auth is on for as long as this server runs")
        return not self._auth_on

    def note_refused_without_keys(self) -> None:
        """Log (once each time it happens) that auth stays on although no active key is left."""
        revoked_all = self.keys.active_count() == 0
        if revoked_all and not self._said_no_keys:
            log.warning(
                "auth stays on although no active API key is left (all revoked): every request gets 401 until "
                "a key is created (`sd3pose keys create`); only a restart with no keys serves without auth"
            )
        self._said_no_keys = revoked_all

    def price(self, samples: int) -> float:
        return from_micro(to_micro(self.settings.price_per_image) * samples)  # type: ignore[return-value]

    def check_can_pay(self, principal: Principal) -> None:
        """Refuse (406) a key that cannot pay for even one image, before its body is read or parsed."""
        key = principal.key
        if key is None or key.unlimited or self.price(1) <= 0:
            return
        balance = self.keys.balance(key.id) or 0.0
        if to_micro(balance) < to_micro(self.price(1)):
            raise self._short(balance, self.price(1), 1)

    def _short(self, balance: float, cost: float, samples: int) -> InsufficientCreditsError:
        return InsufficientCreditsError(
            f"not enough credits: this request costs {format_credits(cost)} ({samples} image(s) at "
            f"{format_credits(self.settings.price_per_image)}) and the key has {format_credits(balance)}; ask "
            "the operator to add credits (`sd3pose keys add-credits`) or request fewer samples"
        )

    def submit(
        self, request: GenerationRequest, principal: Principal, kind: str, image: bytes | None = None
    ) -> JobInfo:
        """Reserve the credits, then queue the job (credits come back if it is not delivered). `image`:
        the bytes request.image was resolved to (see sd3pose.service.inputs)."""
        key = principal.key
        cost = self.price(request.samples) if key is not None and not key.unlimited else 0.0
        if key is not None and not self.keys.reserve(key.id, cost):
            raise self._short(self.keys.balance(key.id) or 0.0, cost, request.samples)
        try:
            return self.queue.submit(request, kind=kind, key_id=key.id if key else None, reserved=cost, image=image)
        except JobNotRecordedError:  # nothing of the job exists: its reservation comes back here
            if key is not None:
                self.keys.refund(key.id, cost)
            raise

    def job_finished(self, info: JobInfo) -> None:
        # Charged only for delivered images: the job store itself gave a FAILED job's credits back, in
        # the step that ended it.
        self.metrics.jobs.labels(info.status.value).inc()

    def job_generated(self, result: GenerationResult) -> None:
        self.metrics.observe_generation(result.timings, len(result.images))


def _openapi(app: FastAPI, settings: ServiceSettings) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        # The routes parse the body themselves (to answer {"error": ...} with 400, not FastAPI's 422),
        # so the real request model is added here and referenced from their openapi_extra.
        request_schema = GenerationRequest.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schema.pop("$defs", {}))
        request_schema["properties"]["samples"]["maximum"] = settings.max_samples
        components["GenerationRequest"] = request_schema
        for model in (ImagesResponse, PoseRequest):
            model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(model_schema.pop("$defs", {}))
            components[model.__name__] = model_schema
        # Bad parameters are 400 {"error": ...} here, never FastAPI's 422.
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        app.openapi_schema = schema
        return schema

    return build


def create_app(
    settings: ServiceSettings | None = None,
    *,
    generator_factory: Callable[[str | None], GeneratorLike] | None = None,
    queue: JobQueue | None = None,
    keys: KeyStore | None = None,
    limiter: RateLimiter | None = None,
) -> FastAPI:
    """The service app.

    Give `generator_factory(device) -> Generator` for the embedded backend (jobs, keys and credits in
    SQLite under `settings.data_dir`, workers in this process), or a `queue` with the `keys` and
    `limiter` that share its state (a scaled-out replica: its job store settles credits itself, and
    nothing is opened under the data folder).
    """
    from sd3pose.service import routes_comfy, routes_generate, routes_pose, routes_system

    settings = settings or ServiceSettings()
    if queue is None and generator_factory is None:
        raise ValueError("create_app needs a generator_factory or a queue")
    db = Database(settings.db_path) if queue is None or keys is None else None
    services = Services(settings, keys or KeyStore(db), limiter or RateLimiter(), db)
    services.queue = queue or EmbeddedJobQueue(
        db,
        generator_factory,
        results_dir=settings.results_dir,
        inputs_dir=settings.inputs_dir,
        max_disk_bytes=services.max_disk_bytes,
        devices=settings.devices,
        max_queue=settings.max_queue,
        result_ttl_s=settings.result_ttl_s,
        cleanup_interval_s=settings.cleanup_interval_s,
        on_finished=services.job_finished,
        on_generated=services.job_generated,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services.queue.start()
        services.decide_auth()
        try:
            yield
        finally:
            services.queue.stop()
            if db is not None:
                db.close()

    app = FastAPI(
        title="sd3pose",
        version=__version__,
        description="Pose-guided image generation (SD3 Medium + InstantX pose ControlNet), with the API of "
        'the hosted SD3 Medium Pose ControlNet endpoint. Errors are JSON `{"error": "..."}`; '
        "authenticated responses carry `x-remaining-credits`.",
        lifespan=lifespan,
        docs_url=None,  # served from the installed Swagger UI package instead of a CDN (service.docs)
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    install_docs(app)
    # Outermost last: every answer, errors and the access log's included, passes the other two.
    app.add_middleware(LocalOnlyMiddleware, services=services)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(AccessMiddleware, services=services)
    app.include_router(routes_generate.router)
    app.include_router(routes_pose.router)
    app.include_router(routes_comfy.router)
    app.include_router(routes_system.router)
    app.openapi = _openapi(app, settings)  # type: ignore[method-assign]
    return app
