"""The FastAPI application, and the start-up and shutdown of the ``serve`` and ``worker`` processes."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager

import numpy as np
import swagger_ui_bundle
import uvicorn
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, OperationalError

from labelloop import __version__, db, engine, logs, memory
from labelloop.config import Settings, configure, get_settings
from labelloop.console.pages import router as console_pages
from labelloop.detection.pages import router as detection_pages
from labelloop.detection.views import router as detection_routes
from labelloop.loop import actions, routing
from labelloop.modeling import endpoint
from labelloop.modeling.images import ImageRejected
from labelloop.modeling.pages import router as modeling_pages
from labelloop.modeling.serving import NoModelServing
from labelloop.modeling.versions import ModelError, VersionNotFound
from labelloop.modeling.views import DetectFastPath
from labelloop.modeling.views import router as modeling_routes
from labelloop.notifications.views import router as notification_routes
from labelloop.parameters import service as parameters
from labelloop.parameters.pages import router as parameter_pages
from labelloop.parameters.views import router as parameter_routes
from labelloop.review import service as review
from labelloop.review.pages import router as review_pages
from labelloop.review.views import router as review_routes
from labelloop.runs.pages import router as run_pages
from labelloop.runs.service import RunNotFound
from labelloop.runs.views import router as run_routes
from labelloop.runs.views import schedules_router
from labelloop.sampling.views import router as sampling_routes
from labelloop.storage import service as storage
from labelloop.storage.pages import router as storage_pages
from labelloop.storage.views import MAX_NOTIFICATION_BYTES, PutFastPath
from labelloop.storage.views import router as storage_routes
from labelloop.storage.watcher import DropFolderWatcher
from labelloop.web.pages import (
    PASSWORD_PAGE,
    ROLE_HOME,
    SECURITY_HEADERS,
    SESSION_COOKIE,
    WEB_DIR,
    MaybeVisitor,
    install_error_pages,
)
from labelloop.workforce import service as workforce
from labelloop.workforce.pages import router as workforce_pages
from labelloop.workforce.views import router as workforce_routes

log = logging.getLogger(__name__)
API_ROUTERS = (workforce_routes, parameter_routes, storage_routes, run_routes, notification_routes, modeling_routes,
               schedules_router, detection_routes, review_routes, sampling_routes)
PAGE_ROUTERS = (workforce_pages, review_pages, console_pages, storage_pages, parameter_pages, modeling_pages,
                run_pages, detection_pages)


def start(settings: Settings, role: str = "serve") -> str | None:
    """Open the database, create what a first start needs, launch the engine (as a ``role`` process: serve or
    worker) and apply the schedules.

    Returns the admin's temporary password when this start created the admin user.
    """
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    db.check_connection_budgets(settings.app_database_url, settings.engine_database_url, settings.database_pool_size)
    db.init(settings.app_database_url)
    storage.ensure_bucket()
    with db.session() as session:
        created = parameters.ensure_defaults(session=session)
        admin_password = workforce.ensure_admin(settings.admin_password, session=session)
        review.template(session=session)  # created once here, not raced for by the first detections
    if created:
        log.info("parameters created with their defaults", extra={"count": created})
    engine.start(settings, role)  # every workflow is registered: labelloop.loop.routing is imported above
    for applied in routing.apply_schedules_now():
        log.info("schedule in force", extra=applied)
    actions.apply_recorded_answers()
    log.info("schedule in force", extra=routing.schedule_answer_sweep(settings.answer_sweep_minutes))
    log.info("schedule in force", extra=routing.schedule_run_pruning(settings.run_retention_days))
    routing.retry_stranded_detections()
    memory.settle_heap(after="start-up")
    return admin_password


def stop() -> None:
    """Queue the batches of uploads still forming, stop the engine and the inference units, close the database."""
    routing.flush_uploads()
    engine.stop()
    endpoint.close_serving()
    db.close()


def start_process(settings: Settings, role: str) -> tuple[Settings, str | None]:
    """Give this process its executor id, then start it while no other process sharing the database starts.

    Returns the settings in force and the admin's temporary password when this start created the admin.
    """
    memory.limit_arenas(settings.malloc_arenas)
    if settings.executor_id is None:
        settings = configure(**{name: getattr(settings, name) for name in settings.model_fields_set},
                             executor_id=engine.new_executor_id(role))
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    with db.startup_lock(settings.app_database_url, settings.resolved_home / ".startup.lock"):
        return settings, start(settings, role)


def serve(settings: Settings) -> None:
    """Run web pages, API and workers in this process until it is stopped (``labelloop serve``)."""
    logs.setup(settings.log_level, settings.log_format)
    settings, admin_password = start_process(settings, "serve")
    watcher = None
    if settings.watch_folder is not None:
        watcher = DropFolderWatcher(settings.watch_folder, store=_store_dropped)
        watcher.start()
    # uvicorn's own start-up lines only at debug: the banner, printed once the port is bound, ends the start-up.
    quiet = settings.log_level.upper() != "DEBUG"
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, access_log=False,
                            log_level="warning" if quiet else "debug")
    try:
        _BannerServer(config, banner(settings, admin_password)).run()
    finally:
        if watcher is not None:
            watcher.stop()
        stop()


def _store_dropped(key: str, data: bytes) -> None:
    actions.store_object(key, data, source="drop folder")


class _BannerServer(uvicorn.Server):
    """uvicorn's server, printing labelloop's banner once it listens (not before: the port may be taken)."""

    def __init__(self, config: uvicorn.Config, text: str) -> None:
        super().__init__(config)
        self.text = text

    async def startup(self, sockets: list | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self.text, flush=True)


def banner(settings: Settings, admin_password: str | None) -> str:
    """The lines that end ``labelloop serve``'s start-up: where to open it, how to sign in, where data lives."""
    url = settings.public_url.rstrip("/") + "/"
    bound = f"http://{settings.host}:{settings.port}/"
    lines = [f"labelloop {__version__} is running.",
             f"  Open      {url}" + (f"  (listening on {bound})" if bound != url else "")]
    if admin_password:
        lines += [f"  Sign in   user admin, temporary password {admin_password}",
                  "            shown only this once: you choose your own password at first sign-in"]
    elif settings.admin_password:
        lines.append("  Sign in   user admin, with the password in LABELLOOP_ADMIN_PASSWORD")
    else:
        lines.append("  Sign in   with your account (the admin user exists already)")
    bucket = settings.bucket_url.removeprefix("file://")
    lines += [f"  Data      {settings.resolved_home}", f"  Bucket    {bucket}", "  Stop      Ctrl+C"]
    rule = "─" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])


