"""What the UI ships: the vendored libraries are the pinned, unmodified npm files (htmx 2.x,
Chart.js 4), nothing refers to another host, and no template can smuggle captured content
past autoescaping or the CSP (no |safe, no inline script or style, no event attributes).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import jinja2
import pytest
from markupsafe import Markup

from webui.render import environment, template_dir

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "webui" / "static"
VENDOR = STATIC / "vendor"
TEMPLATES = sorted(template_dir().glob("*.html"))


def test_vendored_files_match_their_recorded_sources():
    sources = (VENDOR / "SOURCES.txt").read_text().splitlines()
    versions = dict(
        m.groups() for line in sources if (m := re.fullmatch(r"([a-z.]+) (\d+\.\d+\.\d+)", line))
    )
    assert versions["htmx.org"].startswith("2.")  # attribute semantics differ in 4.x
    assert versions["chart.js"].startswith("4.")
    hashes = [line.split() for line in sources if re.match(r"[0-9a-f]{64} ", line)]
    assert {name for _, name in hashes} == {"htmx.min.js", "chart.umd.min.js"}
    for digest, name in hashes:
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, name
    assert (VENDOR / "htmx.LICENSE").exists() and (VENDOR / "chart.js.LICENSE.md").exists()


def test_nothing_refers_to_another_host():
    ours = [*TEMPLATES, *STATIC.glob("*.js"), *STATIC.glob("*.css"), *STATIC.glob("*.svg")]
    for path in ours:
        text = path.read_text()
        for url in re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"'<)]*", text):
            assert url.startswith("http://www.w3.org/2000/svg"), f"{path.name}: {url}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_templates_are_safe_by_construction(path: Path):
    source = path.read_text()
    environment().parse(source)  # it compiles
    assert "|safe" not in source.replace(" ", "") and "autoescape false" not in source
    assert "Markup(" not in source
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", source), "inline script"
    assert not re.search(r"<style\b", source) and not re.search(r"\sstyle=", source)
    assert not re.search(r"\son[a-z]+=", source), "event handler attribute"
    assert "hx-on" not in source and "js:" not in source  # htmx eval is off anyway


def test_htmx_is_configured_for_a_strict_csp():
    base = (template_dir() / "base.html").read_text()
    config = re.search(r'<meta name="htmx-config" content=\'([^\']+)\'', base).group(1)
    for setting in (
        '"includeIndicatorStyles": false',
        '"allowEval": false',
        '"allowScriptTags": false',
        '"selfRequestsOnly": true',
    ):
        assert setting in config


def test_autoescape_is_on_everywhere():
    env = environment()
    assert env.autoescape is True
    assert isinstance(env.undefined, type) and issubclass(env.undefined, jinja2.StrictUndefined)
    rendered = env.from_string("{{ x }}").render(x="<script>")
    assert rendered == "&lt;script&gt;"


def test_bidirectional_controls_are_shown_not_obeyed():
    """A captured text with a right-to-left override would read reversed on screen."""
    env = environment()
    hostile = "pay \u202eeulav\u202c <b> \u2066x\u2069"
    rendered = env.from_string("<p title='{{ x }}'>{{ x }}</p>{{ m }}").render(
        x=hostile, m=Markup("<i>\u200f</i>")
    )
    assert not re.search("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]", rendered)
    shown = "pay [U+202E]eulav[U+202C] &lt;b&gt; [U+2066]x[U+2069]"
    assert rendered == f"<p title='{shown}'>{shown}</p><i>[U+200F]</i>"
    assert env.from_string("{{ x }}").render(x="plain, ünïcode, עברית") == "plain, ünïcode, עברית"
    # a form's value is sent back as it went out (and escaped as ever)
    kept = env.from_string('<input value="{{ x|verbatim }}">').render(x='\u202e<"x">')
    assert kept == '<input value="\u202e&lt;&#34;x&#34;&gt;">'
