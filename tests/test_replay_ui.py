"""The replay pages: the form replays and lands on the side-by-side diff, hostile captured text
stays text, other sites cannot post the form, the experiment page draws its chart; real
Chromium renders the diff page under the strict CSP without complaint.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.app import Gateway
from tests.clients import ENV, TOOLS, finished, get, latest_id, post, send
from tests.conftest import Upstream, make_settings, running
from webui.diff_view import SHOWN_CHARS

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def gw(upstream: Upstream, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = make_settings(upstream.url, f"sqlite://{tmp_path / 'ui.db'}", tmp_path)
    async with running(settings, ENV) as gateway:
        yield gateway


async def hostile_exchange(gw: Gateway) -> str:
    """A call whose recorded output carries markup (the fake echoes the tool's result)."""
    messages = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "abcdefghi",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "abcdefghi", "name": "get_weather", "content": HOSTILE},
    ]
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{gw.proxy_url}/v1/chat/completions",
            json={"model": "mistral-large-latest", "messages": messages},
            headers={"Authorization": "Bearer k"},
        ) as resp,
    ):
        assert resp.status == 200
    return await latest_id(gw)


async def page(gw: Gateway, path: str, **headers: str) -> tuple[int, str, Any]:
    async with aiohttp.ClientSession(gw.ui_url) as http, http.get(path, headers=headers) as resp:
        return resp.status, await resp.text(), resp.headers


def assert_strict_html(html: str) -> None:
    """No inline script, no style, no inline handlers or styles in any tag (text is escaped):
    scripts only as same-origin files."""
    for tag in re.findall(r"<[^>]*>", html):
        if tag.startswith("<script"):
            assert re.fullmatch(r'<script src="/static/[\w./-]+"( defer)?>', tag), tag
        assert not re.match(r"<style\b", tag), tag
        assert not re.search(r"\s(style|on\w+)\s*=", tag), tag


