"""The whole product as a user meets it: a real `functions-framework` process on loopback, fed a
noisy excerpt as Omi streams it, notifying through a loopback Omi API, on both backends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.omi_server import OmiApi, omi_api  # noqa: F401  (fixture)
from tests.webhook_support import ROOT, Track, music_pcm, noise_pcm, running_function, street_noise, tracks  # noqa: F401  (fixtures)

RATE = 16000
SECONDS = 20
SNR_DB = 5.0


@pytest.fixture
def registered_catalog(tmp_path: Path, tracks: list[Track]) -> str:
    """A catalog built the way an operator builds one: with the command line."""
    uri = str(tmp_path / "catalog")
    subprocess.run(
        [sys.executable, "-m", "function", "register", "--quiet", "--workers", "1", "--catalog", uri, *[str(t.path) for t in tracks]],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    return uri


@pytest.fixture
def webhook_url(backend_env, registered_catalog: str, omi_api: OmiApi, tmp_path: Path) -> Iterator[str]:
    env = {
        **os.environ,
        "CATALOG_URI": registered_catalog,
        "OMI_APP_ID": "songapp",
        "OMI_APP_SECRET": "e2e-secret",
        "OMI_API_URL": omi_api.url,
        "NOTIFY_TIMEOUT_SECONDS": "2",
    }
    with running_function(env, tmp_path / "function.log") as served:
        yield served.url


def test_a_noisy_excerpt_streamed_like_omi_notifies_once(
    webhook_url: str, omi_api: OmiApi, tracks: list[Track], street_noise: Path
) -> None:
    track = tracks[0]
    pcm = music_pcm(track, 0.0, SECONDS, RATE, noise=street_noise, snr_db=SNR_DB)
    chunks = [pcm[i : i + RATE * 2] for i in range(0, len(pcm), RATE * 2)]
    target = f"{webhook_url}/audio?sample_rate={RATE}&uid=e2e_user"
    headers = {"Content-Type": "application/octet-stream"}
    replies = []

    with httpx.Client(timeout=httpx.Timeout(30, connect=2)) as omi:
        for n, chunk in enumerate(chunks):
            key = str(uuid.uuid4())
            replies.append(omi.post(target, content=chunk, headers={**headers, "Idempotency-Key": key}))
            if n == 3:  # Omi resends a chunk whose answer it never saw, with the same key
                replies.append(omi.post(target, content=chunk, headers={**headers, "Idempotency-Key": key}))
        history = omi.get(f"{webhook_url}/history/e2e_user").json()
        stats = omi.get(f"{webhook_url}/stats/e2e_user").json()

    assert [r.status_code for r in replies] == [200] * (SECONDS + 1)
    assert [r.json()["duplicate"] for r in replies].count(True) == 1
    [notification] = omi_api.notifications()
    assert notification.query == {"uid": "e2e_user", "message": track.message}
    assert notification.headers["Authorization"] == "Bearer e2e-secret"
    songs = history["songs"]
    assert songs and all(s["title"] == track.title for s in songs)
    assert [s["notified"] for s in songs][-1] is True and sum(s["notified"] for s in songs) == 1
    assert stats["last_recognition"]["title"] == track.title
    last_match = max(i for i, r in enumerate(replies) if r.json().get("recognition", {}).get("status") == "match")
    after_match = sum(r.json()["received_bytes"] for r in replies[last_match + 1 :] if not r.json()["duplicate"])
    assert stats["buffer_size_bytes"] == after_match  # a match cleared the buffer


def test_an_upload_cut_short_is_refused_and_its_full_retry_is_stored(webhook_url: str) -> None:
    address = urlsplit(webhook_url)
    head = (
        "POST /audio?sample_rate=16000&uid=cut_short HTTP/1.1\r\nHost: x\r\nIdempotency-Key: K1\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: 32000\r\n\r\n"
    )
    with socket.create_connection((address.hostname, address.port), timeout=10) as s:
        s.sendall(head.encode() + noise_pcm(1.0)[:100])
        s.shutdown(socket.SHUT_WR)
        s.recv(65536)  # the server's answer, or nothing if it only closes: either way no chunk

    retry = httpx.post(
        f"{webhook_url}/audio?sample_rate=16000&uid=cut_short",
        content=noise_pcm(1.0),  # audio, not digital silence (which is acknowledged unstored)
        headers={"Content-Type": "application/octet-stream", "Idempotency-Key": "K1"},
        timeout=30,
    )

    assert retry.status_code == 200 and retry.json()["duplicate"] is False, retry.text
    assert httpx.get(f"{webhook_url}/stats/cut_short", timeout=10).json()["buffer_size_bytes"] == 32000
