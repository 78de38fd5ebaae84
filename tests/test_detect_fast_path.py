"""``POST /api/v1/detect`` answered before routing (``modeling.views.DetectFastPath``): which requests it takes
itself (a remembered token allowed to detect, one plain multipart ``file`` part) and which it leaves to the
route, unread or replayed. The answers themselves: tests/test_models_api.py (alike on both paths)."""

from __future__ import annotations

import httpx
import pytest

from labelloop.modeling.views import _boundary, _file_part
from labelloop.web.before_routing import header
from labelloop.web.dependencies import remembered_caller
from labelloop.workforce import service
from labelloop.workforce.models import Role, User

PHOTO = b"\xff\xd8\xff\xe0 a JPEG's bytes \r\n-- with line breaks and dashes \r\n\r\n\xff\xd9"


def multipart(files=None, data=None) -> tuple[bytes, bytes]:  # type: ignore[no-untyped-def]
    """The body and content type httpx sends for ``files`` and ``data``."""
    request = httpx.Request("POST", "http://x/api/v1/detect", files=files, data=data)
    return request.read(), request.headers["content-type"].encode()


def test_the_one_file_part_clients_send_is_read() -> None:
    body, content_type = multipart(files={"file": ("photo.jpg", PHOTO, "image/jpeg")})
    assert _file_part(body, _boundary(content_type)) == PHOTO
    body, content_type = multipart(files={"file": ("empty.jpg", b"")})
    assert _file_part(body, _boundary(content_type)) == b""


@pytest.mark.parametrize("case", ["two parts", "a field, not a file", "another name", "preamble", "epilogue",
                                  "cut short", "a header line without a colon", "a header twice"])
def test_anything_else_is_left_to_the_route(case: str) -> None:
    body, content_type = multipart(files={"file": ("photo.jpg", PHOTO)})
    boundary = _boundary(content_type)
    assert boundary is not None
    if case == "two parts":
        body, content_type = multipart(files={"file": ("photo.jpg", PHOTO)}, data={"note": "x"})
    elif case == "a field, not a file":
        body = body.replace(b'; filename="photo.jpg"', b"", 1)
    elif case == "another name":
        body, content_type = multipart(files={"image": ("photo.jpg", PHOTO)})
    elif case == "preamble":
        body = b"a preamble\r\n" + body
    elif case == "epilogue":
        body += b"an epilogue"
    elif case == "cut short":
        body = body[:-10]
    elif case == "a header line without a colon":
        body = body.replace(b"Content-Disposition:", b"Content-Disposition", 1)
    elif case == "a header twice":
        body = body.replace(b"Content-Disposition:", b"Content-Type: image/jpeg\r\nContent-Type:", 1)
    assert _file_part(body, _boundary(content_type)) is None


def test_a_header_sent_twice_is_read_as_the_route_reads_it() -> None:
    """The first value, as Starlette's ``Headers.get``: a second Authorization header cannot vouch for a request
    the route would refuse."""
    scope = {"headers": [(b"authorization", b"Bearer first"), (b"authorization", b"Bearer second")]}
    assert header(scope, b"authorization") == b"Bearer first"
    assert header(scope, b"content-type") is None


def test_only_multipart_form_data_has_a_boundary() -> None:
    assert _boundary(b'multipart/form-data; boundary="a b"') == b"a b"
    assert _boundary(b"application/octet-stream") is None
    assert _boundary(None) is None


def test_only_a_remembered_token_of_a_user_who_may_detect_is_answered_before_routing() -> None:
    caller = remembered_caller(Role.OPERATOR, Role.CONSUMER)
    users = {"consumer": User(username="c", role="consumer", must_change_password=False),
             "admin": User(username="a", role="admin", must_change_password=False),
             "worker": User(username="w", role="worker", must_change_password=False),
             "temporary": User(username="t", role="consumer", must_change_password=True)}
    saved = service.recent_tokens.seconds
    service.recent_tokens.seconds = 60.0
    try:
        for token, user in users.items():
            service.recent_tokens.remember(service._token_digest(token), user, 4e9, service.recent_tokens.generation)
        assert caller(b"Bearer consumer") is users["consumer"]
        assert caller(b"bearer  admin") is users["admin"]  # as HTTPBearer reads it: any case, spaces trimmed
        assert caller(b"Bearer worker") is None  # the route answers 403
        assert caller(b"Bearer temporary") is None  # the route answers 403 (change the password first)
        assert caller(b"Bearer unknown") is None  # the route checks it in the database
        assert caller(b"Basic consumer") is None and caller(b"Bearer") is None and caller(None) is None
    finally:
        service.recent_tokens.forget_all()
        service.recent_tokens.seconds = saved
