"""The web UI in a real browser (Debian's Chromium through Playwright) on real captured
traffic: every page renders in both themes, search and filters swap the table without a page
load, the live list picks up a new call, hostile prompts stay text, a tool-calling loop reads
as a timeline, delete asks first, the login cookie is HttpOnly and SameSite=Strict, and no
request ever leaves 127.0.0.1. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import contextlib
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.ui_server import HOSTILE, KEY, ThreadedGateway, chat, seed_traffic

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LOOPBACK = {"127.0.0.1"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedGateway]:
    with ThreadedGateway(tmp_path_factory.mktemp("ui")) as server:
        seed_traffic(server)
        yield server


class Watch:
    """Everything a page asked for, and every error it raised."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh context per test; any request for a host other than 127.0.0.1 is recorded
    and refused, so a stray CDN reference or a beacon fails the test."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    watch = Watch()

    def guard(route: Any) -> None:
        url = route.request.url
        watch.urls.append(url)
        if urlsplit(url).hostname not in LOOPBACK and not url.startswith(("data:", "blob:")):
            route.abort()
        else:
            route.continue_()

    context.route("**/*", guard)
    tab = context.new_page()
    tab.on("pageerror", lambda exc: watch.errors.append(f"page error: {exc}"))
    tab.on(
        "console",
        lambda msg: watch.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    tab.watch = watch
    yield tab
    context.close()
    outside = [
        u
        for u in watch.urls
        if urlsplit(u).hostname not in LOOPBACK and not u.startswith(("data:", "blob:"))
    ]
    assert not outside, f"requests left 127.0.0.1: {outside}"
    assert not watch.errors, watch.errors


def ids(gw: ThreadedGateway, sql: str) -> list[Any]:
    return [row["id"] for row in gw.call(gw.gateway.store.rows(sql))]


def run_id(gw: ThreadedGateway, name: str) -> int:
    return ids(gw, f"SELECT id FROM runs WHERE name = '{name}'")[0]


def shot(page: Any, name: str, *, full: bool = True) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # a sticky header would show mid-picture
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)


def test_every_page_renders_captured_traffic_in_both_themes(gw: ThreadedGateway, page: Any):
    newest = ids(gw, "SELECT id FROM exchanges ORDER BY id DESC LIMIT 1")[0]
    pages = {
        "exchanges": ("/", "Write a haiku about the sea"),
        "exchange": (f"/exchanges/{newest}", "hx payload"),
        "runs": ("/runs", "weather-agent"),
        "run": (f"/runs/{run_id(gw, 'weather-agent')}", "sunny in Paris"),
        "dashboard": ("/dashboard", "Most expensive runs"),
        "prices": ("/prices", "my-private-finetune"),
        "alerts": ("/alerts", "No rules yet"),
        "budgets": ("/budgets", "Add a budget"),
    }
    for theme in ("light", "dark"):
        page.emulate_media(color_scheme=theme)
        for name, (path, text) in pages.items():
            page.goto(gw.ui_url + path)
            page.get_by_text(text).first.wait_for()
            if name == "dashboard":
                page.wait_for_function(
                    "() => [...document.querySelectorAll('canvas')]"
                    ".every(c => window.Chart && Chart.getChart(c))"
                )
            shot(page, f"{name}-{theme}", full=theme == "light")
    assert any(u.endswith("/static/vendor/htmx.min.js") for u in page.watch.urls)
    assert any(u.endswith("/static/vendor/chart.umd.min.js") for u in page.watch.urls)


def test_search_and_filters_swap_the_table_without_a_page_load(gw: ThreadedGateway, page: Any):
    page.goto(gw.ui_url + "/")
    page.evaluate("window.__sameDocument = true")
    rows = page.locator("#rows tr")
    total = rows.count()
    page.fill("#q", "haiku")
    page.wait_for_url(re.compile(r"/\?q=haiku$"))
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 1")
    assert "haiku" in rows.first.inner_text()
    page.fill("#q", "")
    page.wait_for_function(f"() => document.querySelectorAll('#rows tr').length === {total}")
    page.select_option("#f-model", "codestral-latest")
    page.wait_for_url(re.compile(r"model=codestral-latest"))
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 1")
    page.select_option("#f-status", "4xx")
    page.wait_for_selector("text=Nothing matches")
    assert page.evaluate("window.__sameDocument") is True  # never reloaded
    page.goto(page.url)  # the URL alone reproduces the view
    assert page.input_value("#f-model") == "codestral-latest"
    assert page.input_value("#f-status") == "4xx"
    shot(page, "exchanges-filtered")


