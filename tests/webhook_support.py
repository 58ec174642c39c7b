"""Shared pieces of the webhook tests: the functions-framework app built from the environment,
Omi-shaped requests, real audio, and a real catalog of the test tracks.

Import the fixtures (`webhook_env`, `catalog_uri`, `tracks`, `street_noise`) into a test module to use them.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from flask.testing import FlaskClient
from functions_framework import create_app

from bench.harness import Served  # noqa: F401  (re-exported)
from bench.harness import running_function as _running_function
from function.engine.recogniser import Recogniser
from function.simulate import float_to_pcm16, load_pcm16
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Track:
    path: Path
    title: str
    artist: str

    @property
    def message(self) -> str:
        return f"🎵 {self.title} by {self.artist}"


@contextmanager
def running_function(env: dict[str, str], log: Path, healthy: bool = False) -> Iterator[Served]:
    """bench.harness.running_function (moved there: the load benchmark serves the function too)
    on a port drawn when the server starts, through this module's `free_port`, which
    tests/test_me_page.py replaces to bring a server back on the same port."""
    with _running_function(env, log, port=free_port(), healthy=healthy) as served:
        yield served


def build_client() -> FlaskClient:
    """A fresh app, hence fresh process state, reading the environment as it is now."""
    return create_app(target="omi_webhook", source=str(ROOT / "main.py")).test_client()


def post_chunk(
    client: FlaskClient,
    uid: str,
    pcm: bytes,
    rate: int = 16000,
    key: str | None = "new",
    content_type: str | None = "application/octet-stream",
):
    """POST one chunk as Omi's realtime-audio webhook does; key="new" draws a fresh uuid4."""
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if key is not None:
        headers["Idempotency-Key"] = str(uuid.uuid4()) if key == "new" else key
    return client.post(f"/audio?sample_rate={rate}&uid={uid}", data=pcm, headers=headers)


def post_seconds(client: FlaskClient, uid: str, pcm: bytes, rate: int = 16000) -> list:
    """POST `pcm` as consecutive 1-s chunks; the responses in order."""
    step = rate * 2
    return [post_chunk(client, uid, pcm[i : i + step], rate) for i in range(0, len(pcm), step)]


def noise_pcm(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """Broadband noise: audio that is certainly none of the catalog's songs."""
    return float_to_pcm16(0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate)))


def music_pcm(
    track: Track, start: float, seconds: float, rate: int = 16000, noise: Path | None = None, snr_db: float = 10.0
) -> bytes:
    """An excerpt as Omi would deliver it, optionally under a noise recording at `snr_db`."""
    pcm = load_pcm16(track.path, rate, noise=noise, snr_db=snr_db)
    first = int(start * rate) * 2
    return pcm[first : first + int(seconds * rate) * 2]


@pytest.fixture(scope="session")
def tracks() -> list[Track]:
    from function.engine.song_tags import read_tags

    found = []
    for path in sorted((DATA / "music").glob("*.ogg")):
        tags = read_tags(str(path))
        found.append(Track(path, tags.title, tags.artist))
    assert len(found) >= 2, f"the webhook tests need at least two music excerpts in {DATA / 'music'}"
    return found


@pytest.fixture(scope="session")
def street_noise() -> Path:
    """A real ambient street recording (tests/data/README.md), never registered."""
    path = DATA / "noise" / "city.ogg"
    assert path.is_file(), f"missing {path}"
    return path


@pytest.fixture(scope="session")
def catalog_uri(tmp_path_factory: pytest.TempPathFactory, tracks: list[Track]) -> str:
    uri = str(tmp_path_factory.mktemp("catalog"))
    results = Recogniser.open(uri, create=True).register([str(t.path) for t in tracks], workers=1)
    assert all(r.status == "added" for r in results), [r.to_dict() for r in results]
    return uri


@pytest.fixture
def webhook_env(backend_env, monkeypatch: pytest.MonkeyPatch, catalog_uri: str) -> Iterator[pytest.MonkeyPatch]:
    """The storage backend's environment plus a small, fast recognition cadence; tests add to
    it with `monkeypatch.setenv` and then call `build_client()`."""
    for name, value in {
        "CATALOG_URI": catalog_uri,
        "MIN_AUDIO_SECONDS": "5",
        "RECOGNITION_STRIDE_SECONDS": "2",
        "MAX_BUFFER_SECONDS": "8",
        "NOTIFY_TIMEOUT_SECONDS": "0.5",
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
    }.items():
        monkeypatch.setenv(name, value)
    yield monkeypatch
