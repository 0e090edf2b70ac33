"""Health, readiness, Prometheus metrics, and the web playground's static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from sd3pose.service.schemas import HealthResponse

router = APIRouter()

STATIC_DIR = Path(__file__).parent / "static"

PLACEHOLDER = """<!doctype html><html><head><meta charset="utf-8"><title>sd3pose</title></head>
<body><h1>sd3pose</h1><p>The server is running. API documentation: <a href="/docs">/docs</a>.</p></body></html>
"""


@router.get("/health", response_model=HealthResponse, summary="The process is up", tags=["system"])
async def health() -> HealthResponse:
    return HealthResponse(status="ok")


@router.get(
    "/ready",
    response_model=HealthResponse,
    summary="Models are loaded and jobs can run",
    tags=["system"],
    responses={503: {"model": HealthResponse, "description": "Still loading, or loading failed."}},
)
def ready(request: Request) -> JSONResponse:  # def: readiness may ask Redis; the thread pool runs it
    is_ready, detail = request.app.state.services.queue.readiness()
    body = HealthResponse(status="ready" if is_ready else "not ready", detail=detail)
    return JSONResponse(body.model_dump(), status_code=200 if is_ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    tags=["system"],
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:  # def: the queue depth may come from Redis
    return Response(request.app.state.services.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/", include_in_schema=False)
async def index() -> Response:
    page = STATIC_DIR / "index.html"
    if page.is_file():
        return FileResponse(page)
    return HTMLResponse(PLACEHOLDER)


router.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
