"""The Omi app manifest (function/omi_app.py, omi-app.json) and the pages people open
(function/dashboard/pages.py): /me/<uid>, /setup, /privacy.

The manifest must be what Omi's app store accepts, for a URL Omi accepts; the template in the
repository must be exactly what the generator prints. Every page must carry a policy whose hashes
are those of its own inline blocks (computed here with the standard library's HTML parser, not
with the module's own regular expression), load nothing from anywhere, and leak no key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from function import cli, omi_app
from function.dashboard import pages

ROOT = Path(__file__).resolve().parent.parent

# What Omi's backend accepts, as read from BasedHardware/omi: `AppCreate` and `ExternalIntegration`
# in backend/models/app.py, `ActionType` (the only action ids POST /v1/apps lets through),
# GET /v1/app-categories and GET /v1/app-capabilities in backend/routers/apps.py.
OMI_APP_FIELDS = {
    "id", "name", "uid", "private", "approved", "status", "category", "email", "author", "description", "image",
    "capabilities", "memory_prompt", "chat_prompt", "persona_prompt", "username", "connected_accounts", "twitter",
    "external_integration", "proactive_notification", "created_at", "is_paid", "price", "payment_plan",
    "thumbnails", "chat_tools", "source_code_url",
}  # fmt: skip
OMI_INTEGRATION_FIELDS = {
    "triggers_on", "webhook_url", "setup_completed_url", "setup_instructions_file_path", "is_instructions_url",
    "auth_steps", "app_home_url", "actions", "chat_tools_manifest_url", "chat_messages_enabled",
    "chat_messages_target", "chat_messages_notify", "mcp_server_url",
}  # fmt: skip
OMI_ACTIONS = {"create_conversation", "create_facts", "read_memories", "read_conversations", "read_tasks"}
OMI_TRIGGERS = {"audio_bytes", "memory_creation", "transcript_processed"}
OMI_CAPABILITIES = {"chat", "memories", "external_integration", "proactive_notification"}
OMI_CATEGORIES = {
    "conversation-analysis", "personality-emulation", "health-and-wellness", "education-and-learning",
    "communication-improvement", "emotional-and-mental-support", "productivity-and-organization",
    "entertainment-and-fun", "financial", "travel-and-exploration", "safety-and-security", "shopping-and-commerce",
    "social-and-relationships", "news-and-information", "utilities-and-tools", "other",
}  # fmt: skip

URL = "https://omi-song-recognition-abc123-ew.a.run.app"


# --- the manifest -------------------------------------------------------------------------------


def test_the_template_in_the_repository_is_what_the_generator_prints() -> None:
    template = (ROOT / "omi-app.json").read_text(encoding="utf-8")

    expected = omi_app.to_json(omi_app.manifest(omi_app.TEMPLATE_URL, memories=True))

    assert template == expected
    assert json.loads(template) == omi_app.manifest("https://YOUR-FUNCTION-URL", memories=True)


@pytest.mark.parametrize("memories", [False, True])
def test_the_manifest_is_an_app_omi_accepts(memories: bool) -> None:
    app = omi_app.manifest(URL, memories=memories)

    integration = app["external_integration"]
    assert set(app) <= OMI_APP_FIELDS
    assert set(integration) <= OMI_INTEGRATION_FIELDS
    assert {"name", "description", "category", "capabilities", "external_integration"} <= set(app)
    assert app["category"] in OMI_CATEGORIES
    assert set(app["capabilities"]) <= OMI_CAPABILITIES
    assert "external_integration" in app["capabilities"]
    assert integration["triggers_on"] in OMI_TRIGGERS
    assert {a["action"] for a in integration["actions"]} <= OMI_ACTIONS
    assert isinstance(integration["is_instructions_url"], bool) and isinstance(app["private"], bool)
    assert all(set(step) == {"name", "url"} for step in integration["auth_steps"])


def test_the_manifest_points_every_url_at_the_function() -> None:
    app = omi_app.manifest(URL + "/", memories=True)

    integration = app["external_integration"]
    assert integration["triggers_on"] == "audio_bytes"
    assert integration["webhook_url"] == f"{URL}/audio"
    assert integration["setup_completed_url"] == f"{URL}/audio"
    assert integration["setup_instructions_file_path"] == f"{URL}/setup"
    assert integration["is_instructions_url"] is True
    # A uid is not a credential: the home page shows nothing personal.
    assert integration["app_home_url"] == f"{URL}/setup"
    assert integration["actions"] == [{"action": "create_facts"}]
    assert f"{URL}/privacy" in app["description"]
    assert app["private"] is True


def test_memories_are_asked_for_only_when_wanted() -> None:
    app = omi_app.manifest(URL, memories=False)

    assert app["external_integration"]["actions"] == []
    assert "memory" not in app["description"]
    assert "memory" in omi_app.manifest(URL, memories=True)["description"]


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://omi-song-recognition-abc123-ew.a.run.app/", "https://omi-song-recognition-abc123-ew.a.run.app"),
        ("  https://europe-west1-p.cloudfunctions.net/omi-songs  ", "https://europe-west1-p.cloudfunctions.net/omi-songs"),
        ("https://songs.example.com:8443/omi/", "https://songs.example.com:8443/omi"),
        ("HTTPS://Songs.Example.COM", "https://Songs.Example.COM"),
        ("https://8.8.8.8", "https://8.8.8.8"),
        ("https://cafe.example", "https://cafe.example"),
    ],
)  # fmt: skip
def test_public_https_urls_are_accepted(url: str, base: str) -> None:
    assert omi_app.base_url(url) == base
    assert omi_app.manifest(url, memories=False)["external_integration"]["webhook_url"] == f"{base}/audio"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty"),
        ("http://songs.example.com", "https://"),
        ("songs.example.com", "https://"),
        ("https://songs.example.com/audio?token=abc", "no query"),
        ("https://songs.example.com?", "no query"),
        ("https://songs.example.com/#x", "fragment"),
        ("https://user:pw@songs.example.com", "user name or password"),
        ("https://songs.example.com:99999", "port"),
        ("https://", "no host"),
        ("https://bad_host.example.com", "not a valid host name"),
        ("https://localhost:8080", "this machine or a private network"),
        ("https://app.localhost", "this machine or a private network"),
        ("https://printer.local", "this machine or a private network"),
        ("https://metadata.google.internal", "this machine or a private network"),
        ("https://127.0.0.1:8080", "not a public address"),
        ("https://127.1", "not a public address"),
        ("https://2130706433", "not a public address"),
        ("https://0x7f000001", "not a public address"),
        ("https://10.1.2.3", "not a public address"),
        ("https://192.168.0.10", "not a public address"),
        ("https://172.16.5.4", "not a public address"),
        ("https://169.254.169.254", "not a public address"),
        ("https://100.64.0.1", "not a public address"),
        ("https://[::1]", "not a public address"),
        ("https://[fe80::1]", "not a public address"),
        ("https://[fd00::1]", "not a public address"),
        ("https://[::ffff:127.0.0.1]", "not a public address"),
    ],
)
def test_urls_omi_would_refuse_are_refused_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        omi_app.manifest(url, memories=True)


def test_the_command_prints_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["omi-app", "--url", URL, "--memories"])

    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert out == omi_app.to_json(omi_app.manifest(URL, memories=True))


def test_the_command_refuses_a_private_url_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["omi-app", "--url", "https://192.168.1.20:8080"])

    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("error: 192.168.1.20 is not a public address")


# --- the pages ----------------------------------------------------------------------------------


class _Document(HTMLParser):
    """Inline blocks as a browser sees them, and every tag with its attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.ids: set[str] = set()
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if attributes.get("id"):
            self.ids.add(attributes["id"])
        if tag in self.blocks:
            self._open = tag
            self.blocks[tag].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self.blocks[self._open][-1] += data