def work(settings: Settings) -> None:
    """Run workers only until SIGINT or SIGTERM (``labelloop worker``)."""
    logs.setup(settings.log_level, settings.log_format)
    settings, _ = start_process(settings, "worker")
    print(f"labelloop worker {settings.executor_id} running on {settings.resolved_home}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    stop()


async def image_rejected(_request: Request, exc: Exception) -> JSONResponse:
    """A bad image: 413 when it is too large, 415 when it is not an image we read, else 422."""
    reason = getattr(exc, "reason", str(exc))
    unsupported = ("not supported", "not an image", "not a recognised image")
    code = 413 if "too large" in reason else 415 if any(words in reason for words in unsupported) else 422
    return JSONResponse({"detail": reason}, status_code=code)


async def storage_full(_request: Request, exc: Exception) -> JSONResponse:
    """No space left for the bucket: this upload fails with 507; nothing half-written stays behind."""
    return JSONResponse({"detail": getattr(exc, "strerror", None) or str(exc)}, status_code=507)


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The database could not answer this request (locked, gone): 503 for it, the rest keep working; its disk
    is full: 507, saying so (waiting will not help)."""
    log.error("database error on a request", extra={"path": request.url.path, "error": repr(exc)[:500]})
    cause = getattr(exc, "orig", exc)
    if getattr(cause, "sqlstate", None) == "53100" or "disk is full" in str(cause):  # PostgreSQL's DiskFull, SQLite's
        return JSONResponse({"detail": "the database's disk is full: free space on it, then try again"},
                            status_code=507)
    return JSONResponse({"detail": "the database could not complete this request "
                         f"({type(getattr(exc, 'orig', exc)).__name__}); try again shortly"},
                        status_code=503, headers={"Retry-After": "5"})


async def value_out_of_range(request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (a number out of range, a NUL byte in text): the request's fault."""
    log.warning("request value the database cannot hold", extra={"path": request.url.path, "error": repr(exc)[:500]})
    return JSONResponse({"detail": "a value in the request cannot be stored or searched for "
                         f"({type(getattr(exc, 'orig', exc)).__name__}); check numbers and text for odd values"},
                        status_code=422)


def _error_handlers(app: FastAPI) -> None:
    def handler(status_code: int):  # type: ignore[no-untyped-def]
        async def respond(_request: Request, exc: Exception) -> JSONResponse:
            detail = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
            if status_code == 404 and isinstance(exc, KeyError):
                detail = f"not found: {detail}"
            return JSONResponse({"detail": detail}, status_code=status_code)

        return respond

    app.add_exception_handler(parameters.UnknownParameter, handler(404))
    app.add_exception_handler(parameters.ParameterError, handler(422))
    app.add_exception_handler(storage.InvalidKey, handler(400))
    app.add_exception_handler(storage.ObjectNotFound, handler(404))
    app.add_exception_handler(RunNotFound, handler(404))
    app.add_exception_handler(workforce.WorkforceError, handler(422))
    app.add_exception_handler(VersionNotFound, handler(404))
    app.add_exception_handler(ModelError, handler(409))
    app.add_exception_handler(NoModelServing, handler(409))
    app.add_exception_handler(ImageRejected, image_rejected)
    app.add_exception_handler(review.LoopNotFound, handler(404))
    app.add_exception_handler(review.ReviewError, handler(422))
    app.add_exception_handler(storage.StorageFull, storage_full)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(DataError, value_out_of_range)
    # SQLite's driver refuses an integer beyond 64 bits with a plain OverflowError where PostgreSQL raises DataError.
    app.add_exception_handler(OverflowError, value_out_of_range)


# ── request limits, before routing and authentication ───────────────────────

Scope = MutableMapping[str, object]
Message = MutableMapping[str, object]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Routes that take an image as their body (raw or multipart): they may be as large as an upload.
UPLOAD_ROUTES = re.compile(r"^(PUT /api/v1/objects/|PUT /storage/objects/|POST /api/v1/detect$)")
JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


class BodyTooLarge(Exception):
    """A request body that went past its limit while it was being read."""


def json_depth(body: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (strings skipped), without parsing it."""
    bare = np.frombuffer(JSON_STRING.sub(b'""', body), dtype=np.uint8)
    steps = np.isin(bare, (ord("["), ord("{"))).astype(np.int64) - np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


class RequestLimits:
    """Caps every request body before routing, authentication or spooling: an image upload from a caller who
    sends credentials may be ``max_upload_bytes`` (plus multipart framing), anything else
    ``max_request_bytes``; a declared ``Content-Length`` over the cap is answered 413 at once, a body that
    streams past it is cut off with 413 as soon as it does. A JSON body nested deeper than ``max_json_depth``
    is answered 422 before any parser recurses into it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit(self, scope: Scope, headers: dict[bytes, bytes]) -> int:
        """The most bytes this request's body may have."""
        route = f"{scope['method']} {scope['path']}"
        if route == "POST /api/v1/events/s3":
            return MAX_NOTIFICATION_BYTES
        has_credentials = b"authorization" in headers or SESSION_COOKIE.encode() in headers.get(b"cookie", b"")
        if UPLOAD_ROUTES.match(route) and has_credentials:
            return self.settings.max_upload_bytes + 64 * 1024
        return self.settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # type: ignore[call-overload]
        limit = self.limit(scope, headers)
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self.refuse(scope, send, 413, f"the request body is larger than {limit:,} bytes, the most "
                                                "this route takes")
            return
        if headers.get(b"content-type", b"").startswith(b"application/json"):
            await self.json_request(scope, receive, send, limit)
            return
        await self.counted(scope, receive, send, limit)

    async def counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Pass the request on, counting its body; 413 when it passes ``limit`` before a response started."""
        received = 0
        started = overflowed = False

        async def counting_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            received += len(message.get("body", b""))  # type: ignore[arg-type]
            if received > limit:
                overflowed = True
                raise BodyTooLarge(limit)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if overflowed and not started:
                return  # the app's answer to a body cut short (FastAPI says 400): 413 goes out instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
        if overflowed and not started:
            await self.refuse(scope, send, 413, f"the request body is larger than {limit:,} bytes, the most "
                                                "this route takes")

    async def json_request(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Read a JSON body whole (it is small: ``limit``), refuse it when too large or too deep, else replay it."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)  # type: ignore[arg-type]
            if size > limit:
                await self.refuse(scope, send, 413, f"the request body is larger than {limit:,} bytes, the most "
                                                    "this route takes")
                return
            chunks.append(chunk)
            more = bool(message.get("more_body"))
        body = b"".join(chunks)  # type: ignore[arg-type]
        if json_depth(body) > self.settings.max_json_depth:
            await self.refuse(scope, send, 422, f"the JSON body nests arrays and objects more than "
                                                f"{self.settings.max_json_depth} deep")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def refuse(scope: Scope, send: Send, code: int, reason: str) -> None:
        """Answer ``code`` with the reason; the connection is closed, so the rest of the body is never read."""
        log.warning("request refused before routing", extra={"path": scope["path"], "status": code,
                                                             "reason": reason})
        body = json.dumps({"detail": reason}).encode()
        await send({"type": "http.response.start", "status": code, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


# Every answer that sets no policy of its own may not be framed or sniffed (the API's JSON, redirects, /docs).
DEFAULT_HEADERS = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                   (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'")]
DOCS_ASSETS = "/docs-assets"
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


class DefaultSecurityHeaders:
    """Adds ``DEFAULT_HEADERS`` to responses that have no Content-Security-Policy of their own."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                if not any(name.lower() == b"content-security-policy" for name, _ in headers):
                    message["headers"] = headers + DEFAULT_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def swagger_page(app: FastAPI) -> HTMLResponse:
    """Swagger UI from labelloop's own files (no CDN), under a policy allowing only its one inline script."""
    page = get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                               swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url="/favicon.ico")
    html = bytes(page.body).decode()
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()}'"
                      for script in INLINE_SCRIPT.findall(html))
    policy = (f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    return HTMLResponse(html, headers={**SECURITY_HEADERS, "Content-Security-Policy": policy})


def _openapi(app: FastAPI) -> dict:
    """The OpenAPI document, saying what labelloop really sends: a 4xx ``detail`` is a message in words,
    or FastAPI's list of field errors when the request does not match its schema."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        error = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if error is not None:
            listed = error["properties"]["detail"]
            error["properties"]["detail"] = {"title": "Detail", "anyOf": [{"type": "string"}, listed]}
        app.openapi_schema = schema
    return app.openapi_schema


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """labelloop's request layers, outermost first: the default security headers, the request limits, and the
    answers before routing of ``POST /api/v1/detect`` (``modeling.views.DetectFastPath``) and the bucket's PUT
    (``storage.views.PutFastPath``)."""
    app.add_middleware(PutFastPath)
    app.add_middleware(DetectFastPath)
    app.add_middleware(RequestLimits, settings=settings)
    app.add_middleware(DefaultSecurityHeaders)


def create_app(settings: Settings | None = None, *, manage_lifecycle: bool = False) -> FastAPI:
    """The web application. With ``manage_lifecycle`` it starts and stops the engine itself."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if manage_lifecycle:
            start(settings)
        try:
            yield
        finally:
            if manage_lifecycle:
                stop()

    app = FastAPI(title="labelloop", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Continuous improvement of custom image-label models with humans in the loop.")
    _error_handlers(app)
    install_middleware(app, settings)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    for router in API_ROUTERS + PAGE_ROUTERS:
        app.include_router(router)
    install_error_pages(app)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """The API's interactive documentation (Swagger UI), served from this server's own files."""
        return swagger_page(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers and its database is reachable."""
        with db.session() as session:
            session.execute(db.text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    @app.get("/", include_in_schema=False)
    def root(visitor: MaybeVisitor) -> Response:
        """Anonymous visitors to sign-in; a signed-in one to their role's home (or to change a temporary
        password first)."""
        if visitor is None:
            target = "/sign-in"
        elif visitor.user.must_change_password:
            target = PASSWORD_PAGE
        else:
            target = ROLE_HOME[visitor.user.role]
        return RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(WEB_DIR / "static" / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    return app
