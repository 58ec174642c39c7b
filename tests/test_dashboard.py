"""/dashboard: the page a person opens, in a real headless Chromium (Debian's, driven by
Playwright) against a real functions-framework process that has made real recognitions.

The page must show exactly the figures /metrics gives it, list a user's history, render with
nothing but the function to talk to, and log no error, on a phone and on a desktop.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from function.metrics import WINDOW_SECONDS, counts_of, hour_of, summarise
from function.storage._rules import merge_counts
from function.storage.base import Recognition
from tests.webhook_support import (  # noqa: F401  (fixtures)
    Track,
    build_client,
    catalog_uri,
    music_pcm,
    noise_pcm,
    running_function,
    tracks,
    webhook_env,
)

TOKEN = "dashboard-token-0123456789"  # ADMIN_TOKEN: the dashboard is the operator's
AUDIO_TOKEN = "audio-token-0123456789"  # WEBHOOK_TOKEN: opens audio deliveries only
RATE = 16000
CHROMIUM = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
VIEWPORTS = {"phone": {"width": 390, "height": 844}, "desktop": {"width": 1280, "height": 800}}
TILES = {
    "today-plays": lambda m: m["today"]["plays"],
    "success-rate": lambda m: m["success_rate"],
    "latency-p50": lambda m: m["latency_ms"]["p50"],
    "latency-p95": lambda m: m["latency_ms"]["p95"],
    "active-users": lambda m: m["today"]["active_users"],
}


def test_the_dashboard_needs_the_token(webhook_env) -> None:
    webhook_env.setenv("WEBHOOK_TOKEN", AUDIO_TOKEN)
    webhook_env.setenv("ADMIN_TOKEN", TOKEN)
    client = build_client()

    refused = client.get("/dashboard")
    served = client.get(f"/dashboard?token={TOKEN}")

    assert refused.status_code == 401
    assert served.status_code == 200
    assert served.mimetype == "text/html"
    assert "connect-src 'self'" in served.headers["Content-Security-Policy"]


def test_metrics_carry_what_the_dashboard_draws() -> None:
    now = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    song = {"song_id": "s1", "title": "Song", "artist": "Artist"}
    made = [
        Recognition(uid="a", at=now - 6.9 * 86400, latency_ms=50.0, audio_seconds=5.0, matched=True, **song),
        Recognition(uid="a", at=now - 3600, latency_ms=50.1, audio_seconds=5.0, matched=False),
        Recognition(uid="b", at=now - 60, latency_ms=7000.0, audio_seconds=5.0, matched=True, **song),
    ]

    hours: dict[int, dict] = {}
    for r in made:
        hours[hour_of(r.at)] = merge_counts(hours.get(hour_of(r.at)), counts_of(r))

    body = summarise(hours, {"2023-11-08": 1, "2023-11-14": 2}, now)

    hourly = body["hourly"]
    assert hourly["start"] <= now - WINDOW_SECONDS < hourly["start"] + hourly["hour_seconds"]
    assert len(hourly["attempts"]) == len(hourly["matches"]) == 7 * 24 + 1
    assert (sum(hourly["attempts"]), sum(hourly["matches"])) == (3, 2)
    assert (hourly["attempts"][-2:], hourly["matches"][-2:]) == ([1, 1], [0, 1])
    assert body["today"] == {"date": "2023-11-14", "recognition_attempts": 2, "matches": 1, "plays": 1, "active_users": 2}
    # Percentiles from the histogram: the upper bound of the bucket holding them, the largest
    # latency seen for the open bucket.
    assert (body["latency_ms"]["p50"], body["latency_ms"]["p95"]) == (100.0, 7000.0)
    assert body["latency_ms"]["mean"] == round((50.0 + 50.1 + 7000.0) / 3, 1)
    assert body["top_songs"] == [{"song_id": "s1", "title": "Song", "artist": "Artist", "plays": 2, "matches": 2}]
    assert [b["count"] for b in body["latency_histogram"]] == [0, 0, 1, 1, 0, 0, 0, 0, 0, 1]
    assert body["latency_histogram"][-1]["upper_ms"] is None


def test_songs_heard_are_plays_not_the_attempts_that_named_them() -> None:
    """Two songs played once each, as the webhook records them: Tune One named on 11 attempts
    (the first notified, the rest repeats within its cooldown), Tune Two on one, and 3 misses.
    The dashboard's "songs heard" and top songs count 2 plays, not 15 attempts or 11 matches."""
    now = 1_700_000_000.0
    one = {"song_id": "t1", "title": "Tune One", "artist": "A"}
    two = {"song_id": "t2", "title": "Tune Two", "artist": "B"}
    made = [Recognition(uid="u", at=now - 600, latency_ms=3.0, audio_seconds=5.0, matched=False) for _ in range(3)]
    notifications = ["logged"] + ["skipped_cooldown"] * 10
    made += [
        Recognition(uid="u", at=now - 500 + i, latency_ms=3.0, audio_seconds=5.0, matched=True, notification=n, **one)
        for i, n in enumerate(notifications)
    ]
    made.append(Recognition(uid="u", at=now - 100, latency_ms=3.0, audio_seconds=5.0, matched=True, notification="logged", **two))
    hours: dict[int, dict] = {}
    for r in made:
        hours[hour_of(r.at)] = merge_counts(hours.get(hour_of(r.at)), counts_of(r))

    body = summarise(hours, {"2023-11-14": 1}, now)

    assert (body["recognition_attempts"], body["matches"], body["plays"]) == (15, 12, 2)
    assert (body["today"]["recognition_attempts"], body["today"]["plays"]) == (15, 2)
    assert sum(body["hourly"]["plays"]) == 2
    assert [(s["title"], s["plays"], s["matches"]) for s in body["top_songs"]] == [("Tune One", 1, 11), ("Tune Two", 1, 1)]
    # Every attempt took 3 ms: p50 is the bound of their bucket, which the page shows as a bound.
    assert (body["latency_ms"]["mean"], body["latency_ms"]["p50"]) == (3.0, 10.0)