def test_live_list_picks_up_a_new_call(gw: ThreadedGateway, page: Any):
    page.goto(gw.ui_url + "/")
    page.evaluate("window.__sameDocument = true")
    chat(gw, "a brand new question about tides")
    page.locator("#rows tr.fresh", has_text="brand new question about tides").wait_for(
        timeout=10_000
    )
    assert page.evaluate("window.__sameDocument") is True
    first = page.locator("#rows tr").first.inner_text()
    assert "brand new question about tides" in first
    chat(gw, "and a second one about waves")  # the poller moved its cursor forward
    page.locator("#rows tr", has_text="second one about waves").wait_for(timeout=10_000)
    assert page.locator("#rows tr", has_text="brand new question about tides").count() == 1


def test_hostile_prompt_is_text_and_runs_nothing(gw: ThreadedGateway, page: Any):
    hostile = ids(
        gw,
        # bodies are compressed (gateway/store/bodies.py): the list preview holds the prompt
        "SELECT id FROM exchanges WHERE preview LIKE '%window.__pwned%' ORDER BY id DESC LIMIT 1",
    )[0]
    for path in (f"/exchanges/{hostile}", "/?q=pwned"):
        asked = len(page.watch.urls)
        page.goto(gw.ui_url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__pwned") is None
        assert page.locator("img[src=x]").count() == 0
        assert page.locator("[hx-trigger=load]").count() == 0
        assert "/exchanges/live?" not in " ".join(
            u for u in page.watch.urls[asked:] if "after=" not in u
        )
    page.goto(gw.ui_url + f"/exchanges/{hostile}")
    assert HOSTILE.split(" <img")[0] in page.locator("article.msg.role-user").inner_text()
    page.get_by_text("Request body").click()
    assert "window.__pwned = 2" in page.locator("pre.body").first.inner_text()
    assert page.evaluate("window.__pwned") is None
    shot(page, "exchange-hostile")


def test_run_timeline_of_a_tool_calling_loop(gw: ThreadedGateway, page: Any):
    page.goto(gw.ui_url + f"/runs/{run_id(gw, 'weather-agent')}")
    bars = page.locator("ol.waterfall rect.wf-bar")
    assert bars.count() == 2
    assert page.locator("ol.waterfall rect.wf-tool").count() == 1
    first, second = (float(bars.nth(i).get_attribute("x")[:-1]) for i in range(2))
    assert first == 0 and second > first
    step1, step2 = page.locator("article.step").all()
    assert "get_weather" in step1.locator("table.tools").inner_text()
    assert "sunny in Paris" in step1.locator("table.tools").inner_text()
    assert '"city"' in step1.locator("table.tools pre").first.inner_text()
    assert "sunny in Paris" in step2.locator("article.msg.role-tool").first.inner_text()
    memory = step2.locator("details.memory summary")
    assert "kept 3" in memory.inner_text() and "added 2" in memory.inner_text()
    memory.click()
    assert "sunny in Paris" in step2.locator("details.memory").inner_text()
    step1.get_by_role("link", name="Step 1").click()
    page.get_by_role("link", name="Next step →").click()
    page.get_by_role("link", name="← Previous step").wait_for()
    assert "/exchanges/" in page.url


def test_delete_asks_first_and_carries_a_csrf_token(gw: ThreadedGateway, page: Any):
    chat(gw, "please forget this one")
    gw.drained()
    victim = ids(gw, "SELECT id FROM exchanges ORDER BY id DESC LIMIT 1")[0]
    page.goto(gw.ui_url + f"/exchanges/{victim}")
    button = page.get_by_role("button", name="Delete exchange")
    assert not button.is_visible()  # hidden until the user opens the confirmation
    page.get_by_text("Delete this exchange…").click()
    assert page.locator("form[action$='/delete'] input[name=csrf_token]").input_value()
    button.click()
    page.get_by_text(f"Exchange {victim} was deleted").wait_for()
    assert not ids(gw, f"SELECT id FROM exchanges WHERE id = {victim}")


def test_keyboard_and_theme(gw: ThreadedGateway, page: Any):
    page.goto(gw.ui_url + "/")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.press("Escape")
    page.locator("body").click(position={"x": 5, "y": 400})
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.classList.contains('rowlink')")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/exchanges/\d+$"))
    before = page.evaluate("getComputedStyle(document.body).backgroundColor")
    page.click("#theme-toggle")
    after = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert before != after
    page.reload()  # the choice is remembered
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == after


