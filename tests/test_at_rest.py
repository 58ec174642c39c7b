"""No audio at rest: talk and music streamed to the webhook as Omi sends them, then every byte the
store holds searched for that audio, on both backends."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import fftconvolve

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

CONTAINERS = (b"RIFF", b"WAVE", b"OggS", b"OpusHead", b"fLaC", b"ID3\x03", b"ID3\x04", b"ftypM4A")
PROBE = 256  # samples: 16 ms at 16 kHz, 32 ms at 8 kHz
PROBES = 24
MATCH = 0.9  # normalised correlation that only a copy (scaled, offset, resampled) reaches


def stored_bytes(backend_env: dict[str, str]) -> list[bytes]:
    """Everything the backend holds: every file under DATA_DIR (the database and its journal),
    or every field of every Firestore document of the project, as raw bytes."""
    if backend_env["STORAGE_BACKEND"] == "local":
        return [p.read_bytes() for p in Path(backend_env["DATA_DIR"]).rglob("*") if p.is_file()]
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


def audio_found(blobs: list[bytes], streams: list[tuple[bytes, int]]) -> list[str]:
    """Where any of the streamed PCM16 (bytes, rate) shows in the blobs: exact windows, a
    container's signature, or windows correlated with it at 8 or 16 kHz, read as int16 or
    float32 from any byte alignment."""
    found = []
    rng = np.random.default_rng(0)
    for index, blob in enumerate(blobs):
        for signature in CONTAINERS:
            if signature in blob:
                found.append(f"blob {index}: a {signature!r} signature")
        readings = {}
        for offset in range(2):
            readings[f"int16+{offset}"] = np.frombuffer(blob[offset : offset + (len(blob) - offset) // 2 * 2], "<i2").astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            for offset in range(4):
                floats = np.frombuffer(blob[offset : offset + (len(blob) - offset) // 4 * 4], "<f4").astype(np.float64)
                readings[f"float32+{offset}"] = np.nan_to_num(floats, nan=0.0, posinf=0.0, neginf=0.0)
        for pcm, rate in streams:
            samples = np.frombuffer(pcm, "<i2").astype(np.float32)
            versions = [samples, resample(samples, 8000, rate) if rate != 8000 else resample(samples, 16000, rate)]
            for version in versions:
                loud = np.flatnonzero(np.abs(version[: len(version) - PROBE]) > 300)
                for start in rng.choice(loud, size=min(PROBES, len(loud)), replace=False):
                    probe = version[start : start + PROBE]
                    exact = np.round(probe).astype("<i2").tobytes()
                    if exact in blob:
                        found.append(f"blob {index}: an exact window")
                    for name, reading in readings.items():
                        at = _correlated(reading, probe.astype(np.float64))
                        if at is not None:
                            found.append(f"blob {index} read as {name}: a window of the {rate}-Hz stream at item {at}")
    return found


def _correlated(reading: np.ndarray, probe: np.ndarray) -> int | None:
    """Where in `reading` a scaled, offset copy of `probe` lies, if anywhere."""
    if len(reading) < len(probe):
        return None
    probe = probe - probe.mean()
    reading = np.clip(reading, -1e6, 1e6)
    dot = fftconvolve(reading, probe[::-1], mode="valid")
    window = np.ones(len(probe))
    total = fftconvolve(reading, window, mode="valid")
    energy = np.maximum(fftconvolve(reading**2, window, mode="valid") - total**2 / len(probe), 0.0)
    score = np.abs(dot) / np.sqrt(energy * float(probe @ probe) + 1e-12)
    hits = np.flatnonzero((score > MATCH) & (energy > 1e-6 * len(probe)))
    return int(hits[0]) if len(hits) else None


def test_the_search_finds_audio_wherever_it_hides() -> None:
    """The search below can fail: audio planted in junk is found as int16 at an odd offset, as
    float32, resampled to 8 kHz, and in a container."""
    rng = np.random.default_rng(1)
    talk = load_pcm16(DATA / "speech" / "talk.ogg", 16000)[: 2 * 16000 * 2]
    samples = np.frombuffer(talk, "<i2").astype(np.float32)
    junk = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    planted = {
        "int16, odd offset": junk + b"x" + talk[20000:24000] + junk,
        "float32": junk + (samples[8000:10000] / 32768).astype("<f4").tobytes() + junk,
        "8 kHz": junk + resample(samples, 8000, 16000)[4000:6000].astype("<i2").tobytes() + junk,
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
    if backend_env["STORAGE_BACKEND"] == "gcp":
        # Logical bytes (Firestore fields; the SQLite file has its pages' slack too): the
        # peaks, the stream states, receipts, history and counters together.
        assert sum(len(b) for b in blobs) / seconds < 3000