def _parse(html: str) -> _Document:
    document = _Document()
    document.feed(html)
    document.close()
    return document


def _directives(policy: str) -> dict[str, list[str]]:
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


PAGES = {
    "me": (pages.me_page, "'self'"),
    "setup": (pages.setup_page, "'none'"),
    "privacy": (pages.privacy_page, "'none'"),
}


@pytest.mark.parametrize("name", PAGES)
def test_each_page_admits_exactly_its_own_inline_blocks(name: str) -> None:
    render, connect = PAGES[name]

    response = render()

    html = response.get_data(as_text=True)
    document = _parse(html)
    policy = _directives(response.headers["Content-Security-Policy"])
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        expected = [_hash(block) for block in document.blocks[tag]] or ["'none'"]
        assert policy[directive] == expected, tag
    assert policy["default-src"] == ["'none'"]
    assert policy["connect-src"] == [connect]
    assert policy["img-src"] == ["data:"]
    assert policy["frame-ancestors"] == ["'none'"] and policy["base-uri"] == ["'none'"]
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", PAGES)
def test_each_page_loads_nothing_from_anywhere(name: str) -> None:
    html = PAGES[name][0]().get_data(as_text=True)

    document = _parse(html)
    for tag, attributes in document.tags:
        assert "src" not in attributes, tag
        assert not any(a.startswith("on") for a in attributes), tag
        assert "style" not in attributes, tag
        if tag == "link":
            assert attributes == {"rel": "icon", "href": "data:,"}
        href = attributes.get("href") or ""
        assert not re.match(r"(?i)\s*(javascript|https?):|//", href), href
    assert ("meta", {"name": "referrer", "content": "no-referrer"}) in document.tags
    assert not re.search(r"https?://(?!www\.w3\.org/)", html)


