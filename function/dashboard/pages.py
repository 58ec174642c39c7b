"""The pages this service shows to people, and the Content-Security-Policy every page gets.

`dashboard_page` (GET /dashboard) is the operator's view of /metrics and /history; `me_page`
(GET /me/<uid>?key=...) is a user's own history; `setup_page` (GET /setup) is what an
Omi user reads when installing the app; `privacy_page` (GET /privacy) says what is kept and for
how long. Each is a static file beside this module, read once per instance and served as is (the
one thing written into it is base.css, the look every page shares, at its `<!-- base.css -->`
line): no server data is ever written into a page, so nothing a user sent can end up in its HTML. A page
that needs data reads what it needs from its own URL and fetches JSON from this same service.

`content_security_policy` builds the policy from the page itself: only the page's own inline
<script> and <style> blocks run (admitted by their sha256 hashes), nothing is loaded from
anywhere, and requests go to this service only when the page asks for it. A page that would
defeat that (an external script, an inline event handler or style attribute, a javascript: URL)
is refused when this module is imported, not discovered in a browser.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources

import flask

_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
_TAG = re.compile(r"<[A-Za-z][^>]*>")
# What a hash-based policy cannot admit, or what would load something from elsewhere.
_FORBIDDEN_IN_TAG = re.compile(
    r"^<(script|style|link\s[^>]*rel=\"?stylesheet)\b"  # a script or style with attributes, a stylesheet
    r"|\son[a-z]+\s*=|\sstyle\s*=|javascript:",  # inline handlers, style attributes, javascript: URLs
    re.I,
)

# Where a page takes base.css (colours, light and dark, type, header, cards, buttons, links).
BASE_STYLE_MARK = "<!-- base.css -->"

SECURITY_HEADERS = {
    # Links carry a personal key in their URL: never send it on in a Referer header.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class PageError(ValueError):
    """A page holds something its Content-Security-Policy could not admit."""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


def inline_blocks(html: str, tag: str) -> list[str]:
    """The text of every attribute-less <tag>...</tag> block, exactly as the browser hashes it."""
    return [text for name, text in _BLOCK.findall(html) if name == tag]


def check_page(html: str, name: str = "page") -> None:
    """Raise `PageError` if the page has markup a hash-only policy would silently block."""
    outside = _BLOCK.sub("", html)
    for tag in _TAG.findall(outside):
        if _FORBIDDEN_IN_TAG.search(tag):
            raise PageError(f"{name}: {tag[:80]!r} cannot run under a hash-based Content-Security-Policy")


def content_security_policy(html: str, *, connect: str = "'none'", name: str = "page") -> str:
    """The policy for one page: its own inline scripts and styles by hash, `connect` for fetch().

    `connect="'self'"` lets the page call this service (the dashboard and the history page do);
    the default lets it call nothing. A page without scripts (or styles) gets `'none'` for them.
    Raises `PageError` (naming the page) for markup the policy would block.
    """
    check_page(html, name)
    scripts = " ".join(_sha256(block) for block in inline_blocks(html, "script")) or "'none'"
    styles = " ".join(_sha256(block) for block in inline_blocks(html, "style")) or "'none'"
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src {scripts}",
            f"style-src {styles}",
            f"connect-src {connect}",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def html_response(html: str, policy: str, cache_control: str = "no-cache") -> flask.Response:
    """A text/html response carrying `policy` and the headers every page of this service has."""
    response = flask.Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = policy
    response.headers.update(SECURITY_HEADERS)
    response.headers["Cache-Control"] = cache_control
    return response


@dataclass(frozen=True)
class Page:
    """One static page with the policy computed from its own blocks."""

    name: str
    html: str
    connect: str = "'none'"
    cache_control: str = "no-cache"
    policy: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", content_security_policy(self.html, connect=self.connect, name=self.name))

    @classmethod
    def load(cls, filename: str, **options: str) -> "Page":
        """The page file with the shared style in place of its `<!-- base.css -->` line, before
        its policy hashes the blocks; a page without that line is refused (it would lose the look)."""
        folder = resources.files("function").joinpath("dashboard")
        html = folder.joinpath(filename).read_text(encoding="utf-8")
        if html.count(BASE_STYLE_MARK) != 1:
            raise PageError(f"{filename}: needs exactly one {BASE_STYLE_MARK} line where the shared style goes")
        base = folder.joinpath("base.css").read_text(encoding="utf-8")
        return cls(filename, html.replace(BASE_STYLE_MARK, f"<style>\n{base}</style>"), **options)

    def response(self) -> flask.Response:
        return html_response(self.html, self.policy, self.cache_control)


# The dashboard fetches /metrics and /history with the admin token it was opened with, and the
# history page /me/<uid>/history with the user's key: both URLs carry a secret, so no copy of
# either page's request is kept in any cache.
DASHBOARD = Page.load("page.html", connect="'self'", cache_control="no-store")
ME = Page.load("me.html", connect="'self'", cache_control="no-store")
SETUP = Page.load("setup.html", cache_control="public, max-age=3600")
PRIVACY = Page.load("privacy.html", cache_control="public, max-age=3600")


def dashboard_page() -> flask.Response:
    """GET /dashboard: the page opened with ?token=<ADMIN_TOKEN> fetches the JSON with it."""
    return DASHBOARD.response()


def me_page() -> flask.Response:
    """GET /me/<uid>?key=<k>: the page reads uid and key from its own URL and fetches the JSON."""
    return ME.response()


def setup_page() -> flask.Response:
    """GET /setup: what the app does and what a user needs to do (nothing beyond enabling it)."""
    return SETUP.response()


def privacy_page() -> flask.Response:
    """GET /privacy: what is received, kept, shared, and for how long."""
    return PRIVACY.response()
