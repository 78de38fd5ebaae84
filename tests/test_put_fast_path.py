"""The bucket's ``PUT /api/v1/objects/{key}`` answered before routing (``storage.views.PutFastPath``): which
requests it takes itself (a remembered token that may upload to a key the route takes) and which it leaves to
the route; and the answers, the same status, headers and bytes through the route and before it."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import httpx
import pytest
from PIL import Image

from conftest import Server
from labelloop.storage.views import PutFastPath
from labelloop.web.before_routing import declared_over, read_body, replay
from labelloop.workforce import service
from labelloop.workforce.models import User


def png(colour: str, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def scope(path: str, token: str | None = "consumer", method: str = "PUT", **extra: Any) -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    return {"type": "http", "method": method, "path": path, "headers": headers, **extra}


@pytest.fixture
def remembered() -> Any:
    """Tokens "consumer", "operator" and "worker", remembered as verified."""
    saved = service.recent_tokens.seconds
    service.recent_tokens.seconds = 60.0
    for role in ("consumer", "operator", "worker"):
        user = User(username=role, role=role, must_change_password=False)
        service.recent_tokens.remember(service._token_digest(role), user, 4e9, service.recent_tokens.generation)
    yield
    service.recent_tokens.seconds = saved
    service.recent_tokens.forget_all()


async def _route(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not reached")


def test_a_remembered_uploader_putting_to_a_key_the_route_takes_is_answered_before_routing(remembered: None) -> None:
    layer = PutFastPath(_route)
    taken = layer.upload(scope("/api/v1/objects/images_for_detection/a/b.jpg"))
    assert taken is not None and taken[0].username == "consumer" and taken[1] == "images_for_detection/a/b.jpg"
    assert layer.upload(scope("/api/v1/objects/images_labeled_by_folder/x/b.jpg", "operator")) is not None


@pytest.mark.parametrize(("case", "request_scope"), [
    ("a token not remembered: the route checks it in the database",
     scope("/api/v1/objects/images_for_detection/a.jpg", "unknown")),
    ("no token: 401", scope("/api/v1/objects/images_for_detection/a.jpg", None)),
    ("a role that may not upload: 403", scope("/api/v1/objects/images_for_detection/a.jpg", "worker")),
    ("a consumer outside images_for_detection/: 403", scope("/api/v1/objects/images_labeled_by_folder/x/a.jpg")),
    ("a dot segment: 400", scope("/api/v1/objects/images_for_detection/../a.jpg")),
    ("an empty key: 400", scope("/api/v1/objects/")),
    ("a control character: 400", scope("/api/v1/objects/images_for_detection/a\x00.jpg")),
    ("another method", scope("/api/v1/objects/images_for_detection/a.jpg", method="GET")),
    ("another route", scope("/api/v1/objectsx/images_for_detection/a.jpg")),
    ("behind a root path", scope("/api/v1/objects/images_for_detection/a.jpg", root_path="/labelloop")),
])
def test_anything_else_is_left_to_the_route(remembered: None, case: str, request_scope: dict[str, Any]) -> None:
    assert PutFastPath(_route).upload(request_scope) is None, case


def test_a_declared_length_over_the_limit_is_left_to_the_route() -> None:
    assert declared_over({"headers": [(b"content-length", b"1001")]}, 1000)
    assert not declared_over({"headers": [(b"content-length", b"1000")]}, 1000)
    assert not declared_over({"headers": [(b"content-length", b"x")]}, 1000)
    assert not declared_over({"headers": []}, 1000)


def test_a_body_read_is_replayed_to_the_route_whole() -> None:
    asyncio.run(_read_and_replay())


async def _read_and_replay() -> None:
    messages = [{"type": "http.request", "body": b"ab", "more_body": True},
                {"type": "http.request", "body": b"cd", "more_body": False}, {"type": "http.disconnect"}]

    async def receive() -> Any:
        return messages.pop(0)

    body, complete = await read_body(receive)
    assert (body, complete) == (b"abcd", True)
    again = replay(body, receive)
    assert await again() == {"type": "http.request", "body": b"abcd", "more_body": False}
    assert await again() == {"type": "http.disconnect"}


def _twice(server: Server, key: str, data: bytes) -> list[httpx.Response]:
    """The same PUT twice with a new token: first through the route (the token checked in the database), then,
    with the token remembered, before routing."""
    with server.client(server.token()) as api:
        return [api.put(f"/objects/{key}", content=data) for _ in range(2)]


def _alike(answers: list[httpx.Response], *, moving: tuple[str, ...] = ()) -> None:
    """Same status, headers (but the date) and body (but the ``moving`` fields of its JSON)."""
    def body(response: httpx.Response) -> Any:
        return {k: v for k, v in response.json().items() if k not in moving} if moving else response.content

    def headers(response: httpx.Response) -> list[tuple[str, str]]:
        skip = {"date", "content-length"} if moving else {"date"}
        return [(k, v) for k, v in response.headers.items() if k not in skip]

    assert answers[1].status_code == answers[0].status_code
    assert body(answers[1]) == body(answers[0])
    assert headers(answers[1]) == headers(answers[0])


def test_put_answers_alike_through_the_route_and_before_it(shared_server: Server) -> None:
    image, key = png("green", 12), "images_for_detection/alike/photo.png"
    with shared_server.client() as api:
        assert api.put(f"/objects/{key}", content=image).status_code == 201
    unchanged = _twice(shared_server, key, image)
    assert unchanged[0].status_code == 200 and unchanged[0].json()["unchanged"], unchanged[0].text
    _alike(unchanged)
    rejected = _twice(shared_server, "images_for_detection/alike/notes.png", b"hello, I am text")
    assert rejected[0].status_code == 415, rejected[0].text
    _alike(rejected)
    bad_key = _twice(shared_server, "images_for_detection/%2e%2e/x.png", image)
    assert bad_key[0].status_code == 400
    _alike(bad_key)
    created = []
    with shared_server.client(shared_server.token()) as api:
        for _ in range(2):  # 201 each time (the object deleted in between): first through the route, then not
            created.append(api.put("/objects/manifests/alike.json", content=b'{"a": 1}'))
            assert api.delete("/objects/manifests/alike.json").status_code == 200
    assert created[0].status_code == 201, created[0].text
    _alike(created, moving=("last_modified",))
    assert json.loads(created[1].content)["etag"] == json.loads(created[0].content)["etag"]
