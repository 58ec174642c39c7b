"""The Omi device simulator against a real HTTP server on loopback that records what arrives.

The server can fail chosen chunks, so every part of Omi's delivery contract that the simulator
claims to reproduce (chunking, query, headers, key reuse, retries, give-up) is observed on the
wire rather than inferred from the simulator's own output.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import soundfile

from function import simulate

FAST_RETRIES = (0.01, 0.02, 0.03)


@dataclass
class Received:
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float


@dataclass
class Recorder:
    """What the server saw, and how it should answer.

    Chunks are numbered 1, 2, ... by the order in which their Idempotency-Key first arrives.
    `fail_first` answers a chunk's first attempt with the given status (0 = stall past the
    client's timeout); `fail_always` answers every attempt of that chunk with it.
    """

    fail_first: dict[int, int] = field(default_factory=dict)
    fail_always: dict[int, int] = field(default_factory=dict)
    stall_seconds: float = 1.0
    recognition_at: dict[int, dict] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def delivered_bodies(self) -> list[bytes]:
        return [r.body for r in self.requests if 200 <= r.status < 300]


@pytest.fixture()
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            key = self.headers.get("Idempotency-Key", "")
            with recorder.lock:
                first = key not in recorder.keys
                if first:
                    recorder.keys.append(key)
                n = recorder.keys.index(key) + 1
                status = recorder.fail_always.get(n) or (recorder.fail_first.get(n, 200) if first else 200)
                parts = urlsplit(self.path)
                recorder.requests.append(
                    Received(parts.path, parts.query, dict(self.headers), body, status, time.monotonic())
                )
                rate = int(parse_qs(parts.query)["sample_rate"][0])
                buffered = sum(len(b) for b in recorder.delivered_bodies()) / (2 * rate)
            if status == 0:
                time.sleep(recorder.stall_seconds)
            reply: dict = {"status": "ok" if status == 200 else "error", "buffered_seconds": buffered}
            if status == 200 and n in recorder.recognition_at and first:
                reply["recognition"] = recorder.recognition_at[n]
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def write_tone(path: Path, seconds: float, rate: int = 44100, channels: int = 2, freq: float = 1000.0) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.4 * np.sin(2 * np.pi * freq * t)
    soundfile.write(str(path), np.repeat(tone[:, None], channels, axis=1), rate)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    return parser.parse_args(argv)


def test_stream_is_one_second_chunks_with_omi_query_and_headers(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 12.5)

    code = simulate.run(parse([str(song), "--url", f"{url}/audio", "--uid", "user_1"]), FAST_RETRIES)

    assert code == 0
    # 12.5 s in 5-s batches: 5 + 5 + 3 chunks, the last of each batch as long as what is left.
    assert [len(r.body) for r in rec.requests] == [32000] * 12 + [16000]
    assert {r.path for r in rec.requests} == {"/audio"}
    assert {r.query for r in rec.requests} == {"sample_rate=16000&uid=user_1"}
    assert {r.headers["Content-Type"] for r in rec.requests} == {"application/octet-stream"}
    keys = [r.headers["Idempotency-Key"] for r in rec.requests]
    assert len(set(keys)) == 13
    assert all(uuid.UUID(k).version == 4 for k in keys)


def test_audio_is_resampled_mono_pcm16(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.flac", 3.0, rate=44100, channels=2, freq=1000.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--sample-rate", "8000"]), FAST_RETRIES)

    assert code == 0
    assert [len(r.body) for r in rec.requests] == [16000] * 3
    samples = np.frombuffer(b"".join(rec.delivered_bodies()), dtype="<i2").astype(np.float64) / 32768
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.fft.rfftfreq(len(samples), 1 / 8000)[spectrum.argmax()] == pytest.approx(1000, abs=2)
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(0.4 / np.sqrt(2), rel=0.02)


def test_query_is_appended_to_an_existing_query_and_token_goes_first(server) -> None:
    url, _ = server

    assert simulate.omi_url(f"{url}/audio?x=1", 8000, "a-b") == f"{url}/audio?x=1&sample_rate=8000&uid=a-b"
    assert simulate.omi_url(f"{url}/audio", 16000, "u", token="s3cr t") == (
        f"{url}/audio?token=s3cr+t&sample_rate=16000&uid=u"
    )


def test_token_reaches_the_server_in_the_query(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 1.0)

    code = simulate.run(parse([str(song), "--url", f"{url}/audio", "--uid", "u", "--token", "tok"]), FAST_RETRIES)

    assert code == 0
    assert [r.query for r in rec.requests] == ["token=tok&sample_rate=16000&uid=u"]


@pytest.mark.parametrize("status", [500, 503, 429, 408, 0])
def test_a_retryable_failure_is_retried_with_the_same_key_and_body(tmp_path: Path, server, status: int) -> None:
    url, rec = server
    rec.fail_first = {2: status}
    rec.stall_seconds = 2.5
    song = write_tone(tmp_path / "song.wav", 3.0)

    args = parse([str(song), "--url", url, "--uid", "u", "--timeout", "1"])
    code = simulate.run(args, FAST_RETRIES)

    assert code == 0
    assert len(rec.keys) == 3
    second = [r for r in rec.requests if r.headers["Idempotency-Key"] == rec.keys[1]]
    assert [r.status for r in second] == [status, 200]
    assert second[0].body == second[1].body
    assert len(rec.delivered_bodies()) == 3


def test_retries_follow_the_given_delays_then_give_up(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    rec.fail_always = {1: 503}
    song = write_tone(tmp_path / "song.wav", 7.0)

    started = time.monotonic()
    code = simulate.run(parse([str(song), "--url", url, "--uid", "u"]), (0.1, 0.2, 0.3))
    elapsed = time.monotonic() - started

    assert code == 1
    first_chunk = [r for r in rec.requests if r.headers["Idempotency-Key"] == rec.keys[0]]
    assert [r.status for r in first_chunk] == [503] * 4
    gaps = np.diff([r.at for r in first_chunk])
    assert all(g >= d - 0.02 for g, d in zip(gaps, (0.1, 0.2, 0.3)))
    assert elapsed >= 0.6
    # The rest of batch 1 is abandoned; batch 2 (seconds 5-7) is still sent.
    assert [len(r.body) for r in rec.requests[4:]] == [32000, 32000]
    assert "2/7 chunks delivered" in capsys.readouterr().err


def test_a_client_error_is_not_retried_and_drops_the_rest_of_its_batch(tmp_path: Path, server) -> None:
    url, rec = server
    rec.fail_first = {2: 400}
    song = write_tone(tmp_path / "song.wav", 8.0)
    clean = simulate.load_pcm16(song, 16000)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u"]), FAST_RETRIES)

    assert code == 1
    assert [r.status for r in rec.requests] == [200, 400, 200, 200, 200]
    assert len(rec.keys) == 5
    # Delivered: second 0, then batch 2 (seconds 5-8); seconds 1-4 never arrive.
    assert b"".join(rec.delivered_bodies()) == clean[:32000] + clean[5 * 32000 :]


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 15.0])
def test_noise_is_mixed_at_the_requested_snr(tmp_path: Path, server, snr_db: float) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.ogg", 4.0, rate=16000, channels=1, freq=440.0)
    rng = np.random.default_rng(7)
    # Shorter than the song, so it has to be looped; 22.05 kHz, so it has to be resampled.
    soundfile.write(str(tmp_path / "noise.wav"), 0.2 * rng.standard_normal(int(1.3 * 22050)), 22050)
    clean = np.frombuffer(simulate.load_pcm16(song, 16000), dtype="<i2").astype(np.float64)

    argv = [str(song), "--url", url, "--uid", "u", "--noise", str(tmp_path / "noise.wav"), "--snr", str(snr_db)]
    code = simulate.run(parse(argv), FAST_RETRIES)

    assert code == 0
    noisy = np.frombuffer(b"".join(rec.delivered_bodies()), dtype="<i2").astype(np.float64)
    assert len(noisy) == len(clean) == 4 * 16000
    measured = 10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.5)


def test_prints_status_buffer_and_recognition_per_request(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    rec.recognition_at = {
        2: {"status": "no_match", "latency_ms": 40.0},
        3: {"status": "match", "artist": "Nina Simone", "title": "Sinnerman", "confidence": 0.91},
    }
    song = write_tone(tmp_path / "song.wav", 3.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u"]), FAST_RETRIES)

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(lines) == 3
    assert all(" 200 " in line for line in lines)
    assert "buffered 2.0 s" in lines[1]
    assert "recognition: no match" in lines[1]
    assert "recognition: Nina Simone - Sinnerman (confidence 0.91)" in lines[2]
    assert "recognition" not in lines[0]


def test_json_output_is_one_object_per_request(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    rec.fail_first = {1: 429}
    rec.recognition_at = {2: {"status": "unavailable", "reason": "the song catalog is not available"}}
    song = write_tone(tmp_path / "song.wav", 2.0)

    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--json"]), FAST_RETRIES)

    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [(r["chunk"], r["attempt"], r["status"]) for r in records] == [(1, 1, 429), (1, 2, 200), (2, 1, 200)]
    assert records[0]["idempotency_key"] == records[1]["idempotency_key"] != records[2]["idempotency_key"]
    assert records[2]["buffered_seconds"] == 2.0
    assert records[2]["recognition"]["status"] == "unavailable"
    assert simulate.describe_recognition(records[2]["recognition"]) == "unavailable: the song catalog is not available"


def test_realtime_sends_each_batch_once_its_audio_is_recorded(tmp_path: Path, server) -> None:
    url, rec = server
    song = write_tone(tmp_path / "song.wav", 2.0)

    started = time.monotonic()
    code = simulate.run(parse([str(song), "--url", url, "--uid", "u", "--batch-seconds", "0.5", "--realtime"]))

    assert code == 0
    offsets = [r.at - started for r in rec.requests]
    assert len(offsets) == 4
    for n, offset in enumerate(offsets, start=1):
        assert 0.5 * n - 0.05 <= offset <= 0.5 * n + 0.3


def test_unreadable_file_is_a_usage_error(tmp_path: Path, server, capsys) -> None:
    url, rec = server
    bogus = tmp_path / "not-audio.wav"
    bogus.write_bytes(b"hello")

    code = simulate.run(parse([str(bogus), "--url", url, "--uid", "u"]))

    assert code == 2
    assert "not-audio.wav" in capsys.readouterr().err
    assert rec.requests == []


def test_batches_end_on_batch_boundaries_even_when_not_whole_seconds() -> None:
    pcm = bytes(2 * 16000 * 6)

    sizes = [[len(c) for c in batch] for batch in simulate.batches(pcm, 16000, 2.5)]

    assert sizes == [[32000, 32000, 16000], [32000, 32000, 16000], [32000]]
