"""Who may use the UI and API, and from where: the Host check (DNS rebinding), the token with
its login form and cookie, CSRF tokens on UI forms, and the JSON API refusing cross-site
browser writes while scripts keep working. Security headers on every answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from gateway.app import Gateway
from tests.conftest import Upstream, make_settings, running

TOKEN = "s3cret-ui-token-for-tests"


async def one_call(gw: Gateway, content: str = "hello", run: str | None = None) -> str:
    payload = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": content}]}
    headers = {"Authorization": "Bearer sk-access-test-0000"}
    if run:
        headers["X-AgentOps-Run"] = run
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=payload, headers=headers) as resp,
    ):
        assert resp.status == 200
    await gw.recorder.drained(timeout=10)
    rows = await gw.store.rows("SELECT id FROM exchanges ORDER BY id DESC LIMIT 1")
    return str(rows[0]["id"])


@pytest.fixture
async def open_gw(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(
        upstream.url,
        f"sqlite://{tmp_path / 'a.db'}",
        tmp_path,
        allowed_hosts="studio.example, .corp.example",
    )
    async with running(settings) as gw:
        yield gw


@pytest.fixture
async def token_gw(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(
        upstream.url, f"sqlite://{tmp_path / 't.db'}", tmp_path, ui_token=TOKEN
    )
    async with running(settings) as gw:
        yield gw


async def status_of(gw: Gateway, method: str, path: str, **kwargs) -> tuple[int, str, dict]:
    async with (
        aiohttp.ClientSession(gw.ui_url) as http,
        http.request(method, path, allow_redirects=False, **kwargs) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


async def test_host_header_must_be_loopback_an_ip_or_allowed(open_gw: Gateway):
    port = open_gw.ui_url.rsplit(":", 1)[1]
    for host, expected in (
        ("127.0.0.1", 200),
        (f"localhost:{port}", 200),
        (f"[::1]:{port}", 200),
        ("app.localhost", 200),
        ("10.1.2.3:8081", 200),
        ("studio.example", 200),
        ("a.corp.example", 200),
        ("corp.example", 200),
        ("evil.example", 400),
        (f"rebind.evil.example:{port}", 400),
        ("studio.example.evil", 400),
        ("", 400),
    ):
        status, body, _ = await status_of(open_gw, "GET", "/api/prices", headers={"Host": host})
        assert status == expected, host
        if expected == 400:
            assert "AGENTOPS_ALLOWED_HOSTS" in body
    status, _, _ = await status_of(open_gw, "GET", "/", headers={"Host": "evil.example"})
    assert status == 400
    status, _, _ = await status_of(open_gw, "GET", "/healthz", headers={"Host": "evil.example"})
    assert status == 200  # health checks come from anywhere and reveal nothing


async def test_api_writes_refuse_cross_site_browsers_but_not_scripts(open_gw: Gateway):
    exchange = await one_call(open_gw)
    path = f"/api/exchanges/{exchange}/evaluations"
    body = {"metric_name": "ok", "metric_value": 1}
    for headers, expected in (
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({"Origin": open_gw.ui_url, "Sec-Fetch-Site": "same-origin"}, 201),
        ({}, 201),
    ):  # a script or an SDK sends neither header
        status, text, _ = await status_of(open_gw, "POST", path, json=body, headers=headers)
        assert status == expected, (headers, text)
    for data, content_type in (
        ("metric_name=ok&metric_value=1", "application/x-www-form-urlencoded"),
        ('{"metric_name": "ok", "metric_value": 1}', "text/plain"),
    ):
        status, text, _ = await status_of(
            open_gw, "POST", path, data=data, headers={"Content-Type": content_type}
        )
        assert status == 415 and "application/json" in text
    status, _, _ = await status_of(
        open_gw, "DELETE", f"/api/exchanges/{exchange}", headers={"Sec-Fetch-Site": "cross-site"}
    )
    assert status == 403
    assert await open_gw.store.get_exchange(int(exchange)) is not None
    status, _, _ = await status_of(open_gw, "DELETE", f"/api/exchanges/{exchange}")
    assert status == 200


async def test_ui_forms_need_their_csrf_token(open_gw: Gateway):
    exchange = await one_call(open_gw)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(open_gw.ui_url, cookie_jar=jar) as http:
        async with http.get(f"/exchanges/{exchange}") as resp:
            page = await resp.text()
            assert "agentops_csrf" in resp.cookies
            morsel = resp.cookies["agentops_csrf"]
            assert morsel["httponly"] and morsel["samesite"] == "Strict"
        token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page).group(1)
        delete = f"/exchanges/{exchange}/delete"
        for form in ({}, {"csrf_token": "0" * 64}):
            async with http.post(delete, data=form, allow_redirects=False) as resp:
                assert resp.status == 403 and "This form has expired" in await resp.text()
        async with http.post(
            delete,
            data={"csrf_token": token},
            allow_redirects=False,
            headers={"Origin": "http://evil.example"},
        ) as resp:
            assert resp.status == 403  # a valid token does not excuse a cross-site post
        assert await open_gw.store.get_exchange(int(exchange)) is not None
        async with http.post(
            delete,
            data={"csrf_token": token},
            allow_redirects=False,
            headers={"Origin": open_gw.ui_url},
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"].endswith(f"?deleted={exchange}")
    assert await open_gw.store.get_exchange(int(exchange)) is None
    async with (
        aiohttp.ClientSession(open_gw.ui_url) as fresh,
        fresh.post(delete, data={"csrf_token": token}, allow_redirects=False) as resp,
    ):
        assert resp.status == 403  # the token belongs to the other browser's cookie


async def test_token_login_cookie_and_bearer(token_gw: Gateway):
    exchange = await one_call(token_gw)
    status, body, headers = await status_of(token_gw, "GET", "/api/exchanges")
    assert status == 401 and "Bearer" in body and "WWW-Authenticate" in headers
    status, _, headers = await status_of(token_gw, "GET", f"/exchanges/{exchange}?x=1")
    location = urlsplit(headers["Location"])
    assert status == 303 and location.path == "/login"
    assert parse_qs(location.query)["next"] == [f"/exchanges/{exchange}?x=1"]
    status, _, headers = await status_of(token_gw, "GET", "/", headers={"HX-Request": "true"})
    assert status == 401 and headers["HX-Redirect"].startswith("/login")
    for open_path in ("/healthz", "/static/app.css", "/static/vendor/htmx.min.js", "/login"):
        status, _, _ = await status_of(token_gw, "GET", open_path)
        assert status == 200, open_path
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/api/exchanges", "/", "/dashboard"):
        status, _, _ = await status_of(token_gw, "GET", path, headers=bearer)
        assert status == 200, path

    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(token_gw.ui_url, cookie_jar=jar) as http:
        async with http.get("/login?next=/runs") as resp:
            form = await resp.text()
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form).group(1)
        async with http.post(
            "/login", data={"token": TOKEN, "next": "/runs"}, allow_redirects=False
        ) as resp:
            assert resp.status == 403  # no CSRF token: no login (login CSRF)
        async with http.post(
            "/login", data={"token": "wrong", "next": "/runs", "csrf_token": csrf}
        ) as resp:
            assert resp.status == 401 and "not the token" in await resp.text()
        async with http.post(
            "/login",
            data={"token": TOKEN, "next": "//evil.example/", "csrf_token": csrf},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/"
            cookie = resp.headers["Set-Cookie"]
            assert "agentops_session=" in cookie and "HttpOnly" in cookie
            assert "SameSite=Strict" in cookie and "Path=/" in cookie
            assert TOKEN not in cookie  # the cookie is derived from the token, not the token
        async with http.get("/runs") as resp:
            assert resp.status == 200 and "Sign out" in await resp.text()
        async with http.get("/api/exchanges") as resp:
            assert resp.status == 401  # the API takes the Bearer header only
        async with http.get("/login", allow_redirects=False) as resp:
            assert resp.status == 303  # already signed in
        async with http.post("/logout", data={"csrf_token": csrf}, allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get("/runs", allow_redirects=False) as resp:
            assert resp.status == 303


async def test_security_headers_on_every_answer(open_gw: Gateway):
    status, text, _ = await status_of(open_gw, "POST", "/api/datasets", json={"name": "headers"})
    assert status == 201
    dataset = json.loads(text)["id"]
    for path, status in (
        ("/", 200),
        ("/nowhere", 404),
        ("/api/exchanges", 200),
        ("/api/exchanges/1", 404),
        ("/static/app.css", 200),
        # streamed: its head goes out before the handler returns (it once had none of these)
        (f"/api/datasets/{dataset}/export", 200),
    ):
        got, _, headers = await status_of(open_gw, "GET", path)
        assert got == status, path
        csp = headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == (
            "no-cache" if path.startswith("/static/") else "no-store"
        )
    _, _, headers = await status_of(open_gw, "GET", "/")
    assert headers["Vary"] == "HX-Request"
