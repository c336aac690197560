"""The HTTP API, as a plain FastAPI app built from a catalog and a sampler backend.

`create_app` needs no Ray: tests drive it with TestClient, `npdraw serve --no-ray` runs it under uvicorn,
and every Serve replica returns it from `__serve_build_asgi_app__`. Routes:

    POST /v1/samples              sample images (formats png, png_grid, npz, json)
    POST /v1/decode               given latents (per step: whether, exemplar, cell) → canvas and image
    POST /v1/encode               an image (any size, grey or colour) → its most likely latents and canvas
    GET  /v1/models               served models: dataset, shapes, bank size, training metrics
    GET  /v1/health               200 when the sampler can sample, else 503
    GET  /v1/bank/{model}.png     a model's part bank
    GET  /metrics                 Prometheus text (only when given a prometheus registry: --no-ray)
    GET  /                        the studio: sample, inspect and edit images part by part (serving/studio/)

Client mistakes are 4xx with a message naming the field: 422 invalid input, 404 unknown model, 429 (with
Retry-After) when the sampler is overloaded. A 500 means a bug in npdraw.
"""

# No `from __future__ import annotations` here: FastAPI reads the route's body type from its annotation at
# run time, and the request model is a local of create_app (its cap is a setting).
import asyncio
import base64
import logging
import math
import secrets
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from npdraw_serving.backend import Overloaded, SampleJob, SamplerBackend
from npdraw_serving.catalog import ModelCatalog, ModelRequired, UnknownModel
from npdraw_serving.encoding import MEDIA_TYPES, encode
from npdraw_serving.images import png_bytes
from npdraw_serving.metrics import Metrics
from npdraw_serving.options import ServeOptions
from npdraw_serving.schemas import MAX_SEED, DecodeRequest, EncodeRequest, sample_request_model
from npdraw_serving.studio import STATIC_DIR, InvalidInput, body, decode_job, encode_job

logger = logging.getLogger(__name__)


def create_app(
    catalog: ModelCatalog,
    backend: SamplerBackend,
    options: ServeOptions,
    metrics: Metrics | None = None,
    *,
    prometheus_registry=None,
) -> FastAPI:
    app = FastAPI(title="npdraw sampling service", version="1")
    SampleRequest = sample_request_model(options.max_samples)
    _add_error_handlers(app)
    if metrics is not None:
        app.add_middleware(_RequestMetrics, metrics=metrics)
    if prometheus_registry is not None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_text() -> Response:  # a route, not a mount: a mount answers /metrics with a redirect
            return Response(generate_latest(prometheus_registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/samples")
    async def samples(request: SampleRequest) -> Response:  # type: ignore[valid-type]
        entry = catalog.resolve(request.model)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED)
        job = SampleJob(entry.name, seed, request.num_samples, request.temperature, request.top_k)
        result = await backend.sample(job)
        arguments = (request.format, job, result, entry, request.return_latents)
        # Encoding many images goes off the event loop, which serves other requests; one small image is
        # cheaper to encode here than to hand to a thread.
        body = encode(*arguments) if job.num_samples <= 2 else await asyncio.to_thread(encode, *arguments)
        if metrics is not None:
            metrics.count_images(entry.name, request.format, job.num_samples)
        headers = {
            "X-Npdraw-Model": entry.name,
            "X-Npdraw-Seed": str(seed),
            "X-Npdraw-Num-Samples": str(job.num_samples),
            "X-Npdraw-Batch-Images": str(result.batch_images),
        }
        if request.format == "npz":
            headers["Content-Disposition"] = f'attachment; filename="{entry.name}-{seed}.npz"'
        return Response(body, media_type=MEDIA_TYPES[request.format], headers=headers)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"models": [entry.describe() for entry in catalog.entries.values()]}

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        try:
            details = await backend.health()
        except Overloaded:
            raise
        except Exception as error:  # the sampler cannot sample: that is the answer, not a crash
            logger.warning("health check failed: %s", error)
            return JSONResponse({"status": "unhealthy", "detail": str(error)}, status_code=503)
        return JSONResponse({"status": "ok", "models": catalog.names, **details})

    @app.get("/v1/bank/{model}.png")
    async def bank(model: str) -> Response:
        return Response(catalog.resolve(model).bank_png(), media_type="image/png")

    @app.post("/v1/decode")
    async def decode(request: DecodeRequest) -> JSONResponse:
        entry = catalog.resolve(request.model)
        result = await backend.decode(decode_job(request, entry))
        return JSONResponse(await asyncio.to_thread(body, entry, result))

    @app.post("/v1/encode")
    async def encode_image(request: EncodeRequest) -> JSONResponse:
        entry = catalog.resolve(request.model)
        job = await asyncio.to_thread(encode_job, request, entry)  # image decoding and resizing: off the loop
        result = await backend.encode(job)
        input_png = base64.b64encode(png_bytes(job.images[0])).decode("ascii")
        return JSONResponse(await asyncio.to_thread(body, entry, result, input_png=input_png))

    @app.get("/", include_in_schema=False)
    async def studio() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/studio", StaticFiles(directory=STATIC_DIR), name="studio")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        # Our own body: FastAPI's default echoes the input, and a NaN input cannot be written as JSON.
        detail = [
            {"field": _field(e.get("loc", ())), "message": e.get("msg", ""), "type": e.get("type", "")}
            for e in error.errors()
        ]
        message = "; ".join(f"{d['field']}: {d['message']}" for d in detail)
        return JSONResponse({"detail": detail, "message": message}, status_code=422)

    @app.exception_handler(InvalidInput)
    async def invalid_input(_: Request, error: InvalidInput) -> JSONResponse:
        detail = [{"field": error.field, "message": error.message, "type": "value_error"}]
        return JSONResponse({"detail": detail, "message": str(error)}, status_code=422)

    @app.exception_handler(UnknownModel)
    async def unknown_model(_: Request, error: UnknownModel) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=404)

    @app.exception_handler(ModelRequired)
    async def model_required(_: Request, error: ModelRequired) -> JSONResponse:
        return JSONResponse({"detail": [{"field": "model", "message": str(error)}], "message": str(error)}, 422)

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        headers = {} if error.retry_after_s is None else {"Retry-After": str(math.ceil(error.retry_after_s))}
        return JSONResponse({"detail": f"overloaded, retry later: {error}"}, status_code=429, headers=headers)


def _field(loc: tuple | list) -> str:
    """('body', 'num_samples') → 'num_samples'; ('body', 'latents', 'cell', 3) → 'latents.cell.3'; the
    whole body (or an item of a body that is a list) → 'body'."""
    if len(loc) < 2 or loc[0] != "body" or isinstance(loc[1], int):
        return "body"
    return ".".join(str(p) for p in loc[1:])


class _RequestMetrics:
    """Counts requests by route and status and observes their latency. A plain ASGI middleware: Starlette's
    `@app.middleware("http")` costs an extra task and stream per request, measurable at hundreds a second."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500

        async def send_noting_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            # The route template (/v1/bank/{model}.png), never the raw path: bounded label values.
            name = getattr(scope.get("route"), "path", None)
            if not scope["path"].startswith("/metrics"):
                self.metrics.observe_request(name or "unmatched", status, time.perf_counter() - start)
