"""/me/<uid>?key=: a user's own history page, in a real headless Chromium (Debian's, driven by
Playwright) against a real functions-framework process that has made real recognitions.

alice plays two songs and bob one. alice's link must show exactly her songs, newest first, each
with a search link that opens in a new tab and sends no referrer; it must talk to nothing but the
function and log no error, on a phone and on a desktop. A link whose key is not alice's (bob's,
a made-up one) gets the page, whose history request is refused (403): it shows its error state
and no song. A link revoked while the page is open (USER_LINK_SECRET rotated) turns the page into
its error state. Delete asks
first; cancelling keeps everything, confirming empties alice's history on the server and leaves
bob's alone.

The tests share one server and run in file order: the delete test empties alice's history, and
the last one rotates the secret.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from function.webhook.user_links import user_key
from tests import webhook_support
from tests.webhook_support import (  # noqa: F401  (fixtures)
    Track,
    catalog_uri,
    music_pcm,
    running_function,
    tracks,
)

AUDIO_TOKEN = "audio-token-0123456789"  # WEBHOOK_TOKEN: opens audio deliveries only
ADMIN_TOKEN = "admin-token-0123456789"  # ADMIN_TOKEN: the operator's; the page never needs it
LINK_SECRET = "link-secret-0123456789abcdef"  # USER_LINK_SECRET: keys the users' links
RATE = 16000
CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}
ALICE_TRACKS = (0, 1)  # played in this order: the page lists 1 first
BOB_TRACK = 4  # a title no title of alice's contains
REFUSED = "Failed to load resource: the server responded with a status of 403"
NOT_FOUND = "Failed to load resource: the server responded with a status of 404"


@dataclass(frozen=True)
class Service:
    url: str
    alice: list[Track]  # in the order she played them
    bob: Track
    rotate: Callable[[str], None]  # restart with another USER_LINK_SECRET, same port, same data


def server_env(data_dir: Path, catalog: str, link_secret: str = LINK_SECRET) -> dict[str, str]:
    return {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(data_dir),
        "CATALOG_URI": catalog,
        "WEBHOOK_TOKEN": AUDIO_TOKEN,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "USER_LINK_SECRET": link_secret,
        "MIN_AUDIO_SECONDS": "5",
        "RECOGNITION_STRIDE_SECONDS": "2",
        "MAX_BUFFER_SECONDS": "8",
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
    }


def stream(omi: httpx.Client, url: str, uid: str, pcm: bytes) -> list[dict]:
    """POST `pcm` as Omi does, in 1-s chunks; the recognitions the chunks triggered."""
    made = []
    for i in range(0, len(pcm), RATE * 2):
        reply = omi.post(
            f"{url}/audio?token={AUDIO_TOKEN}&sample_rate={RATE}&uid={uid}",
            content=pcm[i : i + RATE * 2],
            headers={"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert reply.status_code == 200, reply.text
        if "recognition" in reply.json():
            made.append(reply.json()["recognition"])
    return made


def link(url: str, uid: str, key: str | None = None) -> str:
    return f"{url}/me/{uid}?key={user_key(LINK_SECRET, uid) if key is None else key}"


def history(url: str, uid: str, key: str | None = None) -> httpx.Response:
    return httpx.get(f"{url}/me/{uid}/history?key={user_key(LINK_SECRET, uid) if key is None else key}", timeout=10)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, catalog_uri: str, tracks: list[Track]) -> Iterator[Service]:  # noqa: F811
    """One real function on loopback; alice has played two songs, bob one, all recognised."""
    where = tmp_path_factory.mktemp("me-page")
    alice = [tracks[i] for i in ALICE_TRACKS]
    bob = tracks[BOB_TRACK]
    running = [running_function(server_env(where / "data", catalog_uri), where / "function.log")]
    served = running[0].__enter__()
    port = int(served.url.rsplit(":", 1)[1])

    def rotate(secret: str) -> None:
        running.pop().__exit__(None, None, None)
        again = running_function(server_env(where / "data", catalog_uri, secret), where / "rotated.log")
        with pytest.MonkeyPatch.context() as patch:  # the page's origin must stay the same
            patch.setattr(webhook_support, "free_port", lambda: port)
            assert again.__enter__().url == served.url
        running.append(again)

    try:
        with httpx.Client(timeout=httpx.Timeout(30, connect=2)) as omi:
            for uid, track in [("alice", alice[0]), ("alice", alice[1]), ("bob", bob)]:
                made = stream(omi, served.url, uid, music_pcm(track, 10.0, 5, RATE))
                assert [(r["status"], r.get("title")) for r in made] == [("match", track.title)], (uid, made)
        yield Service(served.url, alice, bob, rotate)
    finally:
        if running:
            running.pop().__exit__(None, None, None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    """A page with every request it made and every error it logged."""

    page: Page
    requests: list[str]
    errors: list[str]


def open_page(browser: Browser, viewport: dict) -> Watched:
    page = browser.new_page(viewport=viewport)
    watched = Watched(page, [], [])
    page.on("request", lambda r: watched.requests.append(r.url))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.errors.append(f"{message.text} @ {message.location.get('url', '')}")

    page.on("console", console)
    page.on("pageerror", lambda e: watched.errors.append(str(e)))
    return watched


def off_origin(watched: Watched, url: str) -> list[str]:
    """Requests that would leave the function: anything but its own URLs (the page's icon is
    the inline `data:,`, which Chromium lists as a request but never sends anywhere)."""
    return [u for u in watched.requests if not u.startswith(f"{url}/") and u != "data:,"]


def shown_songs(page: Page) -> list[dict]:
    return page.eval_on_selector_all(
        "#days li.song",
        """items => items.map(li => {
            const a = li.querySelector("a.search");
            return {
                song_id: li.getAttribute("data-song-id"),
                title: li.querySelector(".song-title").textContent,
                artist: li.querySelector(".song-artist").textContent,
                search: a && {href: a.getAttribute("href"), target: a.getAttribute("target"), rel: a.getAttribute("rel")},
            };
        })""",
    )


def visible(page: Page, selector: str) -> bool:
    return page.locator(selector).count() > 0 and page.locator(selector).first.is_visible()


def test_alice_sees_exactly_her_songs_newest_first(service: Service, browser: Browser, tmp_path: Path) -> None:
    given = history(service.url, "alice")
    assert given.status_code == 200, given.text
    newest_first = sorted(given.json()["songs"], key=lambda s: s["at"], reverse=True)
    bobs = history(service.url, "bob").json()["songs"]
    assert [s["title"] for s in newest_first] == [t.title for t in reversed(service.alice)]
    assert [s["title"] for s in bobs] == [service.bob.title]

    for name, viewport in VIEWPORTS.items():
        watched = open_page(browser, viewport)
        page = watched.page
        try:
            with page.expect_response(lambda r: r.url.startswith(f"{service.url}/me/alice/history?")) as fetched:
                response = page.goto(link(service.url, "alice"))
            page.wait_for_selector("body[data-state=ready]", state="attached")
            assert response is not None and response.status == 200, name
            headers = response.headers
            assert fetched.value.status == 200, name
            assert fetched.value.json()["songs"] == given.json()["songs"], name

            songs = shown_songs(page)
            page.screenshot(path=tmp_path / f"me-{name}.png", full_page=True)
            count = page.get_attribute("#summary", "data-count")
            summary = page.inner_text("#summary")
            text = page.inner_text("body")
            width = page.evaluate("document.documentElement.scrollWidth")
            error_shown, delete_offered = visible(page, "#error"), visible(page, "#delete")

            # Delete, then cancel: nothing is sent, nothing goes.
            page.click("#delete")
            page.wait_for_selector("#confirm-delete", state="visible")
            confirm_text = page.inner_text("#confirm-text")
            page.click("#cancel-delete")
            page.wait_for_selector("#confirm", state="hidden")
            after_cancel = shown_songs(page)
            state_after_cancel = page.get_attribute("body", "data-state")
        finally:
            page.close()

        assert "connect-src 'self'" in headers["content-security-policy"], name
        assert headers["referrer-policy"] == "no-referrer", name
        assert headers["cache-control"] == "no-store", name
        assert [(s["song_id"], s["title"]) for s in songs] == [(s["song_id"], s["title"]) for s in newest_first], name
        assert [s["title"] for s in songs] == [t.title for t in reversed(service.alice)], name
        assert [s["artist"] for s in songs] == [t.artist for t in reversed(service.alice)], name
        assert [s["search"] for s in songs] == [
            {"href": s["search_url"], "target": "_blank", "rel": "noopener noreferrer"} for s in newest_first
        ], name
        assert all(s["search_url"].startswith("https://") for s in newest_first), name
        assert bobs[0]["song_id"] not in [s["song_id"] for s in songs], name
        assert service.bob.title not in text, name
        assert count == "2" and summary.startswith("2 songs"), (name, summary)
        assert not error_shown and delete_offered, name
        assert width <= viewport["width"], (name, width)
        assert "Delete all 2 songs" in confirm_text, (name, confirm_text)
        assert (after_cancel, state_after_cancel) == (songs, "ready"), name
        assert off_origin(watched, service.url) == [], name
        assert [u for u in watched.requests if "/me/alice/history" in u] == [fetched.value.url], name  # cancel sent nothing
        assert watched.errors == [], name
        assert (tmp_path / f"me-{name}.png").stat().st_size > 10_000, name
    assert len(history(service.url, "alice").json()["songs"]) == 2


@pytest.mark.parametrize("key", ["bob", "made-up"])
def test_a_link_with_another_key_shows_nothing_but_the_reason(service: Service, browser: Browser, key: str) -> None:
    """The page is served (it holds no data) and its history request is refused: no song, no
    delete offer, the reason in words."""
    given = user_key(LINK_SECRET, "bob") if key == "bob" else "0123456789abcdef0123456789abcdef"
    endpoint = f"{service.url}/me/alice/history?key={given}"
    for name, viewport in VIEWPORTS.items():
        watched = open_page(browser, viewport)
        page = watched.page
        try:
            response = page.goto(link(service.url, "alice", given))
            assert response is not None, name
            status = response.status
            page.wait_for_selector("body[data-state=error]", state="attached")
            songs = page.locator("li.song").count()
            delete = visible(page, "#delete-card")
            error = page.inner_text("#error") if visible(page, "#error") else None
            text = page.inner_text("body")
        finally:
            page.close()

        assert status == 200, (name, status)
        assert (songs, delete) == (0, False), name
        assert error == "This link is not valid: its key does not match. Open the most recent link the app sent you.", name
        assert all(t.title not in text for t in [*service.alice, service.bob]), name
        assert off_origin(watched, service.url) == [], name
        assert watched.errors == [f"{REFUSED} (FORBIDDEN) @ {endpoint}"], (name, watched.errors)
    assert len(history(service.url, "alice").json()["songs"]) == 2


def test_alice_deletes_her_history_and_only_hers(service: Service, browser: Browser) -> None:
    """It empties alice's history for good: after every test that reads it."""
    watched = open_page(browser, VIEWPORTS["phone"])
    page = watched.page
    try:
        page.goto(link(service.url, "alice"))
        page.wait_for_selector("body[data-state=ready]", state="attached")
        before = len(shown_songs(page))
        page.click("#delete")
        page.wait_for_selector("#confirm-delete", state="visible")
        with page.expect_response(
            lambda r: r.url.startswith(f"{service.url}/me/alice/history?") and r.request.method == "DELETE"
        ) as deleting:
            page.click("#confirm-delete")
        page.wait_for_selector("body[data-state=deleted]", state="attached")
        answer = deleting.value.json()
        after_delete = {
            "songs": page.locator("li.song").count(),
            "count": page.get_attribute("#summary", "data-count"),
            "empty": page.inner_text("#empty") if visible(page, "#empty") else None,
            "status": page.inner_text("#status") if visible(page, "#status") else None,
            "confirm_open": visible(page, "#confirm"),
        }
        page.reload()
        page.wait_for_selector("body[data-state=empty]", state="attached")
        after_reload = (page.locator("li.song").count(), page.get_attribute("#summary", "data-count"))
    finally:
        page.close()

    assert before == 2
    assert answer["status"] == "deleted" and answer["deleted"] >= 2, answer
    assert after_delete == {
        "songs": 0,
        "count": "0",
        "empty": "Your history is empty.",
        "status": f"Deleted {answer['deleted']} songs. Your history is empty.",
        "confirm_open": False,
    }
    assert after_reload == (0, "0")
    alice, bob = history(service.url, "alice"), history(service.url, "bob")
    assert (alice.status_code, alice.json()["songs"]) == (200, [])
    assert [s["title"] for s in bob.json()["songs"]] == [service.bob.title]
    assert off_origin(watched, service.url) == []
    assert watched.errors == []