def test_tick_three_calls_into_a_new_dataset(gw: ThreadedGateway, page: Any):
    page.goto(gw.ui_url + "/")
    picked = ("Write a haiku about the sea", "plot of Hamlet", "capital of Australia")
    for text in picked:
        page.locator("#rows tr", has_text=text).locator("input[name=pick]").check()
    page.click("#add-ticked")
    page.wait_for_url(re.compile(r"/datasets/add\?pick=\d+&pick=\d+&pick=\d+$"))
    page.fill("#add-name", "picked <b>three</b>")
    page.get_by_role("button", name="Add").click()
    page.wait_for_url(re.compile(r"/datasets/\d+\?added=3$"))
    page.get_by_text("Added 3 items: this is version 1.").wait_for()
    assert page.locator(".dataset-name").inner_text() == "picked <b>three</b>"
    rows = page.locator("table.dataset-items tbody tr")
    assert rows.count() == 3
    for text in picked:
        assert rows.filter(has_text=text).count() == 1
    dataset_id = page.url.rsplit("/", 1)[1].split("?")[0]
    shot(page, "dataset")
    # the hostile prompt, added from its exchange page, stays text on the dataset page
    hostile = ids(
        gw, "SELECT id FROM exchanges WHERE preview LIKE '%window.__pwned%' ORDER BY id LIMIT 1"
    )[0]
    page.goto(gw.ui_url + f"/exchanges/{hostile}")
    page.get_by_role("link", name="Add to a dataset").click()
    page.select_option("#add-dataset", dataset_id)
    page.get_by_role("button", name="Add").click()
    page.get_by_text("Added 1 item: this is version 2.").wait_for()
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("img[src=x]").count() == 0
    assert rows.filter(has_text="window.__pwned = 1").count() == 1
    page.goto(gw.ui_url + f"/datasets/{dataset_id}?version=1")
    assert rows.count() == 3  # the older version, as it was
    # score a call from its page: the form loads when its section opens
    page.goto(gw.ui_url + f"/exchanges/{hostile}")
    page.get_by_text("Score this call").click()
    page.locator("form.score-form").wait_for()
    page.get_by_label("valid JSON").check()
    page.get_by_label("regular expression", exact=True).check()
    page.fill("input[name=pattern]", "\\w+")
    page.get_by_role("button", name="Score").click()
    page.wait_for_url(re.compile(rf"/exchanges/{hostile}#evals-h$"))
    evals = page.locator("section[aria-labelledby=evals-h] tbody tr")
    assert evals.filter(has_text="json_valid").count() == 1
    assert evals.filter(has_text="regex").locator("td.num").inner_text() == "1"
    assert page.evaluate("window.__pwned") is None
    page.goto(gw.ui_url + "/datasets")
    page.get_by_role("link", name="picked <b>three</b>").wait_for()
    shot(page, "datasets")


