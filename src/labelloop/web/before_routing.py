"""Pieces for the hot routes answered by a pure-ASGI layer before FastAPI's routing (``POST /api/v1/detect``:
``modeling.views.DetectFastPath``; the bucket's ``PUT /api/v1/objects/{key}``: ``storage.views.PutFastPath``):
reading a header and the body as the route would, handing a request on to the route with its body replayed,
and answering an error with the app's own exception handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case), the one the route reads (Starlette's ``Headers.get``)."""
    return next((value for key, value in scope["headers"] if key == name), None)


def declared_over(scope: Scope, limit: int) -> bool:
    """Whether the request's ``Content-Length`` says more than ``limit`` bytes (the route answers that: 413)."""
    declared = header(scope, b"content-length")
    return declared is not None and declared.isdigit() and int(declared) > limit


async def read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body, and whether it all came (False: the client went away first)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), True


def replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives ``body`` first, as one message, then what the connection sends."""
    replayed = False

    async def replayed_receive() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed_receive


def handler(scope: Scope, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The app's own handler for ``exc`` (by its class, most specific first), as its routes get; None for one
    that only a catch-all would answer (it is raised on, to the server-error answer)."""
    handlers = getattr(scope.get("app"), "exception_handlers", {})
    for cls in type(exc).__mro__:
        if cls in (Exception, BaseException):
            return None
        if cls in handlers:
            return handlers[cls]
    return None


async def answer_error(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    """Answer ``exc`` as the route would: the app's handler for it, else raised on (the server-error answer)."""
    found = handler(scope, exc)
    if found is None:
        raise exc
    response = await found(Request(scope), exc)
    await response(scope, receive, send)