def test_a_link_revoked_while_open_turns_the_page_to_its_error_state(service: Service, browser: Browser) -> None:
    """Last in the file (it changes the secret): bob's page is open on a phone and a desktop, the
    operator rotates USER_LINK_SECRET (a new process, same port, same data), and Refresh gets a
    403: the page drops the songs and the delete offer and says the link is not valid."""
    pages = {name: open_page(browser, viewport) for name, viewport in VIEWPORTS.items()}
    before, after = {}, {}
    try:
        for name, watched in pages.items():
            watched.page.goto(link(service.url, "bob"))
            watched.page.wait_for_selector("body[data-state=ready]", state="attached")
            before[name] = ([s["title"] for s in shown_songs(watched.page)], visible(watched.page, "#delete"))
        service.rotate(LINK_SECRET + "-rotated")
        for name, watched in pages.items():
            page = watched.page
            page.click("#refresh")
            page.wait_for_selector("body[data-state=error]", state="attached")
            after[name] = {
                "songs": page.locator("li.song").count(),
                "delete": visible(page, "#delete-card"),
                "error": page.inner_text("#error") if visible(page, "#error") else None,
                "summary": page.inner_text("#summary"),
            }
    finally:
        for watched in pages.values():
            watched.page.close()

    endpoint = f"{service.url}/me/bob/history?key={user_key(LINK_SECRET, 'bob')}"
    for name, watched in pages.items():
        assert before[name] == ([service.bob.title], True), name
        assert after[name] == {
            "songs": 0,
            "delete": False,
            "error": "This link is not valid: its key does not match. Open the most recent link the app sent you.",
            "summary": "Your history could not be shown.",
        }, name
        assert off_origin(watched, service.url) == [], name
        assert watched.errors == [f"{REFUSED} (FORBIDDEN) @ {endpoint}"], (name, watched.errors)
    assert history(service.url, "bob").status_code == 403
    rotated = history(service.url, "bob", user_key(LINK_SECRET + "-rotated", "bob"))
    assert [s["title"] for s in rotated.json()["songs"]] == [service.bob.title]