@pytest.fixture
def service_url(tmp_path: Path, catalog_uri: str) -> Iterator[str]:  # noqa: F811
    """A real functions-framework process on loopback, local backend, token required."""
    env = {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(tmp_path / "data"),
        "CATALOG_URI": catalog_uri,
        "WEBHOOK_TOKEN": AUDIO_TOKEN,
        "ADMIN_TOKEN": TOKEN,
        "MIN_AUDIO_SECONDS": "5",
        "RECOGNITION_STRIDE_SECONDS": "2",
        "MAX_BUFFER_SECONDS": "8",
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
    }
    with running_function(env, tmp_path / "function.log", healthy=True) as served:
        yield served.url


def stream(omi: httpx.Client, url: str, uid: str, pcm: bytes) -> list[str]:
    """POST `pcm` as Omi does, in 1-s chunks; the recognition statuses the chunks triggered."""
    statuses = []
    for i in range(0, len(pcm), RATE * 2):
        reply = omi.post(
            f"{url}/audio?token={AUDIO_TOKEN}&sample_rate={RATE}&uid={uid}",
            content=pcm[i : i + RATE * 2],
            headers={"Content-Type": "application/octet-stream", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert reply.status_code == 200, reply.text
        if "recognition" in reply.json():
            statuses.append(reply.json()["recognition"]["status"])
    return statuses


def data_values(page: Page, selector: str, attribute: str) -> list[str]:
    return page.eval_on_selector_all(selector, f"nodes => nodes.map(n => n.getAttribute({attribute!r}))")


def open_dashboard(page: Page, url: str, uid: str) -> dict:
    """Load the page, wait until it has drawn everything; the /metrics body it was given."""
    with page.expect_response(lambda r: r.url.startswith(f"{url}/metrics?")) as given:
        page.goto(f"{url}/dashboard?token={TOKEN}&uid={uid}")
    page.wait_for_selector("body[data-metrics=ready]")
    page.wait_for_selector("#history[data-state=ready]")
    return given.value.json()


def test_the_dashboard_shows_the_service_as_metrics_and_history_report_it(
    service_url: str, tracks: list[Track], tmp_path: Path
) -> None:
    with httpx.Client(timeout=httpx.Timeout(30, connect=2)) as omi:
        first = stream(omi, service_url, "listener", music_pcm(tracks[0], 10.0, 5, RATE))
        second = stream(omi, service_url, "listener", music_pcm(tracks[1], 10.0, 5, RATE))
        miss = stream(omi, service_url, "stranger", noise_pcm(5.0, RATE))
    assert (first, second, miss) == (["match"], ["match"], ["no_match"])
    requests: list[str] = []
    problems: list[str] = []

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            shown = {}
            for name, viewport in VIEWPORTS.items():
                page = browser.new_page(viewport=viewport)
                page.on("request", lambda r: requests.append(r.url))
                page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: problems.append(str(e)))
                metrics = open_dashboard(page, service_url, "listener")
                page.screenshot(path=tmp_path / f"dashboard-{name}.png", full_page=True)
                shown[name] = {
                    "tiles": {tile: json.loads(page.get_attribute(f"#{tile}", "data-value")) for tile in TILES},
                    "tile_text": {tile: page.inner_text(f"#{tile}") for tile in TILES},
                    "tile_notes": {tile: page.inner_text(f"#{tile} + .note") for tile in TILES},
                    "hourly_attempts": [int(v) for v in data_values(page, "#hourly-chart g.hour", "data-attempts")],
                    "hourly_matches": [int(v) for v in data_values(page, "#hourly-chart g.hour", "data-matches")],
                    "latency_counts": [int(v) for v in data_values(page, "#latency-chart g[data-count]", "data-count")],
                    "top_songs": data_values(page, "#top-songs tbody tr", "data-song-id"),
                    "top_song_plays": [int(v) for v in data_values(page, "#top-songs tbody tr", "data-plays")],
                    "hourly_caption": page.inner_text("#hourly-caption"),
                    "history": page.eval_on_selector_all("#history-table tbody tr", "rows => rows.map(r => r.innerText)"),
                }
            page.fill("#uid", "stranger")
            page.click("#uid-form button")
            page.wait_for_url(lambda u: "uid=stranger" in u)
            stranger_message = page.inner_text("#history-message")
        finally:
            browser.close()

    assert (metrics["recognition_attempts"], metrics["matches"], metrics["today"]["active_users"]) == (3, 2, 2)
    assert (metrics["plays"], metrics["today"]["plays"]) == (2, 2)
    for name, page_shows in shown.items():
        assert page_shows["tiles"] == {tile: value(metrics) for tile, value in TILES.items()}, name
        assert "–" not in page_shows["tile_text"].values(), name
        assert page_shows["tile_text"]["today-plays"] == "2", name
        assert "3 attempts" in page_shows["tile_notes"]["today-plays"], name
        # A percentile from the histogram is its bucket's upper bound: shown as one.
        assert page_shows["tile_text"]["latency-p50"].startswith("≤ "), name
        assert page_shows["top_song_plays"] == [s["plays"] for s in metrics["top_songs"]], name
        assert "2 songs heard" in page_shows["hourly_caption"] and "3 attempts" in page_shows["hourly_caption"], name
        assert page_shows["hourly_attempts"] == metrics["hourly"]["attempts"], name
        assert page_shows["hourly_matches"] == metrics["hourly"]["matches"], name
        assert page_shows["latency_counts"] == [b["count"] for b in metrics["latency_histogram"]], name
        assert page_shows["top_songs"] == [s["song_id"] for s in metrics["top_songs"]], name
        [newest, oldest] = page_shows["history"]
        assert tracks[1].title in newest and tracks[0].title in oldest, name
        assert "logged" in newest and "%" in newest, name
    assert "No song recognised for stranger" in stranger_message
    assert [u for u in requests if not u.startswith(f"{service_url}/") and not u.startswith("data:")] == []
    assert any(u.startswith(f"{service_url}/history/listener?") and f"token={TOKEN}" in u for u in requests)
    assert problems == []
    assert all((tmp_path / f"dashboard-{name}.png").stat().st_size > 10_000 for name in VIEWPORTS)