def test_login_form_sets_a_strict_httponly_cookie(browser: Any, tmp_path: Path):
    with ThreadedGateway(tmp_path, ui_token="correct horse battery") as server:
        context = browser.new_context()
        tab = context.new_page()
        tab.goto(server.ui_url + "/runs?status=ok")
        assert "/login" in tab.url
        tab.fill("#token", "wrong")
        tab.click("button[type=submit] >> text=Sign in")
        tab.get_by_text("That is not the token").wait_for()
        tab.fill("#token", "correct horse battery")
        tab.click("button[type=submit] >> text=Sign in")
        tab.wait_for_url(re.compile(r"/runs\?status=ok$"))
        (cookie,) = [c for c in context.cookies() if c["name"] == "agentops_session"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert "agentops_session" not in tab.evaluate("document.cookie")
        api = tab.request.get(server.ui_url + "/api/exchanges")
        assert api.status == 401  # the API wants the Bearer header, not the cookie
        tab.get_by_role("button", name="Sign out").click()
        tab.wait_for_url(re.compile(r"/login"))
        tab.goto(server.ui_url + "/")
        assert "/login" in tab.url
        context.close()


def weather_steps(gw: ThreadedGateway) -> list[Any]:
    return ids(
        gw, f"SELECT id FROM exchanges WHERE run_id = {run_id(gw, 'weather-agent')} ORDER BY id"
    )


def test_compare_a_tool_call_with_a_text_answer(gw: ThreadedGateway, page: Any):
    """Step 1 asked for a tool, step 2 answered in text: the comparison shows the call as
    removed, the cost change in the one cost format, and one title."""
    first, second = weather_steps(gw)
    response = page.goto(gw.ui_url + f"/compare?a={first}&b={second}")
    assert response.status == 200
    calls = page.locator("table.calls")
    assert "removed" in calls.inner_text() and "get_weather" in calls.inner_text()
    assert '"city"' in calls.locator("pre").first.inner_text()
    cost = page.locator("table.deltas tr", has_text="Cost").locator("td").nth(1).inner_text()
    assert re.fullmatch(r"[+\u2212]\$[0-9.]+|\$0", cost), cost
    assert page.title().count("AgentOps Studio") == 1
    shot(page, "compare-tool-call")


def test_exchange_shows_its_parameters_and_tools(gw: ThreadedGateway, page: Any):
    first, _ = weather_steps(gw)
    page.goto(gw.ui_url + f"/exchanges/{first}")
    block = page.locator("section.request-view")
    assert "mistral-large-latest" in block.locator("dl.params").inner_text()
    tool = block.locator("ul.tools-offered details").first
    assert "get_weather" in tool.locator("summary").inner_text()
    assert "Weather for a city" in tool.locator("summary").inner_text()
    tool.locator("summary").click()
    assert '"city"' in tool.locator("pre").inner_text()
    shot(page, "exchange-request-block")


def test_a_300_kb_answer_is_collapsed_until_asked(gw: ThreadedGateway, page: Any):
    (long_id,) = ids(gw, "SELECT id FROM exchanges WHERE preview = 'Tell me everything'")
    page.goto(gw.ui_url + f"/exchanges/{long_id}")
    answer = page.locator("article.msg.output .part").first
    assert len(answer.inner_text()) <= 4_000
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 5_000, height  # not the 49,825 px of the whole answer
    shot(page, "exchange-long-collapsed")
    button = page.get_by_role("button", name=re.compile(r"Show all [0-9,]+ characters"))
    button.click()
    page.wait_for_function(
        "() => document.querySelector('article.msg.output .part').textContent.length > 250000"
    )
    assert page.locator("p.show-all").count() == 1  # the raw body's button stays
    page.get_by_text("Response body").click()
    raw = page.locator("pre.body").nth(1)
    assert len(raw.inner_text()) <= 2_000
    page.get_by_role("button", name=re.compile("Load the whole body")).click()
    page.wait_for_function(
        "() => document.querySelectorAll('pre.body')[1].textContent.length > 100000"
    )
    assert page.locator("p.show-all").count() == 0


def test_replay_form_error_stays_in_the_filled_form(gw: ThreadedGateway, page: Any):
    """Without a replay key on the server, a submitted form comes back filled with the error
    inside it, and the model picker offers the models seen and priced."""
    first, _ = weather_steps(gw)
    page.goto(gw.ui_url + f"/exchanges/{first}/replay")
    form = page.locator("form.replay-form")
    groups = form.locator("optgroup")
    labels = [groups.nth(i).get_attribute("label") for i in range(groups.count())]
    assert labels[:2] == ["Seen in your traffic", "With a price"]
    seen = groups.first.inner_text()
    assert "codestral-latest" in seen and "my-private-finetune" in seen
    assert "mistral-medium-latest" in groups.nth(1).inner_text()
    form.locator("select[name=model]").select_option("mistral-small-latest")
    form.locator("input[name=temperature]").fill("0.3")
    form.locator("textarea[name=overrides]").fill('{"top_p": 0.9}')
    form.get_by_role("button", name="Replay").click()
    error = page.locator("form.replay-form .form-error")
    error.wait_for()
    assert "enter one in the API key field" in error.inner_text()
    assert "Could not do that" not in page.content()
    assert page.locator("select[name=model]").input_value() == "mistral-small-latest"
    assert page.locator("input[name=temperature]").input_value() == "0.3"
    assert page.locator("textarea[name=overrides]").input_value() == '{"top_p": 0.9}'
    assert page.locator("input[name=api_key]").input_value() == ""
    assert page.title().count("AgentOps Studio") == 1
    shot(page, "replay-form-error")
    # The refilled form is the answer to a bad submission, so it comes with its 400, which
    # Chromium logs: the one console error this test expects.
    expected = "console: Failed to load resource: the server responded with a status of 400"
    assert [e for e in page.watch.errors if e.startswith(expected)] == page.watch.errors
    page.watch.errors.clear()


def test_experiment_page_reads_text_and_tool_calls_apart(gw: ThreadedGateway, page: Any):
    """A model swap over a tool-calling run: the tool-call step counts for tool-call
    agreement, the text answer for similarity; no "-0 ms", one title."""
    from tests.clients import finished, post

    assert gw.gateway is not None
    status, created = gw.call(
        post(
            gw.gateway,
            "/api/experiments",
            {
                "run_id": str(run_id(gw, "weather-agent")),
                "overrides": {"model": "mistral-small-latest"},
                "api_key": "a-key-for-this-experiment",
            },
        )
    )
    assert status == 202, created
    gw.call(finished(gw.gateway, created["id"]), timeout=60)
    page.goto(gw.ui_url + f"/experiments/{created['id']}")
    summary = page.locator("p.summary").inner_text()
    assert "text similarity" in summary and "(median of 1 step with text)" in summary
    assert "same tool calls in 1 of 1 step" in summary
    rows = page.locator("table.rows tbody").inner_text()
    assert "no text" in rows and "-0 ms" not in page.content()
    # the tool-call step is on the chart too: a mark on the band's "same tools" row
    assert page.locator("figure.chart path.dot.tool.same").count() == 1
    assert "1 of 1" in page.locator("figure.chart figcaption").inner_text()
    assert page.title() == f"Experiment {created['id']} · AgentOps Studio"
    shot(page, "experiment-tool-steps")


def test_dashboard_labels_every_bar_and_fits_its_range(gw: ThreadedGateway, page: Any):
    """Twelve models: each bar of the by-model charts keeps its label; a first hour of use in
    the default 7-day range is drawn by the hour; the error rate is bars, not a dot."""
    for n in range(8):
        chat(gw, f"model number {n}", model=f"extra-model-with-a-long-name-{n}")
    gw.drained()
    page.goto(gw.ui_url + "/dashboard")
    page.wait_for_function(
        "() => [...document.querySelectorAll('canvas')]"
        ".every(c => window.Chart && Chart.getChart(c))"
    )
    found = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('canvas[data-chart]')].map(c => {
            const chart = Chart.getChart(c), spec = JSON.parse(c.dataset.chart);
            const axis = spec.horizontal ? chart.scales.y : chart.scales.x;
            return [c.getAttribute('aria-label').split(';')[0], {
                type: chart.config.type, labels: spec.labels, ticks: axis.ticks.length}];
        }))"""
    )
    by_model = found["Cost by model"]
    assert len(by_model["labels"]) >= 12
    assert by_model["ticks"] == len(by_model["labels"])
    latency = found["Latency percentiles by model"]
    assert latency["ticks"] == len(latency["labels"])
    over_time = found["Calls and errors over time"]
    assert 1 <= len(over_time["labels"]) <= 2  # this hour (and maybe the previous one)
    assert all(re.fullmatch(r"[A-Z][a-z]{2} \d\d \d\d:00", label) for label in over_time["labels"])
    assert found["Error rate over time"]["type"] == "bar"
    shot(page, "dashboard-many-models")


def test_multi_agent_run_reads_as_lanes_with_handoffs(gw: ThreadedGateway, page: Any):
    """A triage agent hands over to a researcher, then (streamed) to a writer, then answers a
    follow-up itself: three lanes, two handoff arrows, dashed arrows back to triage (each
    call starts with the conversation's agent); a block opens its call. Screenshots:
    test-artifacts/run-lanes.png, run-lanes-section.png."""
    with gw.client() as client:
        researcher = client.beta.agents.create(model="mistral-small-latest", name="Researcher")
        writer = client.beta.agents.create(model="mistral-large-latest", name="Writer")
        triage = client.beta.agents.create(
            model="mistral-medium-latest", name="Triage", handoffs=[researcher.id, writer.id]
        )
    with gw.client("/r/newsroom") as client:
        started = client.beta.conversations.start(
            agent_id=triage.id, inputs="Ask the researcher when the Rhine was first mapped"
        )
        list(
            client.beta.conversations.append_stream(
                conversation_id=started.conversation_id,
                inputs="Now have the writer turn it into two lines",
            )
        )
        client.beta.conversations.append(
            conversation_id=started.conversation_id, inputs="Thanks, that is all"
        )
    gw.drained()
    page.goto(gw.ui_url + f"/runs/{run_id(gw, 'newsroom')}")
    section = page.locator("section.lanes")
    labels = section.locator("ol.lane-labels li").all_inner_texts()
    assert [label.split("\n")[0] for label in labels] == ["Triage", "Researcher", "Writer"]
    assert section.locator("line.lane-link.handoff").count() == 2
    assert section.locator("line.lane-link.switch").count() == 2
    assert section.locator("table.handoffs tbody tr").count() == 2
    # every block sits inside the track and on its own lane's band
    track = section.locator("svg.lane-track").bounding_box()
    for block in section.locator("rect.lane-block").all():
        box = block.bounding_box()
        inside = (
            track["x"] - 1 <= box["x"] <= box["x"] + box["width"] <= track["x"] + track["width"] + 1
        )
        assert inside, (box, track)
    shot(page, "run-lanes", full=False)
    section.screenshot(path=str(ARTIFACTS / "run-lanes-section.png"))
    page.emulate_media(color_scheme="dark")
    section.screenshot(path=str(ARTIFACTS / "run-lanes-section-dark.png"))
    section.locator("rect.lane-block").first.click()
    page.wait_for_url("**/exchanges/*")


def test_tick_three_calls_then_an_experiment_with_two_variants(gw: ThreadedGateway, page: Any):
    page.goto(gw.ui_url + "/")
    for text in ("Write a haiku about the sea", "plot of Hamlet", "capital of Australia"):
        page.locator("#rows tr", has_text=text).locator("input[name=pick]").check()
    page.click("#add-ticked")
    page.wait_for_url(re.compile(r"/datasets/add\?pick=\d+&pick=\d+&pick=\d+$"))
    page.fill("#add-name", "experiment three")
    page.get_by_role("button", name="Add").click()
    page.wait_for_url(re.compile(r"/datasets/\d+\?added=3$"))
    page.get_by_text("Run an experiment over this dataset").click()
    page.fill("#v1-name", "large")
    page.fill("#v1-model", "mistral-large-latest")
    page.fill("#v1-temperature", "0")
    page.fill("#v2-name", "small")
    page.fill("#v2-model", "mistral-small-latest")
    page.fill("#v2-system", "Answer briefly.")
    page.fill("#x-api-key", "browser-key-1234")
    page.get_by_role("button", name="Start the experiment").click()
    page.wait_for_url(re.compile(r"/experiments/\d+$"))
    page.locator("#experiment-live .badge", has_text="done").wait_for(timeout=30_000)
    board = page.locator("table.scoreboard tbody tr")
    assert board.count() == 2
    assert board.filter(has_text="large").count() == 1
    assert board.filter(has_text="small").count() == 1
    page.wait_for_function(
        "() => [...document.querySelectorAll('figure.cost-score canvas')]"
        ".every(c => window.Chart && Chart.getChart(c)) && "
        "document.querySelectorAll('figure.cost-score canvas').length >= 1"
    )
    items = page.locator("table.side-by-side tbody tr")
    assert items.count() == 3
    assert items.filter(has_text="capital of Australia").count() == 1
    page.get_by_text("What got worse from large to small").wait_for()
    shot(page, "dataset-experiment")
    items.first.get_by_role("link", name="diff with large").click()
    page.wait_for_url(re.compile(r"/compare\?a=\d+&b=\d+$"))
    assert page.locator("table.deltas").count() == 1


WIDTHS = """() => ({page: document.documentElement.scrollWidth,
  window: document.documentElement.clientWidth,
  tables: [...document.querySelectorAll('.table-wrap')].map(w => w.scrollWidth - w.clientWidth),
  values: [...document.querySelectorAll('dl.params dd')].map(dd => dd.offsetWidth)})"""


WIDEST = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .slice(0, 5)
  .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"""


def test_long_unbroken_captured_names_stay_inside_the_window(
    browser: Any, page: Any, tmp_path: Path
):
    """Callers choose model, run, tag and request-field names, prompts and dataset texts: a
    150-letter name without a space is cut with an ellipsis or wrapped, a 10,000-letter word
    wraps, and no page grows wider than the window (a long field name once squeezed the
    request's values to a column one letter wide, a long model name pushed the list's filter
    form and every column after the run's off screen, a long run or budget name every column
    after it to the far end of a scrolling table)."""
    word = "W" * 150
    with ThreadedGateway(tmp_path) as gw:
        headers = {"X-AgentOps-Run": "r" + word, "X-AgentOps-Tags": f"k{word}=v{word}"}
        headers["X-AgentOps-Agent"] = "a" + word
        chat(gw, "x" * 10_000, model="m" + word, headers=headers)
        body = {"model": "mistral-small-latest", "messages": [{"role": "user", "content": "hi"}]}
        tool = {"type": "function", "function": {"name": "t" + word, "description": "d" + word}}
        odd = urllib.request.Request(
            gw.proxy_url + "/v1/chat/completions",
            data=json.dumps({**body, "temperature": 0.5, "f" + word: 1, "tools": [tool]}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
        )
        with contextlib.suppress(urllib.error.HTTPError):  # the fake refuses the field: 422
            urllib.request.urlopen(odd, timeout=30).close()
        gw.drained()
        dataset = page.request.post(
            gw.ui_url + "/api/datasets", data={"name": "d" + word, "description": "y" * 10_000}
        ).json()
        scope = {"kind": "run", "value": "r" + word}
        budget = {"name": "b" + word, "scope": scope, "period": "day", "limit_usd": 1}
        assert page.request.post(gw.ui_url + "/api/budgets", data=budget).status == 201
        calls = ids(gw, "SELECT id FROM exchanges ORDER BY id")
        for metric in ("s" + word, "t" + word):  # two series: the scores chart has a legend
            score = {"metric_name": metric, "metric_value": 0.5}
            assert page.request.post(
                f"{gw.ui_url}/api/exchanges/{calls[0]}/evaluations", data=score
            ).ok
        paths = ["/", "/runs", f"/runs/{run_id(gw, 'r' + word)}", f"/datasets/{dataset['id']}"]
        paths += ["/dashboard", "/budgets", "/prices"]
        for path in paths + [f"/exchanges/{i}" for i in calls]:
            page.goto(gw.ui_url + path)
            widths = page.evaluate(WIDTHS)
            assert widths["page"] <= widths["window"], (path, widths)
            assert all(extra <= 2 for extra in widths["tables"]), (path, widths)  # no scrolling
            assert all(w > 300 for w in widths["values"]), (path, widths)  # of 1,320
        shot(page, "long-names-exchange")
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the dashboard's
        for path in [*paths, f"/exchanges/{calls[0]}", "/alerts", "/datasets", "/experiments"]:
            page.goto(gw.ui_url + path)  # date range once pushed the page 62 px wider
            widths = page.evaluate(WIDTHS)
            wide = page.evaluate(WIDEST)
            assert widths["page"] <= widths["window"], ("390 px", path, widths, wide)
        page.goto(gw.ui_url + "/dashboard")
        page.wait_for_function(
            "() => [...document.querySelectorAll('canvas')]"
            ".every(c => window.Chart && Chart.getChart(c))"
        )
        legends = page.evaluate(
            """() => [...document.querySelectorAll('canvas')].flatMap(c =>
                (Chart.getChart(c).legend.legendItems || []).map(item => item.text))"""
        )
        assert any(text.startswith("sWWW") for text in legends), legends
        assert all(len(text) <= 60 for text in legends), legends  # cut, not off the canvas
