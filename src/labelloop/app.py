"""The FastAPI application and process start-up shared by ``serve`` and ``worker``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.exc import DataError, OperationalError

from labelloop import __version__, db, engine
from labelloop.config import Settings, get_settings
from labelloop.modeling import service as modeling
from labelloop.modeling.images import ImageRejected
from labelloop.parameters import service as parameters
from labelloop.review import service as review
from labelloop.runs.service import RunNotFound
from labelloop.storage import service as storage
from labelloop.workforce import service as workforce

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).parent / "web"
templates = Jinja2Templates(directory=WEB_DIR / "templates")


def start(settings: Settings) -> str | None:
    """Open the database, create what a first start needs, launch the engine and apply the schedules.

    Returns the admin's temporary password when this start created the admin user.
    """
    settings.resolved_home.mkdir(parents=True, exist_ok=True)
    db.init(settings.app_database_url)
    storage.ensure_bucket()
    with db.session() as session:
        created = parameters.ensure_defaults(session)
        admin_password = workforce.ensure_admin(session, settings.admin_password)
        review.template(session)  # created once here, not raced for by the first detections
    if created:
        log.info("parameters created with their defaults", extra={"count": created})
    engine.start(settings)
    from labelloop.parameters.flows import apply_schedules

    with db.session() as session:
        values = parameters.values(session)
    for applied in apply_schedules(values):
        log.info("schedule in force", extra=applied)
    return admin_password


def stop() -> None:
    """Stop the engine and the inference units, and close the database."""
    engine.stop()
    modeling.close_serving()
    db.close()


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
    app.add_exception_handler(modeling.VersionNotFound, handler(404))
    app.add_exception_handler(modeling.ModelError, handler(409))
    app.add_exception_handler(modeling.NoModelServing, handler(409))
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
    from labelloop.detection.views import router as detection_router
    from labelloop.modeling.views import router as modeling_router
    from labelloop.notifications.views import router as notifications_router
    from labelloop.parameters.views import router as parameters_router
    from labelloop.review.views import router as review_router
    from labelloop.runs.views import router as runs_router
    from labelloop.runs.views import schedules_router
    from labelloop.sampling.views import router as sampling_router
    from labelloop.storage.views import router as storage_router
    from labelloop.web.dependencies import router as workforce_router

    for router in (workforce_router, parameters_router, storage_router, runs_router, notifications_router,
                   modeling_router, schedules_router, detection_router, review_router, sampling_router):
        app.include_router(router)
    from labelloop.web.pages import install as install_pages

    install_pages(app)  # sign-in, workforce admin and review portal pages
    from labelloop.console.pages import install as install_console

    install_console(app)  # the operator console: dashboard, storage, parameters, models, runs, detections

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Liveness: the process answers and its database is reachable."""
        with db.session() as session:
            session.execute(db.text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def root(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "index.html", {"version": __version__,
                                                                  "home": str(settings.resolved_home)})

    return app
