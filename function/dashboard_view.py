"""GET /dashboard: one self-contained page that draws /metrics and /history in the browser.

The page is static (no data is written into it on the server), so it is read once per instance
and served as is; it fetches the JSON with the token it was opened with. Its Content-Security-Policy
admits only its own inline script and style (by hash) and requests to this service, so the
browser itself refuses anything that would reach beyond the function.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources

import flask

from function.webhook.ingest import Service

PAGE = resources.files("function").joinpath("dashboard/page.html").read_text(encoding="utf-8")


def _hashes(tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)


CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src {_hashes('script')}",
        f"style-src {_hashes('style')}",
        "connect-src 'self'",
        "img-src data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)


def dashboard(request: flask.Request, service: Service, _: str) -> flask.Response:
    response = flask.Response(PAGE, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    # The token is in the page's URL: keep it out of Referer headers.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
