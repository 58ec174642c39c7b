"""No audio at rest: talk and music streamed to the webhook as Omi sends them, then every byte the
store holds searched for that audio, on both backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.at_rest import audio_found, local_bytes
from function.engine.decode import resample
from function.simulate import load_pcm16
from tests.webhook_support import (  # noqa: F401  (fixtures)
    DATA,
    Track,
    build_client,
    catalog_uri,
    music_pcm,
    post_seconds,
    tracks,
    webhook_env,
)


def stored_bytes(backend_env: dict[str, str]) -> list[bytes]:
    """Everything the backend holds: every file under DATA_DIR (the database and its journal),
    or every field of every Firestore document of the project, as raw bytes."""
    if backend_env["STORAGE_BACKEND"] == "local":
        return local_bytes(Path(backend_env["DATA_DIR"]))[1]
    from google.cloud import firestore

    client = firestore.Client(project=backend_env["GOOGLE_CLOUD_PROJECT"])
    blobs: list[bytes] = []

    def walk(collection: firestore.CollectionReference) -> None:
        for doc in collection.stream():
            blobs.extend(_field_bytes(doc.to_dict()))
            for sub in doc.reference.collections():
                walk(sub)

    for collection in client.collections():
        walk(collection)
    return blobs


def _field_bytes(value: object) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, str):
        return [value.encode()]
    if isinstance(value, dict):
        return [b for v in value.values() for b in _field_bytes(v)]
    if isinstance(value, (list, tuple)):
        return [b for v in value for b in _field_bytes(v)]
    return [str(value).encode()]


def test_the_search_finds_audio_wherever_it_hides() -> None:
    """The search below can fail: audio planted in junk is found as int16 at an odd offset, as
    float32, resampled to 8 kHz, and in a container."""
    rng = np.random.default_rng(1)
    talk = load_pcm16(DATA / "speech" / "talk.ogg", 16000)[: 2 * 16000 * 2]
    samples = np.frombuffer(talk, "<i2").astype(np.float32)
    junk = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    planted = {
        "int16, odd offset": junk + b"x" + talk[8000:40000] + junk,
        "float32": junk + (samples[12000:28000] / 32768).astype("<f4").tobytes() + junk,
        "8 kHz": junk + resample(samples, 8000, 16000)[2000:10000].astype("<i2").tobytes() + junk,
        "wav": junk + b"RIFF" + junk,
    }

    misses = [name for name, blob in planted.items() if not audio_found([blob], [(talk, 16000)])]

    assert misses == []
    assert audio_found([junk], [(talk, 16000)]) == []


def test_no_streamed_audio_is_kept_and_the_song_is_still_named(webhook_env, backend_env: dict[str, str], tracks: list[Track]) -> None:
    webhook_env.setenv("MAX_BUFFER_SECONDS", "30")
    client = build_client()
    talk16 = load_pcm16(DATA / "speech" / "talk.ogg", 16000)[: 20 * 16000 * 2]
    talk8 = load_pcm16(DATA / "speech" / "talk.ogg", 8000)[: 20 * 8000 * 2]
    song = music_pcm(tracks[0], 5, 15)

    talked = post_seconds(client, "alice", talk16)
    played = post_seconds(client, "alice", song)
    old_device = post_seconds(client, "bob", talk8, rate=8000)

    assert {r.status_code for r in talked + played + old_device} == {200}
    named = [r.json["recognition"]["title"] for r in played if (r.json.get("recognition") or {}).get("status") == "match"]
    assert named and named[0] == tracks[0].title
    blobs = stored_bytes(backend_env)
    assert audio_found(blobs, [(talk16, 16000), (song, 16000), (talk8, 8000)]) == []
    seconds = (len(talk16) + len(song)) / 32000 + len(talk8) / 16000
    # Logical bytes (Firestore fields; SQLite cells): the peaks, the stream states, receipts,
    # history and counters together.
    if backend_env["STORAGE_BACKEND"] == "local":
        logical = local_bytes(Path(backend_env["DATA_DIR"]))[0]
    else:
        logical = sum(len(b) for b in blobs)
    assert logical / seconds < 3000
