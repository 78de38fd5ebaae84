"""/docs in a real browser with the network to anywhere but the server cut: Swagger UI comes from the server
itself and runs under its Content-Security-Policy (it used to load its script from a CDN)."""

from __future__ import annotations

from playwright.sync_api import Browser, Route

from conftest import Server
from web import DESKTOP, browser  # noqa: F401 (the browser fixture)


def test_docs_render_offline_under_their_policy(shared_server: Server, browser: Browser) -> None:  # noqa: F811
    context = browser.new_context(viewport=DESKTOP)
    outside: list[str] = []

    def only_the_server(route: Route) -> None:
        if route.request.url.startswith(shared_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.goto(f"{shared_server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
    assert "labelloop" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() > 20  # the operations are listed
    assert outside == [], outside
    assert not [text for text in problems if "Content Security Policy" in text], problems
    context.close()
