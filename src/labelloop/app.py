"""The FastAPI application, and the start-up and shutdown of the ``serve`` and ``worker`` processes."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, OperationalError

from labelloop import __version__, db, engine, logs
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
from labelloop.storage.views import router as storage_routes
from labelloop.storage.watcher import DropFolderWatcher
from labelloop.web.pages import PASSWORD_PAGE, ROLE_HOME, WEB_DIR, MaybeVisitor, install_error_pages
from labelloop.workforce import service as workforce
from labelloop.workforce.pages import router as workforce_pages
from labelloop.workforce.views import router as workforce_routes

log = logging.getLogger(__name__)
API_ROUTERS = (workforce_routes, parameter_routes, storage_routes, run_routes, notification_routes, modeling_routes,
               schedules_router, detection_routes, review_routes, sampling_routes)
PAGE_ROUTERS = (workforce_pages, review_pages, console_pages, storage_pages, parameter_pages, modeling_pages,
                run_pages, detection_pages)


def start(settings: Settings) -> str | None:
    """Open the database, create what a first start needs, launch the engine and apply the schedules.

    Returns the admin's temporary password when this start created the admin user.
    """
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    db.init(settings.app_database_url)
    storage.ensure_bucket()
    with db.session() as session:
        created = parameters.ensure_defaults(session=session)
        admin_password = workforce.ensure_admin(settings.admin_password, session=session)
        review.template(session=session)  # created once here, not raced for by the first detections
    if created:
        log.info("parameters created with their defaults", extra={"count": created})
    engine.start(settings)  # every workflow is registered: labelloop.loop.routing is imported above
    for applied in routing.apply_schedules_now():
        log.info("schedule in force", extra=applied)
    actions.apply_recorded_answers()
    log.info("schedule in force", extra=routing.schedule_answer_sweep(settings.answer_sweep_minutes))
    return admin_password


def stop() -> None:
    """Stop the engine and the inference units, and close the database."""
    engine.stop()
    endpoint.close_serving()
    db.close()


def start_process(settings: Settings, role: str) -> tuple[Settings, str | None]:
    """Give this process its executor id, then start it while no other process sharing the database starts.

    Returns the settings in force and the admin's temporary password when this start created the admin.
    """
    if settings.executor_id is None:
        settings = configure(**{name: getattr(settings, name) for name in settings.model_fields_set},
                             executor_id=engine.new_executor_id(role))
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    with db.startup_lock(settings.app_database_url, settings.resolved_home / ".startup.lock"):
        return settings, start(settings)


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
    """The database could not answer this request (locked, gone, full): 503 for it, the rest keep working."""
    log.error("database error on a request", extra={"path": request.url.path, "error": repr(exc)[:500]})
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

    app = FastAPI(title="labelloop", version=__version__, lifespan=lifespan,
                  description="Continuous improvement of custom image-label models with humans in the loop.")
    _error_handlers(app)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    for router in API_ROUTERS + PAGE_ROUTERS:
        app.include_router(router)
    install_error_pages(app)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

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
