"""The dataset pages over HTTP (the browser walk is in test_ui_browser.py): a search and a
run added from their pages, a JSONL upload, the items swapped alone for htmx, the forms
need their CSRF token, and mistakes are pages with a message (400/404/409), never a 500.
"""

from __future__ import annotations

import asyncio
import re

import aiohttp
import orjson

from gateway.app import Gateway
from tests.clients import get, send, tool_loop

TOKEN = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')


async def token(http: aiohttp.ClientSession, path: str) -> str:
    async with http.get(path) as resp:
        found = TOKEN.search(await resp.text())
        assert found, path
        return found[1]


async def test_dataset_pages(gateway: Gateway):
    for n in range(3):
        await send(gateway, n)
    await asyncio.to_thread(tool_loop, gateway, "Oslo")
    _, runs = await get(gateway, "/api/runs")
    run = next(r for r in runs["items"] if r["exchange_count"] == 2)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(gateway.ui_url, cookie_jar=jar) as http:
        csrf = await token(http, "/datasets")
        async with http.post("/datasets", data={"name": "x"}, allow_redirects=False) as resp:
            assert resp.status == 403  # no token
        form = {"name": "<i>pages</i>", "description": "d", "csrf_token": csrf}
        async with http.post("/datasets", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
            target = resp.headers["Location"]
        async with http.post("/datasets", data=form) as resp:
            assert resp.status == 409 and "exists already" in await resp.text()
        dataset_id = target.rsplit("/", 1)[1]

        # everything a search selects, from the list's own parameters
        async with http.get("/datasets/add", params={"search": "1", "q": "question"}) as resp:
            html = await resp.text()
            assert resp.status == 200 and '<span class="tag">q: question</span>' in html
        add = {"search": "1", "q": "question", "range": "24h", "dataset": dataset_id}
        add["csrf_token"] = csrf
        async with http.post("/datasets/add", data=add, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].endswith("?added=3")
        # a run, from the run page's button
        async with http.get(f"/runs/{run['id']}") as resp:
            assert f'href="/datasets/add?run_id={run["id"]}"' in await resp.text()
        add = {"run_id": run["id"], "dataset": dataset_id, "csrf_token": csrf}
        async with http.post("/datasets/add", data=add, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].endswith("?added=1")

        # a JSONL upload: Mistral records and our items mixed
        lines = [
            {"payload": {"messages": [{"role": "user", "content": "<script>x</script>"}]}},
            {"input": {"messages": [{"role": "user", "content": "y"}]}, "expected_output": "Y"},
        ]
        upload = aiohttp.FormData()
        upload.add_field("csrf_token", csrf)
        upload.add_field(
            "file", b"\n".join(orjson.dumps(x) for x in lines), filename="records.jsonl"
        )
        async with http.post(
            f"/datasets/{dataset_id}/upload", data=upload, allow_redirects=False
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"].endswith("?added=2")
        async with http.get(f"/datasets/{dataset_id}") as resp:
            html = await resp.text()
        assert "<i>pages</i>" not in html and "&lt;i&gt;pages&lt;/i&gt;" in html
        assert "<script>x" not in html and "&lt;script&gt;x&lt;/script&gt;" in html
        assert "Version 3 (latest) holds 6 items" in html
        async with http.get(
            f"/datasets/{dataset_id}", params={"version": "1"}, headers={"HX-Request": "true"}
        ) as resp:
            fragment = await resp.text()
            assert resp.headers["Vary"] == "HX-Request"
        assert "<html" not in fragment and "Items of version 1" in fragment
        assert fragment.count("<tr>") == 4  # the header and three items

        bad = aiohttp.FormData()
        bad.add_field("csrf_token", csrf)
        bad.add_field("file", b"{oops", filename="bad.jsonl")
        async with http.post(f"/datasets/{dataset_id}/upload", data=bad) as resp:
            assert resp.status == 400 and "bad.jsonl line 1: not JSON" in await resp.text()
        for path, want, words in (
            ("/datasets/add", 400, "tick some calls"),
            ("/datasets/add?pick=abc", 400, "not an id"),
            ("/datasets/999", 404, "dataset not found"),
            (f"/datasets/{dataset_id}?version=9", 400, "does not exist"),
        ):
            async with http.get(path) as resp:
                assert resp.status == want and words in await resp.text(), path
        add = {"pick": "12345", "name": "never made", "csrf_token": csrf}
        async with http.post("/datasets/add", data=add) as resp:
            assert resp.status == 404 and "exchange 12345 not found" in await resp.text()
    _, listed = await get(gateway, "/api/datasets")
    assert [d["name"] for d in listed["items"]] == ["<i>pages</i>"]  # nothing half-made


async def test_score_form(gateway: Gateway):
    await send(gateway, 1)
    _, page = await get(gateway, "/api/exchanges")
    exchange = page["items"][0]["id"]
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(gateway.ui_url, cookie_jar=jar) as http:
        async with http.get(f"/exchanges/{exchange}/score", headers={"HX-Request": "true"}) as resp:
            fragment = await resp.text()
        assert "<html" not in fragment and 'value="bleu"' in fragment
        csrf = TOKEN.search(fragment)[1]
        form = [
            ("scorer", "contains"),
            ("contains", "question"),
            ("scorer", "bleu"),
            ("expected", "question one"),
            ("csrf_token", csrf),
        ]
        async with http.post(f"/exchanges/{exchange}/score", data=form) as resp:
            html = await resp.text()
            assert resp.status == 200 and str(resp.url).endswith(f"/exchanges/{exchange}")
        assert '<td class="name">contains</td>' in html and '<td class="name">bleu</td>' in html
        for data, words in (
            ([("csrf_token", csrf)], "tick at least one scorer"),
            ([("scorer", "bleu"), ("csrf_token", csrf)], "needs an expected output"),
            (
                [("scorer", "judge:absent"), ("csrf_token", csrf)],
                "judge &#39;absent&#39; not found",
            ),
            (
                [("scorer", "embedding_cosine"), ("expected", "x"), ("csrf_token", csrf)],
                "no API key",
            ),
        ):
            async with http.post(f"/exchanges/{exchange}/score", data=data) as resp:
                text = await resp.text()
                assert resp.status in (400, 404) and words in text, (data, text[-400:])


async def test_a_nul_in_a_form_is_a_400_page(gateway: Gateway):
    """PostgreSQL stores no NUL in text: a form field holding one is a page saying so, on
    both databases (the JSON API refuses it the same way)."""
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(gateway.ui_url, cookie_jar=jar) as http:
        csrf = await token(http, "/datasets")
        for path, form in (
            ("/datasets", {"name": "a\x00b"}),
            ("/alerts/rules", {"name": "\x00", "kind": "spend", "threshold": "1"}),
            ("/campaigns", {"name": "c", "description": "\x00", "judge": "j"}),
        ):
            async with http.post(path, data={**form, "csrf_token": csrf}) as resp:
                html = await resp.text()
                assert resp.status == 400 and "NUL" in html, (path, resp.status)
