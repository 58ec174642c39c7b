"""Firestore stops answering in the middle of a stream: the webhook answers 503
(Omi retries), and once storage is back every acknowledged chunk is in the buffer exactly once.

The outage is real from the client's side: the emulator process is frozen with SIGSTOP, so its
port accepts connections and never answers, as a storage service stuck behind a network fault
does, and thawed with SIGCONT, which keeps its state (a restarted emulator would have lost it).
This module runs its own emulator pair, so freezing it cannot disturb any other test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from function.config import Settings
from function.engine.stream import step
from function.storage import open_store
from tests.conftest import Emulators, running_emulators
from tests.webhook_support import build_client, catalog_uri, noise_pcm, post_chunk, tracks  # noqa: F401

CHUNK_SECONDS = 1.0
CHUNK_BYTES = 32000


@pytest.fixture(scope="module")
def private_emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators]:
    with running_emulators(tmp_path_factory.mktemp("outage-emulators")) as running:
        yield running


@pytest.fixture
def outage_env(private_emulators: Emulators, monkeypatch: pytest.MonkeyPatch, catalog_uri: str) -> dict[str, str]:  # noqa: F811
    env = {
        **private_emulators.env,
        "STORAGE_BACKEND": "gcp",
        "ALLOW_UNAUTHENTICATED": "true",  # an emulator stack
        "GOOGLE_CLOUD_PROJECT": f"outage-{uuid.uuid4().hex[:12]}",
        "CATALOG_URI": catalog_uri,
        "MIN_AUDIO_SECONDS": "600",  # no recognition: the buffer itself is under test
        "MAX_BUFFER_SECONDS": "600",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@contextmanager
def frozen(process: subprocess.Popen) -> Iterator[None]:
    """The emulator's whole process group (a launcher script and its JVM) stops answering."""
    os.killpg(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGCONT)


class Omi:
    """Sends chunks as Omi does: each with its own Idempotency-Key, a refused one again with
    the same key until it is acknowledged."""

    def __init__(self, client) -> None:
        self.client = client
        self.acknowledged: list[bytes] = []
        self.statuses: list[int] = []
        self.refused: list[tuple[str, bytes]] = []

    def send(self, pcm: bytes, key: str | None = None) -> int:
        key = key or str(uuid.uuid4())
        status = post_chunk(self.client, "alice", pcm, key=key).status_code
        self.statuses.append(status)
        if status == 200:
            self.acknowledged.append(pcm)
        else:
            self.refused.append((key, pcm))
        return status

    def retry_refused(self) -> None:
        waiting, self.refused = self.refused, []
        for key, pcm in waiting:
            self.send(pcm, key)


def test_an_outage_is_503_and_afterwards_every_acknowledged_chunk_is_buffered_once(
    private_emulators: Emulators, outage_env: dict[str, str]
) -> None:
    """Firestore is the store's only service (the audio lives in its documents too)."""
    client = build_client()
    omi = Omi(client)
    chunks = iter(noise_pcm(CHUNK_SECONDS, seed=seed) for seed in range(100))
    for _ in range(3):
        omi.send(next(chunks))
    duplicate_key = str(uuid.uuid4())
    omi.send(next(chunks), duplicate_key)

    with frozen(private_emulators.firestore):
        started = time.monotonic()
        during = omi.send(next(chunks))
        outage_seconds = time.monotonic() - started
        health = client.get("/health")

    omi.retry_refused()
    lost_answer = post_chunk(client, "alice", omi.acknowledged[3], key=duplicate_key)  # a retry whose answer was lost
    omi.send(next(chunks))

    assert during == 503
    assert outage_seconds < 30, "each refusal should come within the store's few-second deadline"
    assert health.status_code == 503 and health.json["reason"] == "storage unavailable"
    assert omi.refused == []
    assert (lost_answer.status_code, lost_answer.json["duplicate"]) == (200, True)
    assert set(omi.statuses) == {200, 503}
    store = open_store(Settings.from_env())
    info = store.buffer_info("alice")
    assert (info.chunks, info.buffered_bytes) == (6, 6 * CHUNK_BYTES)
    lease = store.claim("alice", min_bytes=1, stride_bytes=0, lease_seconds=30, now=time.time(), max_bytes=100 * CHUNK_BYTES)
    expected, state = [], None
    for chunk in omi.acknowledged:  # each acknowledged chunk fingerprinted once, in order
        peaks, state = step(state, 16000, chunk)
        expected.append(peaks)
    assert (lease.chunks, lease.stream) == (tuple(expected), state)