def test_the_history_page_uses_only_elements_it_has() -> None:
    html = pages.me_page().get_data(as_text=True)

    document = _parse(html)
    script = document.blocks["script"][0]
    used = set(re.findall(r'\$\("([\w-]+)"\)', script))
    assert used and used <= document.ids
    # The key stays out of Referer headers and out of every cache.
    assert pages.me_page().headers["Cache-Control"] == "no-store"
    assert 'rel: "noopener noreferrer"' in script and 'target: "_blank"' in script
    # Errors are text on the page, never a dialog a headless browser would block on.
    assert not re.search(r"\b(alert|confirm|prompt)\(", script)
    assert "innerHTML" not in script and "document.write" not in script
    assert "/history" in script and '"DELETE"' in script


def test_the_dashboard_gets_the_same_policy_as_before_the_helper() -> None:
    """The policy dashboard_view.py built by hand before pages.py served the dashboard."""
    policy = pages.dashboard_page().headers["Content-Security-Policy"]

    assert policy.startswith("default-src 'none'; script-src 'sha256-")
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert pages.dashboard_page().headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize(
    "markup",
    [
        '<script src="https://cdn.example/x.js"></script>',
        '<style media="print">p{}</style>',
        '<button onclick="go()">Go</button>',
        '<p style="color:red">x</p>',
        '<a href="javascript:go()">x</a>',
        '<link rel="stylesheet" href="/x.css">',
    ],
)
def test_markup_a_hash_policy_would_block_is_refused(markup: str) -> None:
    html = f"<!doctype html><html><head><style>p{{}}</style></head><body>{markup}<script>1</script></body></html>"

    with pytest.raises(pages.PageError):
        pages.content_security_policy(html, name="bad.html")


def test_the_privacy_statement_matches_the_code() -> None:
    from function.config import Settings
    from function.storage._rules import KEY_MEMORY_SECONDS

    privacy = pages.privacy_page().get_data(as_text=True)

    assert Settings().max_buffer_seconds == 60 and "60-second window" in privacy
    assert KEY_MEMORY_SECONDS == 900 and "for 15 minutes" in privacy
    assert "audio is never stored" in privacy
    assert Settings().history_retention_days == 90 and "kept for 90 days" in privacy