async def test_form_replays_to_a_safe_side_by_side_diff(gw: Gateway, upstream: Upstream):
    original = await hostile_exchange(gw)
    status, html, _ = await page(gw, f"/exchanges/{original}/replay")
    assert status == 200
    assert '<option value="mistral-small-latest">' in html  # from the upstream's /v1/models
    assert "keep mistral-large-latest" in html and 'name="api_key"' not in html

    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
    async with aiohttp.ClientSession(gw.ui_url, cookie_jar=jar) as http:
        async with http.get(f"/exchanges/{original}/replay") as resp:  # sets the CSRF cookie
            token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', await resp.text())[1]
        form = {
            "model": "mistral-small-latest",
            "temperature": "0.2",
            "random_seed": "",
            "max_tokens": "",
            "overrides": '{"top_p": 0.5}',
            "csrf_token": token,
        }
        sent = len(upstream.requests)
        async with http.post(
            f"/exchanges/{original}/replay",
            data={**form, "csrf_token": "0" * 64},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403  # a forged form
        async with http.post(
            f"/exchanges/{original}/replay",
            data=form,
            headers={"Origin": "http://evil.example"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403
        async with http.post(
            f"/exchanges/{original}/replay",
            data=form,
            headers={"Sec-Fetch-Site": "cross-site"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 403
        assert len(upstream.requests) == sent
        async with http.post(
            f"/exchanges/{original}/replay",
            data={"temperature": "warm", "csrf_token": token},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 400 and "temperature must be a number" in await resp.text()
        async with http.post(
            f"/exchanges/{original}/replay",
            data=form,
            headers={"Origin": gw.ui_url, "Sec-Fetch-Site": "same-origin"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303, await resp.text()
            location = resp.headers["Location"]
    assert re.fullmatch(r"/diffs/\d+", location)

    status, html, headers = await page(gw, location)
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert_strict_html(html)
    assert "&lt;script&gt;alert(" in html and HOSTILE not in html
    assert "<del>" in html and "<ins>" in html
    assert "mistral-small-latest" in html and "top_p" in html and "similarity" in html
    status, partial, _ = await page(gw, f"/compare?a={original}&b={original}")
    assert status == 200 and "identical" in partial
    status, html, _ = await page(gw, "/")  # the list: tick two rows, compare them
    assert f'name="pick" value="{original}"' in html and 'id="compare-pick"' in html
    status, picked, _ = await page(gw, f"/compare?pick={original}&pick={original}")
    assert status == 200 and "identical" in picked
    status, picked, _ = await page(gw, f"/compare?pick={original}")
    assert status == 400 and "exactly two" in picked
    assert (await page(gw, "/diffs/1"))[0] == 404
    assert (await page(gw, "/compare?a=x&b=1"))[0] == 400
    await check_in_chromium(gw, location)


async def check_in_chromium(gw: Gateway, path: str) -> None:
    """Real Chromium: the page renders its diff, and the CSP blocks nothing it needs."""
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        "--dump-dom",
        f"{gw.ui_url}{path}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    dom, log = out.decode(), err.decode()
    assert "<del>" in dom and "<ins>" in dom and "Parameters" in dom
    assert "Content Security Policy" not in log and "Refused to" not in log
    assert "alert(" not in re.sub(r"&lt;script&gt;alert\(|onerror=alert\(", "", dom)


async def test_experiment_page_has_table_and_chart(gw: Gateway):
    for n in range(3):
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{gw.proxy_url}/v1/chat/completions",
                json={
                    "model": "mistral-large-latest",
                    "messages": [{"role": "user", "content": f"q{n} {HOSTILE}"}],
                },
                headers={"Authorization": "Bearer k"},
            ) as resp,
        ):
            assert resp.status == 200
    status, created = await post(
        gw,
        "/api/experiments",
        {
            "filter": {"model": "mistral-large-latest"},
            "overrides": {"model": "mistral-small-latest"},
        },
    )
    assert status == 202
    await finished(gw, created["id"])
    status, html, _ = await page(gw, f"/experiments/{created['id']}")
    assert status == 200
    assert_strict_html(html)
    assert html.count("<circle") == 3 and "<svg" in html and "<progress" in html
    assert "cost \u2212" in html and 'http-equiv="refresh"' not in html
    status, partial, headers = await page(
        gw, f"/experiments/{created['id']}", **{"HX-Request": "true"}
    )
    assert status == 200 and "<html" not in partial and "<circle" in partial
    assert headers["Vary"] == "HX-Request"
    status, listing, _ = await page(gw, "/experiments")
    assert status == 200 and f"/experiments/{created['id']}" in listing
    assert (await page(gw, "/experiments/5"))[0] == 404
    assert (await page(gw, "/runs/5/replay"))[0] == 404  # it once offered a form for nothing

    run_id = (await get(gw, "/api/runs"))[1]["items"][-1]["id"]
    status, html, _ = await page(gw, f"/runs/{run_id}/replay")
    assert status == 200 and f'action="/runs/{run_id}/replay"' in html
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies for 127.0.0.1
    async with aiohttp.ClientSession(gw.ui_url, cookie_jar=jar) as http:
        async with http.get(f"/runs/{run_id}/replay") as resp:  # sets the CSRF cookie
            token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', await resp.text())[1]
        async with http.post(
            f"/runs/{run_id}/replay", data={"random_seed": "4", "csrf_token": token}
        ) as resp:
            assert resp.status == 201
            result = await resp.text()
    assert "Followed the recording to the end" in result and "/diffs/" in result


async def test_diff_of_a_tool_call_and_a_text_answer(gw: Gateway):
    """A replay that answers in text where the original asked for a tool: the stored diff's
    page shows the call as removed (it answered 500 before), in the one cost format, under
    one title; the list marks the replay."""
    await send(gw, 1, tools=TOOLS)
    original = await latest_id(gw)
    status, replayed = await post(
        gw, f"/api/exchanges/{original}/replay", {"overrides": {"tool_choice": "none"}}
    )
    assert status == 201, replayed
    diff_id = replayed["diff"]["id"]
    status, html, _ = await page(gw, f"/diffs/{diff_id}")
    assert status == 200, html
    assert_strict_html(html)
    assert re.search(r'<tr class="removed"><td>removed</td><td><code>get_weather</code>', html)
    assert re.search(r"<title>Diff \d+ · AgentOps Studio</title>", html)
    assert " $</td>" not in html and re.search(r">[+\u2212]\$[0-9.]+<|>\$0<", html)
    status, compared, _ = await page(gw, f"/compare?a={original}&b={replayed['exchange']['id']}")
    assert status == 200 and "get_weather" in compared
    status, listing, _ = await page(gw, "/")
    assert f'class="tag replay" href="/exchanges/{original}"' in listing


async def test_experiment_chart_shows_tool_call_steps(gw: Gateway):
    """A model swap over steps that only asked for a tool: no text to compare, so no dot on
    the similarity plot; each is a diamond on the band's "same tools" row instead."""
    for n in range(2):
        await send(gw, n, tools=TOOLS)
    status, created = await post(
        gw,
        "/api/experiments",
        {
            "filter": {"model": "mistral-large-latest"},
            "overrides": {"model": "mistral-small-latest"},
        },
    )
    assert status == 202
    await finished(gw, created["id"])
    status, html, _ = await page(gw, f"/experiments/{created['id']}")
    assert status == 200
    assert_strict_html(html)
    assert "<circle" not in html
    assert html.count('class="dot tool same"') == 2 and 'class="dot tool differ"' not in html
    assert "same tools" in html and "2 of 2" in html


async def long_answer(gw: Gateway, prompt: str, words: int) -> str:
    """A recorded streamed call whose output is `words` words or more (temperature 0)."""
    body = {
        "model": "mistral-small-latest",
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": prompt}],
    }
    headers = {"Authorization": "Bearer k", "x-fake-chunks": str(words)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{gw.proxy_url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        await resp.read()
    await gw.recorder.drained(timeout=30)
    return await latest_id(gw)


async def test_comparing_long_outputs_folds_what_is_unchanged_and_cuts_the_rest(gw: Gateway):
    """Two identical 40,000-word outputs fold to a line; two different ones show at most
    SHOWN_CHARS of each side, then say how much is left. (Two 8 MB answers made 17.5 MB of
    HTML.) The JSON of a diff stays whole: only the page folds."""
    a = await long_answer(gw, "Tell me everything about Lisbon.", 40_000)
    b = await long_answer(gw, "Tell me everything about Lisbon.", 40_000)
    c = await long_answer(gw, "Now everything about Prague, please.", 40_000)
    status, same, _ = await page(gw, f"/compare?a={a}&b={b}")
    assert status == 200 and "identical" in same
    assert re.search(r"… [\d,]+ unchanged characters …", same) and len(same) < 50_000
    status, different, _ = await page(gw, f"/compare?a={a}&b={c}")
    assert status == 200 and "more characters not shown" in different
    assert_strict_html(different)
    assert len(different) < 3 * SHOWN_CHARS  # both sides and their markup
