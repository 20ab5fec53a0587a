"""One `render()` for every page: the full page, or for an htmx request the same partial
template the page includes, with `Vary: HX-Request`; autoescaped Jinja2 throughout.

Templates live in the top-level `templates/` folder of a checkout; a built wheel carries
them as `webui/templates`, so both layouts are looked up.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from gateway.settings import Settings
from webui import csrf, formats

HERE = Path(__file__).resolve().parent
JINJA = web.AppKey("jinja", jinja2.Environment)
UI_TOKEN = web.AppKey("ui_token", str)
SETTINGS = web.AppKey("settings", Settings)
PROXY_URL = web.AppKey("proxy_url", str)
NAV = (
    ("/", "Exchanges"),
    ("/runs", "Runs"),
    ("/dashboard", "Dashboard"),
    ("/datasets", "Datasets"),
    ("/experiments", "Experiments"),
    ("/campaigns", "Campaigns"),
    ("/prices", "Prices"),
    ("/alerts", "Alerts"),
    ("/budgets", "Budgets"),
)


def template_dir() -> Path:
    for candidate in (HERE / "templates", HERE.parent / "templates"):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("the templates folder is missing from this installation")


# Bidirectional controls reorder the text around them on screen (a prompt could show the
# reviewer one thing and hold another, as in "Trojan Source"): every value a template prints
# shows them as their code point instead, as code hosts do. The API and exports keep them,
# and so do form values (`|verbatim`), which must come back as they went out.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class Verbatim(str):
    """Text printed as it is, bidirectional controls included (and escaped as usual)."""


def verbatim(value: Any) -> Any:
    """The `verbatim` filter, for a form's values: a filter, a model to choose, a field
    typed before, whose text must be sent back unchanged."""
    return Verbatim(value) if isinstance(value, str) else value


def shown_controls(value: Any) -> Any:
    """Jinja's `finalize`: a printed text with bidirectional controls gets `[U+202E]` for
    each (Markup stays Markup: the marker holds nothing to escape); `|verbatim` text as is."""
    if value.__class__ is Verbatim:
        return str(value)
    if not isinstance(value, str) or not _BIDI.search(value):
        return value
    shown = _BIDI.sub(lambda found: f"[U+{ord(found.group()):04X}]", value)
    return Markup(shown) if isinstance(value, Markup) else shown


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dir()),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=shown_controls,
    )
    env.filters.update(formats.FILTERS)
    env.filters["verbatim"] = verbatim
    env.globals["query"] = query_string
    return env


def query_string(params: dict[str, Any], **changes: Any) -> str:
    """`?a=1&b=2` from the non-empty values of params updated with changes (for links)."""
    merged = {**params, **changes}
    text = urlencode({k: v for k, v in merged.items() if v not in (None, "")})
    return f"?{text}" if text else ""


def is_htmx(request: web.Request) -> bool:
    """An htmx swap (not a history restore, which needs the whole page)."""
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


def render(
    request: web.Request,
    page: str,
    context: dict[str, Any],
    *,
    partial: str | None = None,
    status: int = 200,
) -> web.Response:
    name = partial if partial is not None and is_htmx(request) else page
    html = (
        request.app[JINJA]
        .get_template(name)
        .render(
            request=request,
            path=request.path,
            nav=NAV,
            csrf_token=csrf.token(request),
            can_sign_out=UI_TOKEN in request.app,
            **context,
        )
    )
    response = web.Response(text=html, status=status, content_type="text/html")
    response.headers["Vary"] = "HX-Request"
    return response


def render_fragment(request: web.Request, name: str, context: dict[str, Any]) -> web.Response:
    """A fragment that only htmx asks for (never a page)."""
    html = request.app[JINJA].get_template(name).render(request=request, **context)
    return web.Response(text=html, content_type="text/html")


def error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    return render(request, "error.html", {"title": title, "message": message}, status=status)
